"""Load real datasets (CIFAR-10/100, STL-10, an image folder) into memory as uint8 tensors.

Every loader returns ``{"train": (images, labels), "test": (images, labels), "classes": [...]}``
(STL-10 with ``unlabeled=True`` adds ``"unlabeled"``), with images a contiguous ``torch.uint8``
tensor of shape N x 3 x H x W and labels ``torch.int64``. The datasets are small enough to hold in
memory, and keeping them as uint8 lets the augmentation pipeline run on whole batches on the GPU
instead of per-image PIL transforms in data-loader workers.

CIFAR and STL-10 are read by torchvision from its own on-disk layout under ``root`` (and downloaded
there when ``download`` is true); an image folder is read with ``torchvision.datasets.ImageFolder``.
Missing files offline raise :class:`DatasetMissing`, which says what is expected where.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF

STL_SIZE = 96
STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
CIFAR = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}


class DatasetMissing(FileNotFoundError):
    """A dataset's files are absent (or corrupt) and may not be downloaded."""


def _missing(folder: Path, files: list[str], why: str = "") -> DatasetMissing:
    why = f" ({why})" if why else ""
    return DatasetMissing(
        f"dataset files not found or corrupt in {folder}{why}; expected: {', '.join(files)}. "
        "Set data.download=true when online, or point data.root at a folder holding them."
    )


def _labels(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def load_cifar(root: str | Path, name: str, download: bool) -> dict:
    """CIFAR-10 or CIFAR-100 (fine labels) at 32x32, from torchvision's layout under ``root``."""
    if name not in CIFAR:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(CIFAR)}")
    cls = CIFAR[name]
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(root), train=train, download=download)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
            raise _missing(Path(root) / cls.base_folder, files, str(err)) from err
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N x 32 x 32 x 3 -> N x 3 x 32 x 32
        out[split] = (images, _labels(ds.targets))
    out["classes"] = list(ds.classes)
    return out


def _resize(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 N x 3 x H x W images to size x size (in chunks to bound memory)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def load_stl10(root: str | Path, download: bool, unlabeled: bool, image_size: int) -> dict:
    """STL-10 (96x96, resized to ``image_size``); ``unlabeled`` adds the 100k unlabeled images, labelled -1.

    torchvision checks all five binary files (unlabeled_X.bin included) whichever split is asked for.
    """
    splits = [("train", "train"), ("test", "test")] + ([("unlabeled", "unlabeled")] if unlabeled else [])
    out = {}
    for key, split in splits:
        try:
            ds = torchvision.datasets.STL10(str(root), split=split, download=download)
        except RuntimeError as err:
            stl = torchvision.datasets.STL10
            files = [f for f, _ in stl.train_list + stl.test_list] + [stl.class_names_file]
            raise _missing(Path(root) / stl.base_folder, files, str(err)) from err
        images = torch.from_numpy(ds.data)  # a transposed (non-contiguous) N x 3 x 96 x 96 view
        images = _resize(images, image_size) if image_size != STL_SIZE else images.contiguous()
        out[key] = (images, _labels(ds.labels))
    out["classes"] = list(getattr(ds, "classes", STL_CLASSES))  # class_names.txt is optional
    return out


class BadImage(DatasetMissing):
    """An image file cannot be decoded into 8-bit RGB."""


def to_rgb8(img, path: str):
    """A PIL image as 8-bit RGB: 16-bit (I;16*, I) grey is scaled by 1/257, not clipped; float is refused."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise BadImage(f"image {path}: {mode} pixel values outside 0..65535; convert it to 8-bit RGB")
        a = np.rint(a / 257.0).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        raise BadImage(f"image {path}: floating-point pixels are not supported; convert it to 8-bit RGB")
    return img.convert("RGB")


def _decode(path: str):
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb8(img, path)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # truncated, corrupt or not an image
        raise BadImage(f"image {path} cannot be decoded ({err}); repair or remove it") from err


def read_center(path: str, size: int) -> torch.Tensor:
    """One file as uint8 3 x size x size: decoded to 8-bit RGB, the shorter side resized to ``size``
    (antialiased), center-cropped. What `prepare` stores, and what streaming evaluation decodes."""
    img = _decode(path)
    return TF.pil_to_tensor(TF.center_crop(TF.resize(img, size, antialias=True), [size, size]))


def _read_images(samples: list[tuple[str, int]], loader, size: int) -> torch.Tensor:
    """Decode every sample with :func:`read_center` (``loader`` is kept for compatibility; files are
    decoded by :func:`_decode`, which names a bad file)."""
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = read_center(path, size)
    return images


def _image_folder(root: Path) -> torchvision.datasets.ImageFolder:
    try:
        return torchvision.datasets.ImageFolder(str(root))
    except FileNotFoundError as err:  # no folder, no class sub-folders, or no image files
        raise DatasetMissing(
            f"no images found in {root} ({err}); expected class sub-folders <class>/<image> "
            "(optionally under train/ and test/), with extensions "
            f"{', '.join(torchvision.datasets.folder.IMG_EXTENSIONS)}. "
            "Point data.root at such a folder."
        ) from err


def load_imagefolder(root: str | Path, image_size: int, test_fraction: float, seed: int, select=None,
                     check=None) -> dict:
    """Images in ``root/<class>/*``, stored at image_size x image_size (see :func:`list_imagefolder`)."""
    out = list_imagefolder(root, test_fraction, seed, select, check)
    for split in ("train", "test"):
        samples, labels = out[split]
        out[split] = (_read_images(samples, None, image_size), labels)
    return out


def list_imagefolder(root: str | Path, test_fraction: float, seed: int, select=None, check=None) -> dict:
    """The files of ``root/<class>/*`` and their labels, split and selected, nothing decoded:
    ``{"train": (samples, labels), "test": (samples, labels), "classes": [...]}`` with samples a list
    of (path, label).

    ``select(split, labels)`` (optional) returns the indices of each split to keep and ``check(classes,
    y_train, y_test)`` validates the labels; both run before any image is decoded.

    If ``root/train`` and ``root/test`` both exist they are the splits (class names from train/).
    Otherwise ``round(test_fraction * n)`` images of each class (at least one, keeping one for training)
    are held out, chosen by a ``torch.Generator`` seeded with ``seed`` so the split is reproducible.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _image_folder(root / "train"), _image_folder(root / "test")
        unknown = sorted(set(test.classes) - set(train.classes))
        if unknown:
            raise ValueError(f"{root / 'test'} has classes absent from {root / 'train'}: {unknown}")
        to_train = [train.class_to_idx[c] for c in test.classes]
        test_samples = [(path, to_train[y]) for path, y in test.samples]
        train_samples, classes = train.samples, train.classes
    else:
        ds = _image_folder(root)
        targets = torch.tensor(ds.targets, dtype=torch.int64)
        gen = torch.Generator().manual_seed(seed)
        held_out = []
        for c in range(len(ds.classes)):
            idx = torch.nonzero(targets == c).flatten()
            n_test = min(max(1, round(test_fraction * len(idx))), len(idx) - 1)  # >= 1 test, >= 1 train
            held_out.append(idx[torch.randperm(len(idx), generator=gen)[:n_test]])
        is_test = torch.zeros(len(targets), dtype=torch.bool)
        is_test[torch.cat(held_out)] = True
        train_samples = [s for s, t in zip(ds.samples, is_test.tolist()) if not t]
        test_samples = [s for s, t in zip(ds.samples, is_test.tolist()) if t]
        classes = ds.classes
    out = {"classes": list(classes)}
    for split, samples in (("train", train_samples), ("test", test_samples)):
        labels = _labels([y for _, y in samples])
        if select is not None:
            keep = select(split, labels).tolist()
            samples, labels = [samples[i] for i in keep], labels[keep]
        out[split] = (samples, labels)
    if check is not None:
        check(out["classes"], out["train"][1], out["test"][1])
    return out
