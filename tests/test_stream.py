"""data.storage: streaming an image folder (decode in workers, crop at decode time) against memory.

Equality, as tested here: for the same seed, both storages give batches of the same images in the
same order (the seeded global order); when the ops start without a crop, the uint8 batches and the
augmented views are identical; evaluation decodes identical uint8 images. With a crop, the streamed
crop is drawn per (seed, epoch, index) at decode time (not from the batch generator), so it differs
from the in-memory crop by design; it is independent of the worker count and of where a run starts.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr_ablations import augment, data, diagnose, evaluate, params, pretrain, stream

SIZE = 16


def _folder(root: Path, shapes, per_class: int = 8, classes: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            h, w = shapes[(c * per_class + k) % len(shapes)]
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            a[..., c] = 255 * (np.arange(w) % 2)  # a class cue
            Image.fromarray(a).save(root / f"c{c}" / f"{k}.{'png' if k % 2 else 'jpg'}", quality=95)
    return root


def _params(root: Path, *settings: str) -> dict:
    return params.load("smoke", settings=[
        "data.dataset=imagefolder", f"data.root={root}", f"data.image_size={SIZE}",
        "data.imagefolder_test_fraction=0.25",
        "pretrain.batch_size=4", "pretrain.epochs=1", "pretrain.warmup_epochs=0", "runtime.workers=0",
        "eval.linear.epochs=2", "eval.knn.k=3", *settings])


@pytest.fixture(scope="module")
def square(tmp_path_factory) -> Path:
    """A folder of images already at the training size."""
    return _folder(tmp_path_factory.mktemp("square") / "images", [(SIZE, SIZE)])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Full-size images of varying shape."""
    return _folder(tmp_path_factory.mktemp("mixed") / "images", [(40, 24), (24, 52), (33, 33), (20, 64)])


def _batches(source, p, epoch, start=0):
    order, _ = pretrain.epoch_generators(p["seed"], epoch, torch.device("cpu"))
    perm = torch.randperm(len(source), generator=order)
    return list(source.epoch(perm, p["pretrain"]["batch_size"], epoch, start))


def test_stream_and_memory_give_the_same_batches(square, tmp_path):
    ops = "augment.ops=[color, blur]"
    pm, ps = _params(square, ops, "data.storage=memory"), _params(square, ops, "data.storage=stream")
    dm, ds = data.prepare(pm, tmp_path / "m"), data.prepare(ps, tmp_path / "s")
    mm, ms = data.load_meta(dm), data.load_meta(ds)
    assert (mm["storage"], ms["storage"]) == ("memory", "stream") and not (ds / "train.pt").exists()
    assert ms["sizes"] == mm["sizes"] and ms["classes"] == mm["classes"]
    assert ms["mean"] == pytest.approx(mm["mean"], rel=1e-5) and ms["std"] == pytest.approx(mm["std"], rel=1e-5)
    cpu = torch.device("cpu")
    src_m, src_s = stream.train_source(pm, dm, mm, cpu), stream.train_source(ps, ds, ms, cpu)
    assert isinstance(src_s, stream.StreamSource)
    for epoch in (0, 1):
        bm, bs = _batches(src_m, pm, epoch), _batches(src_s, ps, epoch)
        assert len(bm) == len(bs) == len(src_m) // 4
        for (xm, ym), (xs, ys) in zip(bm, bs):
            assert xs.shape == (4, 1, 3, SIZE, SIZE) and xs.dtype == torch.uint8
            assert torch.equal(xm, xs[:, 0]) and torch.equal(ym, ys)
            g1, g2 = (torch.Generator().manual_seed(epoch) for _ in range(2))
            for a, b in zip(augment.two_views(xm, pm["augment"], g1), augment.two_views(xs, ps["augment"], g2)):
                assert torch.equal(a, b)
    for split in ("train", "test"):
        (xm, ym), (xs, ys) = stream.eval_split(dm, mm, split), stream.eval_split(ds, ms, split)
        assert torch.equal(xm, torch.cat(list(stream.chunks(xs, 5, {"workers": 0, "prefetch": 1}))))
        assert torch.equal(ym, ys)


def test_full_crop_with_flip_is_the_flipped_image(square, tmp_path):
    """The decode-time crop path: area 1, aspect 1 and flip 1 on square images give the mirrored image."""
    settings = ["augment.ops=[crop]", "augment.crop.scale_min=1.0", "augment.crop.ratio_min=1.0",
                "augment.crop.ratio_max=1.0", "augment.crop.flip=1.0"]
    pm, ps = _params(square, *settings, "data.storage=memory"), _params(square, *settings, "data.storage=stream")
    dm, ds = data.prepare(pm, tmp_path / "m"), data.prepare(ps, tmp_path / "s")
    cpu = torch.device("cpu")
    src_m = stream.train_source(pm, dm, data.load_meta(dm), cpu)
    src_s = stream.train_source(ps, ds, data.load_meta(ds), cpu)
    for (xm, _), (xs, _) in zip(_batches(src_m, pm, 0), _batches(src_s, ps, 0)):
        assert xs.shape[1] == 2 and torch.equal(xs[:, 0], xm.flip(-1)) and torch.equal(xs[:, 1], xm.flip(-1))


def test_worker_count_and_resume_do_not_change_the_batches(mixed, tmp_path):
    p = _params(mixed, "data.storage=stream", "augment.crop.scale_min=0.2")
    d = data.prepare(p, tmp_path / "d")
    meta = data.load_meta(d)
    one = stream.train_source(p, d, meta, torch.device("cpu"))
    two = stream.StreamSource(dict(p, runtime=dict(p["runtime"], workers=2, prefetch=1)), one.crops.files,
                              one.labels, torch.device("cpu"))
    assert two.workers == 2
    full = _batches(one, p, 3)
    x = full[0][0]
    assert x.shape == (4, 2, 3, SIZE, SIZE) and not torch.equal(x[:, 0], x[:, 1])  # two different crops
    assert not torch.equal(x, _batches(one, p, 4)[0][0])  # another epoch, other crops
    for (a, ya), (b, yb) in zip(full, _batches(two, p, 3)):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    for (a, _), (b, _) in zip(full[2:], _batches(one, p, 3, start=2)):  # resume at step 2 of the epoch
        assert torch.equal(a, b)


def test_auto_streams_a_folder_larger_than_the_budget(mixed, tmp_path):
    # 12 training + 4 test images of 3 x 16 x 16 bytes = 12 KB prepared: over a 10 KB budget, under 1 GB
    small = _params(mixed, "data.storage=auto", "data.memory_budget_gb=0.00001", "augment.ops=[crop, color]")
    big = _params(mixed, "data.storage=auto", "data.memory_budget_gb=1.0")
    assert stream.prepared_bytes(16, SIZE) > 0.00001 * stream.GB
    d = data.prepare(small, tmp_path / "small")
    assert data.load_meta(d)["storage"] == "stream" and (d / "train.files.json").exists()
    assert data.load_meta(data.prepare(big, tmp_path / "big"))["storage"] == "memory"
    s = pretrain.train(small, d, tmp_path / "run", threads=1, log=lambda *_: None)
    assert s["steps"] == 3 and s["final"]["loss"] == s["final"]["loss"]
    m = evaluate.evaluate(tmp_path / "run", d, threads=1)
    assert 0 <= m["knn_top1"] <= 100 and 0 <= m["linear_top1"] <= 100
    assert diagnose.diagnose(tmp_path / "run", d)["h"]["dim"] > 0
    sup = _params(mixed, "data.storage=auto", "data.memory_budget_gb=0.00001", "method=supervised")
    pretrain.train(sup, data.prepare(sup, tmp_path / "sup"), tmp_path / "sup_run", threads=1, log=lambda *_: None)


@pytest.mark.parametrize("settings, words", [
    (["data.storage=stream"], "only data.dataset = imagefolder"),
    (["data.storage=stream", "data.dataset=imagefolder", "method=wcl"], "method wcl"),
    (["data.storage=stream", "data.dataset=imagefolder", "augment.ops=[color, crop]"], "must start with crop"),
    (["data.storage=disk"], "allowed values are memory, stream, auto"),
])
def test_bad_storage_settings_are_refused(settings, words):
    with pytest.raises(params.ParamsError, match=words):
        params.load("smoke", settings=settings)


def test_storage_keys_leave_existing_ids_alone():
    """The storage keys name a run only where they matter: an image folder streamed, or storage auto."""
    p = params.load("smoke")
    q = params.load("smoke", settings=["data.memory_budget_gb=1.0"])
    assert params.pretrain_id(p) == params.pretrain_id(q) and "storage" not in params.data_params(p)
    kept = {k: v for k, v in p["data"].items() if k not in ("storage", "memory_budget_gb")}
    kept["synthetic"] = {k: v for k, v in kept["synthetic"].items() if k != "bands"}  # bands 1: named as before
    assert params.data_params(p) == kept
    f = params.load("smoke", settings=["data.dataset=imagefolder"])
    f2 = params.load("smoke", settings=["data.dataset=imagefolder", "data.memory_budget_gb=1.0"])
    g = params.load("smoke", settings=["data.dataset=imagefolder", "data.storage=stream"])
    a = params.load("smoke", settings=["data.dataset=imagefolder", "data.storage=auto"])
    a2 = params.load("smoke", settings=["data.dataset=imagefolder", "data.storage=auto", "data.memory_budget_gb=1.0"])
    assert params.pretrain_id(f) == params.pretrain_id(f2)
    assert len({params.pretrain_id(x) for x in (f, g, a, a2)}) == 4


def test_streamed_run_resumes_identically(mixed, tmp_path, monkeypatch):
    """A streamed run killed after its first checkpoint resumes to the weights of an uninterrupted run."""
    p = _params(mixed, "data.storage=stream", "pretrain.epochs=2", "runtime.checkpoint_every=1")
    d = data.prepare(p, tmp_path / "d")
    pretrain.train(p, d, tmp_path / "full", threads=1, log=lambda *_: None)
    real = stream.StreamSource.epoch

    def dies_in_epoch_2(self, perm, bs, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return real(self, perm, bs, epoch, *args, **kwargs)

    monkeypatch.setattr(stream.StreamSource, "epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(p, d, tmp_path / "run", threads=1, log=lambda *_: None)
    assert (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "model.pt").exists()
    monkeypatch.setattr(stream.StreamSource, "epoch", real)
    lines = []
    pretrain.train(p, d, tmp_path / "run", threads=1, log=lines.append)
    assert any(line.startswith("resuming from checkpoint") and "at epoch 1" in line for line in lines), lines
    wa, wb = (torch.load(tmp_path / r / "model.pt", weights_only=False)["model"] for r in ("full", "run"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_prepared_storage_must_match_the_params(square, tmp_path):
    ps = _params(square, "data.storage=stream")
    d = data.prepare(ps, tmp_path / "s")
    with pytest.raises(data.DataError, match="data.storage"):
        data.check_meta(data.load_meta(d), _params(square), d)
