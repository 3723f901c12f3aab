"""Augmentations: shapes, ranges, per-sample randomness, determinism, and the Fig. 5 protocol."""

import pytest
import torch

from simclr_ablations import augment, data, params


@pytest.fixture(scope="module")
def batch():
    x, _ = data.synthetic(10, 32, 64, seed=0)
    return x


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", list(augment.OPS))
def test_each_op_shape_range_determinism(batch, op):
    aug = params.load()["augment"]
    x = augment.to_float(batch)
    a = augment.OPS[op](x, aug[op], _gen(1))
    b = augment.OPS[op](x, aug[op], _gen(1))
    c = augment.OPS[op](x, aug[op], _gen(2))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    if op != "sobel":  # sobel at p = 1 has no randomness
        assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_crop_boxes_within_bounds_and_area():
    boxes = augment.crop_boxes(4000, 32, 24, 0.08, 3 / 4, 4 / 3, _gen())
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 24 + 1e-4).all() and (y0 + h <= 32 + 1e-4).all()
    area = w * h / (32 * 24)
    assert area.min() >= 0.08 - 1e-4 and area.max() <= 1 + 1e-4
    ratio = w / h
    full = (w == 24) & (h == 32)  # fallback: whole image
    assert ((ratio >= 3 / 4 - 1e-4) & (ratio <= 4 / 3 + 1e-4) | full).all()
    assert boxes.unique(dim=0).shape[0] > 3900  # per-sample boxes


def test_crop_box_distribution_matches_torchvision():
    """The vectorised sampler draws the same distribution of boxes as torchvision's RandomResizedCrop."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(3, 32, 24)
    ref = torch.tensor([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]).float()
    ref_area, ref_ratio = ref[:, 2] * ref[:, 3] / (32 * 24), ref[:, 3] / ref[:, 2]
    boxes = augment.crop_boxes(4000, 32, 24, 0.08, 3 / 4, 4 / 3, _gen())
    area, ratio = boxes[:, 2] * boxes[:, 3] / (32 * 24), boxes[:, 2] / boxes[:, 3]
    for ours, theirs in ((area, ref_area), (ratio, ref_ratio)):
        assert ours.mean() == pytest.approx(theirs.mean().item(), abs=0.03)
        assert ours.std() == pytest.approx(theirs.std().item(), abs=0.03)
    centre_x = (boxes[:, 0] + boxes[:, 2] / 2) / 24
    assert centre_x.mean() == pytest.approx(0.5, abs=0.02)


def test_identity_crop_and_flip(batch):
    x = augment.to_float(batch)
    cfg = dict(scale_min=1.0, ratio_min=1.0, ratio_max=1.0, flip=0.0)
    assert torch.allclose(augment.crop(x, cfg, _gen()), x, atol=1e-5)
    cfg["flip"] = 1.0
    assert torch.allclose(augment.crop(x, cfg, _gen()), x.flip(3), atol=1e-5)


def test_hsv_roundtrip(batch):
    x = augment.to_float(batch)
    assert torch.allclose(augment.hsv_to_rgb(augment.rgb_to_hsv(x)), x, atol=1e-5)


def test_color_strength_zero_only_grays():
    x = torch.rand(200, 3, 8, 8, generator=_gen())
    out = augment.color(x, dict(strength=0.0, p_jitter=1.0, p_gray=0.0), _gen())
    assert torch.allclose(out, x, atol=1e-5)
    out = augment.color(x, dict(strength=0.0, p_jitter=0.0, p_gray=1.0), _gen())
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_color_statistics_match_the_official_recipe():
    """p_gray = 0.2 of images become gray; jitter spreads per-image brightness more with strength."""
    x = torch.full((4000, 3, 4, 4), 0.5)
    x[:, 0] = 0.7
    out = augment.color(x, dict(strength=1.0, p_jitter=0.8, p_gray=0.2), _gen())
    gray = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-6
    assert 0.17 < gray.float().mean() < 0.23
    weak = augment.color(x, dict(strength=0.25, p_jitter=1.0, p_gray=0.0), _gen())
    strong = augment.color(x, dict(strength=1.0, p_jitter=1.0, p_gray=0.0), _gen())
    assert strong.mean((1, 2, 3)).std() > 2 * weak.mean((1, 2, 3)).std()
    # hue shift changes the hue of a saturated colour, by at most 0.2 s
    hue_in = augment.rgb_to_hsv(x[:1])[0, 0, 0, 0]
    only_hue = augment._hue(x, torch.full((4000, 1, 1, 1), 0.1))
    assert augment.rgb_to_hsv(only_hue)[:, 0].sub(hue_in).abs().max() == pytest.approx(0.1, abs=1e-4)


def test_rotate_is_a_multiple_of_90(batch):
    x = augment.to_float(batch)
    out = augment.rotate(x, dict(p=1.0), _gen())
    for i in range(x.shape[0]):
        assert any(torch.equal(out[i], torch.rot90(x[i], k, (1, 2))) for k in (1, 2, 3))


def test_blur_and_noise_identity_when_off(batch):
    x = augment.to_float(batch)
    cfg = dict(p=0.0, sigma_min=0.1, sigma_max=2.0, kernel_fraction=0.1)
    assert torch.allclose(augment.blur(x, cfg, _gen()), x, atol=1e-6)
    assert torch.equal(augment.noise(x, dict(p=0.0, std=0.5), _gen()), x)
    blurred = augment.blur(x, dict(cfg, p=1.0, sigma_min=2.0), _gen())
    assert torch.allclose(blurred.mean(), x.mean(), atol=1e-2)
    assert blurred.diff(dim=3).abs().mean() < x.diff(dim=3).abs().mean()


def test_cutout_hole_size(batch):
    x = torch.ones(500, 3, 32, 32)
    out = augment.cutout(x, dict(p=1.0, size=0.5), _gen())
    frac = (out[:, 0] == 0).float().mean((1, 2))
    assert frac.max() <= 0.25 + 1e-6 and frac.mean() > 0.05


def test_sobel_on_gray_edges():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, :, 8:] = 1.0
    out = augment.sobel(x, dict(p=1.0), _gen())
    assert out[0, 0, 5, 7] == 1.0 and out[0, 0, 5, 2] == 0.0


def test_one_branch_protocol(batch):
    """Fig. 5: an identity base crop here; the studied ops on the first view only."""
    aug = params.load(settings=["augment.branches=one", "augment.ops=[color, rotate]", "augment.base_crop_scale=1.0",
                                "augment.crop.ratio_min=1.0", "augment.crop.ratio_max=1.0"])["augment"]
    x = augment.to_float(batch)
    v1, v2 = augment.two_views(batch, aug, _gen())
    assert torch.allclose(v2, x, atol=1e-5)  # crop.flip = 0.5, yet the untouched view is never flipped
    assert not torch.allclose(v1, x, atol=1e-2)


def test_one_branch_shares_one_crop_and_adds_nothing_else(batch):
    """Fig. 5 as the paper ran it: one random crop per image for both views, no independent flip."""
    aug = params.load(settings=["augment.branches=one", "augment.ops=[noise]", "augment.noise.std=0.02",
                                "augment.crop.flip=1.0"])["augment"]
    assert aug["base_crop_scale"] == 0.08
    x = augment.to_float(batch)
    v1, v2 = augment.two_views(batch, aug, _gen())
    assert (v1 - v2).abs().max() < 0.11  # the same geometry: only the studied op's noise differs
    moved = (v2 - x).abs().flatten(1).amax(1) > 0.05
    assert moved.float().mean() > 0.9  # the shared view is a real crop, not the whole image
    # with colour as the studied op the geometry is still shared: equal gradients' signs almost everywhere
    aug = params.load(settings=["augment.branches=one", "augment.ops=[color]", "augment.color.p_gray=0.0"])["augment"]
    v1, v2 = augment.two_views(batch, aug, _gen(3))
    assert not torch.allclose(v1, v2, atol=1e-2)
    for dim in (2, 3):
        d1, d2 = v1.mean(1).diff(dim=dim - 1), v2.mean(1).diff(dim=dim - 1)
        big = d2.abs() > 0.05
        agree = (torch.sign(d1[big]) == torch.sign(d2[big])).float().mean()
        assert agree > 0.9


def test_both_branches_are_independent(batch):
    aug = params.load()["augment"]
    v1, v2 = augment.two_views(batch, aug, _gen())
    assert not torch.allclose(v1, v2)
    w1, w2 = augment.two_views(batch, aug, _gen())
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
