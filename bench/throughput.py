"""Pretraining throughput of a preset: images/s of the real SimCLR step, plus its parts and the per-job overhead.

    python bench/throughput.py --preset cpu [--set key=value ...] [--steps N] [--device cpu|cuda]

A step is what `pretrain.train` does per batch: index a batch of the in-memory uint8 dataset, move it
to the device, `augment.two_views`, `Normalize`, channels-last (per runtime params), forward under
bf16 autocast where enabled (CUDA: runtime.amp; CPU: runtime.cpu_amp), the configured loss and
contrastive stats, backward, optimizer step. Reported:

* end-to-end images/s: median over `--repeats` runs of `--steps` steps each, after `--warmup` steps;
* augmentation-only images/s (batch -> device -> two views -> Normalize) and step-only images/s
  (forward/loss/backward/step on one fixed augmented batch), measured the same way;
* per-job overhead: seconds from the top of this script (before torch is imported) to the first
  finished training step: imports + data generation/preparation + loading + model build + step 1.

Images/s counts source images (the batch size), not views: every image is seen twice per step.
"""

import time

T0 = time.perf_counter()  # the per-job overhead is measured from here, before torch is imported

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from simclr_ablations import augment, data, losses, models, optim, params, pretrain  # noqa: E402

T_IMPORTED = time.perf_counter()


class Pipeline:
    """The SimCLR training step of `pretrain.train`, built the same way from resolved params."""

    def __init__(self, p: dict, data_dir: Path, threads: int = 0):
        if p["method"] != "simclr":
            raise SystemExit("throughput: only method=simclr is benchmarked")
        self.p, t, aug = p, p["pretrain"], p["augment"]
        self.device = pretrain.setup(p, threads)
        self.cuda = self.device.type == "cuda"
        meta = data.load_meta(data_dir)
        images, _ = data.pretrain_images(data_dir)
        self.images = images.pin_memory() if self.cuda else images
        self.bs = t["batch_size"]
        self.steps_per_epoch = images.shape[0] // self.bs
        if self.steps_per_epoch == 0:
            raise SystemExit(f"throughput: batch size {self.bs} exceeds the {images.shape[0]} images")
        self.total = self.steps_per_epoch * t["epochs"]
        self.warmup = self.steps_per_epoch * t["warmup_epochs"]
        self.model = pretrain.build_model(p, len(meta["classes"])).to(self.device)
        self.norm = augment.Normalize(meta["mean"], meta["std"], aug["normalize"]).to(self.device)
        self.channels_last = models.use_channels_last(p["runtime"]["channels_last"], self.device, self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = optim.build(self.model, t)
        self.peak_lr = self.opt.param_groups[0]["lr"]
        self.loss_fn = losses.loss_fn(p)
        self.forward = torch.compile(self.model) if (self.cuda and p["runtime"]["compile"]) else self.model
        g_order, self.g_aug = pretrain.epoch_generators(p["seed"], 0, self.device)
        self.perm = torch.randperm(images.shape[0], generator=g_order)
        self.amp = pretrain.uses_amp(p, self.device)
        self.i = 0
        self.model.train()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def batch(self) -> torch.Tensor:
        """The next uint8 batch of the data order, on the device (the first epoch's order, cycled)."""
        s = self.i % self.steps_per_epoch
        self.i += 1
        idx = self.perm[s * self.bs:(s + 1) * self.bs]
        return self.images[idx].to(self.device, non_blocking=True)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Both augmented, normalised views of a batch, stacked (2B x 3 x H x W)."""
        v1, v2 = augment.two_views(x, self.p["augment"], self.g_aug)
        v = self.norm(torch.cat([v1, v2]))
        return v.contiguous(memory_format=torch.channels_last) if self.channels_last else v

    def augmented(self) -> torch.Tensor:
        """The next batch's views, as the training step makes them (under autocast where enabled)."""
        x = self.batch()
        with self.autocast():
            return self.views(x)

    def update(self, v: torch.Tensor) -> float:
        """Forward, loss (+ the stats pretrain logs), backward and optimizer step on augmented views."""
        with self.autocast():
            z1, z2 = self.forward(v).float().chunk(2)
            loss = self.loss_fn(z1, z2)
            losses.contrastive_stats(z1, z2, self.p["pretrain"]["temperature"], self.p["pretrain"]["l2_normalize"])
        return self._backward(loss)

    def _backward(self, loss: torch.Tensor) -> float:
        if not torch.isfinite(loss):
            raise SystemExit(f"throughput: the loss is {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def step(self) -> float:
        """One end-to-end training step, as in pretrain.train."""
        lr = optim.lr_at(self.i % self.total, self.total, self.warmup, self.peak_lr, self.p["pretrain"]["schedule"])
        for group in self.opt.param_groups:
            group["lr"] = lr
        return self.update(self.augmented())


def rate(pipe: Pipeline, fn, steps: int, repeats: int) -> float:
    """Median images/s of `repeats` timed runs of `steps` calls of fn (device synchronised)."""
    out = []
    for _ in range(repeats):
        pipe.sync()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        pipe.sync()
        out.append(steps * pipe.bs / (time.perf_counter() - t))
    return statistics.median(out)


def describe(p: dict) -> str:
    e = p["encoder"]
    return f"R{e['depth']} x{e['width']:g}, batch {p['pretrain']['batch_size']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help=f"one of: {', '.join(params.presets())}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: runtime.device of the params")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: runtime.threads, else all cores)")
    args = ap.parse_args(argv)
    settings = args.set + ([f"runtime.device={args.device}"] if args.device else [])
    p = params.load(args.preset, settings=settings)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = data.prepare(p, Path(tmp) / "data")
        t_data = time.perf_counter()
        pipe = Pipeline(p, data_dir, args.threads)
        t_built = time.perf_counter()
        pipe.step()
        pipe.sync()
        t_first = time.perf_counter()
    for _ in range(args.warmup):
        pipe.step()

    end_to_end = rate(pipe, pipe.step, args.steps, args.repeats)
    aug_only = rate(pipe, pipe.augmented, args.steps, args.repeats)
    fixed = pipe.augmented()
    step_only = rate(pipe, lambda: pipe.update(fixed), args.steps, args.repeats)

    dev = f"{pipe.device.type}, {torch.get_num_threads()} threads"
    if pipe.cuda:
        dev = f"cuda ({torch.cuda.get_device_name(pipe.device)})"
    print(f"per-job overhead: {t_first - T0:.2f} s to the first finished step (imports {T_IMPORTED - T0:.2f} s, "
          f"data preparation {t_data - T_IMPORTED:.2f} s, loading + model build {t_built - t_data:.2f} s, "
          f"first step {t_first - t_built:.2f} s)")
    print(f"augmentation only: {aug_only:.1f} images/s")
    print(f"step only (forward/loss/backward/optimizer): {step_only:.1f} images/s")
    print(f"median of {args.repeats} x {args.steps} steps after {args.warmup + 1} warm-up steps; "
          f"load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"pretrain throughput: {end_to_end:.1f} images/s (preset {args.preset}, {dev}, {describe(p)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
