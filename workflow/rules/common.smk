# Which runs exist: every study of params/studies.yaml expanded for the preset. A pretraining is
# named by the digest of what changes its weights, an evaluation by that plus its eval settings
# (params.py), so a pretraining shared by several cells or studies is trained once.
import os
import shlex

from snakemake.exceptions import WorkflowError

from simclr_ablations import params as P
from simclr_ablations import fingerprint, launch, provenance, studies

PRESET = config["preset"]
EXTRA = []
if config["dataset"]:
    EXTRA.append(f"data.dataset={config['dataset']}")
if config["data_root"]:
    EXTRA.append(f"data.root={config['data_root']}")
if config["image_size"]:
    EXTRA.append(f"data.image_size={config['image_size']}")
if config.get("gpus"):
    EXTRA.append(f"runtime.gpus={config['gpus']}")
if config.get("nodes"):
    EXTRA.append(f"runtime.nodes={config['nodes']}")
if config.get("cpu_amp"):
    EXTRA.append("runtime.cpu_amp=true")
EXTRA = tuple(EXTRA)
STUDIES = list(config["studies"]) or studies.names()
try:
    unknown = sorted(set(STUDIES) - set(studies.names()))
    if unknown:
        raise P.ParamsError(
            f"'studies' names unknown studies {unknown}; allowed: {studies.names()}"
        )
    BASE = P.load(PRESET, settings=list(EXTRA))
    # Expanded once, then loaded from .snakemake/ by every later process that reads this file (a
    # dry run, each Slurm job), keyed by the params files and the code that names runs.
    RUNS = studies.plan(
        PRESET, STUDIES, EXTRA, config["seeds"], cache_dir=".snakemake/simclr-plan"
    )
except P.ParamsError as e:
    raise WorkflowError(
        f"invalid configuration (preset={PRESET!r}, dataset={config['dataset']!r}): {e}"
    )

DATASET = BASE["data"]["dataset"]
TAG = PRESET if not config["dataset"] else f"{PRESET}-{config['dataset']}"
RESULTS = f"results/{TAG}"
ALL = [r for runs in RUNS.values() for r in runs]
UNIQUE = studies.unique(ALL)
EVALS = studies.unique_evals(ALL)
DATA_OF = {rid: P.digest(P.data_params(r.params)) for rid, r in UNIQUE.items()}
DATA_ARGS = {
    data_id: " ".join(
        f"--set {shlex.quote(s)}" for s in studies.data_settings(UNIQUE[rid].params)
    )
    for data_id, rid in {d: rid for rid, d in DATA_OF.items()}.items()
}
# The files under data.root (path, size, mtime): `prepare` reruns when one is added, removed or
# changed (a params trigger), and so does everything downstream of it.
DATA_PARAMS = {d: UNIQUE[rid].params["data"] for rid, d in DATA_OF.items()}


def data_fingerprint(wc):
    return fingerprint.of_listing(DATA_PARAMS[wc.data_id])


RES = config["resources"].get(PRESET, config["resources"]["default"])
# Threads are part of a run's identity (CPU results depend on them): the preset's runtime.threads.
THREADS = BASE["runtime"]["threads"] or RES["threads"]
# Data parallel pretraining (runtime.gpus x runtime.nodes processes): torchrun inside the job (launch.py).
LAUNCH = {rid: launch.launcher(r.params) for rid, r in UNIQUE.items()}
PRETRAIN_RES = launch.slurm_resources(BASE)
EXTRA_ARGS = " ".join(f"--extra {shlex.quote(s)}" for s in EXTRA)
CAPTION = f"preset {PRESET}, dataset {DATASET}"
# Rerun a stage when the source of the modules its command runs changes (the `params` trigger).
CODE = {stage: provenance.stage_hash(stage) for stage in provenance.STAGES}
ENV = "../../environment.yml"

ALL_OUTPUTS = (
    expand(f"{RESULTS}/tables/{{study}}.{{ext}}", study=STUDIES, ext=["csv", "md"])
    + expand(f"{RESULTS}/figures/{{study}}.{{ext}}", study=STUDIES, ext=["png", "pdf"])
    + [f"{RESULTS}/README.md"]
)


wildcard_constraints:
    run="[0-9a-f]{12}",
    ev="[0-9a-f]{12}",
    data_id="[0-9a-f]{12}",
    study="|".join(STUDIES),
