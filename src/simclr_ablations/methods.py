"""The pretraining objectives: SimCLR and its relatives, each a module around the online network.

Every method shares the data, the batched augmentations, the encoder and projection head
(models.SimCLRNet: the network that is saved and evaluated) and the optimiser; what differs is
what one step optimises and what state it keeps besides the network:

- simclr:  the configured contrastive loss on the two views' embeddings (SimCLRv2 is simclr with
           a 3-layer head, fine-tuned from the head's middle layer: eval.semi.from_layer = 1);
- moco:    an EMA key encoder and a queue of its past keys as negatives (MoCo v2), or the
           InstDisc memory bank (one entry per training image) -- "queue vs bank";
- byol:    a predictor regresses the views' embeddings by an EMA target network, no negatives;
- simsiam: a predictor and a stop-gradient, no EMA and no negatives;
- wcl:     SimCLR's instance loss plus weak labels from a second head: the connected components
           of each view's 1-nearest-neighbour graph, used swapped (view 1's labels for view 2) in a
           supervised contrastive loss; and the KNN multi-crop (small crops of the K nearest images).

Asymmetric losses are symmetrised over the two views. BatchNorm: moco, byol, simsiam and wcl pass
each view through the networks on its own (`<method>.per_view_forward`, as their official code
does: BN statistics of one view's batch); simclr passes both views at once (google-research/simclr
concatenates them along the batch).

Data parallel (distributed.py; alone, every gather is the identity): `loss` gets this rank's views
and raw images, the *global* batch's indices and a Shard generator. simclr and wcl gather the
embeddings (differentiable) and compute the global batch's loss on every rank; moco, byol and
simsiam average over the rank's own samples (DDP's gradient average makes it the global mean), with
moco's queue / bank fed the gathered keys in global order, so every rank holds the same queue. The
logged statistics are those of the gathered embeddings. What differs from one process: nothing with
runtime.sync_bn (up to float rounding; tests/test_ddp.py); without it each GPU's BatchNorm sees its
own share, which for moco can be shuffle-BN (moco.shuffle_bn: the key encoder normalises a random
share of the global batch, MoCo's remedy for per-GPU BN leaking which keys belong to the batch).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import augment, distributed, losses, models, params


def ema_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters and float buffers
    (BatchNorm statistics); integer buffers are copied."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
        for t, o in zip(target.buffers(), online.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(momentum).add_(o, alpha=1 - momentum)
            else:
                t.copy_(o)


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for q in target.parameters():
        q.requires_grad_(False)
    return target


def predictor(dim: int, hidden: int) -> nn.Module:
    """BYOL/SimSiam predictor: Linear -> BN -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, dim))


class Queue(nn.Module):
    """A FIFO of the latest `size` keys (MoCo). `push` overwrites the oldest entries."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        keys = torch.randn(size, dim, generator=generator, dtype=torch.float32)
        self.register_buffer("keys", F.normalize(keys, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        size = self.keys.shape[0]
        k = k[-size:]
        idx = (self.ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.keys[idx] = k.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + k.shape[0]) % size)

    def ordered(self) -> torch.Tensor:
        """The keys from the oldest to the newest."""
        return torch.roll(self.keys, -int(self.ptr), 0)


def components(neighbour: list[int] | torch.Tensor) -> torch.Tensor:
    """Connected components of the undirected graph with an edge i -- neighbour[i] (union-find with
    path halving); labels are the smallest node of each component."""
    nb = [int(j) for j in neighbour]
    parent = list(range(len(nb)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in enumerate(nb):
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return torch.tensor([root(i) for i in range(len(nb))], dtype=torch.long)


def weak_label_mask(f: torch.Tensor) -> torch.Tensor:
    """B x B mask 'same component of the 1-NN graph' of l2-normalised embeddings f (WCL)."""
    with torch.no_grad():
        sim = f @ f.t()
        sim.fill_diagonal_(float("-inf"))
        labels = components(sim.argmax(1).cpu()).to(f.device)
    return labels[:, None] == labels[None, :]


class Method(nn.Module):
    """A pretraining objective around the online network `model` (encoder + head).

    `loss(v, x, idx, g)` takes the batch's two normalised views stacked (2B images: view 1, then
    view 2), the raw batch, the image indices and the augmentation generator, and returns
    (loss, stats); `after_step(progress)` updates EMA targets; `end_epoch(epoch)` epoch-level state.
    """

    def __init__(self, p: dict, model: models.SimCLRNet):
        super().__init__()
        self.p = p
        self.model = model

    def forward(self, v, x, idx, g):
        """The step's (loss, stats): `loss` under DistributedDataParallel, which calls forward."""
        return self.loss(v, x, idx, g)

    def embed(self, v):
        return self.model.head(self.model.encoder(v))

    def per_view(self) -> bool:
        """`<method>.per_view_forward`: one forward pass per view, so each BatchNorm normalises a view over
        its own batch, as the official MoCo, BYOL, SimSiam and WCL code do; off (and SimCLR, whose
        official code concatenates the views): one pass over both views."""
        m = self.p["method"]
        return m in params.METHOD_BLOCKS and self.p[m]["per_view_forward"]

    def views(self, fn, v, n: int = 2):
        """fn applied to the n stacked views v (view 1, then view 2, ...): per view or in one pass (per_view)."""
        return torch.cat([fn(u) for u in v.chunk(n)]) if self.per_view() else fn(v)

    def stats(self, z1, z2) -> dict:
        """Contrastive statistics of the global batch's embeddings (gathered, no gradient)."""
        t = self.p["pretrain"]
        z1, z2 = distributed.gather_nograd(z1.detach()), distributed.gather_nograd(z2.detach())
        return losses.contrastive_stats(z1.float(), z2.float(), t["temperature"], True)

    def fixed_lr_parameters(self) -> list:
        """Parameters the lr schedule leaves at the peak lr (optim.build); none by default."""
        return []

    def after_step(self, progress: float) -> None:
        pass

    def end_epoch(self, epoch: int) -> None:
        pass


class SimCLR(Method):
    def __init__(self, p, model):
        super().__init__(p, model)
        self.fn = losses.loss_fn(p)

    def loss(self, v, x, idx, g):
        z1, z2 = (distributed.gather(z) for z in self.embed(v).float().chunk(2))
        t = self.p["pretrain"]
        with torch.no_grad():
            stats = losses.contrastive_stats(z1, z2, t["temperature"], t["l2_normalize"])
        return self.fn(z1, z2), stats


class MoCo(Method):
    def __init__(self, p, model, n_images: int):
        super().__init__(p, model)
        m = p["moco"]
        self.key = frozen_copy(model)
        dim, g = model.head.out_dim, torch.Generator().manual_seed(p["seed"])
        if m["negatives"] == "queue":
            self.queue = Queue(m["queue_size"], dim, g)
        else:
            bs = p["pretrain"]["batch_size"]
            if m["queue_size"] > n_images - bs:
                raise params.ParamsError(f"'moco.queue_size' = {m['queue_size']}: the memory bank has only "
                                         f"{n_images - bs} entries outside a batch ({n_images} images - batch {bs})")
            bank = torch.randn(n_images, dim, generator=g, dtype=torch.float32)
            self.register_buffer("bank", F.normalize(bank, dim=1))

    def bank_indices(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """`queue_size` distinct bank entries drawn uniformly from those of images not in the batch:
        no query meets its own (stale) entry as a negative. Batch-mates' entries are left out too,
        so one draw serves the whole batch (their current keys are not negatives in InfoNCE here)."""
        free = torch.ones(self.bank.shape[0], dtype=torch.bool)
        free[idx.cpu()] = False
        allowed = free.nonzero()[:, 0]
        gen = augment.base(g)  # idx is the global batch's: one draw for the whole batch, on every rank alike
        order = torch.randperm(allowed.numel(), generator=gen, device=gen.device).cpu()
        return allowed[order[:self.p["moco"]["queue_size"]]]

    def negatives(self, idx, g):
        if self.p["moco"]["negatives"] == "queue":
            return self.queue.keys.clone()
        return self.bank[self.bank_indices(idx, g).to(self.bank.device)]

    @torch.no_grad()
    def keys(self, v, g):
        """The key encoder's l2-normalised embeddings of the stacked views v (per view: `views`)."""
        return self.views(lambda u: self.view_keys(u, g), v)

    @torch.no_grad()
    def view_keys(self, v, g):
        """The key encoder's l2-normalised embeddings of v. Shuffle-BN (several ranks, moco.shuffle_bn):
        the global batch's views are gathered, permuted with a draw shared by all ranks, each rank
        encodes its share of the permuted batch (its BatchNorm sees a random subset), and the keys are
        gathered back and unshuffled."""
        if not (self.p["moco"]["shuffle_bn"] and distributed.world_size() > 1):
            return F.normalize(self.key.head(self.key.encoder(v)).float(), dim=1)
        everything = distributed.gather_nograd(v)
        gen = augment.base(g)
        perm = torch.randperm(everything.shape[0], generator=gen, device=gen.device).to(v.device)
        k = F.normalize(self.key.head(self.key.encoder(distributed.shard(everything[perm]))).float(), dim=1)
        unshuffled = torch.empty_like(k_all := distributed.gather_nograd(k))
        unshuffled[perm] = k_all
        return distributed.shard(unshuffled)

    def loss(self, v, x, idx, g):
        m = self.p["moco"]
        q1, q2 = F.normalize(self.views(self.embed, v).float(), dim=1).chunk(2)
        k1, k2 = self.keys(v, g).chunk(2)
        neg = self.negatives(idx, g)
        loss = (losses.info_nce(q1, k2, neg, m["temperature"]) + losses.info_nce(q2, k1, neg, m["temperature"])) / 2
        with torch.no_grad():
            k1, k2 = distributed.gather_nograd(k1), distributed.gather_nograd(k2)  # the global batch's, in order
            if m["negatives"] == "queue":
                self.queue.push(torch.cat([k1, k2]))
            else:
                i = idx.to(self.bank.device)
                self.bank[i] = F.normalize(m["bank_momentum"] * self.bank[i] + (1 - m["bank_momentum"]) * (k1 + k2) / 2,
                                           dim=1)
        return loss, self.stats(q1, q2)

    def after_step(self, progress):
        ema_(self.key, self.model, self.p["moco"]["momentum"])


class BYOL(Method):
    def __init__(self, p, model):
        super().__init__(p, model)
        dim = model.head.out_dim
        torch.manual_seed(p["seed"] + 1)
        self.predictor = predictor(dim, p["byol"]["predictor_hidden"] or p["head"]["hidden_dim"] or model.encoder.dim)
        self.target = frozen_copy(model)

    def loss(self, v, x, idx, g):
        z = self.views(self.embed, v)
        p1, p2 = self.views(self.predictor, z).float().chunk(2)
        with torch.no_grad():
            t1, t2 = self.views(lambda u: self.target.head(self.target.encoder(u)), v).float().chunk(2)
        loss = (losses.byol_regression(p1, t2) + losses.byol_regression(p2, t1)) / 2
        return loss, self.stats(*z.float().chunk(2))

    def after_step(self, progress):
        base = self.p["byol"]["momentum"]
        ema_(self.target, self.model, 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2)


class SimSiam(Method):
    def __init__(self, p, model):
        super().__init__(p, model)
        dim = model.head.out_dim
        torch.manual_seed(p["seed"] + 1)
        self.predictor = predictor(dim, p["simsiam"]["predictor_hidden"] or max(8, dim // 4))
        # the projector's output BN (no affine), facebookresearch/simsiam builder.py; a part of the
        # method, not of the saved network: evaluation reads h or the head's layers before it
        self.out_bn = nn.BatchNorm1d(dim, affine=False) if p["simsiam"]["output_bn"] else nn.Identity()

    def embed(self, v):
        return self.out_bn(super().embed(v))

    def fixed_lr_parameters(self) -> list:
        """SimSiam keeps the predictor at the peak lr (main_simsiam.py --fix-pred-lr)."""
        return list(self.predictor.parameters()) if self.p["simsiam"]["fixed_predictor_lr"] else []

    def loss(self, v, x, idx, g):
        z = self.views(self.embed, v)
        pr = self.views(self.predictor, z).float()
        z1, z2 = z.float().chunk(2)
        p1, p2 = pr.chunk(2)
        loss = (losses.negative_cosine(p1, z2) + losses.negative_cosine(p2, z1)) / 2
        return loss, self.stats(z1, z2)


class WCL(Method):
    def __init__(self, p, model, images: torch.Tensor, norm: nn.Module):
        super().__init__(p, model)
        torch.manual_seed(p["seed"] + 1)
        self.graph_head = models.head(p, model.encoder.dim)
        self.images, self.norm = images, norm
        n, k = images.shape[0], min(p["wcl"]["knn_k"], images.shape[0] - 1)
        self.register_buffer("feats", torch.zeros(n, model.encoder.dim, dtype=torch.float32))
        self.register_buffer("neighbours", torch.arange(n)[:, None].repeat(1, k))
        self.register_buffer("knn_ready", torch.zeros((), dtype=torch.bool))

    def small(self, x, idx, g):
        """Small views: of each image itself, or (KNN multi-crop, once ready) of one of its K nearest."""
        w, aug = self.p["wcl"], self.p["augment"]
        size = max(8, round(x.shape[-1] * w["small_size"]))
        views = []
        for _ in range(w["small_crops"]):
            src = x
            if bool(self.knn_ready):
                nb = self.neighbours[distributed.shard(idx).to(self.neighbours.device)]
                k = nb.shape[1]
                pick = augment.rows(g, nb.shape[0], lambda m, gen, k=k: torch.randint(0, k, (m,), generator=gen,
                                                                                      device=gen.device)).to(nb.device)
                src = self.images[nb[torch.arange(nb.shape[0], device=nb.device), pick].cpu()].to(x.device)
            views.append(self.norm(augment.small_views(src, aug, g, size, w["small_scale_min"], w["small_scale_max"])))
        return views

    def loss(self, v, x, idx, g):
        """The global batch's loss (embeddings gathered in global order, as SimCLR's)."""
        w = self.p["wcl"]
        t = w["temperature"]
        b = v.shape[0] // 2
        h = self.views(self.model.encoder, v)
        z1, z2 = (distributed.gather(e) for e in F.normalize(self.views(self.model.head, h).float(), dim=1).chunk(2))
        f1, f2 = (distributed.gather(e) for e in F.normalize(self.views(self.graph_head, h).float(), dim=1).chunk(2))
        z, f = torch.cat([z1, z2]), torch.cat([f1, f2])
        b_all = z1.shape[0]
        loss = losses.nt_xent(z1, z2, t, True)
        mask1, mask2 = weak_label_mask(f1), weak_label_mask(f2)
        eye = torch.eye(b_all, dtype=torch.bool, device=f.device)
        graph = (losses.sup_contrastive(f1, f1, mask2, t, eye) + losses.sup_contrastive(f2, f2, mask1, t, eye)) / 2
        loss = loss + w["lam"] * graph
        if w["small_crops"]:
            small = self.small(x, idx, g)
            reps = len(small)  # gathered crop by crop: [crop 1 of the global batch; crop 2; ...]
            hs = self.views(self.model.encoder, torch.cat(small), reps)
            zs = torch.cat([distributed.gather(e) for e in
                            F.normalize(self.views(self.model.head, hs, reps).float(), dim=1).chunk(reps)])
            fs = torch.cat([distributed.gather(e) for e in
                            F.normalize(self.views(self.graph_head, hs, reps).float(), dim=1).chunk(reps)])
            own = torch.cat([eye, eye], 1).repeat(reps, 1)                   # small crop of i ~ both views of i
            weak = torch.cat([mask1, mask2], 1).repeat(reps, 1)              # ~ i's weak-label mates in each view
            loss = loss + w["beta"] * losses.sup_contrastive(zs, z, own, t)
            loss = loss + w["gamma"] * losses.sup_contrastive(fs, f, weak, t)
        with torch.no_grad():
            h1 = distributed.gather_nograd(F.normalize(h[:b].detach().float(), dim=1))
            self.feats[idx.to(self.feats.device)] = h1.to(self.feats.device)
        # z1, z2 are the global batch's already (self.stats would gather them again)
        return loss, losses.contrastive_stats(z1, z2, self.p["pretrain"]["temperature"], True)

    @torch.no_grad()
    def end_epoch(self, epoch):
        """Recompute every image's K nearest neighbours from this epoch's features."""
        if epoch + 1 < self.p["wcl"]["knn_warmup_epochs"]:
            return
        k = self.neighbours.shape[1]
        for i in range(0, self.feats.shape[0], 1024):
            sim = self.feats[i:i + 1024] @ self.feats.t()
            sim[torch.arange(sim.shape[0]), torch.arange(i, i + sim.shape[0])] = float("-inf")
            self.neighbours[i:i + 1024] = sim.topk(k, dim=1).indices
        self.knn_ready.fill_(True)


def build(p: dict, model: models.SimCLRNet, images: torch.Tensor, norm: nn.Module) -> Method:
    """The configured method around `model`; `images` is the pretraining set (uint8, N x 3 x H x W), or
    for streamed data its source (only its length is read: WCL needs the tensor)."""
    kind = p["method"]
    if kind == "simclr":
        return SimCLR(p, model)
    if kind == "moco":
        return MoCo(p, model, len(images))
    if kind == "byol":
        return BYOL(p, model)
    if kind == "simsiam":
        return SimSiam(p, model)
    if kind == "wcl":
        return WCL(p, model, images, norm)
    raise ValueError(f"method {kind!r} has no pretraining objective here")
