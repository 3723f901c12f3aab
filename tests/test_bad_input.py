"""Bad input, as a hostile new user would give it: every case ends with exit code 2, a one- or two-line
message naming the culprit, and nothing lost. The command line runs in-process (cli.main) to keep it cheap."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from simclr_ablations import checkpoint, cli, data, evaluate, params, pretrain

from conftest import cli as cli_process

QUICK = ["--set", "pretrain.epochs=1", "--set", "pretrain.warmup_epochs=0"]


def run_cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def refused(capsys, *args, names=()) -> str:
    """Assert exit code 2 and a short message naming every string of `names`."""
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert 1 <= len(err.splitlines()) <= 2 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


@pytest.fixture(scope="module")
def finished_run(smoke_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "r"
    p = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0"])
    pretrain.train(p, smoke_data, run, threads=1, log=lambda *_: None)
    return run


def _user_files(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "notes.md").write_text("notes")
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _intact(files: dict) -> bool:
    return all(p.exists() and p.read_bytes() == b for p, b in files.items())


# --- prepare never deletes what it did not create -----------------------------------------------------

def test_prepare_refuses_a_foreign_folder(capsys, tmp_path):
    files = _user_files(tmp_path / "mydata")
    refused(capsys, "prepare", "--preset", "smoke", "--out", tmp_path / "mydata", names=["mydata", "did not create"])
    assert _intact(files) and not list(tmp_path.glob(".mydata-*"))


def test_prepare_refuses_the_current_folder(capsys, tmp_path, monkeypatch):
    files = _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    refused(capsys, "prepare", "--preset", "smoke", "--out", ".", names=[str(tmp_path)])
    assert _intact(files)


def test_prepare_refuses_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("mine")
    refused(capsys, "prepare", "--preset", "smoke", "--out", tmp_path / "f", names=["not a folder"])
    assert (tmp_path / "f").read_text() == "mine"


def test_prepare_replaces_its_own_folder_and_honours_the_umask(tmp_path):
    p = params.load("smoke", settings=["data.synthetic.train_size=64", "data.synthetic.test_size=32"])
    old = os.umask(0o022)
    try:
        data.prepare(p, tmp_path / "d")
        data.prepare(p, tmp_path / "d")  # ours (marker): replaced
    finally:
        os.umask(old)
    assert (tmp_path / "d" / data.MARKER).exists()
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "train.pt").stat().st_mode & 0o777 == 0o644
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d"]  # no temp folders left


# --- no code runs from model.pt / checkpoint.pt ------------------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_evaluate_refuses_a_model_with_a_pickled_payload(capsys, finished_run, smoke_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    blob = torch.load(run / "model.pt", weights_only=True)
    torch.save(blob | {"payload": Payload(tmp_path / "pwned")}, run / "model.pt")
    refused(capsys, "evaluate", "--run", run, "--data", smoke_data, "--out", tmp_path / "m.json",
            names=["model.pt"])
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m.json").exists()


def test_resume_moves_a_checkpoint_with_a_payload_aside(smoke_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"run_id": "x", "payload": Payload(tmp_path / "pwned")}, run / "checkpoint.pt")
    lines = []
    p = params.load("smoke", settings=["pretrain.epochs=1", "pretrain.warmup_epochs=0"])
    pretrain.train(p, smoke_data, run, threads=1, log=lines.append)
    assert not (tmp_path / "pwned").exists()
    assert any("corrupt" in line for line in lines) and list(run.glob("checkpoint.pt.corrupt-*"))
    assert (run / "model.pt").exists()


def test_evaluate_refuses_an_empty_model(capsys, finished_run, smoke_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "model.pt").write_bytes(b"")
    refused(capsys, "evaluate", "--run", run, "--data", smoke_data, "--out", tmp_path / "m.json", names=["model.pt"])


def test_evaluate_refuses_weights_of_another_shape(capsys, finished_run, smoke_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    blob = torch.load(run / "model.pt", weights_only=True)
    key = next(k for k, v in blob["model"].items() if v.ndim == 4)
    blob["model"][key] = torch.zeros(1, 1, 1, 1)
    torch.save(blob, run / "model.pt")
    refused(capsys, "evaluate", "--run", run, "--data", smoke_data, "--out", tmp_path / "m.json",
            names=["model.pt", "does not fit"])


# --- divergence and NaN ------------------------------------------------------------------------------

def test_divergence_in_the_last_update_is_caught(capsys, smoke_data, tmp_path):
    # one step per epoch, one epoch: only the very last update can diverge
    refused(capsys, "pretrain", "--preset", "smoke", *QUICK, "--set", "pretrain.batch_size=512",
            "--set", "pretrain.lr=1e30", "--data", smoke_data, "--out", tmp_path / "r", "--threads", 1,
            names=["NaN or inf", "epoch 1"])
    assert not (tmp_path / "r" / "model.pt").exists() and not (tmp_path / "r" / "checkpoint.pt").exists()


def test_evaluate_refuses_nan_weights(capsys, finished_run, smoke_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    blob = torch.load(run / "model.pt", weights_only=True)
    key = next(k for k, v in blob["model"].items() if v.is_floating_point())
    blob["model"][key] = blob["model"][key] * float("nan")
    torch.save(blob, run / "model.pt")
    refused(capsys, "evaluate", "--run", run, "--data", smoke_data, "--out", tmp_path / "m.json",
            names=["NaN or inf", key])
    assert not (tmp_path / "m.json").exists()


def test_evaluate_refuses_nan_features(finished_run, smoke_data, monkeypatch):
    monkeypatch.setattr(evaluate, "extract", lambda model, x, *a, **k: [torch.full((x.shape[0], 4), float("nan"))])
    with pytest.raises(checkpoint.NotFinite, match="features"):
        evaluate.evaluate(finished_run, smoke_data, threads=1)


# --- prepared data must match the params -------------------------------------------------------------

def test_pretrain_refuses_data_prepared_with_other_params(capsys, smoke_data, tmp_path):
    refused(capsys, "pretrain", "--preset", "smoke", *QUICK, "--set", "data.image_size=96", "--data", smoke_data,
            "--out", tmp_path / "r", names=["data.image_size", "96"])
    refused(capsys, "pretrain", "--preset", "smoke", *QUICK, "--set", "data.dataset=cifar10", "--data", smoke_data,
            "--out", tmp_path / "r", names=["data.dataset", "cifar10"])
    assert not (tmp_path / "r" / "model.pt").exists()


def test_evaluate_refuses_data_prepared_with_other_params(capsys, finished_run, tmp_path):
    other = data.prepare(params.load("smoke", settings=["data.synthetic.train_size=64"]), tmp_path / "other")
    refused(capsys, "evaluate", "--run", finished_run, "--data", other, "--out", tmp_path / "m.json",
            names=["data.synthetic"])


def test_data_that_is_not_prepared(capsys, tmp_path):
    refused(capsys, "pretrain", "--preset", "smoke", "--data", tmp_path / "nowhere", "--out", tmp_path / "r",
            names=["nowhere", "prepare"])


# --- two writers -------------------------------------------------------------------------------------

def test_second_writer_is_refused(capsys, smoke_data, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not yet")
    with checkpoint.RunLock(run):  # the first writer
        refused(capsys, "pretrain", "--preset", "smoke", *QUICK, "--data", smoke_data, "--out", run,
                names=[str(run), "another process", str(os.getpid())])
    assert (run / "checkpoint.pt").read_bytes() == b"not yet"


# --- params ------------------------------------------------------------------------------------------

def test_exponent_without_a_dot_is_a_float():
    assert params.load("smoke", settings=["pretrain.weight_decay=1e-6"])["pretrain"]["weight_decay"] == 1e-6


@pytest.mark.parametrize("setting, names", [
    ("pretrain.lr=.inf", ["pretrain.lr", "finite"]),
    ("pretrain.temperature=-.inf", ["pretrain.temperature", "finite"]),
    ("augment.color.strength=.nan", ["augment.color.strength", "finite"]),
    ("head.out_dim=1000000000", ["head.out_dim", "65536"]),
    ("seed=99999999999", ["seed", "2147483647"]),
    ("data.image_size=100000", ["data.image_size", "1024"]),
    ("data.synthetic.train_size=1000000000", ["data.synthetic.train_size"]),
    ("pretrain.epochs=5 #ten", ["pretrain.epochs", "5 #ten"]),
    ("=3", ["non-empty key"]),
])
def test_bad_settings(capsys, setting, names):
    refused(capsys, "params", "--preset", "smoke", "--set", setting, names=names)


def test_hash_in_a_value_is_not_a_comment():
    assert params.load("smoke", settings=["data.root=my #dir"])["data"]["root"] == "my #dir"


@pytest.mark.parametrize("preset", ["", "../default", "presets/smoke", "/etc/passwd"])
def test_bad_preset_names(capsys, preset):
    refused(capsys, "params", "--preset", preset, names=["preset", "allowed presets are"])


def test_duplicate_yaml_key(capsys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("pretrain:\n  lr: 0.1\n  lr: 0.2\n")
    refused(capsys, "params", "--preset", "smoke", "--params", f, names=[str(f), "duplicate key 'lr'", "line 3"])


def test_non_finite_in_a_file(capsys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("pretrain: {lr: .inf}\n")
    refused(capsys, "params", "--params", f, names=[str(f), "pretrain.lr", "finite"])


def test_broken_yaml_and_missing_file(capsys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("pretrain: [lr: \n")
    refused(capsys, "params", "--params", f, names=[str(f), "not valid YAML"])
    refused(capsys, "params", "--params", tmp_path / "none.yaml", names=["none.yaml"])


# --- tracebacks only for bugs ------------------------------------------------------------------------

def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(data.DataError):
        cli.main(["--debug", "pretrain", "--preset", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r")])


def test_user_error_in_a_fresh_process_is_one_line(tmp_path):
    proc = cli_process("evaluate", "--run", tmp_path, "--data", tmp_path, "--out", tmp_path / "m.json", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and str(tmp_path) in proc.stderr


def test_all_cores_on_the_cpu_is_refused(smoke_data, tmp_path):
    """runtime.threads = 0 would let a CPU result depend on the machine under one run id (item 4)."""
    proc = cli_process("pretrain", "--preset", "smoke", "--set", "runtime.threads=0", "--set", "runtime.device=cpu",
                       "--data", smoke_data, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "runtime.threads" in proc.stderr and "--threads" in proc.stderr
    assert not (tmp_path / "r" / "model.pt").exists()
