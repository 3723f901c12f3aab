"""Pretraining end to end on the smoke preset: determinism, resume after a kill, NaN handling."""

import json
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from simclr_ablations import data, evaluate, losses, params, pretrain

from conftest import cli


def _weights(run):
    return torch.load(run / "model.pt", weights_only=False)["model"]


def test_pretrain_evaluate_and_determinism(smoke_data, tmp_path):
    p = params.load("smoke")
    a = pretrain.train(p, smoke_data, tmp_path / "a", threads=1, log=lambda *_: None)
    pretrain.train(p, smoke_data, tmp_path / "b", threads=1, log=lambda *_: None)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["final"]["loss"] > 0 and a["steps"] == 2 * (512 // 128)
    hist = pd.read_csv(tmp_path / "a" / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and {"loss", "contrastive_acc", "entropy", "lr"} <= set(hist)
    m = evaluate.evaluate(tmp_path / "a", smoke_data, threads=1)
    assert 0 <= m["linear_top1"] <= 100 and 0 <= m["knn_top1"] <= 100
    assert [row["layer"] for row in m["by_layer"]] == [0, 1, 2]
    assert m["eval_id"] == params.eval_id(p) and m["run_id"] == params.pretrain_id(p)
    assert "frozen" in evaluate.protocol(p)
    mb = evaluate.evaluate(tmp_path / "b", smoke_data, threads=1)
    same = lambda d: d | {"train_seconds": 0, "provenance": 0}  # noqa: E731
    assert same(m) == same(mb)  # wall time (and its record) is the only difference


def test_other_seed_differs(smoke_data, tmp_path):
    p = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0"])
    q = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0", "seed=1"])
    a = pretrain.train(p, smoke_data, tmp_path / "a", threads=1, log=lambda *_: None)
    b = pretrain.train(q, smoke_data, tmp_path / "b", threads=1, log=lambda *_: None)
    assert a["final"]["loss"] != b["final"]["loss"]


def test_resume_after_kill_gives_identical_results(smoke_data, tmp_path):
    settings = ["--set", "pretrain.epochs=4", "--set", "runtime.checkpoint_every=1"]
    cli("pretrain", "--preset", "smoke", *settings, "--data", smoke_data, "--out", tmp_path / "full", "--threads", 1)

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "simclr_ablations.cli", "pretrain", "--preset", "smoke", *settings,
           "--data", str(smoke_data), "--out", str(run), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    done = torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] + 1
    assert done < 4

    resumed = cli("pretrain", "--preset", "smoke", *settings, "--data", smoke_data, "--out", run, "--threads", 1)
    assert f"resuming from checkpoint {run / 'checkpoint.pt'} at epoch {done}" in resumed.stdout
    wa, wb = _weights(tmp_path / "full"), _weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha, hb = pd.read_csv(tmp_path / "full" / "history.csv"), pd.read_csv(run / "history.csv")
    assert ha["loss"].tolist() == hb["loss"].tolist()
    cli("evaluate", "--run", tmp_path / "full", "--data", smoke_data, "--out", tmp_path / "a", "--threads", 1)
    cli("evaluate", "--run", run, "--data", smoke_data, "--out", tmp_path / "b", "--threads", 1)
    ma, mb = (json.loads((tmp_path / f / "metrics.json").read_text()) for f in ("a", "b"))
    assert (ma["linear_top1"], ma["knn_top1"]) == (mb["linear_top1"], mb["knn_top1"])


def test_checkpoint_of_other_params_is_not_resumed(smoke_data, tmp_path):
    p = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0"])
    pretrain.train(p, smoke_data, tmp_path, threads=1, log=lambda *_: None)
    q = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0", "pretrain.temperature=0.2"])
    lines = []
    pretrain.train(q, smoke_data, tmp_path, threads=1, log=lines.append)
    assert any("ignoring checkpoint" in line for line in lines)


def test_data_change_is_noticed_by_resume_and_by_evaluate(smoke_data, tmp_path):
    """A run records the fingerprint of its data; a checkpoint trained on other data is not resumed and
    a model is not evaluated on other data (issue 15, item 5)."""
    p = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0"])
    run = tmp_path / "run"
    pretrain.train(p, smoke_data, run, threads=1, log=lambda *_: None)
    fp = data.load_meta(smoke_data)["fingerprint"]
    assert json.loads((run / "train.json").read_text())["data_fingerprint"] == fp
    other = tmp_path / "other"  # the same params, prepared from changed files
    shutil.copytree(smoke_data, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(dict(meta, fingerprint="0" * 16)))
    with pytest.raises(data.DataError, match="other data"):
        evaluate.evaluate(run, other, threads=1)
    lines = []
    pretrain.train(p, other, run, threads=1, log=lines.append)
    assert any("trained on other data" in line for line in lines), lines
    assert not any(line.startswith("resuming") for line in lines)
    assert json.loads((run / "train.json").read_text())["data_fingerprint"] == "0" * 16


def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_data, tmp_path, monkeypatch):
    p = params.load("smoke", settings=["pretrain.epochs=3"])
    calls = {"n": 0}
    real = losses.loss_fn(p)

    def poisoned(_p):
        def fn(z1, z2):
            calls["n"] += 1
            loss = real(z1, z2)
            return loss * float("nan") if calls["n"] > 4 else loss  # 4 steps = epoch 1
        return fn

    monkeypatch.setattr(losses, "loss_fn", poisoned)
    with pytest.raises(pretrain.TrainingDiverged, match="epoch 2, step 1.*Last good checkpoint"):
        pretrain.train(p, smoke_data, tmp_path, threads=1, log=lambda *_: None)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "model.pt").exists()


def test_supervised_baseline(smoke_data, tmp_path):
    p = params.load("smoke", settings=["method=supervised"])
    pretrain.train(p, smoke_data, tmp_path, threads=1, log=lambda *_: None)
    m = evaluate.evaluate(tmp_path, smoke_data, threads=1)
    assert 0 <= m["supervised_top1"] <= 100 and "contrastive_acc" not in m
    assert "train_acc" in pd.read_csv(tmp_path / "history.csv")


@pytest.mark.parametrize("setting", ["pretrain.loss=nt_logistic", "pretrain.loss=margin_triplet",
                                     "pretrain.optimizer=sgd", "pretrain.optimizer=adam", "head.type=none",
                                     "augment.branches=one", "encoder.depth=50"])
def test_variants_train(smoke_data, tmp_path, setting):
    p = params.load("smoke", settings=[setting, "pretrain.epochs=1", "pretrain.warmup_epochs=0"])
    s = pretrain.train(p, smoke_data, tmp_path, threads=1, log=lambda *_: None)
    assert s["final"]["loss"] == s["final"]["loss"]  # finite, not NaN


def test_cpu_amp_runs_the_convolutions_in_bf16_on_the_cpu(smoke_data, tmp_path, monkeypatch):
    """runtime.cpu_amp: bf16 autocast on the CPU (off by default: runtime.amp alone is CUDA's). Without
    native bf16 the run still trains and says that it will be slow."""
    seen = []

    def record(module, args, out):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            seen.append(out.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    logs = []
    monkeypatch.setattr(pretrain, "cpu_has_native_bf16", lambda: False)
    try:
        summary = {}
        for amp in (False, True):
            seen.clear()
            p = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0",
                                               f"runtime.cpu_amp={str(amp).lower()}"])
            summary[amp] = pretrain.train(p, smoke_data, tmp_path / str(amp), threads=1, log=logs.append)
            assert set(seen) == ({torch.bfloat16} if amp else {torch.float32}), (amp, set(seen))
            assert pretrain.uses_amp(p, torch.device("cpu")) is amp and pretrain.uses_amp(p, torch.device("cuda"))
    finally:
        hook.remove()
    assert summary[True]["final"]["loss"] == summary[True]["final"]["loss"]  # finite
    assert summary[True]["final"]["loss"] != summary[False]["final"]["loss"]
    assert sum("no native bf16" in str(line) for line in logs) == 1, logs


def test_narrowest_encoder_trains_on_cpu_despite_the_channels_last_bug(smoke_data, tmp_path):
    """At width x1/16 the downsample shortcut is Conv2d(4, 8, 1, stride 2), whose channels_last CPU backward
    crashes torch 2.14 (models.channels_last_breaks_on_cpu). In a subprocess: the failure is a segfault."""
    out = cli("pretrain", "--preset", "smoke", "--set", "encoder.depth=10", "--set", "encoder.width=0.0625",
              "--set", "runtime.channels_last=true", "--set", "pretrain.epochs=1", "--set", "pretrain.warmup_epochs=0",
              "--threads", "1", "--data", smoke_data, "--out", tmp_path / "run", check=False)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-2000:]
    assert "channels_last: off" in out.stdout + out.stderr


def test_effective_rank_and_spread_tell_collapse_from_spread():
    from simclr_ablations import diagnose

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(2000, 16, generator=g)
    line = torch.randn(2000, 1, generator=g) * torch.ones(1, 16)  # every feature on one line
    assert diagnose.effective_rank(spread) > 14 and diagnose.effective_rank(line) < 1.01
    assert abs(diagnose.std_normalized(spread) - 16 ** -0.5) < 0.02
    assert diagnose.std_normalized(torch.ones(100, 16) + 1e-3 * torch.randn(100, 16, generator=g)) < 0.01


def test_diagnose_cli_reports_rank_spread_and_loss_curve(smoke_data, tmp_path):
    pretrain.train(params.load("smoke"), smoke_data, tmp_path / "a", threads=1, log=lambda *_: None)
    out = cli("diagnose", "--run", str(tmp_path / "a"), "--data", str(smoke_data)).stdout
    d = json.loads(out.strip().splitlines()[-1])
    assert d["method"] == "simclr" and 1 <= d["h"]["effective_rank"] <= d["h"]["dim"]
    assert d["g"]["dim"] == params.load("smoke")["head"]["out_dim"] and d["loss_first_epoch"] > 0
    assert 0 < d["encoder_change"] < 10  # trained: moved from the init that the run's seed rebuilds


def test_encoder_change_is_zero_at_the_init_and_grows_with_the_step():
    from simclr_ablations import diagnose

    p = params.load("smoke")
    model = pretrain.build_model(p, 4)
    assert diagnose.encoder_change(model, p, 4) == 0
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1.1)
    assert abs(diagnose.encoder_change(model, p, 4) - 0.1) < 1e-5
    assert diagnose.encoder_change(model, {**p, "seed": p["seed"] + 1}, 4) > 1  # another seed: another init
