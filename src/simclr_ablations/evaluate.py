"""Evaluation of a pretrained encoder: linear evaluation and kNN on frozen features.

Protocol (the standard one, stated with every number): the pretrained network is frozen (eval
mode, no gradient; its BatchNorm statistics are not updated) and features of the *un-augmented*
train and test images are extracted once. A linear classifier is trained on the train features
(SGD with Nesterov momentum, cosine decay, lr = base x batch/256) and reported as top-1 test
accuracy. kNN uses cosine similarity and the InstDisc weighted vote. Features are taken at every
layer of the head (0 = h, the encoder output; the last = g(h)), so one run answers "h vs g(h)".
This is never an online probe: nothing here feeds back into pretraining.

Semi-supervised evaluation (paper sec. 6, SimCLRv2), only when `eval.semi.fractions` asks for it:
the whole pretrained network (encoder, plus the head up to `from_layer`) and a new linear layer
are fine-tuned on a class-balanced subset holding that fraction of the training labels (drawn with
the run's seed), with crop + flip augmentation, and the fine-tuned network's test top-1 reported.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from . import augment, checkpoint, data, optim, params, pretrain, provenance, stream

PROTOCOL = ("linear eval: frozen encoder, features of un-augmented images, linear classifier trained "
            "with SGD-Nesterov; kNN: cosine, weighted vote")


@torch.no_grad()
def extract(model, images, norm, device, batch: int = 512, runtime: dict | None = None) -> list[torch.Tensor]:
    """Features at every head layer for uint8 images (a tensor, or streamed files: stream.eval_split),
    as float32 CPU tensors."""
    model.eval()
    outs: list[list[torch.Tensor]] = []
    for xb in stream.chunks(images, batch, runtime or {"workers": 0, "prefetch": 1}):
        x = norm(augment.to_float(xb.to(device)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h = model.encoder(x)
            layers = model.head.layers_out(h) if hasattr(model, "head") else [h]
        outs.append([t.float().cpu() for t in layers])
    return [torch.cat(parts) for parts in zip(*outs)]


def linear_eval(ftr, ytr, fte, yte, classes: int, cfg: dict, seed: int) -> float:
    """Top-1 test accuracy (%) of a linear classifier trained on frozen features."""
    if cfg["standardize"]:
        mean, std = ftr.mean(0), ftr.std(0).clamp_min(1e-6)
        ftr, fte = (ftr - mean) / std, (fte - mean) / std
    torch.manual_seed(seed)
    clf = torch.nn.Linear(ftr.shape[1], classes)
    bs = min(cfg["batch_size"], ftr.shape[0])
    peak = cfg["lr"] * bs / 256
    steps = math.ceil(ftr.shape[0] / bs)
    g = torch.Generator().manual_seed(seed)
    weights, bufs = list(clf.parameters()), [None, None]
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(ftr.shape[0], generator=g)
        for s in range(steps):
            lr = optim.lr_at(epoch * steps + s, cfg["epochs"] * steps, 0, peak, "cosine")
            idx = perm[s * bs:(s + 1) * bs]
            loss = F.cross_entropy(clf(ftr[idx]), ytr[idx])
            optim.nesterov_sgd_step(weights, torch.autograd.grad(loss, weights), bufs, lr, 0.9,
                                    cfg["weight_decay"])
    with torch.no_grad():
        return (clf(fte).argmax(1) == yte).float().mean().item() * 100


@torch.no_grad()
def knn(ftr, ytr, fte, yte, classes: int, k: int, temperature: float) -> float:
    """Top-1 (%) of the weighted kNN classifier (InstDisc): votes exp(cos / t) of the k nearest."""
    ftr, fte = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
    k = min(k, ftr.shape[0])
    correct = 0
    for i in range(0, fte.shape[0], 1024):
        sim, idx = (fte[i:i + 1024] @ ftr.t()).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], classes).scatter_add_(1, ytr[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == yte[i:i + 1024]).sum().item()
    return correct / fte.shape[0] * 100


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of `fraction` of each class's images (at least one per class), chosen with `seed`."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero()[:, 0]
        n = max(1, round(fraction * idx.numel()))
        picked.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
    return torch.cat(picked).sort().values


class FineTuneNet(torch.nn.Module):
    """Encoder + the first `from_layer` head layers + a new linear classifier."""

    def __init__(self, model, from_layer: int, classes: int):
        super().__init__()
        self.encoder = model.encoder
        blocks = list(model.head.blocks[:from_layer]) if hasattr(model, "head") else []
        self.blocks = torch.nn.Sequential(*blocks)
        dim = model.encoder.dim if not blocks else model.head.layers_out(
            torch.zeros(2, model.encoder.dim, device=next(model.parameters()).device))[from_layer].shape[1]
        self.classifier = torch.nn.Linear(dim, classes)

    def forward(self, x):
        return self.classifier(self.blocks(self.encoder(x)))


def fine_tune(run_dir: Path, p: dict, xtr, ytr, xte, yte, norm, device, fraction: float) -> float:
    """Test top-1 (%) after fine-tuning the whole network on `fraction` of the labels."""
    cfg = p["eval"]["semi"]
    model, _ = pretrain.load_model(run_dir, device)
    classes = int(ytr.max()) + 1
    torch.manual_seed(p["seed"])
    net = FineTuneNet(model, cfg["from_layer"] if p["method"] != "supervised" else 0, classes).to(device)
    idx = balanced_subset(ytr, fraction, p["seed"])
    x, y = stream.take(xtr, idx), ytr[idx]
    bs = min(cfg["batch_size"], len(x))
    per_epoch = math.ceil(len(x) / bs)
    steps = max(cfg["epochs"] * per_epoch, cfg["min_steps"])
    peak = cfg["lr"] * bs / 256
    opt = torch.optim.SGD(net.parameters(), lr=peak, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(p["seed"])
    g_aug = torch.Generator(device=device).manual_seed(p["seed"] + 1)
    aug = dict(p["augment"])
    net.train()
    for s in range(steps):
        if s % per_epoch == 0:
            perm = torch.randperm(len(x), generator=g)
        b = perm[(s % per_epoch) * bs:(s % per_epoch + 1) * bs]
        for group in opt.param_groups:
            group["lr"] = optim.lr_at(s, steps, 0, peak, "cosine")
        v = norm(augment.apply_ops(augment.to_float(stream.stack(x, b).to(device)), cfg["ops"], aug, g_aug))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(net(v).float(), y[b].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(norm(augment.to_float(xb.to(device)))).argmax(1).cpu()
                          for xb in stream.chunks(xte, 512, p["runtime"])])
    return (pred == yte).float().mean().item() * 100


def trained_params(run_dir: Path) -> dict:
    """The params a pretraining ran with (run_dir/params.yaml)."""
    return params.from_resolved(yaml.safe_load((Path(run_dir) / "params.yaml").read_text()))


def evaluate(run_dir: Path, data_dir: Path, p: dict | None = None, threads: int = 0) -> dict:
    """All metrics of a finished pretraining under the evaluation settings of `p` (default: the params
    the run was pretrained with). p must describe the same pretraining (params.pretrain_id)."""
    wall0 = time.perf_counter()
    trained = trained_params(run_dir)
    p = trained if p is None else p
    if params.pretrain_id(p) != params.pretrain_id(trained):
        raise params.ParamsError(
            f"{run_dir} holds pretraining {params.pretrain_id(trained)}, but these params describe pretraining "
            f"{params.pretrain_id(p)}: only eval.* settings may differ from the ones it was trained with")
    device = pretrain.setup(p, threads)
    model, _ = pretrain.load_model(run_dir, device)
    meta = data.load_meta(data_dir)
    data.check_meta(meta, p, data_dir)
    train = json.loads((Path(run_dir) / "train.json").read_text())
    trained_on = train.get("data_fingerprint")
    if trained_on and trained_on != meta.get("fingerprint"):
        raise data.DataError(f"{run_dir} was pretrained on other data (fingerprint {trained_on}) than --data "
                             f"{data_dir} ({meta.get('fingerprint')}): the data changed since; rerun prepare and "
                             "pretrain")
    classes = len(meta["classes"])
    norm = augment.Normalize(meta["mean"], meta["std"], p["augment"]["normalize"]).to(device)
    xtr, ytr = stream.eval_split(data_dir, meta, "train")
    xte, yte = stream.eval_split(data_dir, meta, "test")
    ftr, fte = (extract(model, x, norm, device, runtime=p["runtime"]) for x in (xtr, xte))
    for split, feats in (("train", ftr), ("test", fte)):
        checkpoint.check_finite({f"layer {i}": f for i, f in enumerate(feats)}, f"{split} features of {run_dir}")
    e = p["eval"]
    by_layer = []
    for layer, (a, b) in enumerate(zip(ftr, fte)):
        by_layer.append({
            "layer": layer,
            "dim": a.shape[1],
            "linear_top1": round(linear_eval(a, ytr, b, yte, classes, e["linear"], p["seed"]), 3),
            "knn_top1": round(knn(a, ytr, b, yte, classes, e["knn"]["k"], e["knn"]["temperature"]), 3),
        })
    chosen = by_layer[min(e["feature_layer"], len(by_layer) - 1)]
    metrics = {
        "run_id": train["run_id"],
        "eval_id": params.eval_id(p),
        "linear_top1": chosen["linear_top1"],
        "knn_top1": chosen["knn_top1"],
        "feature_layer": chosen["layer"],
        "by_layer": by_layer,
        "train_seconds": train["train_seconds"],
        "encoder_params": train["encoder_params"],
        "final_loss": train["final"]["loss"],
    }
    if p["method"] == "supervised":
        with torch.no_grad():
            logits = torch.cat([model(norm(augment.to_float(xb.to(device)))).float().cpu()
                                for xb in stream.chunks(xte, 512, p["runtime"])])
        metrics["supervised_top1"] = round((logits.argmax(1) == yte).float().mean().item() * 100, 3)
    else:
        metrics["contrastive_acc"] = train["final"]["contrastive_acc"]
        metrics["entropy"] = train["final"]["entropy"]
    semi = p["eval"]["semi"]
    if semi["fractions"]:
        metrics["semi"] = {f"{f:g}": round(fine_tune(run_dir, p, xtr, ytr, xte, yte, norm, device, f), 3)
                           for f in semi["fractions"]}
    metrics["provenance"] = provenance.record(device, torch.get_num_threads(), time.perf_counter() - wall0)
    metrics["provenance"]["pretrain_code_version"] = train["provenance"]["code_version"]
    metrics["provenance"]["pretrain_device_name"] = train["provenance"].get("device_name", "")
    return metrics


def protocol(p: dict) -> str:
    """The protocol of the numbers in metrics.json, in words (stated in tables and the README)."""
    text = PROTOCOL
    semi = p["eval"]["semi"]
    if semi["fractions"]:
        text += (f"; semi-supervised: fine-tune encoder + head up to layer {semi['from_layer']} + new linear layer "
                 f"on a class-balanced label subset, ops {semi['ops']}; test top-1")
    return text


def write(metrics: dict, p: dict, out_dir: Path) -> None:
    """out_dir/metrics.json (numbers, ids and the code version), out_dir/params.yaml (the params that
    ran) and out_dir/provenance.json (everything needed to rerun it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params.dump(p, out_dir / "params.yaml")
    full = metrics["provenance"]
    write_json(full, out_dir / "provenance.json")
    write_json({**metrics, "provenance": {**provenance.compact(full),
                                          "pretrain_code_version": full["pretrain_code_version"],
                                          "pretrain_device_name": full["pretrain_device_name"]}},
               out_dir / "metrics.json")


def write_json(obj: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text_atomic(path, json.dumps(obj, indent=2))  # per-process temp name, removed on failure
