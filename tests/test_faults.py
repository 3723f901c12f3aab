"""Fault injection: kill -9 at random points and inside the checkpoint write, truncated checkpoints, a full
filesystem and two writers. Each must end in the same weights as an uninterrupted run, or in a clear error
with the old outputs intact. A tiny run (256 images, 4 steps x 4 epochs) keeps the suite around a minute."""

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simclr_ablations import checkpoint, cli, data, params, pretrain

pytestmark = pytest.mark.faults

TINY = ["data.synthetic.train_size=256", "data.synthetic.test_size=64", "pretrain.batch_size=64",
        "pretrain.epochs=4", "pretrain.warmup_epochs=1", "runtime.checkpoint_every=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(params, prepared data, weights of an uninterrupted run)."""
    root = tmp_path_factory.mktemp("tiny")
    p = params.load("smoke", settings=TINY)
    d = data.prepare(p, root / "data")
    pretrain.train(p, d, root / "ref", threads=1, log=lambda *_: None)
    return p, d, _weights(root / "ref")


def _weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cmd(d: Path, run: Path, *extra: str) -> list[str]:
    sets = [x for s in TINY + list(extra) for x in ("--set", s)]
    return [sys.executable, "-m", "simclr_ablations.cli", "pretrain", "--preset", "smoke", *sets, "--data", str(d),
            "--out", str(run), "--threads", "1"]


def _started(run: Path, proc: subprocess.Popen) -> None:
    """Wait until `proc` holds the run lock (imports done, training about to start) or has ended."""
    lock = run / ".lock"
    while proc.poll() is None and not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
        time.sleep(0.02)


def test_kill_9_anywhere_gives_the_uninterrupted_weights(tiny, tmp_path):
    _, d, ref = tiny
    run = tmp_path / "run"
    rng = random.Random(15)
    # every third start dies inside a checkpoint write: half the temp file written, or between the rotation
    # of checkpoint.pt to checkpoint.prev.pt and the rename of the new one; the others are killed at a random
    # moment of training. A run that completes is checked and started over until 20 kills have happened.
    faults = ["save:1:partial", "save:2:rotate", "save:1:rotate", "save:2:partial", "save:3:partial"]
    kills, starts, rounds, deadline = 0, 0, 0, time.time() + 400
    while kills < 20 or not (run / "model.pt").exists():
        assert time.time() < deadline, f"no progress after {kills} kills"
        if (run / "model.pt").exists():
            assert _same(_weights(run), ref), f"round {rounds} differs after {kills} kills"
            rounds += 1
            shutil.rmtree(run)
        starts += 1
        fault = faults[(starts // 3) % len(faults)] if starts % 3 == 0 and kills < 20 else ""
        env = dict(os.environ, SIMCLR_FAULT=fault)
        proc = subprocess.Popen(_cmd(d, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not fault and kills < 20:
            _started(run, proc)
            try:
                proc.wait(timeout=rng.uniform(0.0, 1.5))
            except subprocess.TimeoutExpired:
                proc.kill()
        _, err = proc.communicate()
        if proc.returncode == -9:
            kills += 1
        else:
            assert proc.returncode == 0, err
    print(f"{kills} kills in {starts} starts, {rounds + 1} complete runs")
    assert kills >= 20
    assert _same(_weights(run), ref)
    assert not list(run.glob(".*.tmp")) and not list(run.glob("*.corrupt-*"))


def test_truncated_checkpoint_is_moved_aside_and_the_previous_one_used(tiny, tmp_path):
    p, d, ref = tiny
    run = tmp_path / "run"
    pretrain.train(p, d, run, threads=1, log=lambda *_: None)
    (run / "model.pt").unlink()
    blob = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    lines = []
    pretrain.train(p, d, run, threads=1, log=lines.append)
    assert any("corrupt" in x and "moved" in x for x in lines), lines
    assert any("resuming" in x and "epoch 3 (of 4)" in x for x in lines), lines  # the previous one: 3 done
    assert _same(_weights(run), ref) and len(list(run.glob("checkpoint.pt.corrupt-*"))) == 1


def test_both_checkpoints_empty_restart_from_scratch(tiny, tmp_path):
    p, d, ref = tiny
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "checkpoint.prev.pt").write_bytes(b"\x00" * 100)
    lines = []
    pretrain.train(p, d, run, threads=1, log=lines.append)
    assert sum("moved" in x for x in lines) == 2 and not any("resuming" in x for x in lines)
    assert _same(_weights(run), ref)


def test_second_writer_is_refused_while_the_first_runs(tiny, tmp_path, capsys):
    _, d, _ = tiny
    run = tmp_path / "run"
    first = subprocess.Popen(_cmd(d, run, "pretrain.epochs=50"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not ((run / ".lock").exists() and (run / ".lock").read_text().strip()) and time.time() < deadline:
            time.sleep(0.05)
        code = cli.main([str(x) for x in _cmd(d, run)[3:]])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {first.pid}" in err and "another process" in err, err
    finally:
        first.kill()
        first.wait()
    # the kernel drops the lock of a killed writer: the next one is accepted
    with checkpoint.RunLock(run):
        pass


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_filesystem_is_a_clear_error_and_old_outputs_survive(tiny, tmp_path, capsys):
    p, d, _ = tiny
    fs = tmp_path / "fs"
    if not _mount_tmpfs(fs, "4m"):
        pytest.skip("needs root and a tmpfs mount to make a small full filesystem")
    try:
        old = fs / "old"
        pretrain.train(p, d, old, threads=1, log=lambda *_: None)
        before = {f.name: f.read_bytes() for f in old.iterdir() if f.is_file()}
        with open(fs / "filler", "wb") as f:  # fill the filesystem up
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for args in (["pretrain", "--preset", "smoke", *[x for s in TINY for x in ("--set", s)], "--set",
                      "seed=1", "--data", d, "--out", fs / "new", "--threads", 1],
                     ["prepare", "--preset", "smoke", *[x for s in TINY for x in ("--set", s)], "--out", fs / "d"]):
            code = cli.main([str(a) for a in args])
            err = capsys.readouterr().err.strip()
            assert code == 2 and "no space left" in err and len(err.splitlines()) <= 2, err
        assert before == {f.name: f.read_bytes() for f in old.iterdir() if f.is_file()}
        assert not [x for x in fs.rglob("*") if x.name.endswith(".tmp") or x.name.startswith(".d-")]
        assert not (fs / "new" / "model.pt").exists() and not (fs / "d").exists()
    finally:
        subprocess.run(["umount", str(fs)], check=False)


def test_writers_leave_no_temp_file_when_the_write_fails(tmp_path, monkeypatch):
    """params.yaml, history.csv, figures, tables and findings are written through params.atomic_path:
    when the final rename fails (here: a full disk), the error propagates, the old file is intact and
    no *.tmp is left behind (before: a fixed `<name>.tmp` stayed, and was shared by two writers)."""
    import errno

    import matplotlib.pyplot as plt

    from simclr_ablations import plots

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    writes = {"params.yaml": lambda path: params.dump({"a": 1}, path),
              "history.csv": lambda path: pretrain._write_history([{"epoch": 0, "loss": 1.0}], path),
              "curves.png": lambda path: plots.save(plt.figure(), path)}
    for name, write in writes.items():
        (tmp_path / name).write_text("old")
        monkeypatch.setattr(os, "replace", full)
        with pytest.raises(OSError, match="No space"):
            write(tmp_path / name)
        monkeypatch.undo()
        assert (tmp_path / name).read_text() == "old", name
        assert not [f.name for f in tmp_path.iterdir() if ".tmp" in f.name], name
    plt.close("all")
