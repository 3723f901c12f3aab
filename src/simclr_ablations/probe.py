"""Shortcut probes on a prepared dataset: how much of SimCLR's instance task colour alone solves.

`histogram_retrieval` draws the two views of N images with the given augmentation params
(augment.two_views, the pretraining code path), describes every view by its joint RGB colour
histogram only, and counts how often a view's nearest other view (among the 2N - 1) is its
positive: the contrastive accuracy that a colour-histogram "encoder" reaches without learning any
shape or texture. Chance is 1 / (2N - 1).
"""

from __future__ import annotations

import torch

from . import augment


def colour_histograms(x: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Joint RGB histograms (B x bins^3) of a float batch in [0, 1], square-rooted and l2-normalised
    (the Hellinger embedding: a dot product is the Bhattacharyya coefficient)."""
    q = (x.clamp(0, 1) * bins).long().clamp_max(bins - 1)
    code = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    h = torch.zeros(x.shape[0], bins**3).scatter_add_(1, code.flatten(1), torch.ones(code.flatten(1).shape))
    return torch.nn.functional.normalize(h.sqrt(), dim=1)


def retrieval_accuracy(e1: torch.Tensor, e2: torch.Tensor) -> float:
    """Share of the 2N views whose most similar other view is their positive (embeddings l2-normalised)."""
    e = torch.cat([e1, e2])
    n = e1.shape[0]
    sim = e @ e.t()
    sim.fill_diagonal_(-float("inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return (sim.argmax(1) == pos).float().mean().item()


def histogram_retrieval(images: torch.Tensor, aug: dict, n: int = 256, batches: int = 4, seed: int = 0,
                        bins: int = 8) -> float:
    """Mean colour-histogram retrieval accuracy of the positive among 2n - 1 candidates, over `batches`
    batches of n images (uint8) augmented with `aug` (the `augment` params)."""
    g = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(batches):
        idx = torch.randperm(images.shape[0], generator=g)[:n]
        v1, v2 = augment.two_views(images[idx], aug, g)
        accs.append(retrieval_accuracy(colour_histograms(v1, bins), colour_histograms(v2, bins)))
    return sum(accs) / len(accs)


def colour_encoder_accuracy(images: torch.Tensor, aug: dict, steps: int = 300, n: int = 256, width: int = 32,
                            seed: int = 0) -> float:
    """Contrastive accuracy (positive among 2n - 1, held-out images) of an encoder that can see only
    pixel colours: 1x1 convolutions and global average pooling, trained with NT-Xent (tau 0.1, Adam)
    on views drawn with `aug`. It measures how much of the instance task colour statistics solve
    once a network may learn its own colour features (the histogram probe's fixed bins cannot)."""
    from . import losses

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    half = images.shape[0] // 2
    train, test = images[:half], images[half:]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, width, 1), torch.nn.ReLU(), torch.nn.Conv2d(width, width, 1),
                              torch.nn.ReLU(), torch.nn.Conv2d(width, width, 1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(width, 32))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        v1, v2 = augment.two_views(train[torch.randperm(half, generator=g)[:n]], aug, g)
        loss = losses.nt_xent(net(v1), net(v2), temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accs = []
    with torch.no_grad():
        for _ in range(4):
            v1, v2 = augment.two_views(test[torch.randperm(test.shape[0], generator=g)[:n]], aug, g)
            accs.append(retrieval_accuracy(torch.nn.functional.normalize(net(v1), dim=1),
                                           torch.nn.functional.normalize(net(v2), dim=1)))
    return sum(accs) / len(accs)
