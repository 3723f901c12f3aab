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


@pytest.mark.parametrize("depth", [10, 50])
def test_zero_init_residual_makes_every_block_its_shortcut(depth):
    p = params.load("smoke", settings=[f"encoder.depth={depth}"])
    assert p["encoder"]["zero_init_residual"] is True  # the default, as the official resnet.py
    net = models.encoder(p).eval()
    blocks = [m for m in net.modules() if isinstance(m, (models.BasicBlock, models.Bottleneck))]
    last = [getattr(b, b.last_bn) for b in blocks]
    assert blocks and all(torch.count_nonzero(bn.weight) == 0 for bn in last)
    assert all(torch.all(bn.bias == 0) for bn in last)
    x = torch.randn(2, blocks[0].conv1.in_channels, 8, 8)
    assert torch.allclose(blocks[0](x), torch.relu(blocks[0].shortcut(x)))
    off = models.encoder(params.load("smoke", settings=[f"encoder.depth={depth}",
                                                        "encoder.zero_init_residual=false"]))
    assert all(torch.all(getattr(b, b.last_bn).weight == 1) for b in off.modules()
               if isinstance(b, (models.BasicBlock, models.Bottleneck)))
    # the other BatchNorms keep gamma = 1
    assert torch.all(blocks[0].bn1.weight == 1)


def test_zero_epochs_saves_the_initialised_model(smoke_data, tmp_path):
    """pretrain.epochs = 0: the untrained-encoder baseline, evaluated like any run."""
    from simclr_ablations import evaluate, pretrain

    p = params.load("smoke", settings=["pretrain.epochs=0", "pretrain.warmup_epochs=0"])
    s = pretrain.train(p, smoke_data, tmp_path, threads=1, log=lambda *_: None)
    assert s["steps"] == 0 and s["epochs"] == 0
    model, _ = pretrain.load_model(tmp_path, torch.device("cpu"))
    fresh = pretrain.build_model(p, 10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    m = evaluate.evaluate(tmp_path, smoke_data, threads=1)
    assert 0 <= m["linear_top1"] <= 100
    with pytest.raises(params.ParamsError, match="pretrain.epochs"):
        params.load("smoke", settings=["pretrain.epochs=-1"])
