# Which runs exist: every study of params/studies.yaml expanded for the preset, each run
# identified by the digest of its resolved params (shared runs are trained once).
import shlex

from snakemake.exceptions import WorkflowError

from simclr_ablations import params as P
from simclr_ablations import studies


PRESET = config["preset"]
EXTRA = []
if config["dataset"]:
    EXTRA.append(f"data.dataset={config['dataset']}")
if config["data_root"]:
    EXTRA.append(f"data.root={config['data_root']}")
if config["image_size"]:
    EXTRA.append(f"data.image_size={config['image_size']}")
EXTRA = tuple(EXTRA)
STUDIES = list(config["studies"]) or studies.names()
try:
    unknown = sorted(set(STUDIES) - set(studies.names()))
    if unknown:
        raise P.ParamsError(f"'studies' names unknown studies {unknown}; allowed: {studies.names()}")
    P.load(PRESET, settings=list(EXTRA))
    RUNS = {study: studies.expand(PRESET, study, EXTRA, config["seeds"]) for study in STUDIES}
except P.ParamsError as e:
    raise WorkflowError(f"invalid configuration (preset={PRESET!r}, dataset={config['dataset']!r}): {e}")

DATASET = config["dataset"] or P.load(PRESET)["data"]["dataset"]
TAG = PRESET if not config["dataset"] else f"{PRESET}-{config['dataset']}"
RESULTS = f"results/{TAG}"
UNIQUE = studies.unique([r for runs in RUNS.values() for r in runs])
DATA_OF = {rid: P.digest(r.params["data"]) for rid, r in UNIQUE.items()}
DATA_ARGS = {
    DATA_OF[rid]: " ".join(f"--set {shlex.quote(s)}" for s in studies.data_settings(r.params))
    for rid, r in UNIQUE.items()
}
RES = config["resources"].get(PRESET, config["resources"]["default"])
EXTRA_ARGS = " ".join(f"--extra {shlex.quote(s)}" for s in EXTRA)
CAPTION = f"preset {PRESET}, dataset {DATASET}"

ALL_OUTPUTS = (
    expand(f"{RESULTS}/tables/{{study}}.{{ext}}", study=STUDIES, ext=["csv", "md"])
    + expand(f"{RESULTS}/figures/{{study}}.{{ext}}", study=STUDIES, ext=["png", "pdf"])
    + [f"{RESULTS}/README.md"]
)


wildcard_constraints:
    run="[0-9a-f]{12}",
    data_id="[0-9a-f]{12}",
    study="|".join(STUDIES),
