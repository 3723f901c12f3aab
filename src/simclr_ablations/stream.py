"""Where the training and evaluation batches come from: memory or a stream of image files.

`data.storage` decides how a prepared dataset is held (params/default.yaml):

- memory: `prepare` decodes every image once into uint8 tensors (train.pt / test.pt); a batch is
  indexed from them (pinned host memory on CUDA) and moved to the device.
- stream (image folders only): `prepare` writes the file lists (train.files.json / test.files.json)
  and the channel statistics; each batch is decoded from the files by DataLoader workers
  (`runtime.workers`, `runtime.prefetch`). For pretraining the random-resized crop is drawn and
  applied at decode time, on the full-size image of whatever shape, and the crop is resized to
  `data.image_size`; the uint8 crops then go through the same batched augmentations as in memory
  (augment.two_views without its leading crop). Evaluation decodes the centre crop that `prepare`
  would have stored, so its uint8 images are identical to the in-memory ones.
- auto: memory when the prepared set (N x 3 x size x size bytes) fits `data.memory_budget_gb`.

Streaming is single-process: under torchrun (world size > 1) it is refused (params.py, and
pretrain for a set that `auto` prepared for streaming).

Determinism: a batch holds the images of the seeded global order (pretrain.epoch_generators), and
an image's crop boxes and flips come from a generator seeded by (seed, epoch, index) alone, so the
batches do not depend on the worker count, and a run can start at any step of an epoch and get the
batches an uninterrupted run gets there. The crop draws differ from the in-memory pipeline's (which
draws the whole batch's boxes from the augmentation generator on the device); when the ops start
with no crop the two storages give identical batches (tests/test_stream.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import augment, data

GB = 1e9


def prepared_bytes(n_images: int, size: int) -> int:
    """Bytes of n uint8 images of 3 x size x size (what `memory` storage holds)."""
    return n_images * 3 * size * size


def resolve(d: dict, n_images: int) -> str:
    """'memory' or 'stream' for the data params `d` and a prepared set of n_images images."""
    if d["storage"] != "auto":
        return d["storage"]
    if d["dataset"] != "imagefolder":
        return "memory"
    return "memory" if prepared_bytes(n_images, d["image_size"]) <= d["memory_budget_gb"] * GB else "stream"


def write_index(split: str, samples: list[tuple[str, int]], labels: torch.Tensor, out: Path) -> None:
    """out/<split>.files.json: the absolute paths and labels of a split, in order."""
    files = [str(Path(path).absolute()) for path, _ in samples]
    (out / f"{split}.files.json").write_text(json.dumps({"files": files, "labels": labels.tolist()}))


def read_index(path: Path, split: str) -> tuple[list[str], torch.Tensor]:
    f = Path(path) / f"{split}.files.json"
    if not f.is_file():
        raise data.DataError(f"--data {path} was prepared for streaming but has no {f.name}; prepare it again")
    blob = json.loads(f.read_text())
    return blob["files"], torch.tensor(blob["labels"], dtype=torch.int64)


def channel_stats(files: list[str], size: int, workers: int, prefetch: int) -> tuple[list[float], list[float]]:
    """Channel mean and (unbiased) std in [0, 1] of the centre crops of `files`, summed exactly in float64."""
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    for x in _loader(Center(files, size), list(_chunks(len(files), 256)), workers, prefetch, False):
        xf = x.double().div_(255)
        s += xf.sum((0, 2, 3))
        s2 += xf.pow(2).sum((0, 2, 3))
    n = len(files) * size * size
    mean = s / n
    var = (s2 - n * mean**2) / max(n - 1, 1)
    return mean.tolist(), var.clamp_min(0).sqrt().tolist()


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield list(range(i, min(i + size, n)))


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one image's decode-time draws: a function of (seed, epoch, index) only."""
    key = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))


class Center(Dataset):
    """Item i: file i as uint8 3 x size x size (the centre crop `prepare` stores)."""

    def __init__(self, files: list[str], size: int):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from . import datasets

        return datasets.read_center(self.files[i], self.size)

    def take(self, idx: torch.Tensor) -> Center:
        return Center([self.files[i] for i in idx.tolist()], self.size)

    def stack(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self[i] for i in idx.tolist()])


def crop_plan(p: dict) -> dict:
    """What pretraining decodes per image: `views` crops (random-resized, or the centre when the ops
    start without a crop), and the crop's params. Mirrors augment.two_views / the supervised view."""
    aug = p["augment"]
    ops = aug["ops"]
    if "crop" in ops and ops[0] != "crop":
        raise data.DataError(f"'augment.ops' = {ops}: streaming crops at decode time, so crop must come first "
                             "(or set data.storage: memory)")
    c = aug["crop"]
    plan = {"ratio_min": c["ratio_min"], "ratio_max": c["ratio_max"], "scale_max": c.get("scale_max", 1.0)}
    if p["method"] != "supervised" and aug["branches"] == "one":
        return dict(plan, views=1, random=True, scale_min=aug["base_crop_scale"], flip=0.0)
    if not ops or ops[0] != "crop":
        return dict(plan, views=1, random=False, scale_min=1.0, flip=0.0)
    views = 1 if p["method"] == "supervised" else 2
    return dict(plan, views=views, random=True, scale_min=c["scale_min"], flip=c["flip"])


class Crops(Dataset):
    """Item (epoch, i): file i as uint8 views x 3 x size x size, cropped at decode time.

    A random view is torchvision's random-resized crop (augment.crop_boxes' sampling, on the full
    image) resized to size x size with PIL's antialiased bilinear filter, then flipped w.p. `flip`."""

    def __init__(self, files: list[str], size: int, plan: dict, seed: int):
        self.files, self.size, self.plan, self.seed = files, size, plan, seed

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        import torchvision.transforms.functional as TF
        from PIL import Image

        from . import datasets

        epoch, i = key
        pl, size = self.plan, self.size
        if not pl["random"]:
            return datasets.read_center(self.files[i], size)[None]

        img = datasets._decode(self.files[i])
        width, height = img.size
        g = item_generator(self.seed, epoch, i)
        boxes = augment.crop_boxes(pl["views"], height, width, pl["scale_min"], pl["ratio_min"], pl["ratio_max"], g,
                                   scale_max=pl["scale_max"])
        flips = torch.rand(pl["views"], generator=g) < pl["flip"]
        out = torch.empty((pl["views"], 3, size, size), dtype=torch.uint8)
        for v, ((x0, y0, w, h), flip) in enumerate(zip(boxes.tolist(), flips.tolist())):
            view = img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
            if flip:
                view = view.transpose(Image.FLIP_LEFT_RIGHT)
            out[v] = TF.pil_to_tensor(view)
        return out


def _loader(ds: Dataset, batches: list, workers: int, prefetch: int, pin: bool) -> DataLoader:
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, prefetch_factor=prefetch if workers else None,
                      pin_memory=pin, persistent_workers=False)


def _whole(idx: torch.Tensor) -> torch.Tensor:
    return idx


class MemorySource:
    """Batches indexed from the in-memory uint8 set (pinned host memory on CUDA), moved to the device:
    the computation pretraining always did."""

    storage = "memory"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
        self.device, self.images, self.labels = device, images, labels

    def __len__(self):
        return self.images.shape[0]

    def pin(self) -> None:
        if self.device.type == "cuda":
            self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 batch, labels) of the images at idx, on the device."""
        return (self.images[idx].to(self.device, non_blocking=True),
                self.labels[idx].to(self.device, non_blocking=True))

    def epoch(self, perm: torch.Tensor, bs: int, epoch: int, start: int = 0, shard=_whole):
        """(uint8 batch, labels) on the device for steps start, start + 1, ... of the epoch's order `perm`
        (of each step's global batch, the rows `shard` keeps: distributed.shard under DDP)."""
        for step in range(start, perm.numel() // bs):
            yield self.batch(shard(perm[step * bs:(step + 1) * bs]))

    def probe(self, k: int) -> torch.Tensor:
        return self.images[:k].to(self.device)


class StreamSource:
    """Batches decoded from files by DataLoader workers, cropped at decode time (uint8 B x V x 3 x S x S)."""

    storage = "stream"

    def __init__(self, p: dict, files: list[str], labels: torch.Tensor, device: torch.device):
        r = p["runtime"]
        self.p, self.device, self.labels = p, device, labels
        self.crops = Crops(files, p["data"]["image_size"], crop_plan(p), p["seed"])
        self.workers, self.prefetch = r["workers"], r["prefetch"]

    def __len__(self):
        return len(self.crops)

    def pin(self) -> None:
        pass

    def keys(self, perm: torch.Tensor, bs: int, epoch: int, start: int = 0,
             shard=_whole) -> list[list[tuple[int, int]]]:
        """The (epoch, index) items of each batch from step `start` on: the seeded global order, in steps
        (of each, the rows `shard` keeps)."""
        return [[(epoch, i) for i in shard(perm[s * bs:(s + 1) * bs]).tolist()]
                for s in range(start, perm.numel() // bs)]

    def epoch(self, perm: torch.Tensor, bs: int, epoch: int, start: int = 0, shard=_whole):
        keys = self.keys(perm, bs, epoch, start, shard)
        loader = _loader(self.crops, keys, self.workers, self.prefetch, self.device.type == "cuda")
        for batch, key in zip(loader, keys):
            y = self.labels[torch.tensor([i for _, i in key])]
            yield batch.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def probe(self, k: int) -> torch.Tensor:
        return Center(self.crops.files, self.crops.size).stack(torch.arange(min(k, len(self)))).to(self.device)


def train_source(p: dict, data_dir: Path, meta: dict, device: torch.device):
    """The pretraining set of the prepared data (with STL-10's unlabeled images for the
    self-supervised methods), as a MemorySource or a StreamSource."""
    if meta.get("storage", "memory") == "stream":
        if p["method"] == "wcl":
            raise data.DataError("method wcl reads its neighbours' images at random (KNN multi-crop): it needs "
                                 "data.storage: memory")
        files, labels = read_index(data_dir, "train")
        return StreamSource(p, files, labels, device)
    if p["method"] == "supervised":
        images, labels = data.load_prepared(data_dir, "train")
    else:
        images, labels = data.pretrain_images(data_dir)
    return MemorySource(images, labels, device)


def eval_split(data_dir: Path, meta: dict, split: str):
    """(images, labels) of a split for evaluation: a uint8 tensor, or a Center set of files when streamed."""
    if meta.get("storage", "memory") == "stream":
        files, labels = read_index(data_dir, split)
        return Center(files, meta["image_size"]), labels
    return data.load_prepared(data_dir, split)


def chunks(images, batch: int, runtime: dict):
    """uint8 batches of `images` in order: slices of a tensor, or Center files decoded by workers."""
    if isinstance(images, torch.Tensor):
        for i in range(0, images.shape[0], batch):
            yield images[i:i + batch]
        return
    yield from _loader(images, list(_chunks(len(images), batch)), runtime["workers"], runtime["prefetch"], False)


def take(images, idx: torch.Tensor):
    """The images at idx: a tensor, or a Center set of those files (decoded when stacked)."""
    return images[idx] if isinstance(images, torch.Tensor) else images.take(idx)


def stack(images, idx: torch.Tensor) -> torch.Tensor:
    """uint8 batch of the images at idx (decoded here when streamed)."""
    return images[idx] if isinstance(images, torch.Tensor) else images.stack(idx)
