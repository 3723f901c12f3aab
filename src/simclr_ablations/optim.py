"""Optimisers, each method's recipe, and the learning-rate schedule.

`recipe(p)` (recipes.py, re-exported here) is the optimiser a run uses: `pretrain`'s keys for
SimCLR and the supervised baseline, `<method>.recipe` (its paper's optimiser, lr, lr scaling,
weight decay, warm-up and schedule) for the related methods; `pretrain.batch_size` and
`pretrain.epochs` are the budget all share.

LARS follows the official SimCLR code: weight decay is added to the gradient, the step is
scaled by the trust ratio eta * ||w|| / ||g||, then momentum. With `exclude_bn_bias`, biases and
BatchNorm parameters (every parameter with fewer than 2 dimensions, which also catches the BN
of a ResNet's downsample shortcut that name matching misses) get neither weight decay nor the
trust ratio; a LARS that adapts them is a known cause of reproductions falling short.
A group with `fixed_lr` set keeps that lr whatever the schedule writes into it (SimSiam's predictor).
"""

from __future__ import annotations

import math

import torch

# the recipe of a run and its peak lr are torch-free (the tables read them): recipes.py
from .recipes import RECIPE_KEYS, SIMCLR_CONVENTIONS, recipe, scaled_lr  # noqa: F401


def skip_dynamo_import() -> None:
    """Spare a process the 2.5 s import of torch._dynamo when nothing is compiled.

    torch.optim.Optimizer's __init__, state_dict, load_state_dict, zero_grad and add_param_group are
    wrapped by torch._disable_dynamo, which imports torch._dynamo at their first call (on 2 CPU cores
    that is ~20% of a cpu-preset pretraining's wall time, and of its evaluation's). The wrapper
    caches the disabled function as `fn.__dynamo_disable`; disabling matters only inside a compiled
    region, so with nothing compiled the plain function is that cache. Call it only when
    `runtime.compile` is off; if torch changes the wrapper, this does nothing."""
    for name in ("__init__", "state_dict", "load_state_dict", "zero_grad", "add_param_group"):
        fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn


def nesterov_sgd_step(params, grads, bufs: list, lr: float, momentum: float, weight_decay: float) -> None:
    """One step of torch.optim.SGD(nesterov=True, dampening=0), the same arithmetic in the same
    order, without the optimizer object (whose step() imports torch._dynamo: skip_dynamo_import).
    `bufs` holds the momentum buffers (None before the first step)."""
    with torch.no_grad():
        for i, (w, g) in enumerate(zip(params, grads)):
            if weight_decay:
                g = g.add(w, alpha=weight_decay)
            bufs[i] = torch.clone(g).detach() if bufs[i] is None else bufs[i].mul_(momentum).add_(g)
            w.add_(g.add(bufs[i], alpha=momentum), alpha=-lr)


class _FixedLR:
    """Mixin: before each step, groups with a `fixed_lr` take it back (the schedule sets every group)."""

    def _fix_lrs(self):
        for group in self.param_groups:
            if group.get("fixed_lr") is not None:
                group["lr"] = group["fixed_lr"]


class LARS(_FixedLR, torch.optim.Optimizer):
    def __init__(self, param_groups, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(param_groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                            lars=True, fixed_lr=None))

    @torch.no_grad()
    def step(self, closure=None):
        self._fix_lrs()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if group["lars"]:
                    g = g.add(w, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                buf = self.state[w].get("momentum")
                if buf is None:
                    buf = self.state[w]["momentum"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                w.add_(buf, alpha=-group["lr"])


class SGD(_FixedLR, torch.optim.SGD):
    def step(self, closure=None):
        self._fix_lrs()
        return super().step(closure)


class AdamW(_FixedLR, torch.optim.AdamW):
    def step(self, closure=None):
        self._fix_lrs()
        return super().step(closure)


def param_groups(model: torch.nn.Module, weight_decay: float, exclude_bn_bias: bool = True,
                 fixed: tuple = (), fixed_lr: float | None = None) -> list[dict]:
    """Weights (>= 2 dims) with weight decay and LARS adaptation; biases and BN params without
    (unless not `exclude_bn_bias`: then every parameter is decayed and adapted). Parameters in
    `fixed` get their own groups at `fixed_lr`, after the scheduled ones (group 0 is scheduled)."""
    fixed_ids = {id(q) for q in fixed}
    groups = []
    for is_fixed in (False, True):
        params = [q for q in model.parameters() if q.requires_grad and (id(q) in fixed_ids) == is_fixed]
        split = [(params, True)] if not exclude_bn_bias else [([q for q in params if q.ndim >= 2], True),
                                                              ([q for q in params if q.ndim < 2], False)]
        for ps, decay in split:
            if ps:
                groups.append(dict(params=ps, weight_decay=weight_decay if decay else 0.0, lars=decay,
                                   fixed_lr=fixed_lr if is_fixed else None))
    return groups


def build(module: torch.nn.Module, t: dict) -> torch.optim.Optimizer:
    """The optimizer of recipe `t` (optim.recipe) at the scaled peak learning rate; parameters that
    `module.fixed_lr_parameters()` names (a method's) stay at that peak. A bare `pretrain` dict is
    SimCLR's recipe."""
    t = {**SIMCLR_CONVENTIONS, **t}
    lr = scaled_lr(t["lr"], t["batch_size"], t["lr_scaling"])
    fixed = module.fixed_lr_parameters() if hasattr(module, "fixed_lr_parameters") else ()
    groups = param_groups(module, t["weight_decay"], t["exclude_bn_bias"], fixed, lr)
    if t["optimizer"] == "lars":
        return LARS(groups, lr=lr, momentum=t["momentum"], eta=t["lars_eta"])
    for grp in groups:
        grp.pop("lars")
    if t["optimizer"] == "sgd":
        return SGD(groups, lr=lr, momentum=t["momentum"], nesterov=t["nesterov"])
    return AdamW(groups, lr=lr)


def lr_at(step: int, total: int, warmup: float, peak: float, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 (or constant)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))
