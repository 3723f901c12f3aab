"""Study figures in the style of the paper's, drawn from the study tables, with the paper's own numbers
beside ours where the study matches. Every figure shows the seed spread: bars and points carry std
error bars and every seed as a dot; heat-map cells print mean and ± std. Given the untrained
encoder's runs table (`draw(..., baseline=untrained_runs.csv)`, what the workflow passes when the
grid makes the `untrained` study), every accuracy panel of this run shows its linear top-1 as a
dashed line (the methods figure also as its own bar group), and heat-map cells below it are marked
with a down arrow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import params, studies  # noqa: E402
from .plots import save  # noqa: E402
from .tables import FLOOR_LABEL, METRICS, floor_of  # noqa: E402

PAPER = params.PAPER_DIR
YLABEL = "linear-eval top-1 (%)"


def _paper(name: str) -> pd.DataFrame | None:
    path = PAPER / name
    return pd.read_csv(path) if path.exists() else None


def _bars(ax, labels, agg, runs, key, metric="top1", offset=0.0, width=0.8, label=None, color=None):
    x = np.arange(len(labels)) + offset
    rows = [agg[agg[key] == lab].iloc[0] for lab in labels]
    means = [r[f"{metric}_mean"] for r in rows]
    stds = [0 if pd.isna(r[f"{metric}_std"]) else r[f"{metric}_std"] for r in rows]
    ax.bar(x, means, width, yerr=stds, capsize=3, label=label, color=color, alpha=0.85)
    for xi, lab in zip(x, labels):
        _dots(ax, xi, runs[runs[key] == lab][metric])
    return x


def _dots(ax, x, values):
    """Every seed's value as a small black dot at x."""
    values = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    ax.plot([x] * len(values), values, "k.", ms=3)


def heat_text(mean: float, std: float) -> str:
    """A heat-map cell: the mean, and under it the std over seeds when there is more than one seed."""
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f}\n±{std:.1f}"


def augmentations(agg, runs, ax_title, study="augmentations"):
    ops = studies.spec()["studies"][study]["axes"]["pair"]["pairs"]
    val, spread = {}, {}
    for _, r in agg.iterrows():
        parts = r["pair"].split("+")
        val[(parts[0], parts[-1])] = val[(parts[-1], parts[0])] = r["top1_mean"]
        spread[(parts[0], parts[-1])] = spread[(parts[-1], parts[0])] = r["top1_std"]
    present = [o for o in ops if any((o, b) in val for b in ops)]
    m = np.array([[val.get((a, b), np.nan) for b in present] for a in present])
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(m, cmap="viridis")
    for i, a in enumerate(present):
        for j, b in enumerate(present):
            if not np.isnan(m[i, j]):
                text = heat_text(m[i, j], spread[(a, b)])
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if "\n" not in text else 6.5,
                        color="w" if m[i, j] < np.nanmean(m) else "k")
    ax.set_xticks(range(len(present)), present, rotation=45)
    ax.set_yticks(range(len(present)), [f"{o} (avg {np.nanmean(m[i]):.1f})" for i, o in enumerate(present)])
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation (row average)")
    fig.colorbar(im, ax=ax, label=YLABEL).ax.set_label("colorbar")
    protocol = ("every op on both branches" if study == "augmentations_both"
                else "one shared crop per image, ops on one branch only")
    n = sorted(set(agg["n"].dropna().astype(int))) if "n" in agg else []
    seeds = ("one seed" if not agg["top1_std"].notna().any() else
             f"mean ± std over {'/'.join(map(str, n))} seeds" if n else "mean ± std over seeds")
    ax.set_title(ax_title + f"\n(diagonal: single op; {protocol}; {seeds})", fontsize=9)
    return fig


def augmentations_both(agg, runs, ax_title):
    return augmentations(agg, runs, ax_title, "augmentations_both")


def color_strength(agg, runs, ax_title):
    labels = list(dict.fromkeys(agg["strength"]))
    paper = _paper("table1_color.csv")
    fig, axes = plt.subplots(1, 2 if paper is not None else 1, figsize=(11, 4), squeeze=False)
    ax = axes[0, 0]
    for k, method in enumerate(["SimCLR", "Supervised"]):
        sel = agg["method"] == method
        _bars(ax, labels, agg[sel], runs[runs["method"] == method], "strength", offset=(k - 0.5) * 0.4,
              width=0.4, label=method)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("color distortion strength")
    ax.set_ylabel("top-1 (%): SimCLR linear eval / supervised classifier")
    ax.set_title("this run: " + ax_title, fontsize=9)
    ax.legend()
    if paper is not None:
        ax = axes[0, 1]
        p = paper[paper["strength"].isin(labels)]
        for k, method in enumerate(["SimCLR", "Supervised"]):
            q = p[p["method"] == method].set_index("strength").reindex(labels)
            ax.bar(np.arange(len(labels)) + (k - 0.5) * 0.4, q["top1"], 0.4, label=method, alpha=0.85)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(50, 80)
        ax.set_xlabel("color distortion strength")
        ax.set_ylabel("ImageNet top-1 (%)")
        ax.set_title("paper, Table 1 (ResNet-50, ImageNet)", fontsize=9)
        ax.legend()
    return fig


def encoder(agg, runs, ax_title):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, marker in (("SimCLR", "o"), ("Supervised", "s")):
        sel = agg[agg["method"] == method]
        bars = ax.errorbar(sel["encoder_params_mean"] / 1e6, sel["top1_mean"], yerr=sel["top1_std"].fillna(0),
                           fmt=marker, capsize=3, label=method)
        mine = runs[runs["method"] == method]
        ax.plot(mine["encoder_params"] / 1e6, mine["top1"], ".", ms=3, color=bars[0].get_color(), alpha=0.6)
        for _, r in sel.iterrows():
            ax.annotate(f"{r['depth']} {r['width']}", (r["encoder_params_mean"] / 1e6, r["top1_mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters (millions, log scale)")
    ax.set_ylabel("top-1 (%): SimCLR linear eval / supervised")
    ax.set_title(ax_title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def projection_head(agg, runs, ax_title):
    dims = list(dict.fromkeys(agg["out_dim"]))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    heads = list(dict.fromkeys(agg["head"]))
    w = 0.8 / (2 * len(heads))
    k = 0
    for head in heads:
        for metric, hatch in (("top1_h", ""), ("top1_gh", "//")):
            if head == "None" and metric == "top1_gh":
                continue
            sel = agg[agg["head"] == head].set_index("out_dim").reindex(dims)
            x = np.arange(len(dims)) + (k - len(heads)) * w + w / 2
            ax.bar(x, sel[f"{metric}_mean"], w, yerr=sel[f"{metric}_std"].fillna(0), capsize=2, hatch=hatch,
                   label=f"{head}, eval on {'h' if metric == 'top1_h' else 'g(h)'}", alpha=0.85)
            for xi, dim in zip(x, dims):
                _dots(ax, xi, runs[(runs["head"] == head) & (runs["out_dim"] == dim)][metric])
            k += 1
    ax.set_xticks(range(len(dims)), dims)
    ax.set_xlabel("projection output dimensionality")
    ax.set_ylabel(YLABEL)
    ax.set_title(ax_title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return fig


def _settings_bars(agg, runs, ax_title, paper_df, paper_labels, paper_title):
    labels = list(agg["setting"])
    fig, axes = plt.subplots(1, 2 if paper_df is not None else 1, figsize=(12, 4.2), squeeze=False)
    ax = axes[0, 0]
    _bars(ax, labels, agg, runs, "setting")
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(YLABEL)
    ax.set_title("this run: " + ax_title, fontsize=9)
    if paper_df is not None:
        ax = axes[0, 1]
        ax.bar(range(len(paper_df)), paper_df["top1"], color="gray")
        ax.set_xticks(range(len(paper_df)), paper_labels, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(45, 70)
        ax.set_ylabel("ImageNet top-1 (%)")
        ax.set_title(paper_title, fontsize=9)
    return fig


def losses(agg, runs, ax_title):
    p = _paper("table4_losses.csv")
    names = {"margin_triplet": "Margin", "nt_logistic": "NT-Logi.", "nt_xent": "NT-Xent"}
    labels = None if p is None else [names[r.loss] + (" (sh)" if r.semi_hard else "") for r in p.itertuples()]
    return _settings_bars(agg, runs, ax_title, p, labels, "paper, Table 4 (best of each loss's grid)")


def temperature(agg, runs, ax_title):
    p = _paper("table5_temperature.csv")
    labels = None if p is None else [("l2" if r.l2_normalize else "no l2") + f", t={r.temperature:g}"
                                     for r in p.itertuples()]
    fig = _settings_bars(agg, runs, ax_title, p, labels, "paper, Table 5 (ResNet-50, 100 epochs)")
    ax = fig.axes[0]
    for i, (_, r) in enumerate(agg.iterrows()):
        ax.annotate(f"H={r['entropy_mean']:.1f}\nacc={r['contrastive_acc_mean']:.0f}", (i, r["top1_mean"]),
                    fontsize=6, ha="center", xytext=(0, 4), textcoords="offset points")
    return fig


def batch_epochs(agg, runs, ax_title):
    scalings = list(dict.fromkeys(agg["lr_scaling"]))
    paper = _paper("tableB1_batch_epochs.csv")
    n = len(scalings) + (paper is not None)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    for ax, scaling in zip(axes[0], scalings):
        sel = agg[agg["lr_scaling"] == scaling]
        epochs = list(dict.fromkeys(sel["epochs"]))
        batches = list(dict.fromkeys(sel["batch"]))
        w = 0.8 / len(batches)
        for k, b in enumerate(batches):
            s = sel[sel["batch"] == b].set_index("epochs").reindex(epochs)
            x = np.arange(len(epochs)) + (k - len(batches) / 2 + 0.5) * w
            ax.bar(x, s["top1_mean"], w, yerr=s["top1_std"].fillna(0), capsize=2, label=f"batch {b}")
            mine = runs[(runs["lr_scaling"] == scaling) & (runs["batch"] == b)]
            for xi, e in zip(x, epochs):
                _dots(ax, xi, mine[mine["epochs"] == e]["top1"])
        ax.set_xticks(range(len(epochs)), epochs)
        ax.set_xlabel("training epochs")
        ax.set_ylabel(YLABEL)
        ax.set_title(f"this run, {scaling} lr scaling: {ax_title}", fontsize=8)
        ax.legend(fontsize=7)
    if paper is not None:
        ax = axes[0, -1]
        p = paper[paper["lr_scaling"] == "linear"]
        epochs = sorted(p["epochs"].unique())
        batches = sorted(p["batch_size"].unique())
        w = 0.8 / len(batches)
        for k, b in enumerate(batches):
            s = p[p["batch_size"] == b].set_index("epochs").reindex(epochs)
            ax.bar(np.arange(len(epochs)) + (k - len(batches) / 2 + 0.5) * w, s["top1"], w, label=f"batch {b}")
        ax.set_xticks(range(len(epochs)), epochs)
        ax.set_ylim(50, 72)
        ax.set_xlabel("training epochs")
        ax.set_ylabel("ImageNet top-1 (%)")
        ax.set_title("paper, Table B.1 (linear lr scaling)", fontsize=8)
        ax.legend(fontsize=7)
    return fig


def methods(agg, runs, ax_title):
    """Accuracy per method under linear / kNN / semi-supervised fine-tuning, wall time on top; the
    literature's CIFAR-10 numbers beside ours when the dataset is CIFAR-10."""
    names = list(agg["method"])
    metrics = [("top1", "linear"), ("knn_top1", "kNN")] + [
        (c[:-5], f"{c[5:-8]}% labels") for c in agg.columns if c.startswith("semi_") and c.endswith("_mean")]
    lit = _paper("methods_cifar10.csv")
    show_lit = lit is not None and "cifar10" in ax_title
    fig, axes = plt.subplots(1, 2 if show_lit else 1, figsize=(13 if show_lit else 9, 4.4), squeeze=False)
    ax = axes[0, 0]
    w = 0.8 / len(metrics)
    for k, (metric, label) in enumerate(metrics):
        _bars(ax, names, agg, runs, "method", metric, offset=(k - len(metrics) / 2 + 0.5) * w, width=w, label=label)
    for i, (_, r) in enumerate(agg.iterrows()):
        ax.annotate(f"{r['wall_seconds_mean'] / 60:.1f} min", (i, 2), ha="center", fontsize=7, color="w")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("this run (wall time per run at the bottom): " + ax_title, fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    if show_lit:
        ax = axes[0, 1]
        ax.bar(range(len(lit)), lit["top1"], color="gray")
        ax.set_xticks(range(len(lit)), [f"{r.method}\n{r.epochs} ep, {r.encoder}" for r in lit.itertuples()],
                      fontsize=7)
        ax.set_ylim(80, 95)
        ax.set_ylabel("CIFAR-10 top-1 (%), kNN/linear as published")
        ax.set_title("literature (workflow/resources/paper/methods_cifar10.csv)", fontsize=8)
    return fig


def mark_baseline(fig, floor: float) -> None:
    """The untrained encoder's linear top-1 on this run's panels: a dashed line on bar/point panels (and on a
    heat map's colour bar), an arrow on heat-map cells whose mean is below it (panels of the paper's or the
    literature's numbers are left alone)."""
    label = f"untrained encoder ({floor:.1f}, linear eval on h)"
    for ax in fig.axes:
        title, ylabel = ax.get_title(), ax.get_ylabel()
        if ax.get_label() == "colorbar":
            ax.axhline(floor, ls="--", color="r", lw=1.5)
            continue
        if title.startswith(("paper", "literature")) or not ylabel:
            continue
        if ax.images:  # heat map: each cell's mean is in the image, at the text's position
            means = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
            for t in ax.texts:
                x, y = t.get_position()
                mean = means[int(round(y)), int(round(x))]
                if not np.isnan(mean) and mean < floor:
                    first, *rest = t.get_text().split("\n")
                    t.set_text("\n".join([first + "↓", *rest]))
            norm = ax.images[0].norm
            on_bar = "; dashed on the colour bar" if norm.vmin <= floor <= norm.vmax else ""
            ax.set_title(title + f"\n↓: below the untrained encoder ({floor:.1f}, linear eval on h{on_bar})",
                         fontsize=9)
        elif "top-1" in ylabel:
            ax.axhline(floor, ls="--", color="r", lw=1, label=label)
            ax.legend(fontsize=7)


def untrained(agg, runs, ax_title):
    """The untrained baseline: its linear and kNN top-1 over seeds (the floor drawn on every other figure)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    key = agg.columns[0]
    labels = list(agg[key])
    for k, (metric, name) in enumerate((("top1", "linear eval on h"), ("knn_top1", "kNN on h"))):
        _bars(ax, labels, agg, runs, key, metric, offset=(k - 0.5) * 0.4, width=0.4, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(ax_title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    for col in frame.columns:
        if col.endswith(("_mean", "_std")) or col in ["n", "seed", *METRICS] or col.startswith("semi_"):
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan))
    return frame


def draw(study: str, tables_dir: Path, out: Path, caption: str, baseline: Path | None = None) -> None:
    """The study's figure from `<study>.csv` and `<study>_runs.csv`; `baseline`, the untrained encoder's runs
    table, adds its floor (none without it)."""
    agg = _numeric(pd.read_csv(Path(tables_dir) / f"{study}.csv", dtype=str, keep_default_na=False))
    runs = _numeric(pd.read_csv(Path(tables_dir) / f"{study}_runs.csv", dtype=str, keep_default_na=False))
    base = None if baseline is None else _numeric(pd.read_csv(baseline, dtype=str, keep_default_na=False))
    if base is not None and study == "methods":  # the floor as its own group of bars, beside the methods
        row = floor_of(base).drop("cell")
        agg = pd.concat([agg, pd.DataFrame([{**row.to_dict(), "method": FLOOR_LABEL}])], ignore_index=True)
        runs = pd.concat([runs, base.assign(method=FLOOR_LABEL)], ignore_index=True)
    title = f"{studies.spec()['studies'][study]['title']}\n{caption}"
    fig = globals()[study](agg, runs, title)
    if base is not None:
        mark_baseline(fig, float(base["top1"].mean()))
    save(fig, out)
