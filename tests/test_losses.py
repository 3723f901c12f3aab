"""Each loss against a slow explicit formula (Table 2 of the paper) on random embeddings."""

import math

import pytest
import torch

from simclr_ablations import losses


def _pairs(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def _sim(a, b, normalize):
    if normalize:
        return float(a @ b) / (a.norm().item() * b.norm().item())
    return float(a @ b)


def _slow(z1, z2, normalize):
    """(anchor, positive, negatives) triples as Python lists, the way the paper writes them."""
    z = list(z1) + list(z2)
    n = len(z1)
    out = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        pos = _sim(z[i], z[j], normalize)
        negs = [_sim(z[i], z[k], normalize) for k in range(2 * n) if k not in (i, j)]
        out.append((pos, negs))
    return out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent(normalize, t):
    z1, z2 = _pairs()
    expect = sum(-pos / t + math.log(math.exp(pos / t) + sum(math.exp(s / t) for s in negs))
                 for pos, negs in _slow(z1, z2, normalize)) / (2 * len(z1))
    assert losses.nt_xent(z1, z2, t, normalize).item() == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_nt_logistic(normalize):
    z1, z2 = _pairs(seed=1)
    t = 0.5
    lsig = lambda x: -math.log1p(math.exp(-x))
    expect = sum(-lsig(pos / t) - sum(lsig(-s / t) for s in negs) / len(negs)
                 for pos, negs in _slow(z1, z2, normalize)) / (2 * len(z1))
    assert losses.nt_logistic(z1, z2, t, normalize).item() == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_margin_triplet(normalize):
    z1, z2 = _pairs(seed=2)
    m = 0.4
    expect = sum(sum(max(s - pos + m, 0) for s in negs) / len(negs)
                 for pos, negs in _slow(z1, z2, normalize)) / (2 * len(z1))
    assert losses.margin_triplet(z1, z2, m, normalize).item() == pytest.approx(expect, rel=1e-5)


def test_margin_triplet_semi_hard():
    z1, z2 = _pairs(n=8, seed=3)
    m = 0.5
    total = 0.0
    for pos, negs in _slow(z1, z2, True):
        semi = [s for s in negs if pos - m < s < pos]
        chosen = semi if semi else [max(negs)]
        total += sum(max(s - pos + m, 0) for s in chosen) / len(chosen)
    expect = total / (2 * len(z1))
    got = losses.margin_triplet(z1, z2, m, True, semi_hard=True).item()
    assert got == pytest.approx(expect, rel=1e-5)
    assert got != pytest.approx(losses.margin_triplet(z1, z2, m, True).item(), rel=1e-3)


def test_contrastive_stats():
    z1, z2 = _pairs(n=5, seed=4)
    t = 0.5
    correct, ent = 0, 0.0
    for pos, negs in _slow(z1, z2, True):
        correct += pos > max(negs)
        logits = [pos / t] + [s / t for s in negs]
        zsum = sum(math.exp(v) for v in logits)
        ent -= sum(math.exp(v) / zsum * (v - math.log(zsum)) for v in logits)
    stats = losses.contrastive_stats(z1, z2, t, True)
    assert stats["contrastive_acc"] == pytest.approx(correct / 10)
    assert stats["entropy"] == pytest.approx(ent / 10, rel=1e-5)


def test_identical_views_are_perfectly_matched():
    z = torch.eye(4, dtype=torch.float64)
    assert losses.contrastive_stats(z, z.clone(), 0.1, True)["contrastive_acc"] == 1.0
    assert losses.nt_xent(z, z.clone(), 0.1) < losses.nt_xent(z, z.roll(1, 0), 0.1)


def test_loss_fn_dispatch_and_gradients():
    from simclr_ablations import params

    z1, z2 = (t.float().requires_grad_() for t in _pairs())
    for name in ("nt_xent", "nt_logistic", "margin_triplet"):
        fn = losses.loss_fn(params.load("smoke", settings=[f"pretrain.loss={name}"]))
        loss = fn(z1, z2)
        loss.backward()
        assert torch.isfinite(loss) and z1.grad.abs().sum() > 0
        z1.grad = None
