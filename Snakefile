# The whole SimCLR ablation study: prepare -> pretrain every run of every study -> evaluate ->
# tables -> figures -> findings. `snakemake -c2 --config preset=smoke`; on a cluster
# `snakemake --profile slurm --config preset=cifar10`. Rules call the package's CLI.
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "workflow/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        ALL_OUTPUTS,
    default_target: True
