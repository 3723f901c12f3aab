"""Batched tensor augmentations: named ops with a strength, per-sample random parameters.

Every op takes a float batch B x 3 x H x W in [0, 1] (on the CPU or the GPU), the op's params
and a torch.Generator on the batch's device, and returns a batch of the same shape. Random
parameters are drawn per sample in one call each, so there is no Python loop over images and
the whole pipeline runs where the batch lives. Under data parallelism the generator is a `Shard`:
each rank draws the parameters of the whole global batch, exactly as one process would, and keeps
its own rows, so N ranks x B/N images get the augmentations of 1 process x B. `two_views` builds SimCLR's pair of views,
either with every op on both branches or with the paper's Fig. 5 protocol: each image is
cropped and resized once, that same x_i is one view ("t(x_i) = x_i"), and the studied ops
transform a copy of it into the other view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Shard:
    """A generator that draws for the global batch (`total` rows) and keeps rows [start, stop): this
    rank's share. Every rank holds the same generator state, so the draws stay in step."""

    def __init__(self, generator: torch.Generator, start: int, stop: int, total: int):
        self.generator, self.start, self.stop, self.total = generator, start, stop, total
        self.device = generator.device


def rows(g, n: int, draw) -> torch.Tensor:
    """draw(n, generator): n rows of random numbers; for a Shard, the global batch's rows, sliced."""
    if isinstance(g, Shard):
        return draw(g.total, g.generator)[g.start:g.stop]
    return draw(n, g)


def base(g) -> torch.Generator:
    """The torch.Generator behind g (for draws that are global, not per row)."""
    return g.generator if isinstance(g, Shard) else g


def _rand(n: int, g) -> torch.Tensor:
    return rows(g, n, lambda m, gen: torch.rand(m, generator=gen, device=gen.device))


def _u(n: int, lo, hi, g) -> torch.Tensor:
    return _rand(n, g) * (hi - lo) + lo


def _coin(n: int, p: float, g) -> torch.Tensor:
    return _rand(n, g) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def crop_boxes(n: int, height: int, width: int, scale_min: float, ratio_min: float, ratio_max: float,
               g: torch.Generator, trials: int = 10, scale_max: float = 1.0) -> torch.Tensor:
    """Random-resized-crop boxes (x0, y0, w, h) in pixels, torchvision's sampling, vectorised.

    Each sample tries `trials` (area, aspect) draws and keeps the first that fits; if none fits
    it falls back to the whole image.
    """
    area = height * width
    target = area * rows(g, n, lambda m, gen: _u(m * trials, scale_min, scale_max, gen).view(m, trials))
    log_r = rows(g, n, lambda m, gen: _u(m * trials, math.log(ratio_min), math.log(ratio_max), gen).view(m, trials))
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    ok = (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], trials, dtype=torch.long))
    w = torch.cat([w, torch.full((n, 1), float(width), device=w.device)], 1).gather(1, first[:, None])[:, 0]
    h = torch.cat([h, torch.full((n, 1), float(height), device=h.device)], 1).gather(1, first[:, None])[:, 0]
    x0 = _rand(n, g) * (width - w)
    y0 = _rand(n, g) * (height - h)
    return torch.stack([x0, y0, w, h], 1)


def resize_boxes(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box and resize it back to H x W (bilinear), flipping where asked."""
    b, _, height, width = x.shape
    x0, y0, w, h = boxes.unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    theta[:, 0, 0] = w / width * sign
    theta[:, 0, 2] = (x0 + w / 2) / width * 2 - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (y0 + h / 2) / height * 2 - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop(x, cfg, g):
    """Random resized crop + horizontal flip (the paper's 'crop')."""
    b, _, height, width = x.shape
    boxes = crop_boxes(b, height, width, cfg["scale_min"], cfg["ratio_min"], cfg["ratio_max"], g,
                       scale_max=cfg.get("scale_max", 1.0))
    return resize_boxes(x, boxes, _coin(b, cfg["flip"], g))


def cutout(x, cfg, g):
    """Zero a random square per image; side uniform in [size/2, size] of the image side."""
    b, _, height, width = x.shape
    side = _u(b, cfg["size"] / 2, cfg["size"], g) * min(height, width)
    cy, cx = _u(b, 0, height, g), _u(b, 0, width, g)
    keep_all = ~_coin(b, cfg["p"], g)
    ys = torch.arange(height, device=x.device, dtype=x.dtype)[None, :, None] + 0.5
    xs = torch.arange(width, device=x.device, dtype=x.dtype)[None, None, :] + 0.5
    hole = ((ys - cy[:, None, None]).abs() < side[:, None, None] / 2) & (
        (xs - cx[:, None, None]).abs() < side[:, None, None] / 2)
    hole &= ~keep_all[:, None, None]
    return x * (~hole)[:, None].to(x.dtype)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, gch, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - gch) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == gch, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i[:, None])[:, 0]
    gch = torch.stack([t, v, v, q, p, p], 1).gather(1, i[:, None])[:, 0]
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i[:, None])[:, 0]
    return torch.stack([r, gch, b], 1)


def _brightness(x, f):
    return (x * f).clamp(0, 1)


def _contrast(x, f):
    m = _gray(x).mean((1, 2, 3), keepdim=True)
    return ((x - m) * f + m).clamp(0, 1)


def _saturation(x, f):
    gr = _gray(x)
    return ((x - gr) * f + gr).clamp(0, 1)


def _hue(x, shift):
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv)


def color(x, cfg, g):
    """Color distortion of the official code: jitter (b, c, s = 0.8 s, hue 0.2 s; random order) w.p. p_jitter,
    then grayscale w.p. p_gray."""
    b = x.shape[0]
    s = cfg["strength"]
    bcs, hue = 0.8 * s, min(0.2 * s, 0.5)
    factors = [
        _u(b, max(0.0, 1 - bcs), 1 + bcs, g),
        _u(b, max(0.0, 1 - bcs), 1 + bcs, g),
        _u(b, max(0.0, 1 - bcs), 1 + bcs, g),
        _u(b, -hue, hue, g),
    ]
    order = rows(g, b, lambda m, gen: torch.rand(m, 4, generator=gen, device=gen.device)).argsort(1)
    jitter = _coin(b, cfg["p_jitter"], g)
    gray = _coin(b, cfg["p_gray"], g)
    ops = (_brightness, _contrast, _saturation, _hue)
    x = x.clone()
    for step in range(4):
        for k, op in enumerate(ops):
            idx = torch.nonzero(jitter & (order[:, step] == k)).flatten()
            if idx.numel():
                x[idx] = op(x[idx], factors[k][idx].view(-1, 1, 1, 1))
    return torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)


def sobel(x, cfg, g):
    """Sobel edge magnitude of the grayscale image, scaled to [0, 1] per image, on 3 channels."""
    b = x.shape[0]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()])[:, None]
    gr = F.pad(_gray(x), (1, 1, 1, 1), mode="replicate")
    e = F.conv2d(gr, k).pow(2).sum(1, keepdim=True).sqrt()
    e = e / e.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    apply = _coin(b, cfg["p"], g)[:, None, None, None]
    return torch.where(apply, e.expand_as(x), x)


def noise(x, cfg, g):
    """Additive Gaussian noise, sigma uniform in [0, std] per image."""
    b = x.shape[0]
    sigma = _u(b, 0.0, cfg["std"], g) * _coin(b, cfg["p"], g)
    eps = rows(g, b, lambda m, gen: torch.randn((m, *x.shape[1:]), generator=gen, device=gen.device, dtype=x.dtype))
    return (x + sigma.view(-1, 1, 1, 1) * eps).clamp(0, 1)


def blur(x, cfg, g):
    """Gaussian blur w.p. p, sigma uniform in [sigma_min, sigma_max], kernel = kernel_fraction of the side."""
    b, c, height, width = x.shape
    k = max(3, int(round(cfg["kernel_fraction"] * height)) // 2 * 2 + 1)
    sigma = _u(b, cfg["sigma_min"], cfg["sigma_max"], g)
    apply = _coin(b, cfg["p"], g)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    w = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    delta = (t == 0).to(x.dtype)[None].expand(b, k)
    w = torch.where(apply[:, None], w / w.sum(1, keepdim=True), delta)
    w = w.repeat_interleave(c, 0)
    y = x.reshape(1, b * c, height, width)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), w[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), w[:, None, :, None], groups=b * c)
    return y.view(b, c, height, width).clamp(0, 1)


def rotate(x, cfg, g):
    """Rotate by 90, 180 or 270 degrees (chosen uniformly) w.p. p."""
    b = x.shape[0]
    k = rows(g, b, lambda m, gen: torch.randint(1, 4, (m,), generator=gen, device=gen.device)) * _coin(b, cfg["p"], g)
    out = x
    for turns in (1, 2, 3):
        out = torch.where((k == turns)[:, None, None, None], torch.rot90(x, turns, (2, 3)), out)
    return out


OPS = {"crop": crop, "cutout": cutout, "color": color, "sobel": sobel, "noise": noise, "blur": blur,
       "rotate": rotate}


def apply_ops(x: torch.Tensor, ops: list[str], aug: dict, g: torch.Generator) -> torch.Tensor:
    for name in ops:
        x = OPS[name](x, aug[name], g)
    return x


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def two_views(x: torch.Tensor, aug: dict, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented views of a batch (uint8 or float in [0, 1]), un-normalised. A streamed batch
    (B x V x 3 x H x W, cropped at decode time) skips the leading crop: V = 2 crops, one per view, or
    V = 1 image shared by both (no crop in the ops; branches=one: the base crop).

    branches=both: every op on each view, drawn independently. branches=one (Fig. 5 as the paper ran
    it): one random crop-and-resize per image (area >= base_crop_scale, the crop's aspect ratios, no
    flip) shared by both views; the studied ops go on the first view only, nothing else on the second.
    """
    x = to_float(x)
    if x.ndim == 5:  # B x V x 3 x H x W: cropped at decode time (stream.crop_plan)
        first, last = x[:, 0].contiguous(), x[:, -1].contiguous()
        if aug["branches"] == "one":
            return apply_ops(first, aug["ops"], aug, g), first
        rest = after_decode(aug["ops"])
        return apply_ops(first, rest, aug, g), apply_ops(last, rest, aug, g)
    if aug["branches"] == "both":
        return apply_ops(x, aug["ops"], aug, g), apply_ops(x, aug["ops"], aug, g)
    base = crop(x, dict(aug["crop"], scale_min=aug["base_crop_scale"], flip=0.0), g)
    return apply_ops(base, aug["ops"], aug, g), base


def after_decode(ops: list[str]) -> list[str]:
    """The ops left once a leading crop was applied at decode time (streamed data)."""
    return ops[1:] if ops and ops[0] == "crop" else ops


def one_view(x: torch.Tensor, ops: list[str], aug: dict, g: torch.Generator) -> torch.Tensor:
    """One augmented view (the supervised baseline): `ops` on a uint8/float batch, or on the crops
    made at decode time of a B x 1 x 3 x H x W streamed batch (its leading crop already done)."""
    x = to_float(x)
    if x.ndim == 5:
        return apply_ops(x[:, 0].contiguous(), after_decode(ops), aug, g)
    return apply_ops(x, ops, aug, g)


def small_views(x: torch.Tensor, aug: dict, g: torch.Generator, size: int, scale_min: float,
                scale_max: float) -> torch.Tensor:
    """Multi-crop's small views (SwAV, WCL): a crop of area in [scale_min, scale_max] resized to
    size x size, then the view's other ops. Un-normalised float in [0, 1]."""
    x = to_float(x)
    v = crop(x, dict(aug["crop"], scale_min=scale_min, scale_max=scale_max), g)
    v = F.interpolate(v, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return apply_ops(v, [op for op in aug["ops"] if op != "crop"], aug, g)


class Normalize(torch.nn.Module):
    """Channel normalisation with the training set's statistics (identity when disabled)."""

    def __init__(self, mean, std, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std if self.enabled else x
