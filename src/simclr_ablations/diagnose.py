"""Collapse diagnostics of a finished run: is a low accuracy a bug, a collapse or a slow start?

For the test images' features at h (the encoder output) and at the head's last layer:
- `effective_rank`: exp of the entropy of the normalised singular values of the centred features
  (Roy & Vetterli 2007); 1 = every image on one line, `dim` = all directions used equally.
- `std_normalized`: mean over dimensions of the std of l2-normalised features; 1/sqrt(dim) when they
  spread over the sphere, 0 when they collapse to a point (the SimSiam paper's collapse monitor).
And the pretraining loss curve (first and last epoch) from history.csv, and `encoder_change`: how far
training moved the encoder's convolution weights from their initialisation (rebuilt from the run's
seed), ||W - W0|| / ||W0||. Near 0, the encoder is still its random init: an accuracy at the untrained
floor is then a run that barely trained (too small an lr for its steps), not a collapse.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F

from . import augment, data, evaluate, pretrain, stream


def effective_rank(f: torch.Tensor) -> float:
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def std_normalized(f: torch.Tensor) -> float:
    return float(F.normalize(f, dim=1).std(0).mean())


def encoder_change(model: torch.nn.Module, p: dict, classes: int) -> float:
    """||W - W0|| / ||W0|| over the encoder's convolution weights; W0 as pretrain.build_model draws it."""
    w0 = pretrain.build_model(p, classes).encoder.state_dict()
    w = model.encoder.state_dict()
    keys = [k for k, v in w.items() if v.dim() == 4]
    moved = sum(float(((w[k].float().cpu() - w0[k]) ** 2).sum()) for k in keys) ** 0.5
    return moved / sum(float((w0[k] ** 2).sum()) for k in keys) ** 0.5


def diagnose(run_dir: Path, data_dir: Path) -> dict:
    run_dir = Path(run_dir)
    p = evaluate.trained_params(run_dir)
    device = pretrain.setup(p)
    model, _ = pretrain.load_model(run_dir, device)
    meta = data.load_meta(data_dir)
    data.check_meta(meta, p, data_dir)
    norm = augment.Normalize(meta["mean"], meta["std"], p["augment"]["normalize"]).to(device)
    xte, _ = stream.eval_split(data_dir, meta, "test")  # a tensor, or the files of a streamed set
    feats = evaluate.extract(model, xte, norm, device, runtime=p["runtime"])
    out = {"run": run_dir.name, "method": p["method"]}
    for name, f in (("h", feats[0]), ("g", feats[-1])):
        out[name] = {"dim": f.shape[1], "effective_rank": round(effective_rank(f), 2),
                     "std_normalized": round(std_normalized(f), 4), "sqrt_dim_inv": round(f.shape[1] ** -0.5, 4)}
    out["encoder_change"] = round(encoder_change(model, p, len(meta["classes"])), 4)
    hist = run_dir / "history.csv"
    if hist.exists():
        rows = list(csv.DictReader(hist.open()))
        if rows:
            out["loss_first_epoch"] = round(float(rows[0]["loss"]), 4)
            out["loss_last_epoch"] = round(float(rows[-1]["loss"]), 4)
    return out
