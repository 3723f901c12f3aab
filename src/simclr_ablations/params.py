"""Load, merge and validate the params: the one source of truth for every hyperparameter.

A run's params are `params/default.yaml`, overridden by a preset (`params/presets/<name>.yaml`),
by an experiment file (which may name its preset with a top-level `preset:` key) and by
`key.path=value` settings, in that order. The result is validated once, before any data is
touched: the default file defines which keys exist and their types, RULES the allowed names and
ranges. Everything downstream receives the resolved, validated dict.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import math
import os
import pickle
import re
from pathlib import Path

import yaml


def _resource(checkout: str, packaged: str, probe: str) -> Path:
    """A data folder of the source checkout (editable install, Snakemake, DVC), else the copy that a
    regular `pip install .` ships inside the package (pyproject.toml, package-data)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / checkout, here / "resources" / packaged):
        if (candidate / probe).is_file():
            return candidate
    raise FileNotFoundError(f"{checkout}/{probe} is neither in the source checkout nor in the package at {here}")


PARAMS_DIR = _resource("params", "params", "default.yaml")
PAPER_DIR = _resource("workflow/resources/paper", "paper", "SOURCE.md")  # the paper's reference tables

METHOD_BLOCKS = ("moco", "byol", "simsiam", "wcl")  # the params blocks of the related methods
AUG_OPS = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")
DEPTHS = (10, 18, 34, 50, 101, 152)

# Allowed names (tuples) and ranges ((lo, hi, inclusive_lo)) for dotted keys.
CHOICES = {
    "method": ("simclr", "supervised", "moco", "byol", "simsiam", "wcl"),
    "moco.negatives": ("queue", "bank"),
    "data.dataset": ("synthetic", "cifar10", "cifar100", "stl10", "imagefolder"),
    "data.synthetic.kind": ("textures", "shapes"),
    "data.synthetic.bands": (1, 2),
    "augment.branches": ("both", "one"),
    "encoder.depth": DEPTHS,
    "encoder.stem": ("auto", "cifar", "imagenet"),
    "head.type": ("none", "linear", "mlp"),
    "pretrain.loss": ("nt_xent", "nt_logistic", "margin_triplet"),
    "pretrain.negatives": ("both", "one"),
    "pretrain.optimizer": ("lars", "sgd", "adam"),
    "pretrain.lr_scaling": ("linear", "sqrt", "none"),
    "pretrain.schedule": ("cosine", "constant"),
    "runtime.device": ("auto", "cpu", "cuda"),
    "data.storage": ("memory", "stream", "auto"),
    "moco.recipe.optimizer": ("lars", "sgd", "adam"),
    "moco.recipe.lr_scaling": ("linear", "sqrt", "none"),
    "moco.recipe.schedule": ("cosine", "constant"),
    "byol.recipe.optimizer": ("lars", "sgd", "adam"),
    "byol.recipe.lr_scaling": ("linear", "sqrt", "none"),
    "byol.recipe.schedule": ("cosine", "constant"),
    "simsiam.recipe.optimizer": ("lars", "sgd", "adam"),
    "simsiam.recipe.lr_scaling": ("linear", "sqrt", "none"),
    "simsiam.recipe.schedule": ("cosine", "constant"),
    "wcl.recipe.optimizer": ("lars", "sgd", "adam"),
    "wcl.recipe.lr_scaling": ("linear", "sqrt", "none"),
    "wcl.recipe.schedule": ("cosine", "constant"),
}
POSITIVE = ("> 0", lambda v: v > 0)
NONNEG = (">= 0", lambda v: v >= 0)
PROB = ("in [0, 1]", lambda v: 0 <= v <= 1)
AT_LEAST_1 = ("an integer >= 1", lambda v: v >= 1)
UNIT = ("in (0, 1]", lambda v: 0 < v <= 1)


def _between(lo: int, hi: int):
    """An integer range rule with an upper bound where memory or time would explode."""
    return (f"an integer >= {lo} and <= {hi}", lambda v: lo <= v <= hi)


MILLION = 1_000_000
RANGES = {
    "seed": _between(0, 2**31 - 1),
    "data.image_size": _between(8, 1024),
    "data.train_limit": _between(0, 100 * MILLION),
    "data.test_limit": _between(0, 100 * MILLION),
    "data.imagefolder_test_fraction": ("in (0, 1)", lambda v: 0 < v < 1),
    "data.synthetic.classes": ("in [2, 24]", lambda v: 2 <= v <= 24),
    "data.synthetic.train_size": _between(1, 10 * MILLION),
    "data.synthetic.test_size": _between(1, 10 * MILLION),
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
    "encoder.width": ("> 0 and <= 16", lambda v: 0 < v <= 16),
    "head.layers": _between(1, 16),
    "head.hidden_dim": _between(0, 65536),
    "head.out_dim": _between(1, 65536),
    "pretrain.temperature": POSITIVE,
    "pretrain.margin": NONNEG,
    "pretrain.batch_size": _between(2, 65536),
    "pretrain.epochs": ("an integer >= 0 and <= 100000 (0: the untrained, initialised model)",
                        lambda v: 0 <= v <= 100_000),
    "pretrain.lr": POSITIVE,
    "pretrain.momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "pretrain.weight_decay": NONNEG,
    "pretrain.lars_eta": POSITIVE,
    "pretrain.warmup_epochs": _between(0, 100_000),
    "eval.feature_layer": _between(0, 16),
    "eval.linear.epochs": _between(1, 100_000),
    "eval.linear.batch_size": _between(1, MILLION),
    "eval.linear.lr": POSITIVE,
    "eval.linear.weight_decay": NONNEG,
    "eval.knn.k": _between(1, 100_000),
    "eval.knn.temperature": POSITIVE,
    "moco.queue_size": _between(1, 10 * MILLION),
    "moco.momentum": PROB,
    "moco.temperature": POSITIVE,
    "moco.bank_momentum": PROB,
    "byol.momentum": PROB,
    "byol.predictor_hidden": _between(0, 65536),
    "simsiam.predictor_hidden": _between(0, 65536),
    "wcl.lam": NONNEG,
    "wcl.beta": NONNEG,
    "wcl.gamma": NONNEG,
    "wcl.temperature": POSITIVE,
    "wcl.small_crops": _between(0, 16),
    "wcl.small_size": UNIT,
    "wcl.small_scale_min": UNIT,
    "wcl.small_scale_max": UNIT,
    "wcl.knn_k": _between(1, 1000),
    "wcl.knn_warmup_epochs": _between(0, 100_000),
    "eval.semi.from_layer": _between(0, 16),
    "eval.semi.epochs": _between(1, 100_000),
    "eval.semi.min_steps": _between(0, 10 * MILLION),
    "eval.semi.batch_size": _between(1, 65536),
    "eval.semi.lr": POSITIVE,
    "runtime.threads": _between(0, 1024),
    "runtime.checkpoint_every": _between(1, 100_000),
    "runtime.gpus": _between(1, 1024),
    "runtime.nodes": _between(1, 4096),
    "data.memory_budget_gb": NONNEG,
    "runtime.workers": _between(0, 256),
    "runtime.prefetch": _between(1, 64),
}


# The same rules for every method's optimiser recipe (<method>.recipe in default.yaml).
RECIPE_RULES = {"lr": POSITIVE, "lr_factor": POSITIVE, "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
                "weight_decay": NONNEG, "lars_eta": POSITIVE,
                "warmup_fraction": ("in [0, 1)", lambda v: 0 <= v < 1)}
RANGES.update({f"{m}.recipe.{k}": rule for m in METHOD_BLOCKS for k, rule in RECIPE_RULES.items()})


class ParamsError(ValueError):
    """A params file or setting is invalid; the message names the key, value and what is allowed."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when PyYAML has it (10x faster)
    """Safe YAML with YAML 1.2 numbers (1e-6 is a float) and duplicate keys refused."""


_FLOAT_12 = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ParamsError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); "
                              "each key may appear once per mapping")
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _finite(node, source: str, prefix: str = "") -> None:
    """Refuse NaN and +-inf anywhere in the values."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        path = f"{prefix}{k}" if isinstance(node, dict) else f"{prefix[:-1]}[{k}]"
        if isinstance(v, float) and not math.isfinite(v):
            raise ParamsError(f"{source}: '{path}' = {v}: values must be finite numbers")
        _finite(v, source, path + ".")


def _yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{source}: not valid YAML ({' '.join(str(err).split())[:200]})") from None


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ParamsError(f"params file {path}: {err.strerror}") from None
    data = _yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    _finite(data, str(path))
    return data


@functools.cache
def _read_cached(path: str, mtime_ns: int, size: int) -> dict:
    return _read_yaml(Path(path))


def _copy(obj):
    """A deep copy of plain data (dicts, lists, scalars), much faster than copy.deepcopy."""
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def read_yaml(path: Path) -> dict:
    """A params file, parsed once per process (and again only if it changes on disk)."""
    st = Path(path).stat()
    return _copy(_read_cached(str(path), st.st_mtime_ns, st.st_size))


def presets() -> list[str]:
    return sorted(p.stem for p in (PARAMS_DIR / "presets").glob("*.yaml"))


def _merge(base: dict, override: dict, schema: dict, source: str, prefix: str = "") -> None:
    """Merge override into base in place, refusing keys the schema (the defaults) lacks."""
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            near = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" Did you mean '{prefix}{near[0]}'?" if near else ""
            raise ParamsError(f"{source}: unknown key '{path}'.{hint} Allowed here: {allowed}")
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
    syn = p["data"]["synthetic"]
    if syn["kind"] == "shapes" and syn["bands"] != 1:
        raise ParamsError(f"'data.synthetic.bands' = {syn['bands']}: the shapes dataset has one band (use 1)")
    if syn["kind"] == "shapes" and syn["classes"] > 20:
        raise ParamsError(f"'data.synthetic.classes' = {syn['classes']}: the shapes dataset has 2 to 20 classes")
    if syn["kind"] == "textures" and syn["classes"] > 12 * syn["bands"]:
        raise ParamsError(f"'data.synthetic.classes' = {syn['classes']}: the textures dataset has 2 to "
                          f"{12 * syn['bands']} classes with bands = {syn['bands']}")
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
    world = p["runtime"]["gpus"] * p["runtime"]["nodes"]
    if p["pretrain"]["batch_size"] % world:
        raise ParamsError(f"'pretrain.batch_size' = {p['pretrain']['batch_size']} is not divisible by the world size "
                          f"runtime.gpus x runtime.nodes = {world}: every process takes an equal share")
    d = p["data"]
    if d["storage"] == "stream" and d["dataset"] != "imagefolder":
        raise ParamsError(f"'data.storage' = 'stream': only data.dataset = imagefolder streams (got {d['dataset']!r}; "
                          "use memory or auto)")
    if d["storage"] == "stream" and p["method"] == "wcl":
        raise ParamsError("'data.storage' = 'stream': method wcl reads its neighbours' images at random (KNN "
                          "multi-crop); use memory")
    if d["storage"] == "stream" and "crop" in ops and ops[0] != "crop":
        raise ParamsError(f"'data.storage' = 'stream' crops at decode time: 'augment.ops' = {ops} must start with "
                          "crop (or leave it out)")
    if p["moco"]["shuffle_bn"] and p["runtime"]["sync_bn"]:
        raise ParamsError("'moco.shuffle_bn' = true needs runtime.sync_bn = false (with global BN statistics "
                          "a shuffle across GPUs changes nothing)")
    if p["pretrain"]["warmup_epochs"] > p["pretrain"]["epochs"]:
        raise ParamsError(
            f"'pretrain.warmup_epochs' = {p['pretrain']['warmup_epochs']} exceeds "
            f"pretrain.epochs = {p['pretrain']['epochs']}"
        )


def parse_setting(text: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}, the value parsed as YAML 1.2.

    A plain value holding ' #' is taken whole as a string (the shell passed it; it is no comment)."""
    source = f"setting {text!r}"
    if "=" not in text:
        raise ParamsError(f"{source}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ParamsError(f"{source}: expected key.path=value with a non-empty key")
    if raw == "":
        value = ""
    elif re.search(r"\s#", raw) and not raw.lstrip().startswith(("'", '"', "[", "{")):
        value = raw.strip()
    else:
        value = _yaml(raw, source)
    out: dict = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    _finite(out, source)
    return out


@functools.cache
def _parsed_setting(text: str) -> dict:
    return parse_setting(text)


def load(preset: str | None = None, files: list[str | Path] = (), settings: list[str] = ()) -> dict:
    """Resolve params: default <- preset <- files <- settings, then validate."""
    schema = read_yaml(PARAMS_DIR / "default.yaml")
    params = _copy(schema)
    layers = []
    for f in files:
        data = read_yaml(Path(f))
        if "preset" in data:
            named = data.pop("preset")
            if preset is None:
                preset = named
        layers.append((str(f), data))
    layers += [(f"setting {s!r}", _copy(_parsed_setting(s))) for s in settings]
    if preset is not None:
        path = PARAMS_DIR / "presets" / f"{preset}.yaml"
        if not isinstance(preset, str) or preset not in presets():
            raise ParamsError(f"'preset' = {preset!r}: allowed presets are {', '.join(presets())}")
        layers.insert(0, (str(path), read_yaml(path)))
    for source, data in layers:
        _merge(params, data, schema, source)
    _validate(params, schema)
    return params


def from_resolved(data: dict) -> dict:
    """Validate an already-resolved params dict (e.g. one stored beside a run)."""
    schema = read_yaml(PARAMS_DIR / "default.yaml")
    params = _copy(schema)
    _merge(params, data, schema, "resolved params")
    _validate(params, schema)
    return params


def digest(obj) -> str:
    """A short stable hash of a (sub)dict, used to name runs and prepared datasets."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


STORAGE_DEFAULTS = {"storage": "memory", "memory_budget_gb": 16.0}  # as in params/default.yaml


def data_params(p: dict) -> dict:
    """The part of the params that determines the prepared dataset. data.storage and memory_budget_gb
    are left out where they change nothing or have their default value (every dataset but imagefolder
    is held in memory; the budget matters only to auto), so prepared data and runs keep the names
    they had before streaming: only an image folder with storage stream or auto is named by them."""
    d = p["data"]
    drop = set(STORAGE_DEFAULTS)
    if d["dataset"] == "imagefolder" and d["storage"] != STORAGE_DEFAULTS["storage"]:
        drop = set() if d["storage"] == "auto" else {"memory_budget_gb"}
    d = {k: v for k, v in d.items() if k not in drop}
    d["synthetic"] = synthetic_identity(d["synthetic"])
    return d


def synthetic_identity(s: dict) -> dict:
    """data.synthetic as it names data: bands 1 is left out (the data, and so the names and fingerprints,
    from before the key existed)."""
    return {k: v for k, v in s.items() if not (k == "bands" and v == 1)}


# Run identities. A pretraining is named by everything that can change its trained weights; an
# evaluation by its pretraining plus the evaluation settings, so runs that differ only in how they
# are evaluated share one pretraining (in the Snakemake grid and under `dvc exp run`).
# runtime keys that change the numbers: CPU kernels reduce in a thread-count-dependent order, and
# bf16 autocast changes CUDA results (and CPU results with cpu_amp, which enters only when true, so
# that the ids from before the key stay). device, progress, compile, channels_last and checkpoint_every
# do not enter the identity (the device is recorded in every result's provenance). With more than one
# process the world size and sync_bn enter it too (per-GPU BN is another model; the reduction order
# differs), so a single-process run keeps the id it had before data parallelism.
RUNTIME_IDENTITY = ("threads", "amp")


def world_size(p: dict) -> int:
    """Data-parallel processes of the run: runtime.gpus x runtime.nodes."""
    return p["runtime"]["gpus"] * p["runtime"]["nodes"]


def pretrain_params(p: dict) -> dict:
    """The params that can change a pretraining's weights. Left out: evaluation, runtime keys outside
    RUNTIME_IDENTITY, and keys the configuration does not read (the head's size when there is no
    head, the loss of the supervised baseline, the settings of augmentations and methods not in use)."""
    q = _copy({k: v for k, v in p.items() if k not in ("runtime", "eval")})
    q["data"] = _copy(data_params(p))
    q["runtime"] = {k: p["runtime"][k] for k in RUNTIME_IDENTITY}
    if p["runtime"]["cpu_amp"]:
        q["runtime"]["cpu_amp"] = True
    if world_size(p) > 1:
        q["runtime"].update(world=world_size(p), sync_bn=p["runtime"]["sync_bn"])
    else:
        del q["moco"]["shuffle_bn"]
    head, t, aug = q["head"], q["pretrain"], q["augment"]
    if not has_output_bn(head):
        del head["output_bn"]  # no output BN: the id it had before the key existed
    if head["type"] == "none":
        q["head"] = {"type": "none"}
    elif head["type"] == "linear":
        q["head"] = {k: head[k] for k in ("type", "out_dim", "output_bn") if k in head}
    for name in METHOD_BLOCKS:
        if q["method"] != name:
            del q[name]
        elif not q[name]["per_view_forward"]:
            del q[name]["per_view_forward"]  # both views in one pass: the id it had before the key existed
    if q["method"] in METHOD_BLOCKS:  # its own recipe replaces pretrain's optimiser keys (optim.recipe)
        own = set(q[q["method"]]["recipe"]) | ({"warmup_epochs"} if "warmup_fraction" in q[q["method"]]["recipe"]
                                               else set())
        for key in own & set(t):
            del t[key]
    if q["method"] == "supervised":
        del q["head"]
        for key in ("loss", "temperature", "l2_normalize", "margin", "semi_hard"):
            del t[key]
    else:
        for key in unused_loss_keys(t):
            del t[key]
    used = set(aug["ops"]) | ({"crop"} if aug["branches"] == "one" else set())
    for op in AUG_OPS:
        if op not in used:
            del aug[op]
    if aug["branches"] == "both":
        del aug["base_crop_scale"]
    return q


def has_output_bn(head: dict) -> bool:
    """Whether the head ends in the official shift-free BN: `head.output_bn` on a linear head, or on an
    MLP whose layers have BN (`head.batch_norm`); never without a head."""
    return head["type"] != "none" and head["output_bn"] and (head["type"] == "linear" or head["batch_norm"])


def unused_loss_keys(t: dict) -> list[str]:
    """The `pretrain` loss keys the configured loss does not read (left out of a run's identity):
    margin is the margin loss's margin and the semi-hard window of NT-Logistic; NT-Xent mines nothing."""
    if t["loss"] == "nt_xent":
        return ["margin", "semi_hard"]
    if t["loss"] == "nt_logistic" and not t["semi_hard"]:
        return ["margin"]
    return []


def eval_params(p: dict) -> dict:
    """The evaluation settings that can change an evaluation's numbers (given its pretraining)."""
    e = _copy(p["eval"])
    if p["method"] == "supervised":
        del e["feature_layer"]
    if e["semi"]["fractions"]:
        e["semi"]["augment"] = {op: p["augment"][op] for op in e["semi"]["ops"]}
    else:
        del e["semi"]
    return e


def pretrain_id(p: dict) -> str:
    """Name of the pretraining p describes: runs/<...>/<pretrain_id>/model.pt."""
    return digest(pretrain_params(p))


def eval_id(p: dict) -> str:
    """Name of the evaluation p describes: its pretraining plus its evaluation settings."""
    return digest({"pretrain": pretrain_id(p), "eval": eval_params(p)})


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a per-process temp name beside `path` to write; rename it to `path` when the block ends
    normally, delete it when anything fails (a full disk, a bug, Ctrl-C): complete files or none,
    and no temp file left behind. torch-free, for every writer but checkpoints (checkpoint.py)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def dump(p: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(p, sort_keys=False))
