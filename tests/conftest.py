import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simclr_ablations import data, params

ROOT = Path(__file__).resolve().parents[1]


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
