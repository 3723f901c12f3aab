"""Encoders (ResNet by depth and width) and projection heads (none / linear / k-layer MLP).

The encoder f maps an image to h (after global average pooling); the head g maps h to the
embedding z that the loss sees. Small images use the CIFAR stem the paper's Appendix B.9
prescribes (3x3 conv, stride 1, no max-pool); a 7x7 stride-2 stem with max-pool is for large
images. `Head.layers_out` exposes every intermediate layer so evaluation can read h, g(h) or
anything in between (Table 3 / Fig. 8).

With `zero_init_residual` the last BatchNorm of every residual block starts with gamma = 0, so
each block starts as the identity (its shortcut); the official SimCLR ResNet does this
(`batch_norm_relu(..., init_zero=True)` in google-research/simclr resnet.py), and it steadies the
first steps, which matters when a run is a few hundred steps long.
"""

from __future__ import annotations

import torch
from torch import nn

from . import params

LAYOUT = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
          152: ("bottleneck", (3, 8, 36, 3))}


class BasicBlock(nn.Module):
    expansion = 1
    last_bn = "bn2"

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4
    last_bn = "bn3"

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(cin, planes * 4, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet-`depth` with every channel count multiplied by `width`; forward returns h."""

    def __init__(self, depth: int, width: float, stem: str, zero_init_residual: bool = True):
        super().__init__()
        kind, blocks = LAYOUT[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
        c0 = planes[0]
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, c0, 7, 2, 3, bias=False), nn.BatchNorm2d(c0), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        layers, cin = [], c0
        for i, (p, n) in enumerate(zip(planes, blocks)):
            for j in range(n):
                layers.append(block(cin, p, 2 if (i > 0 and j == 0) else 1))
                cin = p * block.expansion
        self.layers = nn.Sequential(*layers)
        self.dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if zero_init_residual and isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(getattr(m, m.last_bn).weight)

    def forward(self, x):
        return self.layers(self.stem(x)).mean((2, 3))


def channels_last_breaks_on_cpu(model: nn.Module) -> bool:
    """True when the model has a 1x1 stride-2 convolution with fewer than 8 input channels (a ResNet's
    downsample shortcut at width x1/16): torch 2.14's CPU backward of such a convolution in channels_last
    corrupts the heap (segfault, abort or bus error, on AVX2; a plain Conv2d(4, 8, 1, 2) reproduces it).
    pretrain then keeps the default layout on the CPU."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
               for m in model.modules())


def use_channels_last(wanted: bool, device: torch.device, model: nn.Module) -> bool:
    """runtime.channels_last, except on the CPU for a model that channels_last breaks there."""
    return wanted and not (device.type == "cpu" and channels_last_breaks_on_cpu(model))


def stem_for(stem: str, image_size: int) -> str:
    return stem if stem != "auto" else ("cifar" if image_size <= 64 else "imagenet")


def encoder(p: dict) -> ResNet:
    e = p["encoder"]
    return ResNet(e["depth"], e["width"], stem_for(e["stem"], p["data"]["image_size"]), e["zero_init_residual"])


class ScaleBatchNorm(nn.BatchNorm1d):
    """BatchNorm with a learnable scale and no shift: `batch_norm_relu(..., center=False)`, the
    output layer of the official SimCLR heads (model_util.linear_layer with use_bias=False)."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.bias.requires_grad_(False)


def _out_layer(cin: int, out_dim: int, output_bn: bool) -> nn.Module:
    if not output_bn:
        return nn.Linear(cin, out_dim)
    return nn.Sequential(nn.Linear(cin, out_dim, bias=False), ScaleBatchNorm(out_dim))


class Head(nn.Module):
    """Projection head g: none (identity), linear, or an MLP of `layers` linear layers with ReLU (+BN).
    With `output_bn` (params.has_output_bn) the last linear layer is followed by a BN without shift, as in the official
    SimCLR code for both the linear and the non-linear head (z's scale is then learnt, which is
    what the no-l2 rows of Table 5 depend on)."""

    def __init__(self, kind: str, dim: int, layers: int, hidden_dim: int, out_dim: int, batch_norm: bool,
                 output_bn: bool = False):
        super().__init__()
        hidden = hidden_dim or dim
        self.blocks = nn.ModuleList()
        if kind == "linear":
            self.blocks.append(_out_layer(dim, out_dim, output_bn))
        elif kind == "mlp":
            cin = dim
            for _ in range(layers - 1):
                parts = [nn.Linear(cin, hidden, bias=not batch_norm)]
                parts += [nn.BatchNorm1d(hidden)] if batch_norm else []
                self.blocks.append(nn.Sequential(*parts, nn.ReLU()))
                cin = hidden
            self.blocks.append(_out_layer(cin, out_dim, output_bn))
        self.out_dim = out_dim if self.blocks else dim

    def layers_out(self, h: torch.Tensor) -> list[torch.Tensor]:
        """[h, g1(h), g2(g1(h)), ...]: index 0 is h, the last is g(h)."""
        outs = [h]
        for block in self.blocks:
            outs.append(block(outs[-1]))
        return outs

    def forward(self, h):
        for block in self.blocks:
            h = block(h)
        return h


def head(p: dict, dim: int) -> Head:
    h = p["head"]
    return Head(h["type"], dim, h["layers"], h["hidden_dim"], h["out_dim"], h["batch_norm"], params.has_output_bn(h))


class SimCLRNet(nn.Module):
    """Encoder + projection head; forward returns the embedding z = g(f(x))."""

    def __init__(self, p: dict):
        super().__init__()
        self.encoder = encoder(p)
        self.head = head(p, self.encoder.dim)

    def forward(self, x):
        return self.head(self.encoder(x))

    def features(self, x, layer: int = 0):
        return self.head.layers_out(self.encoder(x))[layer]


class SupervisedNet(nn.Module):
    """The Table 1 baseline: the same encoder with a linear classifier, trained with labels."""

    def __init__(self, p: dict, classes: int):
        super().__init__()
        self.encoder = encoder(p)
        self.classifier = nn.Linear(self.encoder.dim, classes)

    def forward(self, x):
        return self.classifier(self.encoder(x))

    def features(self, x, layer: int = 0):
        return self.encoder(x)


def count_params(module: nn.Module) -> int:
    return sum(t.numel() for t in module.parameters())
