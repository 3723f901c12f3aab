"""Load, merge and validate the params: the one source of truth for every hyperparameter.

A run's params are `params/default.yaml`, overridden by a preset (`params/presets/<name>.yaml`),
by an experiment file (which may name its preset with a top-level `preset:` key) and by
`key.path=value` settings, in that order. The result is validated once, before any data is
touched: the default file defines which keys exist and their types, RULES the allowed names and
ranges. Everything downstream receives the resolved, validated dict.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"

AUG_OPS = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")
DEPTHS = (10, 18, 34, 50, 101, 152)

# Allowed names (tuples) and ranges ((lo, hi, inclusive_lo)) for dotted keys.
CHOICES = {
    "method": ("simclr", "supervised", "moco", "byol", "simsiam", "wcl"),
    "moco.negatives": ("queue", "bank"),
    "data.dataset": ("synthetic", "cifar10", "cifar100", "stl10", "imagefolder"),
    "data.synthetic.kind": ("textures", "shapes"),
    "augment.branches": ("both", "one"),
    "encoder.depth": DEPTHS,
    "encoder.stem": ("auto", "cifar", "imagenet"),
    "head.type": ("none", "linear", "mlp"),
    "pretrain.loss": ("nt_xent", "nt_logistic", "margin_triplet"),
    "pretrain.optimizer": ("lars", "sgd", "adam"),
    "pretrain.lr_scaling": ("linear", "sqrt", "none"),
    "pretrain.schedule": ("cosine", "constant"),
    "runtime.device": ("auto", "cpu", "cuda"),
}
POSITIVE = ("> 0", lambda v: v > 0)
NONNEG = (">= 0", lambda v: v >= 0)
PROB = ("in [0, 1]", lambda v: 0 <= v <= 1)
AT_LEAST_1 = ("an integer >= 1", lambda v: v >= 1)
UNIT = ("in (0, 1]", lambda v: 0 < v <= 1)
RANGES = {
    "data.image_size": ("an integer >= 8", lambda v: v >= 8),
    "data.train_limit": NONNEG,
    "data.test_limit": NONNEG,
    "data.imagefolder_test_fraction": ("in (0, 1)", lambda v: 0 < v < 1),
    "data.synthetic.classes": ("in [2, 20]", lambda v: 2 <= v <= 20),
    "data.synthetic.train_size": POSITIVE,
    "data.synthetic.test_size": POSITIVE,
    "augment.base_crop_scale": UNIT,
    "augment.crop.scale_min": UNIT,
    "augment.crop.ratio_min": POSITIVE,
    "augment.crop.ratio_max": POSITIVE,
    "augment.crop.flip": PROB,
    "augment.cutout.p": PROB,
    "augment.cutout.size": UNIT,
    "augment.color.strength": NONNEG,
    "augment.color.p_jitter": PROB,
    "augment.color.p_gray": PROB,
    "augment.sobel.p": PROB,
    "augment.noise.p": PROB,
    "augment.noise.std": NONNEG,
    "augment.blur.p": PROB,
    "augment.blur.sigma_min": POSITIVE,
    "augment.blur.sigma_max": POSITIVE,
    "augment.blur.kernel_fraction": UNIT,
    "augment.rotate.p": PROB,
    "encoder.width": POSITIVE,
    "head.layers": AT_LEAST_1,
    "head.hidden_dim": NONNEG,
    "head.out_dim": AT_LEAST_1,
    "pretrain.temperature": POSITIVE,
    "pretrain.margin": NONNEG,
    "pretrain.batch_size": ("an integer >= 2", lambda v: v >= 2),
    "pretrain.epochs": ("an integer >= 0 (0: the untrained, initialised model)", lambda v: v >= 0),
    "pretrain.lr": POSITIVE,
    "pretrain.momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "pretrain.weight_decay": NONNEG,
    "pretrain.lars_eta": POSITIVE,
    "pretrain.warmup_epochs": NONNEG,
    "eval.feature_layer": NONNEG,
    "eval.linear.epochs": AT_LEAST_1,
    "eval.linear.batch_size": AT_LEAST_1,
    "eval.linear.lr": POSITIVE,
    "eval.linear.weight_decay": NONNEG,
    "eval.knn.k": AT_LEAST_1,
    "eval.knn.temperature": POSITIVE,
    "moco.queue_size": AT_LEAST_1,
    "moco.momentum": PROB,
    "moco.temperature": POSITIVE,
    "moco.bank_momentum": PROB,
    "byol.momentum": PROB,
    "byol.predictor_hidden": NONNEG,
    "simsiam.predictor_hidden": NONNEG,
    "wcl.lam": NONNEG,
    "wcl.beta": NONNEG,
    "wcl.gamma": NONNEG,
    "wcl.temperature": POSITIVE,
    "wcl.small_crops": NONNEG,
    "wcl.small_size": UNIT,
    "wcl.small_scale_min": UNIT,
    "wcl.small_scale_max": UNIT,
    "wcl.knn_k": AT_LEAST_1,
    "wcl.knn_warmup_epochs": NONNEG,
    "eval.semi.from_layer": NONNEG,
    "eval.semi.epochs": AT_LEAST_1,
    "eval.semi.min_steps": NONNEG,
    "eval.semi.batch_size": AT_LEAST_1,
    "eval.semi.lr": POSITIVE,
    "runtime.threads": NONNEG,
    "runtime.checkpoint_every": AT_LEAST_1,
}


class ParamsError(ValueError):
    """A params file or setting is invalid; the message names the key, value and what is allowed."""


def _read_yaml(path: Path) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def presets() -> list[str]:
    return sorted(p.stem for p in (PARAMS_DIR / "presets").glob("*.yaml"))


def _merge(base: dict, override: dict, schema: dict, source: str, prefix: str = "") -> None:
    """Merge override into base in place, refusing keys the schema (the defaults) lacks."""
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            raise ParamsError(f"{source}: unknown key '{path}'. Allowed here: {allowed}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ParamsError(f"{source}: '{path}' must be a mapping of {sorted(schema[key])}, got {value!r}")
            _merge(base[key], value, schema[key], source, path + ".")
        else:
            base[key] = value


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _validate(p: dict, schema: dict, prefix: str = "") -> None:
    for key, default in schema.items():
        path = f"{prefix}{key}"
        value = p[key]
        if isinstance(default, dict):
            _validate(value, default, path + ".")
            continue
        if not _type_ok(value, default):
            raise ParamsError(f"'{path}' = {value!r}: expected {type(default).__name__} (default {default!r})")
        if isinstance(default, float) and isinstance(value, int):
            p[key] = float(value)
        if path in CHOICES and value not in CHOICES[path]:
            raise ParamsError(f"'{path}' = {value!r}: allowed values are {', '.join(map(str, CHOICES[path]))}")
        if path in RANGES:
            desc, ok = RANGES[path]
            if not ok(value):
                raise ParamsError(f"'{path}' = {value!r}: must be {desc}")
    if prefix == "":
        _validate_cross(p)


def _check_ops(key: str, ops: list) -> None:
    for op in ops:
        if op not in AUG_OPS:
            raise ParamsError(f"'{key}' contains {op!r}: allowed ops are {', '.join(AUG_OPS)}")


def _validate_cross(p: dict) -> None:
    ops = p["augment"]["ops"]
    _check_ops("augment.ops", ops)
    if len(set(ops)) != len(ops):
        raise ParamsError(f"'augment.ops' = {ops}: an op may appear only once")
    _check_ops("eval.semi.ops", p["eval"]["semi"]["ops"])
    for f in p["eval"]["semi"]["fractions"]:
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
            raise ParamsError(f"'eval.semi.fractions' contains {f!r}: each fraction must be a number in (0, 1]")
    wcl = p["wcl"]
    if wcl["small_scale_min"] > wcl["small_scale_max"]:
        raise ParamsError(f"'wcl.small_scale_min' = {wcl['small_scale_min']} exceeds "
                          f"small_scale_max = {wcl['small_scale_max']}")
    if p["method"] in ("moco", "byol", "simsiam", "wcl") and p["head"]["type"] == "none":
        raise ParamsError(f"'head.type' = 'none': method {p['method']!r} needs a projection head (linear or mlp)")
    crop = p["augment"]["crop"]
    if crop["ratio_min"] > crop["ratio_max"]:
        raise ParamsError(f"'augment.crop.ratio_min' = {crop['ratio_min']} exceeds ratio_max = {crop['ratio_max']}")
    blur = p["augment"]["blur"]
    if blur["sigma_min"] > blur["sigma_max"]:
        raise ParamsError(f"'augment.blur.sigma_min' = {blur['sigma_min']} exceeds sigma_max = {blur['sigma_max']}")
    head = p["head"]
    if head["type"] == "mlp" and head["layers"] < 2:
        raise ParamsError(f"'head.layers' = {head['layers']}: an mlp head needs >= 2 layers "
                          "(use head.type=linear for 1)")
    depth = {"none": 0, "linear": 1, "mlp": head["layers"]}[head["type"]]
    if p["eval"]["semi"]["from_layer"] > max(depth - 1, 0):
        raise ParamsError(
            f"'eval.semi.from_layer' = {p['eval']['semi']['from_layer']}: the {head['type']} head allows 0 (h) "
            f"to {max(depth - 1, 0)} (fine-tuning needs a layer below g(h))"
        )
    if p["eval"]["feature_layer"] > depth:
        raise ParamsError(
            f"'eval.feature_layer' = {p['eval']['feature_layer']}: the {head['type']} head has {depth} layer(s); "
            f"allowed 0 (h) to {depth}"
        )
    if p["pretrain"]["warmup_epochs"] > p["pretrain"]["epochs"]:
        raise ParamsError(
            f"'pretrain.warmup_epochs' = {p['pretrain']['warmup_epochs']} exceeds "
            f"pretrain.epochs = {p['pretrain']['epochs']}"
        )


def parse_setting(text: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}, the value parsed as YAML."""
    if "=" not in text:
        raise ParamsError(f"setting {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load(preset: str | None = None, files: list[str | Path] = (), settings: list[str] = ()) -> dict:
    """Resolve params: default <- preset <- files <- settings, then validate."""
    schema = _read_yaml(PARAMS_DIR / "default.yaml")
    params = copy.deepcopy(schema)
    layers = []
    for f in files:
        data = _read_yaml(Path(f))
        if "preset" in data:
            named = data.pop("preset")
            if preset is None:
                preset = named
        layers.append((str(f), data))
    layers += [(f"setting {s!r}", parse_setting(s)) for s in settings]
    if preset:
        path = PARAMS_DIR / "presets" / f"{preset}.yaml"
        if not path.exists():
            raise ParamsError(f"'preset' = {preset!r}: allowed presets are {', '.join(presets())}")
        layers.insert(0, (str(path), _read_yaml(path)))
    for source, data in layers:
        _merge(params, data, schema, source)
    _validate(params, schema)
    return params


def from_resolved(data: dict) -> dict:
    """Validate an already-resolved params dict (e.g. one stored beside a run)."""
    schema = _read_yaml(PARAMS_DIR / "default.yaml")
    params = copy.deepcopy(schema)
    _merge(params, data, schema, "resolved params")
    _validate(params, schema)
    return params


def digest(obj) -> str:
    """A short stable hash of a (sub)dict, used to name runs and prepared datasets."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def data_params(p: dict) -> dict:
    """The part of the params that determines the prepared dataset."""
    return p["data"]


def dump(p: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(p, sort_keys=False))
    tmp.replace(path)
