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


def load_raw(d: dict) -> dict:
    """{'train': (x, y), 'test': (x, y), 'classes': [...]} for the dataset the data params name."""
    name = d["dataset"]
    if name == "synthetic" and d["synthetic"]["kind"] == "textures":  # the default: synthetic.py
        from . import synthetic as tex

        s = d["synthetic"]
        return {"train": tex.textures(s["classes"], d["image_size"], s["train_size"], s["seed"]),
                "test": tex.textures(s["classes"], d["image_size"], s["test_size"], s["seed"] + 1),
                "classes": list(tex.TEXTURES[: s["classes"]])}
    if name == "synthetic":
        s = d["synthetic"]
        return {
            "train": synthetic(s["classes"], d["image_size"], s["train_size"], s["seed"]),
            "test": synthetic(s["classes"], d["image_size"], s["test_size"], s["seed"] + 1),
            "classes": list(SHAPES[: s["classes"]]),
        }
    from . import datasets

    if name in ("cifar10", "cifar100"):
        out = datasets.load_cifar(d["root"], name, d["download"])
    elif name == "stl10":
        out = datasets.load_stl10(d["root"], d["download"], d["stl10_unlabeled"], d["image_size"])
    else:
        out = datasets.load_imagefolder(d["root"], d["image_size"], d["imagefolder_test_fraction"], 0)
    if out["train"][0].shape[-1] != d["image_size"]:
        raise ValueError(f"data.image_size = {d['image_size']} but {name} images are {out['train'][0].shape[-1]} px")
    return out


def prepare(p: dict, out: Path) -> Path:
    """Write the prepared dataset into `out` (a directory), complete or not at all."""
    d = p["data"]
    raw = load_raw(d)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    splits = {"train": raw["train"], "test": raw["test"]}
    if "unlabeled" in raw:
        splits["unlabeled"] = raw["unlabeled"]
    for split in splits:
        x, y = splits[split]
        limit = d.get(f"{split}_limit", 0)
        if limit:
            x, y = x[:limit], y[:limit]
        splits[split] = (x.contiguous(), y)
        torch.save({"images": x.contiguous(), "labels": y}, tmp / f"{split}.pt")
    xf = splits["train"][0].float() / 255
    meta = {
        "dataset": d["dataset"],
        "classes": raw["classes"],
        "sizes": {k: int(v[0].shape[0]) for k, v in splits.items()},
        "image_size": int(xf.shape[-1]),
        "mean": xf.mean((0, 2, 3)).tolist(),
        "std": xf.std((0, 2, 3)).tolist(),
        "data_params": d,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_prepared(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    blob = torch.load(Path(path) / f"{split}.pt", weights_only=True)
    return blob["images"], blob["labels"]


def load_meta(path: Path) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())


def pretrain_images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining set: the training split, plus STL-10's unlabeled images when prepared."""
    x, y = load_prepared(path, "train")
    if (Path(path) / "unlabeled.pt").exists():
        xu, yu = load_prepared(path, "unlabeled")
        x, y = torch.cat([x, xu]), torch.cat([y, yu])
    return x, y
