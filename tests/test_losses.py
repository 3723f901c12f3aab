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


def _slow_one(z1, z2, normalize):
    """One-view negatives (Appendix B.10): anchor i of a view against the other view's N-1 others."""
    n = len(z1)
    out = []
    for a, b in ((z1, z2), (z2, z1)):
        for i in range(n):
            out.append((_sim(a[i], b[i], normalize), [_sim(a[i], b[k], normalize) for k in range(n) if k != i]))
    return out


def _brute_semi_hard(pos, negs, m):
    """(chosen similarity, use) by the rule of losses.semi_hard_negative, from the list of negatives."""
    semi = [s for s in negs if pos - m < s < pos]
    if semi:
        return max(semi), True
    farther = [s for s in negs if s < pos]
    if farther:
        return max(farther), False          # easy anchor: every farther negative is beyond the margin
    return min(negs), True                  # none farther than the positive: the farthest negative


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("t", [0.1, 1.0])
def test_nt_xent_one_view(normalize, t):
    z1, z2 = _pairs(seed=5)
    expect = sum(-pos / t + math.log(math.exp(pos / t) + sum(math.exp(s / t) for s in negs))
                 for pos, negs in _slow_one(z1, z2, normalize)) / (2 * len(z1))
    assert losses.nt_xent(z1, z2, t, normalize, "one").item() == pytest.approx(expect, rel=1e-5)


def test_nt_logistic_and_margin_one_view():
    z1, z2 = _pairs(seed=6)
    t, m = 0.2, 0.4
    lsig = lambda x: -math.log1p(math.exp(-x))
    triples = _slow_one(z1, z2, True)
    logi = sum(-lsig(pos / t) - sum(lsig(-s / t) for s in negs) / len(negs) for pos, negs in triples) / len(triples)
    marg = sum(sum(max(s - pos + m, 0) for s in negs) / len(negs) for pos, negs in triples) / len(triples)
    assert losses.nt_logistic(z1, z2, t, True, "one").item() == pytest.approx(logi, rel=1e-5)
    assert losses.margin_triplet(z1, z2, m, True, negatives="one").item() == pytest.approx(marg, rel=1e-5)
    assert losses.nt_logistic(z1, z2, t, True, "both").item() != pytest.approx(logi, rel=1e-3)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("negatives", ["both", "one"])
@pytest.mark.parametrize("m", [0.0, 0.4, 1.6])
def test_semi_hard_choice_matches_brute_force(seed, negatives, m):
    z1, z2 = _pairs(n=7, d=3, seed=seed)
    sim, pos = losses.similarities(z1, z2, True, negatives)
    col, use = losses.semi_hard_negative(sim, pos, m)
    slow = (_slow if negatives == "both" else _slow_one)(z1, z2, True)
    cases = set()
    for a, (p_, negs) in enumerate(slow):
        want, want_use = _brute_semi_hard(p_, negs, m)
        assert sim[a, col[a]].item() == pytest.approx(want, abs=1e-6) and bool(use[a]) == want_use
        assert col[a] != pos[a] and torch.isfinite(sim[a, col[a]])
        cases.add((want_use, want < p_))
    if m == 0.4 and seed == 0:
        assert len(cases) >= 2     # the draw exercises more than one branch of the rule


def test_semi_hard_fallbacks_on_constructed_cases():
    sim = torch.tensor([[float("-inf"), 0.9, 0.5, 0.2, 0.1],      # positive 0.9: 0.5 is semi-hard (m=0.5)
                        [0.9, float("-inf"), 0.95, 0.96, 0.97],   # positive 0.9: nothing farther -> farthest (0.95)
                        [0.5, 0.9, float("-inf"), 0.1, 0.0]], dtype=torch.float64)  # positive 0.9 at col 1
    pos = torch.tensor([1, 0, 1])
    col, use = losses.semi_hard_negative(sim, pos, 0.5)
    assert col.tolist() == [2, 2, 0] and use.tolist() == [True, True, True]
    col, use = losses.semi_hard_negative(sim, pos, 0.3)   # row 0 / 2: farther ones all beyond the margin
    assert col.tolist() == [2, 2, 0] and use.tolist() == [False, True, False]


@pytest.mark.parametrize("negatives", ["both", "one"])
def test_semi_hard_losses_match_explicit_formulas(negatives):
    z1, z2 = _pairs(n=8, seed=3)
    m, t = 0.5, 0.2
    lsig = lambda x: -math.log1p(math.exp(-x))
    slow = (_slow if negatives == "both" else _slow_one)(z1, z2, True)
    marg = logi = 0.0
    for pos, negs in slow:
        s, use = _brute_semi_hard(pos, negs, m)
        marg += max(s - pos + m, 0) * use
        logi += -lsig(pos / t) - lsig(-s / t) * use
    got = losses.margin_triplet(z1, z2, m, True, semi_hard=True, negatives=negatives).item()
    assert got == pytest.approx(marg / len(slow), rel=1e-5)
    assert got != pytest.approx(losses.margin_triplet(z1, z2, m, True, negatives=negatives).item(), rel=1e-3)
    got = losses.nt_logistic(z1, z2, t, True, negatives, semi_hard=True, margin=m).item()
    assert got == pytest.approx(logi / len(slow), rel=1e-5)


def test_unused_loss_keys_leave_the_run_identity():
    from simclr_ablations import params, pretrain

    rid = lambda *s: pretrain.run_id(params.load("smoke", settings=list(s)))
    logi = ("pretrain.loss=nt_logistic",)
    assert rid(*logi) == rid(*logi, "pretrain.margin=0.3")               # plain NT-Logistic mines nothing
    assert rid(*logi, "pretrain.semi_hard=true") != rid(*logi)
    assert rid(*logi, "pretrain.semi_hard=true") != rid(*logi, "pretrain.semi_hard=true", "pretrain.margin=0.3")
    assert rid() == rid("pretrain.semi_hard=true", "pretrain.margin=0.3")  # NT-Xent
    assert rid() != rid("pretrain.negatives=one")


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
    for name, sh, neg in [(n, sh, neg) for n in ("nt_xent", "nt_logistic", "margin_triplet")
                          for sh in ("false", "true") for neg in ("both", "one")]:
        fn = losses.loss_fn(params.load("smoke", settings=[f"pretrain.loss={name}", f"pretrain.semi_hard={sh}",
                                                           f"pretrain.negatives={neg}", "pretrain.margin=0.5"]))
        loss = fn(z1, z2)
        loss.backward()
        assert torch.isfinite(loss) and z1.grad.abs().sum() > 0
        z1.grad = None


def test_loss_study_is_appendix_b10():
    """No preset (the full grid): each non-NT-Xent loss over lr {0.01, 0.1, 0.3, 0.5, 1} x its own grid, one view's
    negatives; every cell a distinct run; smoke and cpu keep every loss."""
    import re

    from simclr_ablations import studies

    runs = studies.expand("", "losses", n_seeds=1)           # "": params/default.yaml, no shrink
    fam = lambda r: re.sub(r" [tm]=.*$", "", r.labels()["setting"])
    grids = {}
    for r in runs:
        t = r.params["pretrain"]
        grids.setdefault(fam(r), set()).add((t["lr"], t["temperature"] if t["loss"] == "nt_logistic" else t["margin"]))
        assert (t["negatives"] == "one") == (fam(r) != "NT-Xent")
        assert t["semi_hard"] == fam(r).endswith("(sh)")
    lrs = {0.01, 0.1, 0.3, 0.5, 1.0}
    assert grids["NT-Logi."] == grids["NT-Logi. (sh)"] == {(a, b) for a in lrs for b in (0.1, 0.2, 0.5, 1.0)}
    assert grids["Margin"] == grids["Margin (sh)"] == {(a, b) for a in lrs for b in (0.0, 0.4, 0.8, 1.6)}
    assert len({r.id for r in runs}) == len(runs)
    for preset in ("smoke", "cpu"):
        assert {fam(r) for r in studies.expand(preset, "losses", n_seeds=1)} == set(grids)
