"""Datasets by name, prepared once into uint8 tensors under data/.

`synthetic` is the embedded default: generated from a seed, no download, 32x32 RGB. It is built
so that the paper's colour shortcut (Section 3.2, Fig. 6) exists: the class is decided by the
*shape or texture* (stripes at four angles, checkerboard, rings, disk, square, cross, dots,
triangle, annulus), while every image is painted in its own random foreground/background colours
and tint, shared by all its crops. Two crops of one image therefore have near-identical colour
histograms, so without colour distortion the contrastive task is solvable from colour alone and
the encoder need not learn the shape that linear evaluation asks for.

Real datasets (cifar10, cifar100, stl10, imagefolder) are read by datasets.py in their own
on-disk formats. `prepare` writes train.pt / test.pt (images N x 3 x H x W uint8, labels int64)
and meta.json (classes, channel mean/std, the params that made it) atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import checkpoint, params
from . import fingerprint as _fingerprint

SHAPES = ("h_stripes", "v_stripes", "diag_stripes", "antidiag_stripes", "checker", "rings", "disk", "square",
          "cross", "dots", "triangle", "annulus", "x_cross", "wavy", "grid", "half_plane", "spiral", "diamond",
          "two_disks", "bars")


def _structure(kind: str, xs, ys, g: torch.Generator):
    """Soft [0, 1] map of one shape class for n images at coordinates xs, ys (n x S x S, in [-1, 1])."""
    n = xs.shape[0]

    def u(lo, hi):
        return (torch.rand(n, 1, 1, generator=g) * (hi - lo) + lo)

    theta = u(-0.2, 0.2)
    cx, cy = u(-0.35, 0.35), u(-0.35, 0.35)
    dx, dy = xs - cx, ys - cy
    xr = dx * torch.cos(theta) - dy * torch.sin(theta)
    yr = dx * torch.sin(theta) + dy * torch.cos(theta)
    freq, phase = u(1.5, 3.5), u(0, 2 * math.pi)
    rad = torch.sqrt(dx**2 + dy**2)
    size = u(0.35, 0.65)
    wave = lambda t: torch.sin(2 * math.pi * freq * t / 2 + phase)  # noqa: E731  (freq = cycles per image)
    edge = 0.06  # about one pixel at 32 px: soft edges keep shapes visible after resizing
    fields = {
        "h_stripes": lambda: wave(yr),
        "v_stripes": lambda: wave(xr),
        "diag_stripes": lambda: wave((xr + yr) / math.sqrt(2)),
        "antidiag_stripes": lambda: wave((xr - yr) / math.sqrt(2)),
        "checker": lambda: wave(xr) * torch.sin(2 * math.pi * freq * yr / 2 + phase),
        "rings": lambda: wave(rad),
        "disk": lambda: (size - rad) / edge,
        "square": lambda: (size * 0.85 - torch.maximum(xr.abs(), yr.abs())) / edge,
        "cross": lambda: (size * 0.3 - torch.minimum(xr.abs(), yr.abs())) / edge,
        "dots": lambda: (torch.cos(2 * math.pi * freq * xr / 2) + torch.cos(2 * math.pi * freq * yr / 2) - 1) * 2,
        "triangle": lambda: torch.minimum(torch.minimum(yr + size * 0.5, (size - yr - 1.7 * xr) / 2),
                                          (size - yr + 1.7 * xr) / 2) / edge,
        "annulus": lambda: (size * 0.25 - (rad - size).abs()) / edge,
        "x_cross": lambda: (size * 0.25 - torch.minimum((xr + yr).abs(), (xr - yr).abs()) / math.sqrt(2)) / edge,
        "wavy": lambda: wave(yr + 0.15 * torch.sin(2 * math.pi * 2 * xr)),
        "grid": lambda: (torch.cos(2 * math.pi * freq * xr / 2).abs().maximum(
            torch.cos(2 * math.pi * freq * yr / 2).abs()) - 0.9) * 10,
        "half_plane": lambda: xr / edge,
        "spiral": lambda: torch.sin(torch.atan2(dy, dx) + 2 * math.pi * freq * rad + phase),
        "diamond": lambda: (size - xr.abs() - yr.abs()) / edge,
        "two_disks": lambda: (size * 0.45 - torch.minimum(((xr - 0.4) ** 2 + yr**2).sqrt(),
                                                          ((xr + 0.4) ** 2 + yr**2).sqrt())) / edge,
        "bars": lambda: (size * 0.25 - (xr.abs() - size * 0.6).abs()) / edge,
    }
    field = fields[kind]()
    sharp = 4.0 if kind.endswith("stripes") or kind in ("checker", "rings", "wavy", "spiral") else 1.0
    return torch.sigmoid(sharp * field)


def synthetic(classes: int, size: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8 n x 3 x size x size) and balanced labels, a pure function of the arguments."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    lin = (torch.arange(size) + 0.5) / size * 2 - 1
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    images = torch.empty(n, 3, size, size)
    for c in range(classes):
        idx = torch.nonzero(labels == c).flatten()
        k = idx.numel()
        m = _structure(SHAPES[c], xs.expand(k, -1, -1), ys.expand(k, -1, -1), g)[:, None]
        fg, bg = torch.rand(k, 3, 1, 1, generator=g), torch.rand(k, 3, 1, 1, generator=g)
        # keep a visible luminance gap so the shape survives grayscale
        lum = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])[:, None]  # noqa: E731
        gap = lum(fg) - lum(bg)
        push = torch.where(gap >= 0, 1.0, -1.0) * (0.3 - gap.abs()).clamp_min(0)
        fg = (fg + push / 2).clamp(0, 1)
        bg = (bg - push / 2).clamp(0, 1)
        tint = (torch.rand(k, 3, 1, 1, generator=g) - 0.5) * 0.3 * ys[None, None]  # per-image colour gradient
        pixel_noise = torch.randn(k, 3, size, size, generator=g) * 0.03
        images[idx] = (m * fg + (1 - m) * bg + tint + pixel_noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


MARKER = ".simclr-ablations-prepared"  # proves a folder was written by `prepare` (and may be replaced)
LIMIT_SEED = 0  # the seed of the class-balanced train_limit / test_limit subsets (recorded in meta.json)


class DataError(checkpoint.UserError):
    """The dataset on disk, or the prepared folder, does not fit the params."""


def balanced_subset(labels: torch.Tensor, limit: int, seed: int = LIMIT_SEED) -> torch.Tensor:
    """Sorted indices of `limit` items drawn class by class in turn (each class shuffled with `seed`)."""
    if not limit or limit >= labels.numel():
        return torch.arange(labels.numel())
    g = torch.Generator().manual_seed(seed)
    rank = torch.empty(labels.numel(), dtype=torch.int64)
    for c in labels.unique(sorted=True):
        idx = torch.nonzero(labels == c).flatten()
        rank[idx[torch.randperm(idx.numel(), generator=g)]] = torch.arange(idx.numel())
    order = sorted(range(labels.numel()), key=lambda i: (int(rank[i]), int(labels[i])))
    return torch.tensor(order[:limit]).sort().values


def validate_splits(classes: list, y_train: torch.Tensor, y_test: torch.Tensor, where: str) -> None:
    """At least 2 classes, and every class present in both the training and the test split."""
    if len(classes) < 2:
        raise DataError(f"{where}: found {len(classes)} class(es) {classes}; classification needs >= 2 classes")
    for split, y in (("train", y_train), ("test", y_test)):
        counts = torch.bincount(y[y >= 0], minlength=len(classes))
        empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            raise DataError(f"{where}: the {split} split has no image of class(es) {empty[:5]}; every class needs "
                            f">= 1 {split} image (add images, or raise data.{split}_limit / "
                            "data.imagefolder_test_fraction)")


def fingerprint(d: dict) -> str:
    """A digest of the data the params read: the synthetic params, or the bytes of every file under data.root."""
    return _fingerprint.of_data(d)


def _folder_rules(d: dict) -> dict:
    """An image folder's class-balanced limits and split checks, applied before any decoding."""
    limits = {"train": d["train_limit"], "test": d["test_limit"]}
    return {"select": lambda split, labels: balanced_subset(labels, limits[split]),
            "check": lambda classes, ytr, yte: validate_splits(classes, ytr, yte, f"data.root = {d['root']}")}


def storage_of(d: dict) -> tuple[str, dict | None]:
    """(storage, the image folder's file lists when streamed) for the data params: see stream.py."""
    if d["dataset"] != "imagefolder" or d["storage"] == "memory":
        return "memory", None
    from . import datasets, stream

    lists = datasets.list_imagefolder(d["root"], d["imagefolder_test_fraction"], 0, **_folder_rules(d))
    storage = stream.resolve(d, len(lists["train"][0]) + len(lists["test"][0]))
    return storage, (lists if storage == "stream" else None)


def load_raw(d: dict) -> dict:
    """{'train': (x, y), 'test': (x, y), 'classes': [...]} for the dataset the data params name,
    limited to the class-balanced train_limit / test_limit subsets (drawn before any decoding)."""
    name = d["dataset"]
    limits = {"train": d["train_limit"], "test": d["test_limit"]}
    if name == "synthetic" and d["synthetic"]["kind"] == "textures":  # the default: synthetic.py
        from . import synthetic as tex

        s = d["synthetic"]
        out = {"train": tex.textures(s["classes"], d["image_size"], s["train_size"], s["seed"], s.get("bands", 1)),
               "test": tex.textures(s["classes"], d["image_size"], s["test_size"], s["seed"] + 1, s.get("bands", 1)),
               "classes": tex.class_names(s["classes"], s.get("bands", 1))}
    elif name == "synthetic":
        s = d["synthetic"]
        out = {
            "train": synthetic(s["classes"], d["image_size"], s["train_size"], s["seed"]),
            "test": synthetic(s["classes"], d["image_size"], s["test_size"], s["seed"] + 1),
            "classes": list(SHAPES[: s["classes"]]),
        }
    else:
        from . import datasets

        if name in ("cifar10", "cifar100"):
            out = datasets.load_cifar(d["root"], name, d["download"])
        elif name == "stl10":
            out = datasets.load_stl10(d["root"], d["download"], d["stl10_unlabeled"], d["image_size"])
        else:
            out = datasets.load_imagefolder(d["root"], d["image_size"], d["imagefolder_test_fraction"], 0,
                                            **_folder_rules(d))
            limits = {}
    for split, limit in limits.items():
        x, y = out[split]
        keep = balanced_subset(y, limit)
        out[split] = (x[keep].contiguous(), y[keep])
    if out["train"][0].shape[-1] != d["image_size"]:
        raise DataError(f"data.image_size = {d['image_size']} but {name} images are {out['train'][0].shape[-1]} px")
    validate_splits(out["classes"], out["train"][1], out["test"][1], f"dataset {name} (data.root = {d['root']})")
    return out


def _ours(out: Path) -> bool:
    return (out / MARKER).exists() or (out / "meta.json").exists() and (out / "train.pt").exists()


def _check_out(out: Path) -> None:
    """Refuse to replace a path that prepare did not create."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not _ours(out):
        raise DataError(f"--out {out} is a non-empty folder that prepare did not create (no {MARKER}); "
                        "refusing to replace it: choose a new or empty --out")


def prepare(p: dict, out: Path) -> Path:
    """Write the prepared dataset into `out` (a directory), complete or not at all.

    An existing `out` is replaced only if prepare made it (it holds MARKER) or it is empty."""
    d = p["data"]
    out = Path(out).absolute()
    _check_out(out)
    storage, lists = storage_of(d)
    raw = load_raw(d) if storage == "memory" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if storage == "stream":
            from . import stream

            for split in ("train", "test"):
                stream.write_index(split, *lists[split], tmp)
            mean, std = stream.channel_stats([f for f, _ in lists["train"][0]], d["image_size"],
                                             p["runtime"]["workers"], p["runtime"]["prefetch"])
            stats = {"classes": lists["classes"], "sizes": {k: len(lists[k][0]) for k in ("train", "test")},
                     "image_size": d["image_size"], "mean": mean, "std": std}
        else:
            splits = {k: raw[k] for k in ("train", "test", "unlabeled") if k in raw}
            for split, (x, y) in splits.items():
                checkpoint.torch_save_file({"images": x.contiguous(), "labels": y}, tmp / f"{split}.pt")
            xf = splits["train"][0].float() / 255
            stats = {"classes": raw["classes"], "sizes": {k: int(v[0].shape[0]) for k, v in splits.items()},
                     "image_size": int(xf.shape[-1]), "mean": xf.mean((0, 2, 3)).tolist(),
                     "std": xf.std((0, 2, 3)).tolist()}
        meta = {
            "dataset": d["dataset"],
            "storage": storage,
            **stats,
            "limits": {"train": d["train_limit"], "test": d["test_limit"], "seed": LIMIT_SEED,
                       "rule": "class-balanced, drawn before decoding"},
            "fingerprint": fingerprint(d),
            "data_params": d,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / MARKER).write_text("written by simclr-ablations prepare; the folder may be replaced by it\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        _check_out(out)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_prepared(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    blob = checkpoint.load(Path(path) / f"{split}.pt", "prepared data", None)
    return blob["images"], blob["labels"]


def load_meta(path: Path) -> dict:
    f = Path(path) / "meta.json"
    if not f.is_file():
        raise DataError(f"--data {path} is not a prepared dataset (no meta.json); run `simclr-ablations prepare` "
                        "with the same params first")
    try:
        return json.loads(f.read_text())
    except ValueError as err:
        raise DataError(f"{f} is not valid JSON ({err}); prepare the data again") from err


# data params that change the prepared tensors (root and download only say where they come from)
_DATA_KEYS = ("dataset", "image_size", "train_limit", "test_limit", "imagefolder_test_fraction", "stl10_unlabeled",
              "synthetic", "storage", "memory_budget_gb")


def check_meta(meta: dict, p: dict, data_dir: Path) -> None:
    """Refuse prepared data made from other data params than `p` (dataset, image size, limits...)."""
    made = meta.get("data_params", {})
    want = p["data"]
    for key in _DATA_KEYS:
        if key == "synthetic" and want["dataset"] != "synthetic":
            continue
        if key in ("imagefolder_test_fraction",) and want["dataset"] != "imagefolder":
            continue
        if key == "stl10_unlabeled" and want["dataset"] != "stl10":
            continue
        if key in params.STORAGE_DEFAULTS:  # absent from data made before streaming: the default then
            if want["dataset"] != "imagefolder" or (key == "memory_budget_gb" and want["storage"] != "auto"):
                continue
            if made.get(key, params.STORAGE_DEFAULTS[key]) != want[key]:
                raise DataError(f"--data {data_dir} was prepared with data.{key} = "
                                f"{made.get(key, params.STORAGE_DEFAULTS[key])!r}, but the params say {want[key]!r}; "
                                "prepare the data with these params (or pass the matching --data)")
            continue
        if key == "synthetic" and isinstance(made.get(key), dict):  # made before data.synthetic.bands: 1 band
            if params.synthetic_identity(made[key]) == params.synthetic_identity(want[key]):
                continue
        if made.get(key) != want[key]:
            raise DataError(f"--data {data_dir} was prepared with data.{key} = {made.get(key)!r}, but the params say "
                            f"{want[key]!r}; prepare the data with these params (or pass the matching --data)")
def pretrain_images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining set: the training split, plus STL-10's unlabeled images when prepared."""
    x, y = load_prepared(path, "train")
    if (Path(path) / "unlabeled.pt").exists():
        xu, yu = load_prepared(path, "unlabeled")
        x, y = torch.cat([x, xu]), torch.cat([y, yu])
    return x, y
