"""A regular (not editable) `pip install .` into a fresh venv works from any folder: params, presets,
studies and the paper's reference tables ship as package data."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project

pytestmark = pytest.mark.e2e


def test_pip_install_outside_the_checkout(tmp_path):
    src = copy_project(tmp_path / "src")  # a clean copy: no build/ or egg-info of the checkout
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # the dependencies (torch, ...) come from this environment; the package itself is installed fresh
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", site, str(src)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def cli(*args):
        proc = subprocess.run([py, "-m", "simclr_ablations.cli", *map(str, args)], cwd=work, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    where = subprocess.run([py, "-c", "import simclr_ablations, sys; print(simclr_ablations.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where).is_relative_to(site) and not Path(where).is_relative_to(ROOT)
    assert yaml.safe_load(cli("params", "--preset", "cpu", "--key", "encoder"))["depth"] == 10
    assert "simclr-ablations 0.1.0+" in cli("--version")
    # a user's own params file naming a preset
    (work / "mine.yaml").write_text("preset: smoke\npretrain: {temperature: 0.2}\n")
    assert cli("params", "--params", "mine.yaml", "--key", "pretrain.temperature").strip() == "0.2"
    # the reference tables and studies ship too
    from_pkg = subprocess.run([py, "-c", "from simclr_ablations import params, studies; "
                               "print(params.PAPER_DIR, len(studies.names()))"], cwd=work, env=env,
                              capture_output=True, text=True, check=True).stdout.split()
    assert Path(from_pkg[0]).is_relative_to(site) and int(from_pkg[1]) >= 9
    cli("prepare", "--preset", "smoke", "--out", work / "data")
    assert (work / "data" / "train.pt").exists()
