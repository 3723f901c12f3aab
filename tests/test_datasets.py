"""The real-dataset loaders, on tiny files written in each dataset's own on-disk format.

torchvision checks every CIFAR/STL file against a fixed md5, so the tests point its class-level
file lists at the md5s of the files they wrote; torchvision's real reading code then runs unchanged.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from simclr_ablations.datasets import DatasetMissing, load_cifar, load_imagefolder, load_stl10

RED = [255, 0, 0]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def random_hwc(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """N x H x W x 3 random images; image 0 has a red pixel at row 0, column 1 (orientation marker)."""
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    x[0, 0, 1] = RED
    x[0, 1, 0] = [0, 0, 255]
    return x


def as_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def check_images(images: torch.Tensor, n: int, size: int) -> None:
    assert images.dtype == torch.uint8 and images.is_contiguous()
    assert tuple(images.shape) == (n, 3, size, size)


def check_marker(images: torch.Tensor) -> None:
    assert images[0, :, 0, 1].tolist() == RED
    assert images[0, :, 1, 0].tolist() == [0, 0, 255]


# --- CIFAR ---------------------------------------------------------------------------------------

def write_pickle(path: Path, obj) -> None:
    # The real files are Python 2 pickles whose str keys torchvision reads (encoding="latin1") as str.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar(root: Path, name: str, monkeypatch, rng) -> dict:
    """Write a tiny CIFAR in torchvision's layout; return the HWC images and labels per split."""
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    n_classes = 10 if name == "cifar10" else 100
    label_key, names_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    train_files = [f for f, _ in cls.train_list]
    chunks = {f: (random_hwc(rng, 3, 32), rng.integers(0, n_classes, 3).tolist()) for f in train_files}
    test = (random_hwc(rng, 4, 32), rng.integers(0, n_classes, 4).tolist())
    chunks[cls.test_list[0][0]] = test
    for f, (x, y) in chunks.items():  # rows of 3072 bytes: the R plane, then G, then B, each row-major
        write_pickle(folder / f, {"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072), label_key: y})
    classes = [f"class{i}" for i in range(n_classes)]
    write_pickle(folder / cls.meta["filename"], {names_key: classes})

    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[cls.test_list[0][0], md5(folder / cls.test_list[0][0])]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    train_x = np.concatenate([chunks[f][0] for f in train_files])
    train_y = [y for f in train_files for y in chunks[f][1]]
    return {"train": (train_x, train_y), "test": test, "classes": classes}


@pytest.mark.parametrize("name, n_train", [("cifar10", 15), ("cifar100", 3)])
def test_cifar_round_trip(tmp_path, monkeypatch, name, n_train):
    want = write_cifar(tmp_path, name, monkeypatch, np.random.default_rng(0))
    got = load_cifar(tmp_path, name, download=False)
    assert got["classes"] == want["classes"]
    for split, n in (("train", n_train), ("test", 4)):
        images, labels = got[split]
        check_images(images, n, 32)
        check_marker(images)
        assert torch.equal(images, as_nchw(want[split][0]))
        assert labels.dtype == torch.int64 and labels.tolist() == want[split][1]


def test_cifar_missing_or_corrupt(tmp_path):
    with pytest.raises(DatasetMissing, match="data.download=true") as err:
        load_cifar(tmp_path, "cifar10", download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data_batch_1" in str(err.value)
    # Files present but not the real ones: the md5 check fails, which is reported the same way.
    with pytest.MonkeyPatch.context() as unpatched:  # md5 lists restored before loading
        write_cifar(tmp_path, "cifar100", unpatched, np.random.default_rng(0))
    with pytest.raises(DatasetMissing, match="cifar-100-python"):
        load_cifar(tmp_path, "cifar100", download=False)


def test_cifar_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="cifar"):
        load_cifar(tmp_path, "cifar5", download=False)


# --- STL-10 --------------------------------------------------------------------------------------

def write_stl(root: Path, monkeypatch, rng) -> dict:
    """Tiny STL-10: images stored per channel column-major (N x 3 x W x H), labels 1..10 as bytes."""
    STL = torchvision.datasets.STL10
    folder = root / STL.base_folder
    folder.mkdir(parents=True)
    splits = {"train": 5, "test": 3, "unlabeled": 2}
    want = {}
    for split, n in splits.items():
        x = as_nchw(random_hwc(rng, n, 96)).numpy()
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        y = rng.integers(0, 10, n)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        want[split] = (x, y.tolist() if split != "unlabeled" else [-1] * n)
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    monkeypatch.setattr(STL, "train_list", [[f, md5(folder / f)] for f, _ in STL.train_list])
    monkeypatch.setattr(STL, "test_list", [[f, md5(folder / f)] for f, _ in STL.test_list])
    want["classes"] = classes
    return want


@pytest.mark.parametrize("unlabeled", [False, True])
def test_stl_round_trip(tmp_path, monkeypatch, unlabeled):
    want = write_stl(tmp_path, monkeypatch, np.random.default_rng(1))
    got = load_stl10(tmp_path, download=False, unlabeled=unlabeled, image_size=96)
    assert got["classes"] == want["classes"]
    assert ("unlabeled" in got) == unlabeled
    for split in ("train", "test", "unlabeled") if unlabeled else ("train", "test"):
        images, labels = got[split]
        check_images(images, len(want[split][1]), 96)
        check_marker(images)
        assert torch.equal(images, torch.from_numpy(want[split][0]))
        assert labels.dtype == torch.int64 and labels.tolist() == want[split][1]


def test_stl_resize(tmp_path, monkeypatch):
    want = write_stl(tmp_path, monkeypatch, np.random.default_rng(2))
    # New training images: 0 gray; 1 black on the left half, white on the right; 2 every third column white.
    x = np.zeros((5, 3, 96, 96), dtype=np.uint8)
    x[0] = 77
    x[1, :, :, 48:] = 255
    x[2, :, :, ::3] = 255
    folder = tmp_path / "stl10_binary"
    (folder / "train_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
    STL = torchvision.datasets.STL10
    monkeypatch.setattr(STL, "train_list", [[f, md5(folder / f)] for f, _ in STL.train_list])

    got = load_stl10(tmp_path, download=False, unlabeled=True, image_size=32)
    for split, n in (("train", 5), ("test", 3), ("unlabeled", 2)):
        check_images(got[split][0], n, 32)
    images = got["train"][0]
    assert (images[0] == 77).all()
    assert (images[1, :, :, :15] == 0).all() and (images[1, :, :, 17:] == 255).all()
    assert images[1, 0, 0, 15] + images[1, 0, 0, 16] == 255  # the two columns at the edge blend symmetrically
    # Antialiased: the stripes average to about 255 / 3 (plain bilinear would sample only black columns).
    assert ((images[2, :, :, 1:-1].float() - 85).abs() <= 2).all()  # (edge columns see the border)
    assert got["train"][1].tolist() == want["train"][1]


def test_stl_missing(tmp_path):
    with pytest.raises(DatasetMissing, match="data.root") as err:
        load_stl10(tmp_path, download=False, unlabeled=False, image_size=96)
    assert str(tmp_path / "stl10_binary") in str(err.value) and "unlabeled_X.bin" in str(err.value)


# --- image folder --------------------------------------------------------------------------------

def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def constant(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def write_split_folder(root: Path) -> dict[int, str]:
    """Classes a (6 images) and b (5), each a constant gray that identifies it; PNG and JPEG, varied sizes."""
    ids = {}
    for k in range(11):
        cls, ext = ("a" if k < 6 else "b"), (".png" if k % 2 else ".jpg")
        value = 10 + 20 * k
        save(root / cls / f"img{k}{ext}", constant(12 + 3 * k, 40 - 2 * k, value))
        ids[value] = cls
    (root / "a" / "notes.txt").write_text("not an image")
    return ids


def ids_of(images: torch.Tensor) -> list[int]:
    return [round(v / 20 - 0.5) * 20 + 10 for v in images.float().mean(dim=(1, 2, 3)).tolist()]


def test_imagefolder_split(tmp_path):
    ids = write_split_folder(tmp_path)
    got = load_imagefolder(tmp_path, image_size=16, test_fraction=0.4, seed=3)
    assert got["classes"] == ["a", "b"]
    (tr_x, tr_y), (te_x, te_y) = got["train"], got["test"]
    check_images(tr_x, 7, 16)
    check_images(te_x, 4, 16)
    assert tr_y.dtype == te_y.dtype == torch.int64
    assert torch.bincount(te_y, minlength=2).tolist() == [2, 2]  # round(0.4 * 6), round(0.4 * 5)
    assert torch.bincount(tr_y, minlength=2).tolist() == [4, 3]
    # Every image appears once, with its own class.
    tr_ids, te_ids = ids_of(tr_x), ids_of(te_x)
    assert sorted(tr_ids + te_ids) == sorted(ids)
    for got_ids, labels in ((tr_ids, tr_y), (te_ids, te_y)):
        assert [got["classes"][y] for y in labels.tolist()] == [ids[v] for v in got_ids]

    again = load_imagefolder(tmp_path, image_size=16, test_fraction=0.4, seed=3)
    for split in ("train", "test"):
        assert all(torch.equal(a, b) for a, b in zip(got[split], again[split]))
    other_seeds = [ids_of(load_imagefolder(tmp_path, 16, 0.4, seed)["test"][0]) for seed in range(4, 9)]
    assert any(sorted(s) != sorted(te_ids) for s in other_seeds)


def test_imagefolder_resize_and_crop(tmp_path):
    # Exactly image_size: pixels come back unchanged, in place.
    x = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x[0, 1] = RED
    x[1, 0] = [0, 0, 255]
    save(tmp_path / "train" / "a" / "exact.png", x)
    # Wider than tall at the right height: no resize, the center 8 columns are kept.
    wide = np.zeros((8, 16, 3), dtype=np.uint8)
    wide[:] = (np.arange(16, dtype=np.uint8) * 10)[None, :, None]
    save(tmp_path / "train" / "b" / "wide.png", wide)
    # Larger, non-square and grayscale / RGBA: resized and converted to 3 channels.
    save(tmp_path / "train" / "b" / "big.jpg", constant(30, 21, 128))
    (tmp_path / "test" / "b").mkdir(parents=True)
    Image.new("L", (20, 9), 200).save(tmp_path / "train" / "a" / "gray.png")
    Image.new("RGBA", (9, 20), (10, 20, 30, 255)).save(tmp_path / "test" / "b" / "rgba.png")

    got = load_imagefolder(tmp_path, image_size=8, test_fraction=0.5, seed=0)
    assert got["classes"] == ["a", "b"]
    (tr_x, tr_y), (te_x, te_y) = got["train"], got["test"]
    check_images(tr_x, 4, 8)
    check_images(te_x, 1, 8)
    assert tr_y.tolist() == [0, 0, 1, 1]  # a/exact, a/gray, b/big, b/wide (sorted paths)
    assert te_y.tolist() == [1]  # test/ has only class b: its label follows train/'s classes
    assert torch.equal(tr_x[0], torch.from_numpy(x).permute(2, 0, 1))
    check_marker(tr_x)
    assert (tr_x[1] == 200).all()
    assert (tr_x[2].float() - 128).abs().max() <= 2
    assert torch.equal(tr_x[3], torch.from_numpy(wide[:, 4:12]).permute(2, 0, 1))
    assert te_x[0, :, 4, 4].tolist() == [10, 20, 30]


def test_imagefolder_missing(tmp_path):
    for root in (tmp_path / "absent", tmp_path):  # a missing folder; an empty one
        with pytest.raises(DatasetMissing, match="class sub-folders") as err:
            load_imagefolder(root, image_size=8, test_fraction=0.2, seed=0)
        assert str(root) in str(err.value)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetMissing, match=re.escape(str(tmp_path))):
        load_imagefolder(tmp_path, image_size=8, test_fraction=0.2, seed=0)


# --- bad images and bad folders (issue 15): refused naming the culprit, or decoded correctly ---------

def _folder_params(root: Path, *settings: str) -> dict:
    from simclr_ablations import params

    return params.load("smoke", settings=["data.dataset=imagefolder", f"data.root={root}", "data.image_size=8",
                                          "data.imagefolder_test_fraction=0.5", *settings])


def _classes(root: Path, counts: dict[str, int]) -> None:
    for c, n in counts.items():
        for k in range(n):
            save(root / c / f"{k}.png", constant(8, 8, 10 * k))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    for cls, value in (("a", 32896), ("b", 65535)):  # 32896 = 128 * 257
        for k in range(2):
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(tmp_path / cls / f"{k}.png")
    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I")
    got = load_imagefolder(tmp_path, image_size=8, test_fraction=0.5, seed=0)
    x = torch.cat([got["train"][0], got["test"][0]])
    y = torch.cat([got["train"][1], got["test"][1]])
    assert (x[y == 0] == 128).all() and (x[y == 1] == 255).all()


def test_truncated_image_names_the_file(tmp_path, capsys):
    from simclr_ablations import cli

    _classes(tmp_path / "raw", {"a": 2, "b": 2})
    bad = tmp_path / "raw" / "b" / "broken.jpg"
    save(bad, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    code = cli.main(["prepare", "--preset", "smoke", "--set", "data.dataset=imagefolder", "--set",
                     f"data.root={tmp_path / 'raw'}", "--set", "data.image_size=8", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) <= 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no output, no temp folder left


@pytest.mark.parametrize("counts, words", [
    ({"a": 5}, [">= 2 classes"]),
    ({"a": 4, "b": 1}, ["'b'", "test split"]),
])
def test_unusable_folders_are_refused(tmp_path, counts, words):
    from simclr_ablations import data

    _classes(tmp_path / "raw", counts)
    with pytest.raises(data.DataError) as err:
        data.prepare(_folder_params(tmp_path / "raw"), tmp_path / "d")
    assert all(w in str(err.value) for w in words) and str(tmp_path / "raw") in str(err.value), err.value
    assert not (tmp_path / "d").exists()


def test_two_image_classes_get_a_test_image(tmp_path):
    _classes(tmp_path, {"a": 2, "b": 2, "c": 2})
    got = load_imagefolder(tmp_path, image_size=8, test_fraction=0.2, seed=0)
    assert torch.bincount(got["test"][1]).tolist() == [1, 1, 1] and torch.bincount(got["train"][1]).tolist() == [1] * 3


def test_limits_are_class_balanced_and_drawn_before_decoding(tmp_path, monkeypatch):
    from simclr_ablations import data, datasets

    _classes(tmp_path / "raw", {"a": 8, "b": 8, "c": 8})  # read in class order: the first 6 would all be 'a'
    decoded = []
    real = datasets._decode
    monkeypatch.setattr(datasets, "_decode", lambda path: decoded.append(path) or real(path))
    out = data.prepare(_folder_params(tmp_path / "raw", "data.train_limit=6", "data.test_limit=3"), tmp_path / "d")
    _, y = data.load_prepared(out, "train")
    assert torch.bincount(y).tolist() == [2, 2, 2] and len(decoded) == 9
    meta = data.load_meta(out)
    assert meta["limits"]["train"] == 6 and meta["limits"]["seed"] == data.LIMIT_SEED
    # in-memory datasets too (CIFAR is stored class-sorted here on purpose)
    labels = torch.arange(10).repeat_interleave(50)
    keep = data.balanced_subset(labels, 20)
    assert torch.bincount(labels[keep]).tolist() == [2] * 10
    assert torch.equal(keep, data.balanced_subset(labels, 20))


def test_test_limit_below_the_class_count_is_refused(tmp_path):
    from simclr_ablations import data, params

    p = params.load("smoke", settings=["data.test_limit=5"])
    with pytest.raises(data.DataError, match="test split has no image of class"):
        data.prepare(p, tmp_path / "d")


def test_fingerprint_follows_the_folder_contents(tmp_path):
    from simclr_ablations import data

    _classes(tmp_path, {"a": 2, "b": 2})
    d = _folder_params(tmp_path)["data"]
    before = data.fingerprint(d)
    assert data.fingerprint(d) == before
    _classes(tmp_path, {"c": 2})
    assert data.fingerprint(d) != before


def test_fingerprint_is_cached_by_the_file_listing(tmp_path, monkeypatch):
    """The content digest is read from the cache while no file was added, removed or touched; a touched
    file is read again (same bytes: same digest), changed bytes give another digest; hidden files do not count."""
    from simclr_ablations import fingerprint

    monkeypatch.setenv("SIMCLR_ABLATIONS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    _classes(root, {"a": 2, "b": 2})
    d = _folder_params(root)["data"]
    first, listing = fingerprint.of_data(d), fingerprint.of_listing(d)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1

    def no_reading(*args, **kw):
        raise AssertionError("a file was read although the listing did not change")

    monkeypatch.setattr(fingerprint, "open", no_reading, raising=False)
    assert fingerprint.of_data(d) == first
    (root / ".DS_Store").write_text("hidden")
    assert fingerprint.of_data(d) == first and fingerprint.of_listing(d) == listing
    monkeypatch.undo()
    monkeypatch.setenv("SIMCLR_ABLATIONS_CACHE", str(tmp_path / "cache"))
    img = root / "a" / "0.png"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert fingerprint.of_listing(d) != listing and fingerprint.of_data(d) == first
    save(img, constant(8, 8, 200))
    assert fingerprint.of_data(d) != first
    assert fingerprint.of_data(dict(d, root=str(tmp_path / "nothing"))) == "absent"
