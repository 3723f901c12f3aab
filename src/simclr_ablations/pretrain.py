"""Pretraining: a self-supervised method of methods.py (two views; SimCLR by default) or the
supervised baseline (one view, labels).

The whole prepared dataset sits in memory as uint8; each step indexes a batch, moves it to the
device and augments it there as a tensor (augment.py), so there is no data-loader process to
starve the GPU. Randomness is derived from (seed, epoch), which is what makes a resumed run
identical to an uninterrupted one: a checkpoint is written atomically after every epoch, and a
rerun of a killed job continues from the last one.

`pretrain.epochs: 0` saves the initialised model untouched: the untrained-encoder baseline (same
architecture and seed, same evaluation) that every study is compared against.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import augment, data, methods, models, optim, params


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def canonical(p: dict) -> dict:
    """The params that can change a run's results: `runtime` (threads, device...) and keys the
    configuration does not read (the head's size when there is no head, the loss of the supervised
    baseline, the settings of augmentations and methods not in use, semi-supervised evaluation when
    no label fraction is asked for) are left out."""
    q = copy.deepcopy({k: v for k, v in p.items() if k != "runtime"})
    head, t, aug = q["head"], q["pretrain"], q["augment"]
    if head["type"] != "mlp":
        q["head"] = {"type": "none"} if head["type"] == "none" else {"type": "linear", "out_dim": head["out_dim"]}
    for name in ("moco", "byol", "simsiam", "wcl"):
        if q["method"] != name:
            del q[name]
    if not q["eval"]["semi"]["fractions"]:
        del q["eval"]["semi"]
    if q["method"] == "supervised":
        del q["head"], q["eval"]["feature_layer"]
        for key in ("loss", "temperature", "l2_normalize", "margin", "semi_hard"):
            del t[key]
    elif t["loss"] != "margin_triplet":
        del t["margin"], t["semi_hard"]
    used = set(aug["ops"]) | ({"crop"} if aug["branches"] == "one" else set())
    for op in augment.OPS:
        if op not in used:
            del aug[op]
    if aug["branches"] == "both":
        del aug["base_crop_scale"]
    return q


def run_id(p: dict) -> str:
    """Runs are identified by the digest of their canonical params."""
    return params.digest(canonical(p))


def setup(p: dict, threads: int = 0) -> torch.device:
    """Pick the device and CPU thread count; make CPU runs deterministic."""
    r = p["runtime"]
    n = threads or r["threads"] or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or os.cpu_count() or 1
    torch.set_num_threads(n)
    want = r["device"]
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device = 'cuda' but no CUDA device is available (use auto or cpu)")
    device = torch.device("cuda" if (want != "cpu" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def epoch_generators(seed: int, epoch: int, device: torch.device):
    """(CPU generator for the data order, device generator for augmentations) of one epoch."""
    base = seed * 1_000_003 + epoch
    order = torch.Generator().manual_seed(base)
    aug = torch.Generator(device=device).manual_seed(base + 500_000_007)
    return order, aug


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build_model(p: dict, classes: int) -> torch.nn.Module:
    torch.manual_seed(p["seed"])
    return models.SupervisedNet(p, classes) if p["method"] == "supervised" else models.SimCLRNet(p)


def train(p: dict, data_dir: Path, out_dir: Path, threads: int = 0, log=print) -> dict:
    """Pretrain the model `p` describes on the prepared data; write out_dir/model.pt when complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = setup(p, threads)
    meta = data.load_meta(data_dir)
    if p["method"] == "supervised":
        images, labels = data.load_prepared(data_dir, "train")
    else:
        images, labels = data.pretrain_images(data_dir)
    t, aug = p["pretrain"], p["augment"]
    n, bs = images.shape[0], t["batch_size"]
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        raise params.ParamsError(f"'pretrain.batch_size' = {bs} exceeds the {n} pretraining images of {data_dir}")
    total = steps_per_epoch * t["epochs"]
    warmup = steps_per_epoch * t["warmup_epochs"]

    model = build_model(p, len(meta["classes"])).to(device)
    norm = augment.Normalize(meta["mean"], meta["std"], aug["normalize"]).to(device)
    cuda = device.type == "cuda"
    channels_last = p["runtime"]["channels_last"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = None if p["method"] == "supervised" else methods.build(p, model, images, norm).to(device)
    opt = optim.build(method or model, t)
    peak = opt.param_groups[0]["lr"]
    forward = model
    if cuda and p["runtime"]["compile"]:
        forward = torch.compile(model)
        model.encoder.compile()

    ckpt_path, rid = out_dir / "checkpoint.pt", run_id(p)
    start_epoch, history = 0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["run_id"] == rid:
            if method is not None and ckpt.get("method") is not None:
                method.load_state_dict(ckpt["method"])
            else:
                model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
            log(f"resuming from checkpoint {ckpt_path} at epoch {start_epoch} (of {t['epochs']})")
        else:
            log(f"ignoring checkpoint {ckpt_path}: it belongs to run {ckpt['run_id']}, not {rid}")
    if cuda:
        images = images.pin_memory()
        labels = labels.pin_memory()

    model.train()
    for epoch in range(start_epoch, t["epochs"]):
        g_order, g_aug = epoch_generators(p["seed"], epoch, device)
        perm = torch.randperm(n, generator=g_order)
        sums = dict.fromkeys(["loss", "train_acc"] if p["method"] == "supervised"
                             else ["loss", "contrastive_acc", "entropy"], 0.0)
        t0 = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{t['epochs']}", leave=False,
                   disable=not p["runtime"]["progress"], mininterval=2.0)
        for step in bar:
            lr = optim.lr_at(epoch * steps_per_epoch + step, total, warmup, peak, t["schedule"])
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[step * bs:(step + 1) * bs]
            x = images[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and p["runtime"]["amp"]):
                if p["method"] == "supervised":
                    y = labels[idx].to(device, non_blocking=True)
                    v = norm(augment.apply_ops(augment.to_float(x), aug["ops"], aug, g_aug))
                    if channels_last:
                        v = v.contiguous(memory_format=torch.channels_last)
                    logits = forward(v)
                    loss = F.cross_entropy(logits.float(), y)
                    stats = {"train_acc": (logits.argmax(1) == y).float().mean().item()}
                else:
                    v1, v2 = augment.two_views(x, aug, g_aug)
                    v = norm(torch.cat([v1, v2]))
                    if channels_last:
                        v = v.contiguous(memory_format=torch.channels_last)
                    loss, stats = method.loss(v, x, idx, g_aug)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopping. "
                    f"Last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none (first epoch)'}. "
                    f"Try a lower pretrain.lr or a higher pretrain.temperature.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if method is not None:
                method.after_step((epoch * steps_per_epoch + step + 1) / total)
            sums["loss"] += loss.item()
            for k, v_ in stats.items():
                sums[k] += v_
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if method is not None:
            method.end_epoch(epoch)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 3),
               "images_per_s": round(steps_per_epoch * bs / seconds, 1)}
        row.update({k: v_ / steps_per_epoch for k, v_ in sums.items()})
        history.append(row)
        log(" ".join(f"{k}={v_:.4g}" if isinstance(v_, float) else f"{k}={v_}" for k, v_ in row.items()))
        if (epoch + 1) % p["runtime"]["checkpoint_every"] == 0 or epoch + 1 == t["epochs"]:
            save_atomic({"run_id": rid, "epoch": epoch, "model": model.state_dict(),
                         "method": method.state_dict() if method is not None else None,
                         "optimizer": opt.state_dict(), "history": history}, ckpt_path)

    untrained = dict.fromkeys(["loss"] + (["train_acc"] if p["method"] == "supervised"
                                          else ["contrastive_acc", "entropy"]), float("nan"))
    summary = {
        "run_id": rid,
        "method": p["method"],
        "epochs": t["epochs"],
        "steps": total,
        "final": history[-1] if history else untrained,
        "train_seconds": round(sum(r["seconds"] for r in history), 2),
        "device": str(device),
        "params_count": models.count_params(model),
        "encoder_params": models.count_params(model.encoder),
    }
    _write_history(history, out_dir / "history.csv")
    params.dump(p, out_dir / "params.yaml")
    (out_dir / "train.json").write_text(json.dumps(summary, indent=2))
    save_atomic({"run_id": rid, "params": p, "model": model.state_dict(), "classes": len(meta["classes"]),
                 "summary": summary}, out_dir / "model.pt")
    return summary


def _write_history(history: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def load_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    blob = torch.load(Path(run_dir) / "model.pt", map_location=device, weights_only=False)
    p = params.from_resolved(blob["params"])
    model = models.SupervisedNet(p, blob["classes"]) if p["method"] == "supervised" else models.SimCLRNet(p)
    model.load_state_dict(blob["model"])
    return model.to(device).eval(), p
