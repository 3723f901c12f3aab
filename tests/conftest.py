import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from simclr_ablations import data, params

ROOT = Path(__file__).resolve().parents[1]
# data fingerprints are cached per user (fingerprint.py); the tests keep theirs apart
os.environ["SIMCLR_ABLATIONS_CACHE"] = tempfile.mkdtemp(prefix="simclr-ablations-cache-")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke preset's prepared synthetic dataset, made once per test session."""
    return data.prepare(params.load("smoke"), tmp_path_factory.mktemp("data") / "smoke")


def cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run the package's command line in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "simclr_ablations.cli", *map(str, args)], capture_output=True,
                          text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"simclr-ablations {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def need(tool: str) -> str:
    path = shutil.which(tool) or (str(Path(sys.executable).parent / tool)
                                  if (Path(sys.executable).parent / tool).exists() else None)
    if path is None:
        pytest.fail(f"{tool} is not installed (it is part of the environment: see pyproject.toml)")
    return path


def run(cmd, cwd, timeout=1800, env=None, check=True) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools on PATH; fail with its output."""
    import os

    full_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {}))
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def copy_project(dest: Path) -> Path:
    """A fresh git repository holding the project's files (tracked and untracked, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory) -> Path:
    """The project after `snakemake -c2 --config preset=smoke` (run once per test session)."""
    work = copy_project(tmp_path_factory.mktemp("grid") / "project")
    run(["snakemake", "-c2", "--config", "preset=smoke"], work)
    return work
