"""Evaluation of a pretrained encoder: linear evaluation and kNN on frozen features.

Protocol (the standard one, stated with every number): the pretrained network is frozen (eval
mode, no gradient; its BatchNorm statistics are not updated) and features of the *un-augmented*
train and test images are extracted once. A linear classifier is trained on the train features
(SGD with Nesterov momentum, cosine decay, lr = base x batch/256) and reported as top-1 test
accuracy. kNN uses cosine similarity and the InstDisc weighted vote. Features are taken at every
layer of the head (0 = h, the encoder output; the last = g(h)), so one run answers "h vs g(h)".
This is never an online probe: nothing here feeds back into pretraining.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from . import augment, data, optim, params, pretrain

PROTOCOL = ("linear eval: frozen encoder, features of un-augmented images, linear classifier trained "
            "with SGD-Nesterov; kNN: cosine, weighted vote")


@torch.no_grad()
def extract(model, images: torch.Tensor, norm, device, batch: int = 512) -> list[torch.Tensor]:
    """Features at every head layer for uint8 images, as float32 CPU tensors."""
    model.eval()
    outs: list[list[torch.Tensor]] = []
    for i in range(0, images.shape[0], batch):
        x = norm(augment.to_float(images[i:i + batch].to(device)))
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
    opt = torch.optim.SGD(clf.parameters(), lr=peak, momentum=0.9, nesterov=True, weight_decay=cfg["weight_decay"])
    steps = math.ceil(ftr.shape[0] / bs)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(ftr.shape[0], generator=g)
        for s in range(steps):
            for group in opt.param_groups:
                group["lr"] = optim.lr_at(epoch * steps + s, cfg["epochs"] * steps, 0, peak, "cosine")
            idx = perm[s * bs:(s + 1) * bs]
            loss = F.cross_entropy(clf(ftr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
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


def evaluate(run_dir: Path, data_dir: Path, threads: int = 0) -> dict:
    """All metrics of a finished run, with the protocol and the params that made it."""
    p = params.from_resolved(yaml.safe_load((Path(run_dir) / "params.yaml").read_text()))
    device = pretrain.setup(p, threads)
    model, _ = pretrain.load_model(run_dir, device)
    meta = data.load_meta(data_dir)
    classes = len(meta["classes"])
    norm = augment.Normalize(meta["mean"], meta["std"], p["augment"]["normalize"]).to(device)
    xtr, ytr = data.load_prepared(data_dir, "train")
    xte, yte = data.load_prepared(data_dir, "test")
    ftr, fte = extract(model, xtr, norm, device), extract(model, xte, norm, device)
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
    train = json.loads((Path(run_dir) / "train.json").read_text())
    metrics = {
        "run_id": train["run_id"],
        "protocol": PROTOCOL,
        "dataset": meta["dataset"],
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
            logits = torch.cat([model(norm(augment.to_float(xte[i:i + 512].to(device)))).float().cpu()
                                for i in range(0, xte.shape[0], 512)])
        metrics["supervised_top1"] = round((logits.argmax(1) == yte).float().mean().item() * 100, 3)
    else:
        metrics["contrastive_acc"] = train["final"]["contrastive_acc"]
        metrics["entropy"] = train["final"]["entropy"]
    metrics["params"] = p
    return metrics


def write_json(obj: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
