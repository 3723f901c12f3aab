"""The related methods' parts: EMA, queue, stop-gradient, union-find, WCL's swapped weak-label loss,
the balanced label subsets of semi-supervised evaluation, and one training step of every method."""

import math

import pytest
import torch
import torch.nn.functional as F

from simclr_ablations import evaluate, losses, methods, models, params, pretrain


def test_ema_update_matches_formula():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [t.detach().clone() for t in target.parameters()]
    methods.ema_(target, online, 0.9)
    for b, o, t in zip(before, online.parameters(), target.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
    # momentum 1 keeps the target, 0 copies the online net
    methods.ema_(target, online, 0.0)
    for o, t in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(t, o.detach())


def test_ema_updates_batchnorm_statistics():
    online, target = torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    online.running_mean.fill_(2.0)
    online.num_batches_tracked.fill_(7)
    methods.ema_(target, online, 0.5)
    torch.testing.assert_close(target.running_mean, torch.full((4,), 1.0))
    assert int(target.num_batches_tracked) == 7


def test_queue_is_fifo_and_drops_the_oldest():
    q = methods.Queue(5, 1)
    for start in range(0, 12, 3):          # push 0,1,2 / 3,4,5 / 6,7,8 / 9,10,11
        q.push(torch.arange(start, start + 3, dtype=torch.float32)[:, None])
    assert q.ordered()[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert int(q.ptr) == 12 % 5


def test_queue_push_larger_than_queue_keeps_the_newest():
    q = methods.Queue(3, 1)
    q.push(torch.arange(7, dtype=torch.float32)[:, None])
    assert sorted(q.keys[:, 0].tolist()) == [4.0, 5.0, 6.0]
    assert q.ordered()[:, 0].tolist() == [4.0, 5.0, 6.0]


def _brute_force_components(nb):
    n = len(nb)
    adj = {i: set() for i in range(n)}
    for i, j in enumerate(nb):
        adj[i].add(j)
        adj[j].add(i)
    label = [-1] * n
    for s in range(n):
        if label[s] >= 0:
            continue
        stack, seen = [s], {s}
        while stack:
            u = stack.pop()
            for v in adj[u]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        for u in seen:
            label[u] = min(seen)
    return label


@pytest.mark.parametrize("seed", range(5))
def test_union_find_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    nb = torch.randint(0, n, (n,), generator=g).tolist()
    assert methods.components(nb).tolist() == _brute_force_components(nb)


def test_weak_label_mask_groups_mutual_neighbours():
    f = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]]), dim=1)
    mask = methods.weak_label_mask(f)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_swapped_weak_label_loss_matches_explicit_formula():
    torch.manual_seed(0)
    b, t = 6, 0.2
    f1, f2 = F.normalize(torch.randn(b, 4), dim=1), F.normalize(torch.randn(b, 4), dim=1)
    m1, m2 = methods.weak_label_mask(f1), methods.weak_label_mask(f2)
    eye = torch.eye(b, dtype=torch.bool)
    got = (losses.sup_contrastive(f1, f1, m2, t, eye) + losses.sup_contrastive(f2, f2, m1, t, eye)) / 2

    def explicit(f, mask):          # view 1's anchors use view 2's labels, and vice versa
        total = 0.0
        for i in range(b):
            denom = sum(math.exp(float(f[i] @ f[k]) / t) for k in range(b) if k != i)
            pos = [j for j in range(b) if j != i and mask[i, j]]
            total += -sum(float(f[i] @ f[j]) / t - math.log(denom) for j in pos) / len(pos)
        return total / b

    want = (explicit(f1, m2) + explicit(f2, m1)) / 2
    assert got.item() == pytest.approx(want, rel=1e-5)
    # and the swap matters: the unswapped loss differs unless both graphs agree
    if not torch.equal(m1, m2):
        unswapped = (losses.sup_contrastive(f1, f1, m1, t, eye) + losses.sup_contrastive(f2, f2, m2, t, eye)) / 2
        assert unswapped.item() != pytest.approx(got.item())


def test_stop_gradient_blocks_the_target_branch():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    (losses.negative_cosine(p, z) + losses.byol_regression(p, z)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_info_nce_positive_first():
    q = F.normalize(torch.randn(3, 5), dim=1)
    neg = F.normalize(torch.randn(7, 5), dim=1)
    got = losses.info_nce(q, q, neg, 0.5)
    logits = torch.cat([(q * q).sum(1, keepdim=True), q @ neg.t()], 1) / 0.5
    torch.testing.assert_close(got, -F.log_softmax(logits, 1)[:, 0].mean())


def _p(method, **extra):
    sets = [f"method={method}", "moco.queue_size=16", "wcl.small_crops=1", "wcl.knn_k=2", "pretrain.batch_size=8"]
    return params.load("smoke", settings=sets + [f"{k}={v}" for k, v in extra.items()])


@pytest.mark.parametrize("method", ["simclr", "moco", "moco-bank", "byol", "simsiam", "wcl"])
def test_one_step_of_every_method(method):
    p = _p("moco", **{"moco.negatives": "bank"}) if method == "moco-bank" else _p(method)
    torch.manual_seed(0)
    model = models.SimCLRNet(p)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    norm = torch.nn.Identity()
    m = methods.build(p, model, images, norm)
    opt = torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(8)
    v = torch.rand(16, 3, 16, 16)
    targets = {name: t.detach().clone() for name, t in m.state_dict().items()
               if not name.startswith("model.") and t.is_floating_point()}
    loss, stats = m.loss(v, images[idx], idx, g)
    assert torch.isfinite(loss) and {"contrastive_acc", "entropy"} <= set(stats)
    opt.zero_grad()
    loss.backward()
    for name, q in m.named_parameters():
        if not q.requires_grad:              # frozen targets (EMA) get no gradient
            assert q.grad is None, name
    opt.step()
    m.after_step(0.5)
    m.end_epoch(0)
    if method in ("moco", "moco-bank", "byol"):
        moved = [n for n, t in m.state_dict().items() if n in targets and not torch.equal(t, targets[n])]
        assert moved, "the EMA target / queue / bank did not change"
    if method == "wcl":
        assert bool(m.knn_ready) and m.neighbours[:8].ne(torch.arange(8)[:, None]).all()


def test_canonical_leaves_out_unused_method_sections():
    p = params.load("cpu")
    q = params.load("cpu", settings=["moco.queue_size=7", "wcl.lam=3"])
    assert pretrain.run_id(p) == pretrain.run_id(q)
    assert pretrain.run_id(params.load("cpu", settings=["method=moco"])) != pretrain.run_id(
        params.load("cpu", settings=["method=moco", "moco.queue_size=7"]))
    assert pretrain.run_id(p) == pretrain.run_id(params.load("cpu", settings=["eval.semi.fractions=[0.1]"]))
    assert params.eval_id(p) != params.eval_id(params.load("cpu", settings=["eval.semi.fractions=[0.1]"]))


def test_balanced_subset():
    labels = torch.arange(10).repeat_interleave(30)
    idx = evaluate.balanced_subset(labels, 0.1, seed=3)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [3] * 10
    assert torch.equal(idx, evaluate.balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(idx, evaluate.balanced_subset(labels, 0.1, seed=4))
    assert torch.bincount(labels[evaluate.balanced_subset(labels, 0.001, 0)]).tolist() == [1] * 10


def test_bad_method_params_are_named():
    with pytest.raises(params.ParamsError, match="moco.negatives"):
        params.load("smoke", settings=["moco.negatives=ring"])
    with pytest.raises(params.ParamsError, match="needs a projection head"):
        params.load("smoke", settings=["method=byol", "head.type=none"])
    with pytest.raises(params.ParamsError, match="eval.semi.fractions"):
        params.load("smoke", settings=["eval.semi.fractions=[0, 0.1]"])
    with pytest.raises(params.ParamsError, match="eval.semi.from_layer"):
        params.load("smoke", settings=["eval.semi.from_layer=2"])


@pytest.mark.parametrize("method", ["moco", "wcl"])
def test_stateful_methods_resume_identically(smoke_data, tmp_path, method):
    """The queue / memory bank, EMA target and KNN neighbours live in the checkpoint: a run stopped
    after epoch 1 and resumed ends with the same weights as one that never stopped."""
    base = [f"method={method}", "pretrain.epochs=2", "wcl.knn_warmup_epochs=1", f"{method}.recipe.warmup_fraction=0.5"]
    full = pretrain.train(params.load("smoke", settings=base), smoke_data, tmp_path / "full", threads=1,
                          log=lambda *_: None)
    part = tmp_path / "part"
    p = params.load("smoke", settings=base)
    short = dict(p, pretrain=dict(p["pretrain"], epochs=1))                  # its first epoch is warm-up too:
    short[method] = dict(p[method], recipe=dict(p[method]["recipe"], warmup_fraction=1.0))   # same lrs
    pretrain.train(short, smoke_data, part, threads=1, log=lambda *_: None)   # a different run id: not resumed
    ckpt = torch.load(part / "checkpoint.pt", weights_only=False)
    ckpt["run_id"] = pretrain.run_id(p)                                       # pretend the 2-epoch run stopped here
    (part / "model.pt").unlink()
    torch.save(ckpt, part / "checkpoint.pt")
    logs = []
    resumed = pretrain.train(p, smoke_data, part, threads=1, log=logs.append)
    assert any("resuming from checkpoint" in line and "epoch 1" in line for line in logs)
    wa = torch.load(tmp_path / "full" / "model.pt", weights_only=False)["model"]
    wb = torch.load(part / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert full["final"]["loss"] == resumed["final"]["loss"]


def test_memory_bank_never_returns_a_query_of_the_batch():
    """Bank entries are drawn from the images outside the batch: no query's own (stale) key is a
    negative, at any batch, including one where the draw must take every remaining entry."""
    p = _p("moco", **{"moco.negatives": "bank", "moco.queue_size": 24})
    m = methods.build(p, models.SimCLRNet(p), torch.zeros(32, 3, 16, 16, dtype=torch.uint8), torch.nn.Identity())
    g = torch.Generator().manual_seed(0)
    seen = set()
    for trial in range(200):
        idx = torch.randperm(32, generator=g)[:8]
        pick = m.bank_indices(idx, g)
        assert pick.numel() == 24 == len(set(pick.tolist()))                 # distinct entries
        assert not set(pick.tolist()) & set(idx.tolist()), trial
        seen |= set(pick.tolist())
    assert seen == set(range(32))                                            # every entry can be drawn
    # and the loss's negatives are exactly those rows of the bank
    m.bank.copy_(torch.eye(32)[:, :m.bank.shape[1]] if m.bank.shape[1] >= 32 else m.bank)
    idx = torch.arange(8)
    neg = m.negatives(idx, torch.Generator().manual_seed(1))
    torch.testing.assert_close(neg, m.bank[m.bank_indices(idx, torch.Generator().manual_seed(1))])
    with pytest.raises(params.ParamsError, match="moco.queue_size"):
        q = _p("moco", **{"moco.negatives": "bank", "moco.queue_size": 25})
        methods.build(q, models.SimCLRNet(q), torch.zeros(32, 3, 16, 16, dtype=torch.uint8), torch.nn.Identity())


def test_simsiam_projector_has_output_bn():
    p = _p("simsiam", **{"head.layers": 3})
    m = methods.build(p, models.SimCLRNet(p), torch.zeros(32, 3, 16, 16, dtype=torch.uint8), torch.nn.Identity())
    assert len(m.model.head.blocks) == 3
    assert isinstance(m.out_bn, torch.nn.BatchNorm1d) and not m.out_bn.affine
    m.train()
    z = m.embed(torch.rand(16, 3, 16, 16))
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4, rtol=0)   # BN'd output


def test_simclr_heads_end_in_a_shiftless_bn_like_the_official_code():
    """google-research/simclr model_util.linear_layer(use_bias=False, use_bn=True): the last layer of the
    linear and the non-linear head is a bias-free linear map and a BN with a learnt scale, no shift."""
    for kind in ("linear", "mlp"):
        net = models.SimCLRNet(_p("simclr", **{"head.type": kind}))
        last = net.head.blocks[-1]
        assert isinstance(last[0], torch.nn.Linear) and last[0].bias is None
        assert isinstance(last[1], models.ScaleBatchNorm)
        assert last[1].weight.requires_grad and not last[1].bias.requires_grad
        z = net.train()(torch.rand(16, 3, 32, 32))
        assert z.mean(0).abs().max() < 1e-4  # no shift: every coordinate of z is centred over the batch
    off = models.SimCLRNet(_p("simclr", **{"head.output_bn": False}))
    assert isinstance(off.head.blocks[-1], torch.nn.Linear) and off.head.blocks[-1].bias is not None
    moco = models.SimCLRNet(_p("moco", **{"head.batch_norm": False}))  # MoCo v2's fc-ReLU-fc: no BN at all
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in moco.head.modules())


@pytest.mark.parametrize("method,per_view", [("simclr", False)] + [(m, pv) for m in ("moco", "byol", "simsiam", "wcl")
                                                                  for pv in (True, False)])
def test_batchnorm_sees_one_view_at_a_time_as_the_official_code(method, per_view):
    """MoCo, BYOL, SimSiam and WCL forward each view on its own in their official code (BN statistics
    of one view's batch); `<method>.per_view_forward: false` and SimCLR (whose TF code concatenates the
    views) normalise both views together. Every BatchNorm of the step records the batch it saw."""
    extra = {} if method == "simclr" else {f"{method}.per_view_forward": per_view}
    if method == "wcl":
        extra["wcl.small_crops"] = 2
    p = _p(method, **extra)
    torch.manual_seed(0)
    model = models.SimCLRNet(p)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    m = methods.build(p, model, images, torch.nn.Identity())
    seen = []
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    m.train()
    m.loss(torch.rand(16, 3, 16, 16), images[:8], torch.arange(8), torch.Generator().manual_seed(0))
    one_view = per_view and method != "simclr"
    assert seen and set(seen) == ({8} if one_view else {16}), sorted(set(seen))   # 8 images, two views (WCL: two small)
