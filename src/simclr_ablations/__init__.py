"""simclr-ablations: every ablation of SimCLR (Chen et al., 2020) as a reproducible pipeline."""

__version__ = "0.1.0"
