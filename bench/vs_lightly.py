"""SimCLR pretraining speed of this project vs lightly, side by side on the same encoder.

    pip install lightly        # benchmark-only dependency, not in pyproject.toml
    python bench/vs_lightly.py [--preset cpu] [--width 1.0] [--steps 20] [--repeats 3] [--device cpu|cuda]

Both implementations train the CIFAR-stem ResNet of this project (`models.ResNet`: depth 18 or `--depth`,
the preset's width or `--width`) with the same batch size, image size and augmentation recipe, on the same
synthetic dataset, for `--warmup` untimed then `--steps` timed steps:

* ours: the real pipeline, step for step as `pretrain.train` (see throughput.py): in-memory uint8
  batch -> device -> batched tensor augmentation -> Normalize -> channels-last forward (per the
  runtime params; bf16 autocast per runtime.amp / cpu_amp) -> configured loss (+ logged stats) ->
  configured optimizer.
* lightly: `SimCLRTransform` (PIL, per image; gaussian_blur=0 as in lightly's CIFAR-10 benchmark, the
  colour jitter, crop scale, flip and grayscale probabilities of our params) in a standard torch
  DataLoader over PIL images, `SimCLRProjectionHead` on the same encoder, `NTXentLoss` at our
  temperature, and torch.optim.SGD(lr=0.06 * batch/128, momentum=0.9, weight_decay=5e-4) as in
  lightly's CIFAR-10 benchmark. Both views go through the network in one call, as ours do.

Each implementation runs in its own subprocess per repeat (clean peak memory, its own threads),
alternating which goes first; the speedup is the median of the per-repeat ratios ours / lightly.
"""

import time

T0 = time.perf_counter()  # "first step after process start" is measured from here, before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from simclr_ablations import data, models, params, pretrain  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (bench/throughput.py: our pipeline)

LIGHTLY_MISSING = ("vs_lightly: lightly is not installed. It is a benchmark-only dependency: "
                   "run `pip install lightly` in this environment (it is not in pyproject.toml).")


def default_workers(device: str, threads: int) -> int:
    """Loader processes for lightly. Its CIFAR-10 benchmark uses 8 on a many-core GPU machine, where the
    training process needs about one core; here the workers get the cores the training threads leave
    free: on CUDA min(8, cores - 1), on the CPU min(8, cores - threads), so 0 (load in the training
    process) on a 2-core CPU, which is also what measured fastest for lightly there (README.md)."""
    cores = os.cpu_count() or 1
    return max(0, min(8, cores - (1 if device == "cuda" else threads)))


def check_recipe(p: dict) -> None:
    aug = p["augment"]
    extra = set(aug["ops"]) - {"crop", "color", "blur"}
    if extra or aug["branches"] != "both" or "crop" not in aug["ops"] or p["method"] != "simclr":
        raise SystemExit("vs_lightly: needs method=simclr, augment.branches=both and augment.ops within "
                         f"crop, color, blur (SimCLRTransform's recipe); got {aug['ops']}, {aug['branches']}")
    if p["pretrain"]["loss"] != "nt_xent" or p["head"]["type"] != "mlp":
        raise SystemExit("vs_lightly: needs pretrain.loss=nt_xent and head.type=mlp (NTXentLoss, SimCLRProjectionHead)")


# ---------------------------------------------------------------- one implementation, in a subprocess

def run_ours(p: dict, data_dir: Path, args) -> dict:
    pipe = throughput.Pipeline(p, data_dir, args.threads)
    pipe.step()
    pipe.sync()
    first = time.perf_counter()
    for _ in range(args.warmup):
        pipe.step()
    ips = throughput.rate(pipe, pipe.step, args.steps, 1)
    return {"images_per_s": ips, "first_step_s": first - T0, "device": pipe.device}


class PILImages(torch.utils.data.Dataset):
    """The prepared uint8 images as PIL images, converted per item like torchvision's CIFAR10."""

    def __init__(self, images: torch.Tensor, transform):
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.transform = transform

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[i])), 0


def endless(loader):
    while True:
        yield from loader


def run_lightly(p: dict, data_dir: Path, args) -> dict:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    device = pretrain.setup(p, args.threads)
    cuda = device.type == "cuda"
    meta = data.load_meta(data_dir)
    images, _ = data.pretrain_images(data_dir)
    aug, t, e, h = p["augment"], p["pretrain"], p["encoder"], p["head"]
    transform = SimCLRTransform(
        input_size=images.shape[-1], cj_prob=aug["color"]["p_jitter"], cj_strength=aug["color"]["strength"],
        cj_bright=0.8, cj_contrast=0.8, cj_sat=0.8, cj_hue=0.2, min_scale=aug["crop"]["scale_min"],
        random_gray_scale=aug["color"]["p_gray"], hf_prob=aug["crop"]["flip"],
        gaussian_blur=aug["blur"]["p"] if "blur" in aug["ops"] else 0.0,
        sigmas=(aug["blur"]["sigma_min"], aug["blur"]["sigma_max"]),
        normalize={"mean": meta["mean"], "std": meta["std"]} if aug["normalize"] else None,
    )
    bs = t["batch_size"]
    loader = torch.utils.data.DataLoader(
        PILImages(images, transform), batch_size=bs, shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0, pin_memory=cuda, generator=torch.Generator().manual_seed(p["seed"]))

    torch.manual_seed(p["seed"])
    encoder = models.ResNet(e["depth"], e["width"], models.stem_for(e["stem"], p["data"]["image_size"]))
    head = SimCLRProjectionHead(encoder.dim, h["hidden_dim"] or encoder.dim, h["out_dim"])
    model = torch.nn.Sequential(encoder, head).to(device).train()
    layout = torch.channels_last if args.lightly_channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    criterion = NTXentLoss(temperature=t["temperature"])
    opt = torch.optim.SGD(model.parameters(), lr=0.06 * bs / 128, momentum=0.9, weight_decay=5e-4)

    def step(batch):
        (x0, x1), _ = batch
        x = torch.cat([x0, x1]).to(device, non_blocking=True).contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=pretrain.uses_amp(p, device)):
            z0, z1 = model(x).float().chunk(2)
            loss = criterion(z0, z1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    it = endless(loader)
    step(next(it))
    sync()
    first = time.perf_counter()
    for _ in range(args.warmup):
        step(next(it))
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(next(it))
    sync()
    ips = args.steps * bs / (time.perf_counter() - t0)
    it.close()
    del it, loader  # shuts the workers down, so that RUSAGE_CHILDREN covers them
    return {"images_per_s": ips, "first_step_s": first - T0, "device": device}


def child(args) -> None:
    p = params.from_resolved(yaml.safe_load(Path(args.params).read_text()))
    r = (run_ours if args.child == "ours" else run_lightly)(p, Path(args.data), args)
    device = r.pop("device")
    if device.type == "cuda":
        r["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        r["device"] = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        r["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        r["worker_peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        r["device"] = f"cpu, {torch.get_num_threads()} threads"
    print("RESULT " + json.dumps(r), flush=True)


# ---------------------------------------------------------------- the side-by-side run

def spawn(impl: str, args, params_file: Path, data_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--params", str(params_file), "--data", str(data_dir),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--workers", str(args.workers)] + (["--lightly-channels-last"] if args.lightly_channels_last else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"vs_lightly: the {impl} run failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help=f"one of: {', '.join(params.presets())}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    ap.add_argument("--depth", type=int, default=18, help="encoder depth (default: ResNet-18)")
    ap.add_argument("--width", type=float, help="encoder width (default: the preset's)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first one")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each implementation, alternating")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: runtime.device of the params")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both (default: all cores)")
    ap.add_argument("--workers", type=int, help="lightly's DataLoader workers (default: the cores training leaves)")
    ap.add_argument("--lightly-channels-last", action="store_true",
                    help="give lightly's model and batches the channels-last layout too (not what its benchmark does)")
    ap.add_argument("--child", choices=["ours", "lightly"], help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    try:
        import lightly  # noqa: F401
    except ImportError:
        print(LIGHTLY_MISSING, file=sys.stderr)
        return 1

    settings = [f"encoder.depth={args.depth}", *args.set]
    settings += [f"encoder.width={args.width}"] if args.width else []
    settings += [f"runtime.device={args.device}"] if args.device else []
    p = params.load(args.preset, settings=settings)
    check_recipe(p)
    if args.workers is None:
        cuda = p["runtime"]["device"] != "cpu" and torch.cuda.is_available()
        args.workers = default_workers("cuda" if cuda else "cpu", args.threads)
    t, e = p["pretrain"], p["encoder"]
    aug = p["augment"]
    print(f"SimCLR, R{e['depth']} x{e['width']:g} (CIFAR stem), batch {t['batch_size']}, "
          f"{p['data']['image_size']} px, ops {aug['ops']}, color strength {aug['color']['strength']}; "
          f"{args.warmup + 1} warm-up + {args.steps} timed steps per run, {args.threads} torch threads each, "
          f"lightly with {args.workers} loader workers")
    print(f"optimizers differ: ours {t['optimizer']} (params), lightly torch.optim.SGD (its CIFAR-10 benchmark); "
          f"ours also computes the logged contrastive stats; channels_last: ours {p['runtime']['channels_last']}, "
          f"lightly {args.lightly_channels_last}")
    results, load0 = {"ours": [], "lightly": []}, os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = data.prepare(p, Path(tmp) / "data")
        params_file = Path(tmp) / "params.yaml"
        params.dump(p, params_file)
        for r in range(args.repeats):
            order = ("ours", "lightly") if r % 2 == 0 else ("lightly", "ours")
            for impl in order:
                results[impl].append(spawn(impl, args, params_file, data_dir))
            o, li = results["ours"][-1], results["lightly"][-1]
            print(f"repeat {r + 1}: ours {o['images_per_s']:.1f} images/s, lightly {li['images_per_s']:.1f} images/s, "
                  f"ratio {o['images_per_s'] / li['images_per_s']:.2f}", flush=True)

    load1 = os.getloadavg()[0]
    print(f"load average (1 min) before / after: {load0:.2f} / {load1:.2f} on {os.cpu_count()} cores "
          "(other work on the machine slows both; alternating keeps the ratio fair)")
    ratios = [o["images_per_s"] / li["images_per_s"] for o, li in zip(results["ours"], results["lightly"])]
    mem = "peak GPU memory allocated" if results["ours"][0]["device"].startswith("cuda") else "peak RSS"
    for impl, rs in results.items():
        line = (f"{impl}: {statistics.median(r['images_per_s'] for r in rs):.1f} images/s (median), "
                f"{mem} {max(r['peak_mib'] for r in rs):.0f} MiB")
        workers = max(r.get("worker_peak_mib", 0) for r in rs)
        if impl == "lightly" and workers and args.workers:
            line += f" + {args.workers} loader workers of up to {workers:.0f} MiB each (shared pages counted in both)"
        line += f", first step {statistics.median(r['first_step_s'] for r in rs):.1f} s after process start"
        print(line)
    print(f"speedup vs lightly: {statistics.median(ratios):.2f}x ({results['ours'][0]['device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
