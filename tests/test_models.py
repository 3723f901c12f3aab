"""Encoders by (depth, width), the CIFAR stem, and heads exposing every layer."""

import pytest
import torch

from simclr_ablations import models, params


@pytest.mark.parametrize("depth, width, dim", [(10, 0.125, 64), (18, 0.25, 128), (34, 0.125, 64), (50, 0.125, 256),
                                               (18, 1.0, 512)])
def test_encoder_depth_width(depth, width, dim):
    net = models.ResNet(depth, width, "cifar")
    h = net(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, dim) and net.dim == dim


def test_cifar_stem_is_3x3_stride1_without_maxpool():
    p = params.load("smoke")
    net = models.encoder(p)
    conv = net.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.stem)
    big = models.encoder(params.load("smoke", settings=["data.image_size=96"]))
    assert big.stem[0].kernel_size == (7, 7) and any(isinstance(m, torch.nn.MaxPool2d) for m in big.stem)


def test_params_grow_with_depth_and_width():
    count = lambda d, w: models.count_params(models.ResNet(d, w, "cifar"))
    assert count(10, 0.25) < count(18, 0.25) < count(34, 0.25) < count(50, 0.25)
    assert count(18, 0.25) < count(18, 0.5) < count(18, 1.0)
    assert count(18, 1.0) == pytest.approx(11.17e6, rel=0.01)  # ResNet-18 CIFAR, no fc


@pytest.mark.parametrize("kind, layers, n_out", [("none", 2, 1), ("linear", 2, 2), ("mlp", 2, 3), ("mlp", 3, 4)])
def test_head_layers(kind, layers, n_out):
    head = models.Head(kind, 32, layers, 0, 8, True)
    outs = head.layers_out(torch.randn(4, 32))
    assert len(outs) == n_out
    assert outs[-1].shape == (4, 8 if kind != "none" else 32)
    assert torch.equal(head.eval()(outs[0]), head.eval().layers_out(outs[0])[-1])


def test_simclr_net_features():
    p = params.load("smoke", settings=["head.layers=3"])
    net = models.SimCLRNet(p).eval()
    x = torch.randn(3, 3, 32, 32)
    assert net.features(x, 0).shape[1] == net.encoder.dim
    assert torch.allclose(net.features(x, 3), net(x))
