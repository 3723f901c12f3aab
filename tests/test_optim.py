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
