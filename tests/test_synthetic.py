"""The embedded `textures` dataset: its design goals, each measured, and the colour-shortcut probe."""

import time

import pytest
import torch
import torch.nn.functional as F

from simclr_ablations import augment, data, params, probe, synthetic


@pytest.fixture(scope="module")
def images():
    return synthetic.textures(10, 32, 2000, seed=1234)


def test_fast_deterministic_balanced():
    t0 = time.perf_counter()
    x, y = synthetic.textures(10, 32, 13000, seed=5)
    assert time.perf_counter() - t0 < 15  # the cpu preset's train + test sets take about a second
    assert x.shape == (13000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [1300] * 10
    a, b = synthetic.textures(12, 32, 50, seed=7), synthetic.textures(12, 32, 50, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], synthetic.textures(12, 32, 50, seed=8)[0])
    with pytest.raises(ValueError, match="data.synthetic.classes"):
        synthetic.textures(13, 32, 50, seed=0)


def test_default_dataset_is_textures(tmp_path):
    p = params.load("smoke")
    assert p["data"]["synthetic"]["kind"] == "textures"
    assert data.load_raw(p["data"])["classes"] == list(synthetic.TEXTURES[:p["data"]["synthetic"]["classes"]])
    old = params.load("smoke", settings=["data.synthetic.kind=shapes"])
    assert data.load_raw(old["data"])["classes"][0] == "h_stripes"
    with pytest.raises(params.ParamsError, match="data.synthetic.kind"):
        params.load("smoke", settings=["data.synthetic.kind=blobs"])


def _spectra(x: torch.Tensor) -> torch.Tensor:
    """Phase-free texture descriptor: the grayscale power spectrum (DC removed), l2-normalised."""
    g = augment._gray(augment.to_float(x))[:, 0]
    g = g - g.mean((1, 2), keepdim=True)
    s = torch.fft.fftshift(torch.fft.fft2(g).abs() ** 2, dim=(-2, -1))
    s = F.avg_pool2d(s[:, None], 3, 1, 1)[:, 0]  # tolerate small frequency changes
    return F.normalize(s.flatten(1), dim=1)


def _crops(x, scale, seed=0):
    aug = params.load(settings=[f"augment.crop.scale_min={scale}"])["augment"]
    return augment.crop(augment.to_float(x), dict(aug["crop"], scale_max=scale), torch.Generator().manual_seed(seed))


def test_class_is_luminance_texture_surviving_crop_flip_and_grayscale(images):
    """Nearest class centroid of the gray power spectrum, on 20%-area crops (random flips): the class is in
    the luminance texture and a crop still holds it. The spectrum cannot tell dots from holes (a luminance
    inversion), so they count as one here; their polarity is tested below. Chance: 1/9."""
    x, y = images
    y = torch.where(y == synthetic.TEXTURES.index("holes"), synthetic.TEXTURES.index("dots"), y)
    train, test = slice(0, 1000), slice(1000, 2000)
    feats = _spectra(_crops(x, 0.2))
    cent = F.normalize(torch.stack([feats[train][y[train] == c].mean(0) for c in y.unique()]), dim=1)
    acc = (y.unique()[(feats[test] @ cent.t()).argmax(1)] == y[test]).float().mean().item()
    assert acc > 0.8, acc


def test_dots_and_holes_keep_their_polarity_in_gray(images):
    x, y = images
    for name, sign in (("dots", 1), ("holes", -1)):
        g = augment._gray(_crops(x[y == synthetic.TEXTURES.index(name)], 0.2))
        skew = ((g - g.mean((1, 2, 3), keepdim=True)) ** 3).mean((1, 2, 3))
        assert (torch.sign(skew) == sign).float().mean() > 0.9, name


def test_no_class_is_the_mirror_image_of_another(images):
    """Every class's flipped spectrum centroid is its own (the classes are mirror-symmetric), and no other
    class is nearer (dots and holes share a spectrum: they differ in polarity only, tested above)."""
    x, y = images
    x = augment.to_float(x)
    cent = F.normalize(torch.stack([_spectra(x[y == c]).mean(0) for c in range(10)]), dim=1)
    flipped = F.normalize(torch.stack([_spectra(x[y == c].flip(-1)).mean(0) for c in range(10)]), dim=1)
    sim = flipped @ cent.t()
    assert sim.diagonal().min() > 0.98, sim.diagonal()
    twins = {synthetic.TEXTURES.index("dots"), synthetic.TEXTURES.index("holes")}
    for c in range(10):
        others = [k for k in range(10) if k != c and not {c, k} <= twins]
        assert sim[c, c] > sim[c, others].max()


def test_instance_colour_spans_half_the_hue_circle(images):
    x, y = images
    v = augment.to_float(x[y == 0])
    g = augment._gray(v)
    light = (g > g.flatten(1).median(1).values.view(-1, 1, 1, 1)).float()  # the light tone's pixels
    tone = (v * light).sum((2, 3)) / light.sum((2, 3))
    hue = augment.rgb_to_hsv(tone[:, :, None, None])[:, 0, 0, 0]
    palette = augment.rgb_to_hsv(torch.tensor(synthetic.PALETTE[0]).view(1, 3, 1, 1))[0, 0, 0, 0]
    shift = (hue - palette + 0.5) % 1 - 0.5  # signed distance on the circle
    assert shift.abs().max() < synthetic.INSTANCE_HUE + 0.05  # the shift's range, give or take the other factors
    assert shift.min() < -0.8 * synthetic.INSTANCE_HUE and shift.max() > 0.8 * synthetic.INSTANCE_HUE


@pytest.mark.parametrize("preset", ["cpu", None])
def test_colour_histograms_solve_crop_only_but_not_crop_and_colour(images, preset):
    """The shortcut, measured: the positive among 2N - 1 = 255 candidates by colour histogram alone."""
    x, _ = images
    crop_only = params.load(preset, settings=["augment.ops=[crop]"])["augment"]
    crop_colour = params.load(preset, settings=["augment.ops=[crop, color]"])["augment"]
    assert probe.histogram_retrieval(x, crop_only, n=128, batches=2) >= 0.95
    assert probe.histogram_retrieval(x, crop_colour, n=128, batches=8) <= 0.10


def _detail(v: torch.Tensor) -> torch.Tensor:
    g = augment._gray(v)
    return F.normalize((g - F.avg_pool2d(g, 3, 1, 1, count_include_pad=False)).flatten(1), dim=1)


def test_fine_detail_matches_uncropped_views_only(images):
    """Per-pixel detail identifies an image while the geometry is untouched (colour alone), not after a crop."""
    x, _ = images
    x = x[:256]
    g = torch.Generator().manual_seed(1)
    colour_only = params.load(settings=["augment.ops=[color]"])["augment"]
    crop = params.load(settings=["augment.ops=[crop]"])["augment"]
    v1, v2 = augment.two_views(x, colour_only, g)
    assert probe.retrieval_accuracy(_detail(v1), _detail(v2)) > 0.95
    v1, v2 = augment.two_views(x, crop, g)
    assert probe.retrieval_accuracy(_detail(v1), _detail(v2)) < 0.2


def test_colour_only_encoder_solves_crop_only_but_not_crop_and_colour(images):
    """The learned colour shortcut (1x1 convolutions + pooling, trained contrastively; a short budget here,
    300 steps in the note): near-solved under crop alone, near chance (1/255) under crop + colour."""
    x, _ = images
    crop_only = params.load("cpu", settings=["augment.ops=[crop]"])["augment"]
    crop_colour = params.load("cpu", settings=["augment.ops=[crop, color]"])["augment"]
    assert probe.colour_encoder_accuracy(x, crop_only, steps=40, n=64, width=16) >= 0.5
    assert probe.colour_encoder_accuracy(x, crop_colour, steps=40, n=64, width=16) <= 0.15


def _peak_cycles(x: torch.Tensor) -> torch.Tensor:
    """The radial frequency (cycles per image) of each image's strongest non-DC gray spectral peak."""
    g = augment._gray(augment.to_float(x))[:, 0]
    s = torch.fft.fft2(g - g.mean((1, 2), keepdim=True)).abs()
    f = torch.fft.fftfreq(x.shape[-1]) * x.shape[-1]
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return r.flatten()[s.flatten(1).argmax(1)]


def test_two_scale_bands_split_each_texture_by_scale():
    """bands 2: class 2t / 2t+1 is texture t coarse / fine; bands 1 keeps the data (and run names) it had."""
    x, y = synthetic.textures(24, 32, 2400, seed=3, bands=2)
    assert torch.bincount(y).tolist() == [100] * 24
    peak = _peak_cycles(x)
    for t in range(12):
        if synthetic.TEXTURES[t] == "blobs":
            continue  # band-pass noise: its peak is spread over a ring
        coarse, fine = peak[y == 2 * t].median(), peak[y == 2 * t + 1].median()
        assert fine > 1.6 * coarse, (synthetic.TEXTURES[t], coarse, fine)
    assert synthetic.class_names(4, 2) == ["h_stripes/coarse", "h_stripes/fine", "v_stripes/coarse", "v_stripes/fine"]
    one = synthetic.textures(10, 32, 50, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(one, synthetic.textures(10, 32, 50, seed=3, bands=1)))
    p1 = params.load("smoke")
    p2 = params.load("smoke", settings=["data.synthetic.bands=2", "data.synthetic.classes=20"])
    assert "bands" not in params.data_params(p1)["synthetic"] and params.data_params(p2)["synthetic"]["bands"] == 2
    assert data.load_raw(p2["data"])["classes"][:2] == ["h_stripes/coarse", "h_stripes/fine"]
    with pytest.raises(params.ParamsError, match="2 to 12 classes with bands = 1"):
        params.load("smoke", settings=["data.synthetic.classes=13"])
    with pytest.raises(params.ParamsError, match="shapes dataset has 2 to 20"):
        params.load("smoke", settings=["data.synthetic.kind=shapes", "data.synthetic.classes=21"])
    with pytest.raises(params.ParamsError, match="data.synthetic.bands"):
        params.load("smoke", settings=["data.synthetic.kind=shapes", "data.synthetic.bands=2"])


def test_bands_one_keeps_fingerprints_and_prepared_data_from_before_the_key(tmp_path):
    """Values computed at a7f314d, before data.synthetic.bands existed: the smoke and cpu data fingerprints and
    run ids; and data prepared then (meta.json without `bands`) is still accepted with bands 1, not with 2."""
    from simclr_ablations import fingerprint

    one_band = ["data.synthetic.bands=1", "data.synthetic.classes=10"]  # the cpu preset's data until it took 2 bands
    for preset, settings, fp, rid in (("smoke", [], "5cabe13da318", "1c4262fb87b2"),
                                      ("cpu", one_band, "3c276260ea72", "104650f12383")):
        p = params.load(preset, settings=settings)
        assert (fingerprint.of_data(p["data"]), params.pretrain_id(p)) == (fp, rid)
    p = params.load("smoke", settings=["data.synthetic.train_size=40", "data.synthetic.test_size=20"])
    out = data.prepare(p, tmp_path / "d")
    meta = data.load_meta(out)
    del meta["data_params"]["synthetic"]["bands"]
    data.check_meta(meta, p, out)
    two = params.load("smoke", settings=["data.synthetic.train_size=40", "data.synthetic.test_size=20",
                                         "data.synthetic.bands=2"])
    with pytest.raises(data.DataError, match="data.synthetic"):
        data.check_meta(meta, two, out)
