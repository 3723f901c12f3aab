"""Contrastive losses of the paper's Table 2, as functions of the two views' embeddings.

For a batch of N images the 2N embeddings [z1; z2] form N positive pairs (i, i+N). With
`negatives="both"` every other embedding in the batch is a negative of an anchor (2N - 2 of
them, the paper's default); with `"one"` only the other view's embeddings of the other images
are (N - 1: Appendix B.10 uses these for NT-Logistic and the margin loss "for simplicity").
With `normalize` the similarity is the cosine, otherwise the raw dot product (Table 5). All
losses average over the 2N anchors. Under data parallelism the caller gathers z from every
rank before calling: the losses need the whole batch's negatives, which is also why gradient
accumulation cannot stand in for a large batch here.

Semi-hard mining (section 5.1, after FaceNet) keeps, per anchor, one negative: the closest one
that is farther than the positive and inside the margin (`semi_hard_negative` states what
happens when there is none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import params

NEGATIVES = ("both", "one")


def similarities(z1: torch.Tensor, z2: torch.Tensor, normalize: bool, negatives: str = "both"):
    """(anchor x candidate similarities, -inf where a column is no candidate of the row; column of
    each anchor's positive). both: 2N x 2N, the diagonal masked; one: 2N x N, view 1's anchors
    against view 2 and view 2's against view 1."""
    z1, z2 = z1.float(), z2.float()
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    if negatives == "one":
        sim = torch.cat([z1 @ z2.t(), z2 @ z1.t()])
        return sim, torch.arange(n, device=sim.device).repeat(2)
    z = torch.cat([z1, z2])
    sim = z @ z.t()
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return sim.masked_fill(self_mask, float("-inf")), pos


def nt_xent(z1, z2, temperature: float = 0.5, normalize: bool = True, negatives: str = "both") -> torch.Tensor:
    """Normalised temperature-scaled cross entropy: -log softmax of the positive among its candidates."""
    sim, pos = similarities(z1, z2, normalize, negatives)
    return F.cross_entropy(sim / temperature, pos)


def _pos_neg(sim, pos):
    """(similarity of each anchor to its positive, mask of its negatives)."""
    rows = torch.arange(sim.shape[0], device=sim.device)
    s_pos = sim[rows, pos]
    neg_mask = torch.isfinite(sim)
    neg_mask[rows, pos] = False
    return s_pos, neg_mask


@torch.no_grad()
def semi_hard_negative(sim: torch.Tensor, pos: torch.Tensor, margin: float):
    """Each anchor's semi-hard negative: (column, use).

    Semi-hard (FaceNet): farther than the positive but inside the margin, s+ - margin < s- < s+;
    of those the closest (largest s-). When an anchor has none:
    - if some negative is farther than the positive, the closest of those lies at s- <= s+ - margin:
      it is chosen with use = False (an easy anchor: no negative term; the hinge would be 0);
    - if no negative is farther than the positive (every one at s- >= s+), the farthest negative
      (smallest s-) is chosen, with use = True: the least hard of the hard ones, never the hardest.
    This is TensorFlow's triplet_semihard_loss rule, in similarities instead of distances.
    """
    s_pos, neg_mask = _pos_neg(sim, pos)
    farther = neg_mask & (sim < s_pos[:, None])
    closest_farther = sim.masked_fill(~farther, float("-inf")).argmax(1)
    farthest = sim.masked_fill(~neg_mask, float("inf")).argmin(1)
    has_farther = farther.any(1)
    col = torch.where(has_farther, closest_farther, farthest)
    s_sel = sim.gather(1, col[:, None])[:, 0]
    use = ~has_farther | (s_sel > s_pos - margin)
    return col, use


def nt_logistic(z1, z2, temperature: float = 0.5, normalize: bool = True, negatives: str = "both",
                semi_hard: bool = False, margin: float = 0.0) -> torch.Tensor:
    """NT-Logistic: -log sigmoid(s+/t) - mean over negatives of log sigmoid(-s-/t).

    Table 2's per-pair terms; the negatives of an anchor are averaged so that the positive and
    the negative side weigh the same whatever the batch size. With `semi_hard` the negative term
    is that of the anchor's semi-hard negative alone, `margin` being the mining window.
    """
    sim, pos = similarities(z1, z2, normalize, negatives)
    s_pos, neg_mask = _pos_neg(sim, pos)
    pos_term = -F.logsigmoid(s_pos / temperature)
    if semi_hard:
        col, use = semi_hard_negative(sim, pos, margin)
        s_neg = sim.gather(1, col[:, None])[:, 0]
        return (pos_term - F.logsigmoid(-s_neg / temperature) * use).mean()
    neg = F.logsigmoid(-sim.masked_fill(~neg_mask, 0.0) / temperature) * neg_mask
    return (pos_term - neg.sum(1) / neg_mask.sum(1)).mean()


def margin_triplet(z1, z2, margin: float = 1.0, normalize: bool = True, semi_hard: bool = False,
                   negatives: str = "both") -> torch.Tensor:
    """Margin triplet: mean over negatives of max(s- - s+ + margin, 0); with `semi_hard`, the
    hinge of the anchor's semi-hard negative alone (0 for an anchor whose negatives are all easy)."""
    sim, pos = similarities(z1, z2, normalize, negatives)
    s_pos, neg_mask = _pos_neg(sim, pos)
    if semi_hard:
        col, use = semi_hard_negative(sim, pos, margin)
        s_neg = sim.gather(1, col[:, None])[:, 0]
        return ((s_neg - s_pos + margin).clamp_min(0) * use).mean()
    hinge = (sim.masked_fill(~neg_mask, 0.0) - s_pos[:, None] + margin).clamp_min(0) * neg_mask
    return (hinge.sum(1) / neg_mask.sum(1)).mean()


def loss_fn(p: dict):
    """The configured loss as a function of (z1, z2)."""
    t = p["pretrain"]
    norm, neg = t["l2_normalize"], t["negatives"]
    if t["loss"] == "nt_xent":
        return lambda z1, z2: nt_xent(z1, z2, t["temperature"], norm, neg)
    if t["loss"] == "nt_logistic":
        return lambda z1, z2: nt_logistic(z1, z2, t["temperature"], norm, neg, t["semi_hard"], t["margin"])
    return lambda z1, z2: margin_triplet(z1, z2, t["margin"], norm, t["semi_hard"], neg)


def unused_keys(t: dict) -> list[str]:
    """The `pretrain` loss keys the configured loss does not read (params.unused_loss_keys)."""
    return params.unused_loss_keys(t)


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
