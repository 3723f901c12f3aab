"""Contrastive losses of the paper's Table 2, as functions of the two views' embeddings.

For a batch of N images the 2N embeddings [z1; z2] form N positive pairs (i, i+N); every other
embedding in the batch is a negative ("in-batch negatives"). With `normalize` the similarity
is the cosine, otherwise the raw dot product (Table 5). All losses average over the 2N anchors.
Under data parallelism the caller gathers z from every rank before calling: the losses need
the whole batch's negatives, which is also why gradient accumulation cannot stand in for a
large batch here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarities(z1: torch.Tensor, z2: torch.Tensor, normalize: bool):
    """(2N x 2N similarity matrix with the diagonal masked out, index of each anchor's positive)."""
    z = torch.cat([z1, z2]).float()
    if normalize:
        z = F.normalize(z, dim=1)
    sim = z @ z.t()
    n = z1.shape[0]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return sim.masked_fill(self_mask, float("-inf")), pos


def nt_xent(z1, z2, temperature: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy: -log softmax of the positive among all 2N-1 others."""
    sim, pos = similarities(z1, z2, normalize)
    return F.cross_entropy(sim / temperature, pos)


def _pos_neg(sim, pos):
    n2 = sim.shape[0]
    s_pos = sim[torch.arange(n2, device=sim.device), pos]
    neg_mask = torch.ones_like(sim, dtype=torch.bool)
    neg_mask.fill_diagonal_(False)
    neg_mask[torch.arange(n2, device=sim.device), pos] = False
    return s_pos, neg_mask


def nt_logistic(z1, z2, temperature: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """NT-Logistic: -log sigmoid(s+/t) - mean over negatives of log sigmoid(-s-/t).

    Table 2's per-pair terms; the negatives of an anchor are averaged so that the positive and
    the negative side weigh the same whatever the batch size.
    """
    sim, pos = similarities(z1, z2, normalize)
    s_pos, neg_mask = _pos_neg(sim, pos)
    neg = F.logsigmoid(-sim.masked_fill(~neg_mask, 0.0) / temperature) * neg_mask
    return (-F.logsigmoid(s_pos / temperature) - neg.sum(1) / neg_mask.sum(1)).mean()


def margin_triplet(z1, z2, margin: float = 1.0, normalize: bool = True, semi_hard: bool = False) -> torch.Tensor:
    """Margin triplet: mean over negatives of max(s- - s+ + margin, 0).

    With `semi_hard`, each anchor uses only its semi-hard negatives (s+ - margin < s- < s+, i.e.
    less similar than the positive but inside the margin); an anchor with none uses its hardest
    negative.
    """
    sim, pos = similarities(z1, z2, normalize)
    s_pos, neg_mask = _pos_neg(sim, pos)
    sim = sim.masked_fill(~neg_mask, 0.0)
    hinge = (sim - s_pos[:, None] + margin).clamp_min(0)
    mask = neg_mask
    if semi_hard:
        semi = neg_mask & (sim < s_pos[:, None]) & (sim > s_pos[:, None] - margin)
        hardest = sim.masked_fill(~neg_mask, float("-inf")).argmax(1)
        fallback = torch.zeros_like(neg_mask)
        fallback[torch.arange(sim.shape[0], device=sim.device), hardest] = True
        mask = torch.where(semi.any(1, keepdim=True), semi, fallback)
    return ((hinge * mask).sum(1) / mask.sum(1)).mean()


def loss_fn(p: dict):
    """The configured loss as a function of (z1, z2)."""
    t = p["pretrain"]
    if t["loss"] == "nt_xent":
        return lambda z1, z2: nt_xent(z1, z2, t["temperature"], t["l2_normalize"])
    if t["loss"] == "nt_logistic":
        return lambda z1, z2: nt_logistic(z1, z2, t["temperature"], t["l2_normalize"])
    return lambda z1, z2: margin_triplet(z1, z2, t["margin"], t["l2_normalize"], t["semi_hard"])


@torch.no_grad()
def contrastive_stats(z1, z2, temperature: float, normalize: bool) -> dict:
    """Contrastive accuracy (the positive is the top match among the 2N-1 others) and the mean
    entropy of each anchor's softmax over those candidates (Table 5)."""
    sim, pos = similarities(z1, z2, normalize)
    logits = sim / temperature
    acc = (logits.argmax(1) == pos).float().mean()
    logp = F.log_softmax(logits, 1)
    entropy = -(logp.exp() * logp.masked_fill(torch.isinf(logits), 0.0)).sum(1).mean()
    return {"contrastive_acc": acc.item(), "entropy": entropy.item()}


# --- losses of the related methods (methods.py) ---------------------------------------------------

def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: each query's key is its positive, `negatives` (K x d, no gradient) the rest.
    q, k and negatives are expected l2-normalised; the positive is logit 0."""
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ negatives.t()
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, stopgrad(z)): minus the mean cosine similarity; no gradient reaches z."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: || normalize(p) - normalize(z) ||^2 = 2 - 2 cos(p, z); z is the target (no gradient)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def sup_contrastive(anchors: torch.Tensor, others: torch.Tensor, positive: torch.Tensor, temperature: float,
                    exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020), as WCL uses it: for each anchor, the mean over
    its positives of -log softmax, the softmax taken over every column not in `exclude` (e.g. itself).
    anchors: A x d and others: M x d (l2-normalised); positive, exclude: A x M boolean masks."""
    logits = anchors @ others.t() / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        positive = positive & ~exclude
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    log_prob = log_prob.masked_fill(~positive, 0.0)
    return (-(log_prob.sum(1) / positive.sum(1).clamp_min(1))).mean()
