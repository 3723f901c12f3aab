"""The embedded dataset `textures`: generated from a seed in about a second, 32x32 RGB, no download.

It is built so that the paper's colour shortcut (Section 3.2, Fig. 6) decides what SimCLR learns:

- the *class* is a whole-frame, stationary luminance texture (stripes, checkers, dot lattices,
  grids, waves; random phase, small rotation, 4 to 7 cycles per image so a 20%-area crop, 0.45 of
  the side, still holds about two). Every class is its own mirror image, so random flips never turn
  one class into another, and all classes survive grayscale.
- the textures have half contrast (CONTRAST) around mid-grey. At full contrast an untrained encoder
  already reached 66.5% linear top-1 and every SimCLR cell saturated near 97%, so no ablation could
  show; at half contrast the untrained floor is about 50% and the cells spread out.
- the *instance* is carried by colour in the colour jitter's own family: every image is painted
  with one shared two-tone palette, then given its own global colour transform (brightness,
  contrast and saturation factors in [0.75, 1.25], a hue shift within +-0.25 of the circle; random
  order), so two crops of one image have near-identical colour histograms and colour distortion
  re-draws what identifies the image. The hue range is half the circle rather than all of it: with
  the full circle, jitter of strength 1/8 (hue +-0.025) left most instances separable by hue alone
  and the 1/8 cell fell into a colour or a shape basin by seed (59.5 / 69.7 / 82.2, 3 seeds).
- fine class-irrelevant detail (per-pixel luminance noise, fixed per image) lets un-cropped views
  be matched pixel by pixel; a crop-and-resize destroys it.

`shortcut` (probe.py) measures the colour shortcut on any prepared dataset.
"""

from __future__ import annotations

import math

import torch

from . import augment

TEXTURES = ("h_stripes", "v_stripes", "checker", "diag_grid", "dots", "holes", "grid", "hex_dots", "h_waves",
            "v_waves", "plaid", "blobs")
PALETTE = ((0.90, 0.75, 0.55), (0.15, 0.20, 0.30))  # light, dark tone: the light one stays lighter at any hue
INSTANCE_BCS = 0.25  # brightness / contrast / saturation factors uniform in [1 - x, 1 + x]
INSTANCE_HUE = 0.25  # hue shift uniform in [-x, x] of the circle
CONTRAST = 0.5  # luminance contrast of the textures around mid-grey
DETAIL_STD = 0.06  # per-pixel luminance noise, fixed per image


def _field(kind: str, xs: torch.Tensor, ys: torch.Tensor, g: torch.Generator, cycles=(4.0, 7.0)) -> torch.Tensor:
    """A [0, 1] luminance map of texture `kind` for n images at coordinates xs, ys (n x S x S, in [0, 1)),
    with `cycles` (lo, hi) periods per image."""
    n = xs.shape[0]

    def u(lo, hi):
        return torch.rand(n, 1, 1, generator=g) * (hi - lo) + lo

    theta = u(-0.17, 0.17)  # about +-10 degrees: both signs are in every class, so a flip stays in class
    x = xs * torch.cos(theta) - ys * torch.sin(theta)
    y = xs * torch.sin(theta) + ys * torch.cos(theta)
    w = 2 * math.pi * u(*cycles)
    px, py = u(0, 2 * math.pi), u(0, 2 * math.pi)
    cx, cy = torch.cos(w * x + px), torch.cos(w * y + py)
    fields = {
        "h_stripes": lambda: cy,
        "v_stripes": lambda: cx,
        "checker": lambda: cx * cy * 2,
        "diag_grid": lambda: (torch.maximum(torch.cos(w * (x + y) / math.sqrt(2) + px),
                                            torch.cos(w * (x - y) / math.sqrt(2) + py)) - 0.8) * 6,
        "dots": lambda: (cx + cy - 1.2) * 2,
        "holes": lambda: (1.2 - cx - cy) * 2,
        "grid": lambda: (torch.maximum(cx, cy) - 0.8) * 6,
        "hex_dots": lambda: (cx + torch.cos(w * (x / 2 + y * math.sqrt(3) / 2) + py)
                             + torch.cos(w * (-x / 2 + y * math.sqrt(3) / 2) + px + py) - 1.0) * 2,
        "h_waves": lambda: torch.cos(w * y + 1.2 * torch.sin(w * x / 2 + px) + py),
        "v_waves": lambda: torch.cos(w * x + 1.2 * torch.sin(w * y / 2 + py) + px),
        "plaid": lambda: (cx + cy) * 1.5,
        "blobs": lambda: _blobs(n, xs.shape[-1], g, (cycles[0] + cycles[1]) / 2 + 0.5),
    }
    return torch.sigmoid(3.0 * fields[kind]())


def _blobs(n: int, size: int, g: torch.Generator, radius: float = 6.0) -> torch.Tensor:
    """Isotropic band-pass noise (about `radius` blobs per side), standardised per image."""
    f = torch.fft.fftfreq(size)
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2) * size
    band = torch.exp(-((r - radius) ** 2) / 4.0)
    z = torch.fft.ifft2(torch.fft.fft2(torch.randn(n, size, size, generator=g)) * band).real
    return (z - z.mean((1, 2), keepdim=True)) / z.std((1, 2), keepdim=True).clamp_min(1e-6) * 1.5


def instance_colour(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image's own global colour transform, from the colour jitter's family (augment.color's ops)."""
    b = x.shape[0]
    factors = [torch.rand(b, generator=g) * 2 * INSTANCE_BCS + 1 - INSTANCE_BCS for _ in range(3)]
    factors.append((torch.rand(b, generator=g) * 2 - 1) * INSTANCE_HUE)
    order = torch.rand(b, 4, generator=g).argsort(1)
    ops = (augment._brightness, augment._contrast, augment._saturation, augment._hue)
    x = x.clone()
    for step in range(4):
        for k, op in enumerate(ops):
            idx = torch.nonzero(order[:, step] == k).flatten()
            if idx.numel():
                x[idx] = op(x[idx], factors[k][idx].view(-1, 1, 1, 1))
    return x


BANDS = {1: ((4.0, 7.0),), 2: ((2.0, 3.2), (6.0, 9.6))}  # cycles per image of each scale band


def class_names(classes: int, bands: int = 1) -> list[str]:
    if bands == 1:
        return list(TEXTURES[:classes])
    return [f"{TEXTURES[c // bands]}/{('coarse', 'fine')[c % bands]}" for c in range(classes)]


def textures(classes: int, size: int, n: int, seed: int, bands: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8 n x 3 x size x size) and balanced labels, a pure function of the arguments.
    With `bands` 2, class c is texture c // 2 at scale band c % 2 (coarse, fine)."""
    if not 2 <= classes <= len(TEXTURES) * bands:
        raise ValueError(f"'data.synthetic.classes' = {classes}: the textures dataset has 2 to {len(TEXTURES) * bands}")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
    lin = (torch.arange(size) + 0.5) / size
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    lum = torch.empty(n, 1, size, size)
    for c in range(classes):
        idx = torch.nonzero(labels == c).flatten()
        lum[idx, 0] = _field(TEXTURES[c // bands], xs.expand(idx.numel(), -1, -1), ys.expand(idx.numel(), -1, -1), g,
                             BANDS[bands][c % bands])
    lum = 0.5 + (lum - 0.5) * CONTRAST
    lum = (lum + torch.randn(n, 1, size, size, generator=g) * DETAIL_STD).clamp(0, 1)
    light, dark = (torch.tensor(c).view(1, 3, 1, 1) for c in PALETTE)
    images = instance_colour(lum * light + (1 - lum) * dark, g)
    return (images * 255).round().to(torch.uint8), labels
