"""Each run's optimiser recipe, resolved from its params (no torch: the tables read it too).

`recipe(p)` is the optimiser a run trains with: `pretrain`'s keys for SimCLR and the supervised
baseline, `<method>.recipe` (its paper's optimiser, lr, lr scaling, weight decay, warm-up and
schedule) for the related methods; `pretrain.batch_size` and `pretrain.epochs` are the budget all
share. `scaled_lr` turns a base lr into the peak lr at a batch size. `optim.build` makes the
optimiser of a recipe.
"""

from __future__ import annotations

import math

RECIPE_KEYS = ("optimizer", "lr", "lr_scaling", "momentum", "nesterov", "weight_decay", "exclude_bn_bias",
               "lars_eta", "warmup_epochs", "schedule")
# SimCLR's optimiser conventions that `pretrain` has no key for (google-research/simclr's LARS exempts
# BN and biases; the SGD option is Nesterov's, as before)
SIMCLR_CONVENTIONS = dict(nesterov=True, exclude_bn_bias=True)


def scaled_lr(base: float, batch_size: int, scaling: str) -> float:
    if scaling == "linear":
        return base * batch_size / 256
    if scaling == "sqrt":
        return base * math.sqrt(batch_size)
    return base


def recipe(p: dict) -> dict:
    """The `pretrain` params with the optimiser keys of the method's recipe: what the run trains with.
    SimCLR / supervised: pretrain's own keys (LARS exempts BN and biases; SGD is Nesterov's)."""
    t = dict(p["pretrain"])
    if p["method"] in ("simclr", "supervised"):
        return dict(t, **SIMCLR_CONVENTIONS)
    r = p[p["method"]]["recipe"]
    t.update({k: r[k] for k in RECIPE_KEYS if k in r})
    t["lr"] = r["lr"] * r["lr_factor"]
    t["warmup_epochs"] = r["warmup_fraction"] * t["epochs"]
    return t
