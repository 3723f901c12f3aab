# The whole SimCLR ablation study: prepare -> pretrain every run of every study -> evaluate ->
# tables -> figures -> findings. `snakemake -c2 --config preset=smoke`; on a cluster
# `snakemake --profile slurm --config preset=cifar10`. Rules call the package's CLI.
from snakemake.logging import logger
from snakemake.utils import min_version, validate

from simclr_ablations import scheduler_timers

min_version("9.18")


configfile: "workflow/config.yaml"


# Validated once by the main process, before any job starts; a job re-reading this file skips it.
if workflow.is_main_process:
    validate(config, "workflow/schemas/config.schema.yaml")
    # Snakemake 9 starts one more 1-second re-scheduling timer chain per finished job (12 CPU-minutes
    # of the cpu grid's 2 cores); keep one pending timer (src/simclr_ablations/scheduler_timers.py)
    if not scheduler_timers.coalesce():
        logger.warning(
            "scheduler_timers: this Snakemake's scheduler has no _schedule_reevalutation(self, delay); unpatched"
        )


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        ALL_OUTPUTS,
