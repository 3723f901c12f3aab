"""Data parallelism under torchrun: which rank this process is, its shard of the global batch, and
the collectives the losses need.

`torchrun --nproc_per_node=N` (or one torchrun per node) sets WORLD_SIZE, RANK and LOCAL_RANK; without
them the process is alone and every function here is the identity, so a single-process run computes
exactly what it computed before data parallelism existed (tests/test_ddp.py checks the bits).

Every rank draws the *global* batch's order and augmentation parameters with the same generators and
keeps its rows (augment.Shard), so N processes x B/N images see the batch that 1 process x B sees.

Gradients: each rank calls backward on its own loss and DistributedDataParallel averages the
gradients over the N ranks. An in-batch loss (NT-Xent, WCL) is computed on every rank over the
gathered global batch, so every rank's loss is the global loss L; `gather` is
torch.distributed.nn.functional.all_gather, whose backward sums the N ranks' gradients of the gathered
tensor and keeps this rank's slice: N * dL/dz_local. DDP's average then gives sum_r dL/dz_r dz_r/dtheta,
the gradient of the one-process run. (A gather that keeps only the local gradient would give
dL/dz_local without the other ranks' terms, divided by N: lightly #1528; test_ddp shows it fails.)
A loss that is a mean over local samples (BYOL, SimSiam, MoCo's queries, supervised) needs no gather:
DDP's average of the N local means is the global mean.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


class WorldMismatch(RuntimeError):
    """torchrun started another number of processes than the params ask for."""


def env_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) when run alone."""
    return (int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init(p: dict) -> tuple[int, int, int]:
    """Join the process group torchrun describes (nccl on CUDA, gloo on the CPU); check that its size is
    runtime.gpus x runtime.nodes (the world size is part of the run's identity). Returns (world, rank,
    local rank); a lone process initialises nothing."""
    world, rk, local = env_world()
    want = p["runtime"]["gpus"] * p["runtime"]["nodes"]
    if world != want:
        how = ("not under torchrun" if "WORLD_SIZE" not in os.environ else f"torchrun started {world} processes")
        raise WorldMismatch(
            f"runtime.gpus x runtime.nodes = {want} but this process is {how}; launch "
            f"{'torchrun --nproc_per_node=' + str(p['runtime']['gpus']) if want > 1 else 'it alone'} "
            f"or set runtime.gpus/runtime.nodes to match (the world size is part of the run identity)")
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        return world, rk, local
    cuda = p["runtime"]["device"] != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30),
                            device_id=torch.device("cuda", local) if cuda else None)
    return world, rk, local


def backend() -> str:
    return dist.get_backend() if world_size() > 1 else "none"


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(global_rows: torch.Tensor) -> torch.Tensor:
    """This rank's equal share of the global batch's rows (rank r: the r-th block)."""
    n = world_size()
    if n == 1:
        return global_rows
    b = global_rows.shape[0] // n
    return global_rows[rank() * b:(rank() + 1) * b]


def gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' t, concatenated in rank order (the global batch order), differentiable: the backward
    sums the ranks' gradients and keeps this rank's slice (see the module docstring)."""
    if world_size() == 1:
        return t
    return torch.cat(GATHER(t))


def _gather_autograd(t):
    return dist_nn.all_gather(t)


GATHER = _gather_autograd  # tests/test_ddp.py swaps in a local-gradient gather to show the check fails


@torch.no_grad()
def gather_nograd(t: torch.Tensor) -> torch.Tensor:
    """All ranks' t in rank order, no gradient (keys, features, statistics)."""
    if world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def mean_scalars(values: dict) -> dict:
    """The mean over ranks of per-rank floats (losses and statistics for the log)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for the CPU (gloo), where torch's SyncBatchNorm refuses to run
    (and DDP refuses it): in training with more than one rank, the mean and variance are those of all
    ranks' samples, computed in two passes with the differentiable all_reduce (its backward
    all-reduces the gradient, as SyncBatchNorm's does); the running statistics are updated with them."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()
        mean = dist_nn.all_reduce(x.sum(dims)) / count
        var = dist_nn.all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` normalising with the global batch's statistics, in place:
    torch's SyncBatchNorm on CUDA, GlobalBatchNorm on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_bn(child, device))
    return out
