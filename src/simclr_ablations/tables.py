"""Study tables: collect every run's metrics, aggregate over seeds (mean, std, n), render Markdown.

`collect` gives one row per run (per seed), with the cell's labels, the metrics, the wall time
and the settings that made it; `aggregate` reduces the seeds of each cell to mean / std / n.
The CSV holds the aggregate plus the run ids; `<study>_runs.csv` keeps every seed's row with
its full resolved params. The Markdown lays each study out the way the paper's table does, says
what protocol every number comes from, and, when the grid made the untrained-encoder baseline
(study `untrained`: the preset's encoder at random initialisation, the same evaluation), shows it
as the floor of the table and marks with ⚠ every cell whose mean falls below it.

`best_left_out` is the cross-fitted choice of "the best" cell (the losses table here, the
findings' "best other" sides): at seed s, the cell with the best mean over the other seeds.
This module does not import torch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from . import params, recipes, studies

METRICS = ["top1", "top1_h", "top1_gh", "knn_top1", "contrastive_acc", "entropy", "encoder_params", "train_seconds",
           "wall_seconds"]
BASELINE = "untrained"  # the study whose runs are the floor of every other table
BELOW = "⚠"
# the floor a metric is held against: linear cells (and the supervised classifier's) against the untrained
# encoder's linear eval on h, kNN cells against its kNN; fine-tuning has no untrained counterpart
FLOOR_OF = {"top1": "top1", "top1_h": "top1", "top1_gh": "top1", "knn_top1": "knn_top1"}


def _bench_seconds(path: Path) -> float:
    if not path.exists():
        return float("nan")
    return float(pd.read_csv(path, sep="\t")["s"].sum())


# Provenance columns of every row (provenance.record); rows of one table made by different code
# versions are flagged (`code_versions`).
PROVENANCE = ["code_version", "torch", "cuda", "device", "device_name", "threads"]


def code_versions(df: pd.DataFrame) -> list[str]:
    """The distinct code versions (pretraining and evaluation) behind a runs table."""
    cols = [c for c in ("code_version", "pretrain_code_version") if c in df.columns]
    return sorted({v for c in cols for v in df[c].dropna().astype(str)})


def collect(runs: list[studies.Run], runs_dir: Path) -> pd.DataFrame:
    rows = []
    for r in runs:
        d = Path(runs_dir) / r.id
        e = Path(r.metrics_path(runs_dir)).parent
        m = json.loads((e / "metrics.json").read_text())
        layers = m["by_layer"]
        row = dict(r.labels(), seed=r.seed, run_id=r.id, eval_id=r.eval_id, objective=r.params["method"])
        row["top1"] = m.get("supervised_top1", m["linear_top1"])
        row["top1_h"], row["top1_gh"] = layers[0]["linear_top1"], layers[-1]["linear_top1"]
        row["knn_top1"] = layers[0]["knn_top1"]
        row["contrastive_acc"] = 100 * m.get("contrastive_acc", float("nan"))
        row["entropy"] = m.get("entropy", float("nan"))
        row["encoder_params"] = m["encoder_params"]
        row["train_seconds"] = m["train_seconds"]
        row["wall_seconds"] = _bench_seconds(d / "pretrain.bench.tsv") + _bench_seconds(e / "evaluate.bench.tsv")
        for fraction, top1 in m.get("semi", {}).items():
            row[semi_column(float(fraction))] = top1
        row.update({k: m["provenance"].get(k, "") for k in PROVENANCE})
        row["pretrain_code_version"] = m["provenance"].get("pretrain_code_version", "")
        # CPU float results depend on the kernels' ISA (AVX2, AVX512): the CPU that trained the row
        row["pretrain_device_name"] = m["provenance"].get("pretrain_device_name", "")
        row["settings"] = " ".join(r.settings)
        row["params"] = json.dumps(yaml.safe_load((e / "params.yaml").read_text()), sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows)


def semi_column(fraction: float) -> str:
    """Column of the semi-supervised top-1 at a label fraction: 0.01 -> semi_1pct."""
    return f"semi_{fraction * 100:g}pct"


def metric_columns(df: pd.DataFrame) -> list[str]:
    return METRICS + sorted((c for c in df.columns if c.startswith("semi_")), key=lambda c: float(c[5:-3]))


def aggregate(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """mean / std / n of every metric per cell; std is NaN with one seed."""
    g = df.groupby(keys, sort=False)
    out = g[metric_columns(df)].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["n"] = g.size()
    out["run_ids"] = g["run_id"].agg(" ".join)
    out["settings"] = g["settings"].first().str.replace(r" ?seed=\d+", "", regex=True)
    return out.reset_index()


def floor_of(df: pd.DataFrame) -> pd.Series:
    """The untrained baseline's runs reduced to one aggregate row (mean / std / n over its seeds)."""
    return aggregate(df.assign(cell=BASELINE), ["cell"]).iloc[0]


# ---- cross-fitted choice of the best cell (no winner's curse) ----------------------------------------

def per_seed(df: pd.DataFrame, metric: str = "top1", **where) -> pd.Series:
    """`metric` per seed over the rows matching `where` ({column: value or list of values})."""
    sel = df
    for k, v in where.items():
        sel = sel[sel[k].isin(v) if isinstance(v, list) else sel[k] == v]
    return sel.groupby("seed")[metric].mean()


def best_left_out(df: pd.DataFrame, key: str, candidates: list, metric: str = "top1",
                  **where) -> tuple[str, pd.Series]:
    """The best of `candidates`, cross-fitted: at seed s, the value of the candidate whose mean over the
    other seeds is highest. Returns (a label naming the chosen cells, the per-seed values)."""
    per = {c: per_seed(df, metric, **{key: c}, **where) for c in candidates}
    per = {c: s.dropna() for c, s in per.items() if len(s.dropna())}
    seeds = sorted(set().union(*[set(s.index) for s in per.values()])) if per else []
    values, chosen, same_seed = {}, [], False
    for seed in seeds:
        means = {c: s.drop(seed).mean() for c, s in per.items() if seed in s.index and len(s) > 1}
        if not means:  # one seed: nothing to leave out
            means, same_seed = {c: s[seed] for c, s in per.items() if seed in s.index}, True
        if means:
            best = max(means, key=means.get)
            values[seed] = per[best][seed]
            chosen.append(best)
    counts = Counter(chosen)
    label = ", ".join(c if len(counts) == 1 else f"{c} ×{k}" for c, k in counts.most_common())
    if same_seed:
        label += "; chosen on the tested seed"
    elif len(counts) > 1:
        label += "; chosen leaving the tested seed out"
    return label or "none", pd.Series(values, dtype=float)


# ---- Markdown cells --------------------------------------------------------------------------------

def fmt(mean: float, std: float, n: int, digits: int = 1) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if n < 2 or pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def below(mean: float, metric: str, floor: pd.Series | None) -> bool:
    """Whether a cell's mean `metric` is below the untrained encoder's (False without a floor)."""
    ref = FLOOR_OF.get(metric)
    if floor is None or ref is None or pd.isna(mean) or pd.isna(floor[f"{ref}_mean"]):
        return False
    return mean < floor[f"{ref}_mean"]


def _cell(agg_row, metric="top1", digits=1, floor: pd.Series | None = None) -> str:
    text = fmt(agg_row[f"{metric}_mean"], agg_row[f"{metric}_std"], int(agg_row["n"]), digits)
    return f"{text} {BELOW}" if below(agg_row[f"{metric}_mean"], metric, floor) else text


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


FLOOR_LABEL = "Untrained encoder (floor)"


def layout(study: str, agg: pd.DataFrame, axes: dict, floor: pd.Series | None = None) -> pd.DataFrame:
    """The study in the paper's layout (a display table of strings). With `floor` (the untrained encoder's
    aggregate row), cells below it carry ⚠, and tables with one row per cell end with its row."""
    names = list(axes)

    def cell(r, metric="top1", digits=1):
        return _cell(r, metric, digits, floor)

    if study in ("augmentations", "augmentations_both"):
        ops = studies.spec()["studies"][study]["axes"]["pair"]["pairs"]
        val = {}
        for _, row in agg.iterrows():
            parts = row["pair"].split("+")
            a, b = parts[0], parts[-1]
            val[(a, b)] = val[(b, a)] = row
        present = [o for o in ops if (o, o) in val or any((o, x) in val for x in ops)]
        table = []
        for a in present:
            means = [val[(a, b)]["top1_mean"] for b in present if (a, b) in val]
            table.append([a] + [cell(val[(a, b)]) if (a, b) in val else "" for b in present]
                         + [f"{sum(means) / len(means):.1f}"])
        return pd.DataFrame(table, columns=["1st \\ 2nd"] + present + ["row average"])
    if study == "projection_head":
        rows = []
        for _, r in agg.iterrows():
            rows.append([r["head"], "-" if r["head"] == "None" else r["out_dim"], cell(r, "top1_h"),
                         "-" if r["head"] == "None" else cell(r, "top1_gh")])
        if floor is not None:
            rows.append([FLOOR_LABEL, "-", _cell(floor, "top1_h"), "-"])
        out = pd.DataFrame(rows, columns=["projection head", "output dim", "eval on h", "eval on g(h)"])
        return out.drop_duplicates(subset=["projection head", "output dim"])
    if study in ("losses", "temperature"):
        cols = ["top1", "knn_top1", "contrastive_acc", "entropy"]
        rows = [[r["setting"]] + [cell(r, c, 2 if c == "entropy" else 1) for c in cols] for _, r in agg.iterrows()]
        if floor is not None:
            rows.append([FLOOR_LABEL] + [_cell(floor, c, 2 if c == "entropy" else 1) for c in cols])
        return pd.DataFrame(rows, columns=["setting", "linear top-1", "kNN top-1", "contrastive acc", "entropy"])
    if study == "methods":
        semi = [c[:-5] for c in agg.columns if c.startswith("semi_") and c.endswith("_mean")]
        rows = [[r["method"], cell(r), cell(r, "knn_top1")] + [cell(r, c) for c in semi]
                + [fmt(r["wall_seconds_mean"] / 60, r["wall_seconds_std"] / 60, int(r["n"]), 2)]
                for _, r in agg.iterrows()]
        if floor is not None:
            rows.append([FLOOR_LABEL, _cell(floor), _cell(floor, "knn_top1")] + ["-"] * len(semi)
                        + [fmt(floor["wall_seconds_mean"] / 60, floor["wall_seconds_std"] / 60, int(floor["n"]), 2)])
        return pd.DataFrame(rows, columns=["method", "linear top-1", "kNN top-1"]
                            + [f"{c[5:-3]}% labels (fine-tune)" for c in semi] + ["wall time per run (min)"])
    if study == BASELINE:
        return pd.DataFrame([[r[names[0]], cell(r), cell(r, "knn_top1"), cell(r, "top1_gh")]
                             for _, r in agg.iterrows()],
                            columns=[names[0], "linear top-1", "kNN top-1", "linear top-1 on g(h)"])
    if len(names) == 1:
        return pd.DataFrame([[r[names[0]], cell(r)] for _, r in agg.iterrows()], columns=[names[0], "top-1"])
    rows_keys, col_key = names[:-1], names[-1]
    out = []
    for key, grp in agg.groupby(rows_keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append(list(key) + [cell(grp[grp[col_key] == c].iloc[0]) if (grp[col_key] == c).any() else ""
                                for c in axes[col_key]])
    return pd.DataFrame(out, columns=rows_keys + [f"{col_key} {c}" for c in axes[col_key]])


# ---- the losses table: each loss at its best setting, chosen on other seeds ---------------------------

def family(setting: str) -> str:
    """The loss of a `losses` setting label: the label up to its first parameter (" t=", " m=", " lr=")."""
    return re.sub(r" (?:t|m|lr)=.*$", "", setting)


def best_per_loss(runs: pd.DataFrame, floor: pd.Series | None = None) -> pd.DataFrame:
    """Table 4: each loss at its best setting (the paper tuned each loss and reported its best). The best is
    cross-fitted (`best_left_out`): seed s is scored with the setting that has the best mean over the other
    seeds, so the reported value is not the maximum of noisy means; the row names the settings so chosen."""
    fam = runs["setting"].map(family)
    rows = []
    for loss in dict.fromkeys(fam):
        candidates = list(dict.fromkeys(runs.loc[fam == loss, "setting"]))
        label, values = best_left_out(runs, "setting", candidates)
        text = fmt(values.mean(), values.std(), len(values))
        if below(values.mean(), "top1", floor):
            text += f" {BELOW}"
        rows.append([loss, len(candidates), label.replace(f"{loss} ", ""), text])
    if floor is not None:
        rows.append([FLOOR_LABEL, "-", "-", _cell(floor)])
    return pd.DataFrame(rows, columns=["loss", "settings tried", "setting chosen (×: seeds)", "linear top-1"])


SELECTION = ("Selection: at each seed, the loss's setting with the best mean linear top-1 over the *other* seeds is "
             "chosen and scored at that seed; the value is the mean ± std of those held-out scores over seeds (no "
             "winner's curse), and the chosen settings are named (×k: at k seeds). With one seed there is nothing to "
             "leave out: the setting is chosen on the tested seed, an optimistic value.")


# ---- the methods table: each method's recipe and budget ----------------------------------------------

_OPTIMIZERS = {"lars": "LARS", "sgd": "SGD", "adam": "AdamW"}
_SCALING = {"linear": "× B/256", "sqrt": "× √B", "none": "(not scaled)"}


def recipe_row(p: dict) -> dict:
    """What a run trains with, from its resolved params (recipes.recipe): optimiser, base lr and its scaling
    with the batch, the peak lr that gives, weight decay, warm-up and schedule, and the budget."""
    t = recipes.recipe(p)
    opt = _OPTIMIZERS[t["optimizer"]]
    if t["optimizer"] != "adam":
        opt += f" (momentum {t['momentum']:g}" + (", Nesterov" if t["optimizer"] == "sgd" and t["nesterov"] else "")
        opt += f", η {t['lars_eta']:g})" if t["optimizer"] == "lars" else ")"
    if t["exclude_bn_bias"]:
        opt += ", BN and biases exempt"
    if p["method"] == "simsiam" and p["simsiam"]["fixed_predictor_lr"]:
        opt += ", predictor at the fixed peak lr"
    base = f"{t['lr']:g}"
    factor = p[p["method"]]["recipe"]["lr_factor"] if p["method"] in params.METHOD_BLOCKS else 1.0
    if factor != 1:
        base += f" (= {t['lr'] / factor:g} × lr_factor {factor:g})"
    warm = t["warmup_epochs"]
    schedule = t["schedule"] + (f", {warm:g} warm-up epoch{'s' if warm != 1 else ''}" if warm else ", no warm-up")
    head = p["head"]
    if head["type"] == "mlp":
        head_text = f"{head['layers']}-layer MLP → {head['out_dim']}" + ("" if head["batch_norm"] else ", no BN")
    else:
        head_text = "none" if head["type"] == "none" else f"linear → {head['out_dim']}"
    if params.has_output_bn(head) or (p["method"] == "simsiam" and p["simsiam"]["output_bn"]):
        head_text += ", BN on its output"
    row = {"source": "pretrain" if p["method"] in ("simclr", "supervised") else f"{p['method']}.recipe",
           "optimizer": opt, "base_lr": f"{base} {_SCALING[t['lr_scaling']]}",
           "peak_lr": recipes.scaled_lr(t["lr"], t["batch_size"], t["lr_scaling"]),
           "weight_decay": t["weight_decay"], "schedule": schedule, "epochs": t["epochs"],
           "batch_size": t["batch_size"], "head": head_text}
    return {f"recipe_{k}": v for k, v in row.items()}


# the recipe columns of the methods CSV, and their headers in the Markdown
RECIPE_COLUMNS = {"recipe_source": "recipe (params)", "recipe_optimizer": "optimiser",
                  "recipe_base_lr": "base lr (scaling)", "recipe_peak_lr": "peak lr",
                  "recipe_weight_decay": "weight decay", "recipe_schedule": "schedule", "recipe_epochs": "epochs",
                  "recipe_batch_size": "batch size", "recipe_head": "projection head"}


def recipes_of(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One recipe row per cell (its first seed's params; seeds differ only in the seed)."""
    first = runs.groupby(keys, sort=False).head(1)
    rows = [dict(zip(keys, r[keys]), **recipe_row(json.loads(r["params"]))) for _, r in first.iterrows()]
    return pd.DataFrame(rows)


def recipe_table(agg: pd.DataFrame, floor: pd.Series | None = None) -> pd.DataFrame:
    """The methods' recipes and budgets, in the methods table's order (after `recipes_of` merged into agg)."""
    out = agg[["method", *RECIPE_COLUMNS]].rename(columns=RECIPE_COLUMNS).astype(object)
    out["peak lr"] = out["peak lr"].map(lambda v: f"{v:.4g}")
    out["weight decay"] = out["weight decay"].map(lambda v: f"{v:g}")
    if floor is not None:
        out.loc[len(out)] = [FLOOR_LABEL, "-", "(random initialisation, not trained)", "-", "-", "-", "-", 0, "-",
                             "-"]
    return out


# what the methods' runs have in common (stated under the table, computed, never assumed)
SHARED = {"data": lambda p: p["data"], "augmentations": lambda p: p["augment"], "encoder": lambda p: p["encoder"],
          "budget (epochs, batch size)": lambda p: (p["pretrain"]["epochs"], p["pretrain"]["batch_size"]),
          "projection head": lambda p: p["head"],
          "optimiser, lr, weight decay and schedule": lambda p: {k: v for k, v in recipes.recipe(p).items()
                                                                  if k in recipes.RECIPE_KEYS},
          "linear and kNN evaluation": lambda p: (p["eval"]["linear"], p["eval"]["knn"], p["eval"]["feature_layer"])}


def shared_and_different(runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    ps = [json.loads(s) for s in runs["params"]]
    same = {name: all(get(p) == get(ps[0]) for p in ps) for name, get in SHARED.items()}
    return [n for n, s in same.items() if s], [n for n, s in same.items() if not s]


# ---- what the numbers are -----------------------------------------------------------------------------

def _layer(k: int) -> str:
    return "h" if k == 0 else f"head layer {k}"


def _per_cell(runs: pd.DataFrame, get) -> str:
    """`get(params)` over the table's rows: the most common value, and in parentheses the cells that differ."""
    values = [get(json.loads(p)) for p in runs["params"]]
    common = Counter(values).most_common(1)[0][0]
    label = next((c for c in runs.columns if c in LABELS), None)
    odd = {} if label is None else {r[label]: v for r, v in zip(runs.to_dict("records"), values) if v != common}
    return common + (" (" + ", ".join(f"{cell}: {v}" for cell, v in odd.items()) + ")" if odd else "")


LABELS = ("method", "setting", "pair", "head", "strength", "depth", "width", "out_dim", "lr_scaling", "batch",
          "epochs", "encoder")
LINEAR = ("the network frozen, a linear classifier trained on the features of the un-augmented training images, "
          "test top-1 %")


def protocol(runs: pd.DataFrame, columns: list[str]) -> str:
    """The protocol of every kind of number the study's table shows (from its runs' params)."""
    parts = []
    if "eval on h" in columns:
        parts.append(f"linear evaluation on h and on g(h) ({LINEAR})")
    else:
        where = _per_cell(runs, lambda p: _layer(p["eval"]["feature_layer"]))
        parts.append(f"{'linear ' if 'linear top-1' in columns else ''}top-1: linear evaluation on {where} ({LINEAR})")
        if (runs["objective"] == "supervised").any():
            parts.append("Supervised rows: the supervised network's own classifier (test top-1 %, no linear eval)")
    if "linear top-1 on g(h)" in columns:
        parts.append("linear top-1 on g(h): the same linear evaluation on the projection head's output")
    if "kNN top-1" in columns:
        parts.append("kNN top-1: weighted kNN on h (cosine similarity, " + _per_cell(
            runs, lambda p: f"k = {p['eval']['knn']['k']}, votes exp(sim / {p['eval']['knn']['temperature']:g})")
                     + ")")
    if "contrastive acc" in columns:
        parts.append("contrastive acc / entropy: pretraining's last epoch, how often the positive is the top match "
                     "among the 2N−1 candidates and the entropy of that softmax")
    if any("fine-tune" in c for c in columns):
        parts.append("x% labels: the whole network fine-tuned from " + _per_cell(
            runs, lambda p: _layer(p["eval"]["semi"]["from_layer"])) + " on a class-balanced x% of the training "
                     "labels (test top-1 %)")
    if any("wall time" in c for c in columns):
        parts.append("wall time: pretraining + evaluation jobs (Snakemake benchmarks)")
    return "; ".join(parts) + ". h: the encoder output" + ("; g(h): the projection head's output" if any(
        "g(h)" in c for c in columns) else "")


def floor_line(floor: pd.Series) -> str:
    """The untrained encoder's numbers, under every table."""
    n = int(floor["n"])
    return (f"{FLOOR_LABEL}: linear eval on h {_cell(floor)}, kNN on h {_cell(floor, 'knn_top1')} ({n} seed"
            f"{'s' if n != 1 else ''}; the preset's encoder at random initialisation, 0 epochs, the same evaluation: "
            f"study `{BASELINE}`). {BELOW}: a cell whose mean is below it (linear and supervised cells against its "
            "linear eval, kNN cells against its kNN).")


def write(preset: str, study: str, runs_dir: Path, out_dir: Path, extra: tuple[str, ...] = (),
          title_suffix: str = "", n_seeds: int = 0, baseline: str | None = None) -> pd.DataFrame:
    """results/<tag>/tables/<study>.csv, <study>_runs.csv and <study>.md. `baseline` (a study, `untrained`)
    adds its runs as the floor of the Markdown table; without it the table has no floor."""
    runs = studies.expand(preset, study, extra, n_seeds)
    df = collect(runs, runs_dir)
    axes = studies.axes(study, preset)
    agg = aggregate(df, list(axes))
    if baseline and baseline not in studies.names():
        raise params.ParamsError(f"--baseline names unknown study {baseline!r}; allowed: {studies.names()}")
    base = None
    if baseline and baseline != study:
        base = collect(studies.expand(preset, baseline, extra, n_seeds), runs_dir)
    floor = floor_of(base) if base is not None else None
    if study == "methods":
        agg = agg.merge(recipes_of(df, list(axes)), on=list(axes), how="left")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = studies.spec()["studies"][study]
    n = sorted(set(agg["n"]))
    table = layout(study, agg, axes, floor)
    md = [f"## {spec['title']}", "", f"Preset `{preset}`{title_suffix}; mean ± std over {'/'.join(map(str, n))} "
          f"seed(s) per cell. Numbers: {protocol(df, list(table.columns))}.", "", _md(table), ""]
    if floor is not None:
        md += [floor_line(floor), ""]
    if study == "methods":
        same, different = shared_and_different(df)
        md += ["Recipe and budget of each method (its paper's optimiser: `pretrain.*` for SimCLR, `<method>.recipe` "
               "in params/default.yaml for the others; peak lr = base lr scaled with the batch size B):", "",
               _md(recipe_table(agg, floor)), "",
               f"Shared by every method here: {', '.join(same) or 'nothing listed'}. Per method: "
               f"{', '.join(different) or 'nothing listed'}.", ""]
    if study == "losses":
        md += ["Each loss at its best setting (as the paper's Table 4 reports; linear eval on h). " + SELECTION, "",
               _md(best_per_loss(df, floor)), ""]
    cost = df["wall_seconds"].where(df["wall_seconds"].notna(), df["train_seconds"])
    md += [f"Cost: {len(df)} runs ({df['run_id'].nunique()} distinct pretrainings), {cost.sum() / 60:.1f} min of "
           "job time."]
    versions = code_versions(df if base is None else pd.concat([df, base]))
    md += ["", f"Code version: {versions[0]}." if len(versions) == 1 else
           f"**Warning: the rows were made by {len(versions)} code versions** ({', '.join(versions)}); see the "
           "`code_version` column of the runs table."]
    for name, frame in ((f"{study}.csv", agg), (f"{study}_runs.csv", df)):
        with params.atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    with params.atomic_path(out_dir / f"{study}.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    return agg
