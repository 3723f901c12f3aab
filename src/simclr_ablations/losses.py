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
