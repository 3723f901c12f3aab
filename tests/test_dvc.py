"""`dvc repro` of the single experiment, end to end on the smoke preset, with the real DVC."""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, need

pytestmark = pytest.mark.e2e


def _up_to_date(repo, dvc) -> None:
    """`dvc status` lists nothing but the fingerprint stage, which reads data.root and always runs."""
    out = _run([dvc, "status", "--json"], repo).stdout
    assert json.loads(out) == {"fingerprint": ["always changed"]}, out


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
    ran = yaml.safe_load((repo / "results/experiment/params.yaml").read_text())
    assert 0 <= metrics["linear_top1"] <= 100 and ran["pretrain"]["temperature"] == 0.5
    assert ran["encoder"]["width"] == 0.0625  # the smoke preset was applied
    assert "params" not in metrics and "protocol" not in metrics  # numbers, ids and the code version only
    assert set(metrics["provenance"]) >= {"code_version", "torch", "device", "threads", "wall_seconds"}
    assert (repo / "results/experiment/curves.png").stat().st_size > 1000
    assert (repo / "data/experiment/train.pt").exists() and (repo / "runs/experiment/model.pt").exists()
    _up_to_date(repo, dvc)
    again = _run([dvc, "repro"], repo).stdout  # the fingerprint is the same: nothing else runs
    assert "Running stage 'fingerprint'" in again and "Stage 'prepare' didn't change, skipping" in again, again
    shown = json.loads(_run([dvc, "metrics", "show", "--json"], repo).stdout)
    cols = shown[""]["data"]["results/experiment/metrics.json"]["data"]
    assert "linear_top1" in cols and len(json.dumps(cols)) < 4000
    # `dvc exp show` shows the values that ran (the resolved params), not params/default.yaml's
    table = _run([dvc, "exp", "show", "--json"], repo).stdout
    assert "0.0625" in table  # encoder.width of the smoke preset (default.yaml has 1.0)

    _run([dvc, "push"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run([dvc, "remote", "modify", "--local", "local", "url", str(tmp_path / "remote")], clone)
    _run([dvc, "pull"], clone)
    assert (clone / "runs/experiment/model.pt").read_bytes() == (repo / "runs/experiment/model.pt").read_bytes()
    _up_to_date(clone, dvc)

    # an evaluation-only change re-evaluates the same pretraining: no retraining
    model = (repo / "runs/experiment/model.pt").read_bytes()
    out = _run([dvc, "exp", "run", "-S", "params/experiment.yaml:+eval.knn.k=5"], repo).stdout
    assert "Stage 'pretrain' didn't change, skipping" in out and "Running stage 'evaluate'" in out, out
    assert (repo / "runs/experiment/model.pt").read_bytes() == model
    knn = json.loads((repo / "results/experiment/metrics.json").read_text())
    assert knn["run_id"] == metrics["run_id"] and knn["eval_id"] != metrics["eval_id"]

    # a pretraining change retrains (1e-6 without a dot is a float: YAML 1.2)
    _run([dvc, "exp", "run", "-S", "params/experiment.yaml:pretrain.temperature=0.2",
          "-S", "params/experiment.yaml:+pretrain.weight_decay=1e-6"], repo)
    variant = json.loads((repo / "results/experiment/metrics.json").read_text())
    assert yaml.safe_load((repo / "results/experiment/params.yaml").read_text())["pretrain"]["temperature"] == 0.2
    assert variant["run_id"] != metrics["run_id"]


def test_dvc_deps_are_the_modules_each_stage_imports():
    """dvc.yaml's deps are narrowed to what each command runs, and kept in step with the code."""
    from simclr_ablations import provenance

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("fingerprint", "prepare", "pretrain", "evaluate", "curves"):
        listed = sorted(d for d in stages[stage]["deps"] if d.startswith("src/"))
        assert listed == provenance.stage_deps(stage), stage
    assert "src/simclr_ablations/figures.py" not in stages["pretrain"]["deps"]
    # each stage declares only the params keys it reads, from the resolved file
    keys = lambda s: next(iter(stages[s]["params"][0].values()))  # noqa: E731
    assert keys("prepare") == ["data"] and keys("evaluate") == ["eval"] and "eval" not in keys("pretrain")
    # every runtime key that can enter a pretraining's identity reruns the stage when it changes
    from simclr_ablations import params

    assert {f"runtime.{k}" for k in (*params.RUNTIME_IDENTITY, "cpu_amp")} <= set(keys("pretrain"))
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]


def test_failed_exp_run_leaves_its_values_and_git_checkout_restores_them(repo):
    """README: a failed `dvc exp run -S` keeps its values in params/experiment.yaml (DVC writes them
    before running); `git checkout params/experiment.yaml` restores the committed file."""
    dvc = need("dvc")
    committed = (repo / "params/experiment.yaml").read_text()
    proc = subprocess.run([dvc, "exp", "run", "-S", "params/experiment.yaml:pretrain.temperature=-1"], cwd=repo,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "pretrain.temperature" in proc.stdout + proc.stderr  # the params stage names the bad key
    left = yaml.safe_load((repo / "params/experiment.yaml").read_text())
    assert left["pretrain"]["temperature"] == -1  # what the README warns about
    _run(["git", "checkout", "params/experiment.yaml"], repo)
    assert (repo / "params/experiment.yaml").read_text() == committed
    readme = (ROOT / "README.md").read_text()
    assert "git checkout\n  params/experiment.yaml" in readme or "git checkout params/experiment.yaml" in readme


def test_changed_files_under_data_root_rerun_prepare_and_pretrain(repo):
    """DVC sees the files under data.root (issue 15, item 5) through the always-run fingerprint stage."""
    import numpy as np
    from PIL import Image

    dvc, root = need("dvc"), repo.parent / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(10):
            Image.fromarray(np.full((8, 8, 3), 20 * k + (c == "b") * 10, dtype=np.uint8)).save(root / c / f"{k}.png")
    exp = {"preset": "smoke", "data": {"dataset": "imagefolder", "root": str(root), "image_size": 8},
           "pretrain": {"batch_size": 8, "epochs": 1, "warmup_epochs": 0}, "eval": {"knn": {"k": 3}}}
    (repo / "params/experiment.yaml").write_text(yaml.safe_dump(exp))
    _run([dvc, "repro"], repo)
    _up_to_date(repo, dvc)
    Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(root / "a" / "0.png")
    out = _run([dvc, "repro"], repo).stdout
    assert "Running stage 'prepare'" in out and "Running stage 'pretrain'" in out, out
    fp = json.loads((repo / "results/experiment/data_fingerprint.json").read_text())["fingerprint"]
    assert json.loads((repo / "runs/experiment/train.json").read_text())["data_fingerprint"] == fp
