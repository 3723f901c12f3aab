"""Params: one source of truth, validated once with messages that name the key."""

import subprocess
import sys

import pytest
import yaml

from simclr_ablations import params
from simclr_ablations.params import ParamsError


def test_default_and_presets_resolve():
    base = params.load()
    assert base["pretrain"]["batch_size"] == 4096 and base["pretrain"]["optimizer"] == "lars"
    for name in params.presets():
        p = params.load(name)
        assert set(p) == set(base)
    assert params.load("smoke")["pretrain"]["epochs"] < base["pretrain"]["epochs"]


@pytest.mark.parametrize(
    "setting, words",
    [
        ("pretrain.temprature=0.1", ["unknown key", "pretrain.temprature", "temperature"]),
        ("augment.ops=[crop, hue]", ["augment.ops", "'hue'", "crop, cutout, color"]),
        ("pretrain.loss=infonce", ["pretrain.loss", "infonce", "nt_xent, nt_logistic, margin_triplet"]),
        ("head.type=deep", ["head.type", "none, linear, mlp"]),
        ("pretrain.batch_size=1", ["pretrain.batch_size", "1", ">= 2"]),
        ("encoder.width=0", ["encoder.width", "> 0"]),
        ("encoder.width=-1", ["encoder.width", "> 0"]),
        ("pretrain.temperature=0", ["pretrain.temperature", "> 0"]),
        ("pretrain.epochs=ten", ["pretrain.epochs", "'ten'", "expected int"]),
        ("pretrain.batch_size=256.5", ["pretrain.batch_size", "expected int"]),
        ("pretrain.l2_normalize=1", ["pretrain.l2_normalize", "expected bool"]),
        ("encoder.depth=20", ["encoder.depth", "10, 18, 34, 50"]),
        ("eval.feature_layer=3", ["eval.feature_layer", "0 (h) to 2"]),
        ("data=5", ["'data' must be a mapping"]),
        ("augment.ops=[crop, crop]", ["only once"]),
    ],
)
def test_invalid_settings_name_key_value_and_allowed(setting, words):
    with pytest.raises(ParamsError) as err:
        params.load("smoke", settings=[setting])
    for w in words:
        assert w in str(err.value)


def test_int_accepted_for_float_and_converted():
    p = params.load(settings=["pretrain.temperature=1"])
    assert p["pretrain"]["temperature"] == 1.0 and isinstance(p["pretrain"]["temperature"], float)


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"preset": "smoke", "pretrain": {"temperature": 0.2, "epochs": 5}}))
    p = params.load(files=[f], settings=["pretrain.epochs=7"])
    assert p["pretrain"]["temperature"] == 0.2  # file over preset/default
    assert p["pretrain"]["epochs"] == 7  # setting over file
    assert p["encoder"]["width"] == params.load("smoke")["encoder"]["width"]  # preset taken from the file


def test_unknown_preset_lists_presets():
    with pytest.raises(ParamsError, match="allowed presets are .*smoke"):
        params.load("tiny")


def test_resolved_roundtrip_and_run_identity():
    p = params.load("smoke")
    assert params.from_resolved(p) == p
    same = lambda *s: params.pretrain_id(params.load("smoke", settings=list(s)))  # noqa: E731
    assert same() == same("runtime.progress=true") == same("augment.noise.std=0.3") == same("pretrain.margin=2")
    assert same("head.type=none") == same("head.type=none", "head.out_dim=7", "head.layers=3")
    assert same("method=supervised") == same("method=supervised", "pretrain.temperature=0.1", "head.out_dim=7")
    for changed in ("seed=1", "pretrain.temperature=0.2", "augment.color.strength=0.5", "head.out_dim=7",
                    "augment.ops=[crop, color]", "data.synthetic.train_size=100", "runtime.threads=2",
                    "runtime.amp=false", "runtime.cpu_amp=true"):
        assert same(changed) != same(), changed
    assert same("runtime.cpu_amp=false") == same()  # off: the id from before the key


def test_eval_settings_share_the_pretraining_but_not_the_evaluation():
    base = params.load("smoke")
    for setting in ("eval.knn.k=7", "eval.linear.epochs=3", "eval.feature_layer=1", "eval.semi.fractions=[0.1]"):
        q = params.load("smoke", settings=[setting])
        assert params.pretrain_id(q) == params.pretrain_id(base), setting
        assert params.eval_id(q) != params.eval_id(base), setting
    # semi-supervised settings count only when a label fraction is asked for; their augmentation always counts
    assert params.eval_id(params.load("smoke", settings=["eval.semi.lr=0.3"])) == params.eval_id(base)
    semi = ["eval.semi.fractions=[0.1]", "eval.semi.ops=[crop]"]
    assert params.eval_id(params.load("smoke", settings=semi)) != params.eval_id(
        params.load("smoke", settings=semi + ["augment.crop.scale_min=0.5", "augment.ops=[color]"]))
    # a changed pretraining changes every evaluation of it
    assert params.eval_id(params.load("smoke", settings=["seed=1"])) != params.eval_id(base)


def test_unknown_key_suggests_the_nearest_name():
    with pytest.raises(ParamsError, match="unknown key 'pretrain.temprature'. Did you mean 'pretrain.temperature'"):
        params.load("smoke", settings=["pretrain.temprature=0.2"])


def test_repeated_loads_parse_each_file_once():
    params._read_cached.cache_clear()
    for _ in range(20):
        params.load("cpu", settings=["seed=1"])
    info = params._read_cached.cache_info()
    assert info.misses == 2 and info.hits == 38  # default.yaml + the preset, each parsed once


def test_cli_refuses_bad_params_before_touching_data(tmp_path):
    out = tmp_path / "prepared"
    proc = subprocess.run(
        [sys.executable, "-m", "simclr_ablations.cli", "prepare", "--preset", "smoke", "--set",
         "augment.color.strength=-1", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "augment.color.strength" in proc.stderr and "-1" in proc.stderr and ">= 0" in proc.stderr
    assert not out.exists()
