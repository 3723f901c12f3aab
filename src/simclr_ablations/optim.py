"""Optimisers and the learning-rate schedule of the paper.

LARS follows the official SimCLR code: weight decay is added to the gradient, the step is
scaled by the trust ratio eta * ||w|| / ||g||, then momentum. Biases and BatchNorm parameters
(every parameter with fewer than 2 dimensions) get neither weight decay nor the trust ratio;
a LARS that adapts them is a known cause of reproductions falling short.
"""

from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, param_groups, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(param_groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                            lars=True))

    @torch.no_grad()
    def step(self, closure=None):
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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weights (>= 2 dims) with weight decay and LARS adaptation; biases and BN params without."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [dict(params=decay, weight_decay=weight_decay, lars=True),
            dict(params=plain, weight_decay=0.0, lars=False)]


def scaled_lr(base: float, batch_size: int, scaling: str) -> float:
    if scaling == "linear":
        return base * batch_size / 256
    if scaling == "sqrt":
        return base * math.sqrt(batch_size)
    return base


def build(model: torch.nn.Module, t: dict) -> torch.optim.Optimizer:
    """The optimizer the `pretrain` params describe, at the scaled peak learning rate."""
    lr = scaled_lr(t["lr"], t["batch_size"], t["lr_scaling"])
    groups = param_groups(model, t["weight_decay"])
    if t["optimizer"] == "lars":
        return LARS(groups, lr=lr, momentum=t["momentum"], eta=t["lars_eta"])
    for grp in groups:
        grp.pop("lars")
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=t["momentum"], nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 (or constant)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))
