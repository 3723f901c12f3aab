"""LARS leaves BN and biases alone; learning-rate scaling and schedule."""

import math

import pytest
import torch

from simclr_ablations import optim


def test_lars_trust_ratio_and_exclusions():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(8, 4)).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt = optim.LARS(optim.param_groups(model, weight_decay=0.1), lr=0.5, momentum=0.9, eta=0.001)
    opt.step()
    params = dict(model.named_parameters())
    g = grads["0.weight"] + 0.1 * w0["0.weight"]
    trust = 0.001 * w0["0.weight"].norm() / g.norm()
    assert torch.allclose(params["0.weight"], w0["0.weight"] - 0.5 * trust * g, atol=1e-7)
    for name in ("0.bias", "1.weight", "1.bias"):  # plain momentum SGD: no decay, no trust ratio
        assert torch.allclose(params[name], w0[name] - 0.5 * grads[name], atol=1e-7)


def test_momentum_accumulates():
    w = torch.nn.Parameter(torch.ones(3))
    opt = optim.LARS([dict(params=[w], weight_decay=0.0, lars=False)], lr=1.0, momentum=0.5)
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 1 - 1 - 1.5))


def test_lr_scaling():
    assert optim.scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert optim.scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert optim.scaled_lr(0.3, 4096, "none") == 0.3


def test_warmup_then_cosine():
    lrs = [optim.lr_at(s, 100, 10, 1.0, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01
    assert optim.lr_at(50, 100, 10, 1.0, "constant") == 1.0


def _built(method, *settings):
    from simclr_ablations import methods, models, params

    p = params.load("smoke", settings=[f"method={method}", "moco.queue_size=16", "pretrain.batch_size=64",
                                       *settings])
    model = models.SimCLRNet(p)
    m = methods.build(p, model, torch.zeros(256, 3, 16, 16, dtype=torch.uint8), torch.nn.Identity())
    t = optim.recipe(p)
    return p, m, t, optim.build(m, t)


@pytest.mark.parametrize("method, kind, base, scale, wd, exclude, warmup", [
    ("simclr", optim.LARS, 1.0, 64 / 256, 1e-6, True, 1.0),                 # smoke preset: pretrain.lr 1.0
    ("moco", optim.SGD, 0.03, 64 / 256, 1e-4, False, 0.0),
    ("byol", optim.LARS, 0.2, 64 / 256, 1.5e-6, True, 0.01 * 2),
    ("simsiam", optim.SGD, 0.05, 64 / 256, 1e-4, False, 0.0),
    ("wcl", optim.LARS, 0.075, math.sqrt(64), 1e-6, True, 0.1 * 2),
])
def test_each_method_trains_with_its_papers_recipe(method, kind, base, scale, wd, exclude, warmup):
    p, m, t, opt = _built(method)
    assert type(opt) is kind and t["warmup_epochs"] == pytest.approx(warmup)
    peak = base * scale
    trainable = {id(q) for q in m.parameters() if q.requires_grad}
    grouped = [id(q) for g in opt.param_groups for q in g["params"]]
    assert sorted(grouped) == sorted(trainable)                              # every trainable param, once
    assert all(q.requires_grad for g in opt.param_groups for q in g["params"])  # no EMA target
    assert opt.param_groups[0]["lr"] == pytest.approx(peak) and opt.param_groups[0]["fixed_lr"] is None
    fixed = {id(q) for q in m.fixed_lr_parameters()}
    assert bool(fixed) == (method == "simsiam")
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(peak) and g["momentum"] == 0.9
        small = [q.ndim < 2 for q in g["params"]]
        if exclude:                                                          # BN & biases: no wd, no LARS
            assert len(set(small)) == 1
            assert g["weight_decay"] == (0.0 if small[0] else pytest.approx(wd))
            assert g.get("lars", not small[0]) == (not small[0])
        else:                                                                # SGD of MoCo / SimSiam: all decayed
            assert g["weight_decay"] == pytest.approx(wd)
        if kind is optim.SGD:
            assert g["nesterov"] is False
        assert (g["fixed_lr"] is not None) == all(id(q) in fixed for q in g["params"])
    if method == "simsiam":
        assert {id(q) for q in m.predictor.parameters()} == fixed


def test_recipe_overrides_and_lr_factor():
    p, m, t, opt = _built("moco", "moco.recipe.lr_factor=2", "moco.recipe.weight_decay=0.5",
                          "moco.recipe.optimizer=lars")
    assert type(opt) is optim.LARS and opt.param_groups[0]["lr"] == pytest.approx(0.06 * 64 / 256)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.5}          # exclude_bn_bias: false -> all
    # SimCLR's recipe stays the pretrain keys; a pretrain change does not reach another method's
    assert _built("byol", "pretrain.lr=5")[3].param_groups[0]["lr"] == pytest.approx(0.2 * 64 / 256)


def test_fixed_lr_group_ignores_the_schedule():
    p, m, t, opt = _built("simsiam")
    peak = opt.param_groups[0]["lr"]
    for g in opt.param_groups:
        g["lr"] = 0.1 * peak                                                 # what the training loop writes
    loss = m.embed(torch.rand(8, 3, 16, 16)).pow(2).mean() + m.predictor(torch.rand(8, 16)).pow(2).mean()
    loss.backward()
    opt.step()
    lrs = {g["fixed_lr"] is not None: g["lr"] for g in opt.param_groups}
    assert lrs[True] == pytest.approx(peak) and lrs[False] == pytest.approx(0.1 * peak)


def test_lars_excludes_bn_and_bias_of_a_resnet():
    """Every BN parameter (incl. a downsample shortcut's, which name matching on 'bn' misses) and every
    bias is in the plain group; every conv / linear weight is decayed and adapted."""
    from simclr_ablations import models, params

    model = models.SimCLRNet(params.load("smoke"))
    adapted, plain = optim.param_groups(model, 1e-6)
    assert adapted["lars"] and adapted["weight_decay"] == 1e-6 and not plain["lars"] and plain["weight_decay"] == 0.0
    plain_ids, adapted_ids = {id(q) for q in plain["params"]}, {id(q) for q in adapted["params"]}
    bn = [mod for name, mod in model.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    assert any("shortcut" in name for name, mod in model.named_modules() if mod in bn)
    assert all(id(q) in plain_ids for mod in bn for q in mod.parameters() if q.requires_grad)
    frozen = [q for q in model.parameters() if not q.requires_grad]  # the head's output BN has no shift
    assert frozen and not any(id(q) in plain_ids | adapted_ids for q in frozen)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            assert id(mod.weight) in adapted_ids
            assert mod.bias is None or id(mod.bias) in plain_ids


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_nesterov_sgd_step_is_torch_sgd_bit_for_bit(weight_decay):
    """linear_eval's optimizer-free step must give torch.optim.SGD(nesterov=True)'s weights exactly."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    ref = torch.optim.SGD(a.parameters(), lr=0.3, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    weights, bufs = list(b.parameters()), [None, None]
    for step in range(5):
        x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
        lr = 0.3 * (1 - step / 5)
        for group in ref.param_groups:
            group["lr"] = lr
        ref.zero_grad()
        torch.nn.functional.cross_entropy(a(x), y).backward()
        ref.step()
        loss = torch.nn.functional.cross_entropy(b(x), y)
        optim.nesterov_sgd_step(weights, torch.autograd.grad(loss, weights), bufs, lr, 0.9, weight_decay)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_cpu_pretraining_and_linear_eval_do_not_import_dynamo():
    """torch.optim imports torch._dynamo (~2.5 s) at an optimizer's first call unless skip_dynamo_import
    ran; pretrain.setup runs it on CPU. Checked in a fresh interpreter (pytest may have imported dynamo)."""
    import subprocess
    import sys

    code = """
import sys, torch
from simclr_ablations import evaluate, optim, params, pretrain
p = params.load(preset="smoke")
pretrain.setup(p, 1)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
opt = optim.build(model, optim.recipe(p))
model(torch.randn(8, 4)).pow(2).sum().backward()
opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())
f, y = torch.randn(40, 5), torch.arange(40) % 2
evaluate.linear_eval(f, y, f, y, 2, p["eval"]["linear"], 0)
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
