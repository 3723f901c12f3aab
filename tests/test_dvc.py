"""`dvc repro` of the single experiment, end to end on the smoke preset, with the real DVC."""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, need

pytestmark = pytest.mark.e2e


def _run(cmd, cwd, **kw):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def repo(tmp_path):
    """A git repo with the project's DVC pipeline and params, set to the smoke preset."""
    work = tmp_path / "repo"
    work.mkdir()
    for item in ("dvc.yaml", "params", "src", ".dvc/config", ".dvc/.gitignore"):
        src, dst = ROOT / item, work / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")) if src.is_dir() \
            else shutil.copy(src, dst)
    exp = yaml.safe_load((work / "params/experiment.yaml").read_text())
    exp["preset"] = "smoke"
    (work / "params/experiment.yaml").write_text(yaml.safe_dump(exp))
    remote = tmp_path / "remote"
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        _run(cmd, work)
    _run([need("dvc"), "remote", "modify", "--local", "local", "url", str(remote)], work)
    return work


def test_dvc_repro_end_to_end_then_variant_and_push_pull(repo, tmp_path):
    dvc = need("dvc")
    _run([dvc, "repro"], repo)
    metrics = json.loads((repo / "results/experiment/metrics.json").read_text())
    assert 0 <= metrics["linear_top1"] <= 100 and metrics["params"]["pretrain"]["temperature"] == 0.5
    assert metrics["params"]["encoder"]["width"] == 0.0625  # the smoke preset was applied
    assert (repo / "results/experiment/curves.png").stat().st_size > 1000
    assert (repo / "data/experiment/train.pt").exists() and (repo / "runs/experiment/model.pt").exists()
    assert "up to date" in _run([dvc, "status"], repo).stdout
    shown = _run([dvc, "metrics", "show", "--json"], repo).stdout
    assert "linear_top1" in shown

    _run([dvc, "push"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run([dvc, "remote", "modify", "--local", "local", "url", str(tmp_path / "remote")], clone)
    _run([dvc, "pull"], clone)
    assert (clone / "runs/experiment/model.pt").read_bytes() == (repo / "runs/experiment/model.pt").read_bytes()
    assert "up to date" in _run([dvc, "status"], clone).stdout

    _run([dvc, "exp", "run", "-S", "params/experiment.yaml:pretrain.temperature=0.2"], repo)
    variant = json.loads((repo / "results/experiment/metrics.json").read_text())
    assert variant["params"]["pretrain"]["temperature"] == 0.2
    assert variant["run_id"] != metrics["run_id"]
