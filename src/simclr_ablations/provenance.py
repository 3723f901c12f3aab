"""What made a result: code version, package and library versions, device, threads, wall time.

Every train.json, metrics.json and table row carries `record(...)`, so a table can tell when its
rows were made by different code. The code version is a hash of the package's own source and of
the params files (`source_hash`), which exists for a checkout and for an installed wheel alike,
plus the git commit and dirty flag when the package runs from a git checkout.

`stage_modules(entry)` lists the package modules a command imports (the transitive closure of its
`from . import` lines); `stage_hash` hashes their source. Snakemake passes it as a rule param and
dvc.yaml lists the same files as deps, so editing figures.py reruns figures, not pretraining.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import params

PACKAGE_DIR = Path(__file__).resolve().parent
# The command (module) behind each pipeline stage.
STAGES = {"fingerprint": "fingerprint", "prepare": "data", "pretrain": "pretrain", "evaluate": "evaluate",
          "table": "tables", "figure": "figures", "findings": "findings", "curves": "plots"}


_IMPORT = re.compile(r"^[ \t]*from[ \t]+\.(\w*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)


@functools.cache
def _imports(module: str) -> frozenset[str]:
    """The package modules `module` imports (`from .x import ...`, `from . import x, y as z`); a regex,
    not ast.parse: every Snakemake process (each dry run, each Slurm job) pays this for every module."""
    out = set()
    for name, names in _IMPORT.findall((PACKAGE_DIR / f"{module}.py").read_text()):
        if name:
            out.add(name)
            continue
        for item in names.strip("()").replace("\n", " ").split(","):
            item = item.split("#")[0].split(" as ")[0].strip()
            if item:
                out.add(item)
    return frozenset(m for m in out if (PACKAGE_DIR / f"{m}.py").is_file())


def stage_modules(entry: str) -> list[str]:
    """Sorted module names that `entry` imports, directly or not (itself and params included: the
    command line validates params for every stage)."""
    seen, todo = set(), [entry, "params"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m))
    return sorted(seen)


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def stage_hash(stage: str) -> str:
    """Hash of the source of the modules a stage's command runs."""
    return _hash_files([PACKAGE_DIR / f"{m}.py" for m in stage_modules(STAGES[stage])])


def stage_deps(stage: str) -> list[str]:
    """The source files of a stage, as dvc.yaml lists them (deps)."""
    return [f"src/simclr_ablations/{m}.py" for m in stage_modules(STAGES[stage])]


@functools.cache
def source_hash() -> str:
    """Hash of every module of the package and every params file: the code version of a result."""
    files = sorted(PACKAGE_DIR.glob("*.py")) + sorted(params.PARAMS_DIR.rglob("*.yaml"))
    return _hash_files(files)


@functools.cache
def git_version() -> dict:
    """{'commit', 'dirty'} of the checkout the package runs from, or {} outside a git checkout."""
    root = PACKAGE_DIR.parents[1]
    if not (root / ".git").exists():
        return {}
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "src", "params"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty}


def version() -> str:
    try:
        return metadata.version("simclr-ablations")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def code_version() -> str:
    """'<package version>+<source hash>', with the git commit (and '-dirty') when there is one."""
    g = git_version()
    vcs = f" (git {g['commit']}{'-dirty' if g['dirty'] else ''})" if g else ""
    return f"{version()}+{source_hash()}{vcs}"


# The fields that metrics.json and train.json carry (DVC shows them as columns); the full record
# goes to provenance.json beside them.
COMPACT = ("code_version", "torch", "cuda", "device", "device_name", "threads", "wall_seconds")


def compact(rec: dict) -> dict:
    return {k: rec[k] for k in COMPACT if k in rec}


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and the vector ISA torch's CPU kernels use
    (torch.backends.cpu.get_cpu_capability: e.g. AVX2, AVX512). Float results of the same run differ
    between ISAs (other kernels round differently), so every result records them."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def record(device=None, threads: int | None = None, wall_seconds: float | None = None) -> dict:
    """The provenance fields of one result."""
    import torch

    dev = str(device) if device is not None else "cpu"
    out = {
        "code_version": code_version(),
        "source_hash": source_hash(),
        "git_commit": git_version().get("commit", ""),
        "git_dirty": git_version().get("dirty", False),
        "package_version": version(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda or ""),
        "device": dev,
        "device_name": torch.cuda.get_device_name(device) if dev.startswith("cuda") else cpu_name(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "host": platform.node(),
        "argv": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
    }
    if wall_seconds is not None:
        out["wall_seconds"] = round(wall_seconds, 2)
    return out
