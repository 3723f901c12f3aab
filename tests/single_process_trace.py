"""The single-process reference of tests/test_ddp.py: a tiny pretraining per method, recorded as
its per-epoch losses and a SHA-256 of every saved tensor (network and method state).

tests/data/single_process_trace.json was written by `python tests/single_process_trace.py` from
main's code *before* data parallelism was added (commit 81a1d80; rewritten at 89323b4, still before
it, when the embedded dataset changed); test_single_process_unchanged reruns the same pretrainings
with today's code and requires the same bits, so a run without torchrun stays what it was (results
regenerated from main remain valid). The related methods run with `<method>.per_view_forward: false`,
the one-pass forward they had when the reference was written (their default since is one pass per view).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from simclr_ablations import data, params, pretrain

METHODS = ("simclr", "moco", "byol", "simsiam", "wcl", "supervised")
# head.output_bn=false: the head the reference was written with (the official output BN came later)
SETTINGS = ["pretrain.epochs=2", "pretrain.warmup_epochs=1", "data.synthetic.train_size=256",
            "data.synthetic.test_size=64", "pretrain.batch_size=64", "head.output_bn=false"]
TRACE = Path(__file__).parent / "data" / "single_process_trace.json"


def tensor_digest(state: dict) -> dict:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for k, v in state.items() if torch.is_tensor(v)}


def trace(method: str, data_dir: Path, out: Path) -> dict:
    # both views in one forward pass: the related methods' forward before per_view_forward existed
    joint = [f"{method}.per_view_forward=false"] if method in params.METHOD_BLOCKS else []
    p = params.load("smoke", settings=SETTINGS + [f"method={method}"] + joint)
    summary = pretrain.train(p, data_dir, out, threads=1, log=lambda *_: None)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    lines = (out / "history.csv").read_text().splitlines()
    col = lines[0].split(",").index("loss")
    return {"run_id": summary["run_id"], "losses": [float(r.split(",")[col]) for r in lines[1:]],
            "model": tensor_digest(ckpt["model"]),
            "method": tensor_digest(ckpt["method"]) if ckpt["method"] is not None else {}}


def prepare(tmp: Path) -> Path:
    return data.prepare(params.load("smoke", settings=SETTINGS), tmp / "data")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        d = prepare(Path(tmp))
        out = {m: trace(m, d, Path(tmp) / m) for m in (sys.argv[1:] or METHODS)}
    TRACE.parent.mkdir(exist_ok=True)
    out["isa"] = torch.backends.cpu.get_cpu_capability()  # the bits are those of this ISA's kernels
    TRACE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {TRACE}")
