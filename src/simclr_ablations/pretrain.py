"""Pretraining: a self-supervised method of methods.py (two views; SimCLR by default) or the
supervised baseline (one view, labels).

Each step takes a uint8 batch from stream.train_source and augments it on the device as a tensor
(augment.py). With data.storage memory (the default) the whole prepared dataset sits in memory and a
batch is indexed from it, so there is no data-loader process to starve the GPU; an image folder
larger than memory is streamed instead (data.storage stream or auto: DataLoader workers decode the
files and make the random-resized crop at decode time; under torchrun each rank decodes its share).
Randomness is derived from (seed, epoch), which is what makes a resumed run identical to an
uninterrupted one: a checkpoint is written atomically after every epoch, and a rerun of a killed job
continues from the last one.

Under torchrun (runtime.gpus x runtime.nodes processes; distributed.py) the same command trains data
parallel with DistributedDataParallel: every rank draws the global batch's order and augmentations
and keeps its share, the methods gather what their losses need, rank 0 alone writes checkpoints and
outputs (the others wait at a barrier). Alone, the computation is the one it always was.

`pretrain.epochs: 0` saves the initialised model untouched: the untrained-encoder baseline (same
architecture and seed, same evaluation) that every study is compared against.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import augment, checkpoint, data, distributed, methods, models, optim, params, provenance, stream


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def run_id(p: dict) -> str:
    """A pretraining is named by params.pretrain_id (evaluation settings are not part of it)."""
    return params.pretrain_id(p)


def setup(p: dict, threads: int = 0) -> torch.device:
    """Pick the device and CPU thread count; make CPU runs deterministic."""
    r = p["runtime"]
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))  # torchrun's processes on this node share its CPUs
    n = (threads or r["threads"] or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) // local
         or (os.cpu_count() or 1) // local or 1)
    torch.set_num_threads(n)
    want = r["device"]
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device = 'cuda' but no CUDA device is available (use auto or cpu)")
    device = torch.device("cuda" if (want != "cpu" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cpu" and not (threads or r["threads"]):
        raise params.ParamsError(
            "'runtime.threads' = 0 (all cores) is allowed on CUDA only: on the CPU the thread count changes the "
            "results, so it must be part of the run's identity; set it (--threads N or --set runtime.threads=N)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not (device.type == "cuda" and r["compile"]):
        optim.skip_dynamo_import()
    return device


def uses_amp(p: dict, device: torch.device) -> bool:
    """bf16 autocast in pretraining: on CUDA with runtime.amp, on the CPU with runtime.cpu_amp."""
    return p["runtime"]["amp"] if device.type == "cuda" else p["runtime"]["cpu_amp"]


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU has bf16 instructions (avx512_bf16 or AMX). Without them oneDNN emulates bf16:
    the `cpu` preset's step measured 1.8x slower than fp32 on AVX-512 alone and 9x on AVX2."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these queries
        return False


def epoch_generators(seed: int, epoch: int, device: torch.device):
    """(CPU generator for the data order, device generator for augmentations) of one epoch."""
    base = seed * 1_000_003 + epoch
    order = torch.Generator().manual_seed(base)
    aug = torch.Generator(device=device).manual_seed(base + 500_000_007)
    return order, aug


def save_atomic(obj, path: Path) -> None:
    checkpoint.save_atomic(obj, path)


class WorldSizeChanged(checkpoint.UserError):
    """A checkpoint written by another number of processes (refused: see README, More than one GPU)."""


def _resume(blob: dict, rid: str, data_fp: str, model, method, opt, ckpt_path: Path, log) -> bool:
    """Load a checkpoint's state into model/method/optimizer; False if it is another run's, was trained
    on other data or written by other training code (a resumed run must be one computation)."""
    if blob["run_id"] != rid:
        log(f"ignoring checkpoint {ckpt_path}: it belongs to run {blob['run_id']}, not {rid}")
        return False
    if blob.get("data", data_fp) != data_fp:
        log(f"ignoring checkpoint {ckpt_path}: it was trained on other data (fingerprint {blob['data']}, the "
            f"prepared data now: {data_fp}); starting again")
        return False
    if blob.get("world_size", 1) != distributed.world_size():
        raise WorldSizeChanged(f"checkpoint {ckpt_path} was written by {blob.get('world_size', 1)} processes, this run "
                               f"has {distributed.world_size()}: resuming with another world size is refused")
    code = provenance.stage_hash("pretrain")
    if blob.get("code", code) != code:
        log(f"ignoring checkpoint {ckpt_path}: it was written by other training code ({blob['code']}, now {code})")
        return False
    what = f"checkpoint {ckpt_path} (epoch {blob['epoch'] + 1})"
    if method is not None and blob.get("method") is not None:
        checkpoint.load_state(method, blob["method"], what)
    else:
        checkpoint.load_state(model, blob["model"], what)
    checkpoint.check_finite_modules(what, model, method)
    try:
        opt.load_state_dict(blob["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise checkpoint.CorruptFile(f"{what}: optimizer state does not fit ({err})") from err
    return True


def build_model(p: dict, classes: int) -> torch.nn.Module:
    torch.manual_seed(p["seed"])
    return models.SupervisedNet(p, classes) if p["method"] == "supervised" else models.SimCLRNet(p)


def train(p: dict, data_dir: Path, out_dir: Path, threads: int = 0, log=print) -> dict:
    """Pretrain the model `p` describes on the prepared data; write out_dir/model.pt when complete.

    The run folder is locked meanwhile: a second writer is refused (the lock dies with the process).
    Under torchrun every rank calls this; rank 0 holds the lock and writes, the others do not log."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    world, rank, local = distributed.init(p)
    if world > 1:  # every rank says it is there (the job's log shows the world)
        print(f"rank {rank} of {world} (local rank {local}, backend {distributed.backend()})", flush=True)
    try:
        if not distributed.is_main():
            return _train(p, data_dir, out_dir, threads, lambda *_: None)
        with checkpoint.RunLock(out_dir):
            return _train(p, data_dir, out_dir, threads, log)
    finally:
        distributed.shutdown()


def _train(p: dict, data_dir: Path, out_dir: Path, threads: int, log) -> dict:
    wall0 = time.perf_counter()
    out_dir = Path(out_dir)
    device = setup(p, threads)
    meta = data.load_meta(data_dir)
    data.check_meta(meta, p, data_dir)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    source = stream.train_source(p, data_dir, meta, device)
    t, aug = optim.recipe(p), p["augment"]
    n, bs = len(source), t["batch_size"]
    local_bs = bs // world
    steps_per_epoch = n // bs
    if steps_per_epoch == 0:
        raise params.ParamsError(f"'pretrain.batch_size' = {bs} exceeds the {n} pretraining images of {data_dir}")
    total = steps_per_epoch * t["epochs"]
    warmup = steps_per_epoch * t["warmup_epochs"]

    model = build_model(p, len(meta["classes"])).to(device)
    norm = augment.Normalize(meta["mean"], meta["std"], aug["normalize"]).to(device)
    cuda = device.type == "cuda"
    amp = uses_amp(p, device)
    if amp and not cuda and not cpu_has_native_bf16():
        log("runtime.cpu_amp: this CPU has no native bf16 (avx512_bf16 / AMX): autocast is emulated and slower")
    channels_last = models.use_channels_last(p["runtime"]["channels_last"], device, model)
    if p["runtime"]["channels_last"] and not channels_last:
        log("runtime.channels_last: off on the CPU for this model (torch bug: models.channels_last_breaks_on_cpu)")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = None if p["method"] == "supervised" else methods.build(p, model, getattr(source, "images", source),
                                                                    norm).to(device)
    if world > 1 and p["runtime"]["sync_bn"]:
        distributed.convert_sync_bn(method or model, device)  # in place: BatchNorms inside become SyncBatchNorms
    opt = optim.build(method or model, t)
    peak = opt.param_groups[0]["lr"]
    forward = model
    if cuda and p["runtime"]["compile"]:
        forward = torch.compile(model)
        model.encoder.compile()

    ckpt_path, rid = out_dir / "checkpoint.pt", run_id(p)
    data_fp = meta.get("fingerprint", "")
    start_epoch, history = 0, []
    fresh = copy.deepcopy([model.state_dict(), method.state_dict() if method else None, opt.state_dict()])
    ckpt = None
    for turn in range(2 if world > 1 else 1):  # rank 0 first: it moves a corrupt checkpoint aside
        if (turn == 0) == main:
            ckpt = checkpoint.load_checkpoint(ckpt_path, log, device, lambda blob: _resume(
                blob, rid, data_fp, model, method, opt, ckpt_path, log))
        distributed.barrier()
    if ckpt is not None:
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        log(f"resuming from checkpoint {ckpt_path} at epoch {start_epoch} (of {t['epochs']})")
    else:  # a checkpoint that failed half-way through loading must not leak into a fresh start
        model.load_state_dict(fresh[0])
        if method is not None:
            method.load_state_dict(fresh[1])
        opt.load_state_dict(fresh[2])
    if cuda:
        source.pin()
    net = method if method is not None else forward
    if world > 1:  # buffers (queues, EMA targets, BN statistics) are kept equal by construction, not broadcast
        net = DistributedDataParallel(method or model, broadcast_buffers=False)

    model.train()
    for epoch in range(start_epoch, t["epochs"]):
        g_order, g_aug = epoch_generators(p["seed"], epoch, device)
        if world > 1:  # the global batch's augmentation draws, this rank's rows
            g_aug = augment.Shard(g_aug, rank * local_bs, (rank + 1) * local_bs, bs)
        perm = torch.randperm(n, generator=g_order)
        batches = source.epoch(perm, bs, epoch, shard=distributed.shard)
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
            x, y = next(batches)  # this rank's share of idx (uint8, on the device), and its labels
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if p["method"] == "supervised":
                    v = norm(augment.one_view(x, aug["ops"], aug, g_aug))
                    if channels_last:
                        v = v.contiguous(memory_format=torch.channels_last)
                    logits = net(v)
                    loss = F.cross_entropy(logits.float(), y)
                    stats = {"train_acc": (logits.argmax(1) == y).float().mean().item()}
                else:
                    v1, v2 = augment.two_views(x, aug, g_aug)
                    v = norm(torch.cat([v1, v2]))
                    if channels_last:
                        v = v.contiguous(memory_format=torch.channels_last)
                    loss, stats = net(v, x, idx, g_aug)
            value = loss.item()
            if world > 1:  # the global batch's loss (a rank's own mean for per-sample losses)
                stats = distributed.mean_scalars({"loss": value, **stats})
                value = stats.pop("loss")
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss is {value} at epoch {epoch + 1}, step {step + 1}; stopping. "
                    f"Last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none (first epoch)'}. "
                    f"Try a lower pretrain.lr or a higher pretrain.temperature.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if method is not None:
                method.after_step((epoch * steps_per_epoch + step + 1) / total)
            sums["loss"] += value
            for k, v_ in stats.items():
                sums[k] += v_
            bar.set_postfix(loss=f"{value:.3f}")
        if method is not None:
            method.end_epoch(epoch)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 3),
               "images_per_s": round(steps_per_epoch * bs / seconds, 1)}
        row.update({k: v_ / steps_per_epoch for k, v_ in sums.items()})
        history.append(row)
        log(" ".join(f"{k}={v_:.4g}" if isinstance(v_, float) else f"{k}={v_}" for k, v_ in row.items()))
        what = f"model after epoch {epoch + 1}"
        checkpoint.check_finite_modules(what, model, method)
        checkpoint.check_features(model, norm(augment.to_float(source.probe(16))), what)
        if main and ((epoch + 1) % p["runtime"]["checkpoint_every"] == 0 or epoch + 1 == t["epochs"]):
            blob = {"run_id": rid, "code": provenance.stage_hash("pretrain"), "data": data_fp, "epoch": epoch,
                    "model": model.state_dict(), "method": method.state_dict() if method is not None else None,
                    "optimizer": opt.state_dict(), "history": history}
            if world > 1:
                blob["world_size"] = world
            checkpoint.save_checkpoint(blob, ckpt_path)
        distributed.barrier()

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
        "data_fingerprint": data_fp,
        "params_count": models.count_params(model),
        "encoder_params": models.count_params(model.encoder),
    }
    if world > 1:
        summary["world_size"] = world
    if not main:
        distributed.barrier()  # rank 0 writes the outputs
        return summary
    prov = provenance.record(device, torch.get_num_threads(), time.perf_counter() - wall0)
    summary["provenance"] = provenance.compact(prov)
    _write_history(history, out_dir / "history.csv")
    params.dump(p, out_dir / "params.yaml")
    checkpoint.write_text_atomic(out_dir / "provenance.json", json.dumps(prov, indent=2))
    checkpoint.write_text_atomic(out_dir / "train.json", json.dumps(summary, indent=2))
    save_atomic({"run_id": rid, "params": p, "model": model.state_dict(), "classes": len(meta["classes"]),
                 "summary": summary}, out_dir / "model.pt")
    distributed.barrier()
    return summary


def _write_history(history: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with params.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(history)


def load_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The finished run's model (tensors only are read; its run id, shapes and finiteness are checked)."""
    path = Path(run_dir) / "model.pt"
    blob = checkpoint.load(path, "model", device)
    for key in ("run_id", "params", "model", "classes"):
        if key not in blob:
            raise checkpoint.CorruptFile(f"model {path} lacks '{key}'; rerun pretrain")
    p = params.from_resolved(blob["params"])
    if run_id(p) != blob["run_id"]:
        raise checkpoint.CorruptFile(f"model {path}: its run id {blob['run_id']} does not match its params "
                                     f"({run_id(p)}); rerun pretrain")
    model = models.SupervisedNet(p, blob["classes"]) if p["method"] == "supervised" else models.SimCLRNet(p)
    checkpoint.load_state(model, blob["model"], f"model {path}")
    checkpoint.check_finite_modules(f"model {path}", model)
    return model.to(device).eval(), p
