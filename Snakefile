# The whole SimCLR ablation study: prepare -> pretrain every run of every study -> evaluate ->
# tables -> figures -> findings. `snakemake -c2 --config preset=smoke`; on a cluster
# `snakemake --profile slurm --config preset=cifar10`. Rules call the package's CLI.
from snakemake.utils import min_version, validate

min_version("9.18")


configfile: "workflow/config.yaml"


# Validated once by the main process, before any job starts; a job re-reading this file skips it.
if workflow.is_main_process:
    validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        ALL_OUTPUTS,
