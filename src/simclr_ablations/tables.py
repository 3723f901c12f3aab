"""Study tables: collect every run's metrics, aggregate over seeds (mean, std, n), render Markdown.

`collect` gives one row per run (per seed), with the cell's labels, the metrics, the wall time
and the settings that made it; `aggregate` reduces the seeds of each cell to mean / std / n.
The CSV holds the aggregate plus the run ids; `<study>_runs.csv` keeps every seed's row with
its full resolved params. The Markdown lays each study out the way the paper's table does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import yaml

from . import studies

METRICS = ["top1", "top1_h", "top1_gh", "knn_top1", "contrastive_acc", "entropy", "encoder_params", "train_seconds",
           "wall_seconds"]
PROTOCOL = {
    "top1": "linear eval (frozen encoder, features h) for SimCLR runs; the supervised baseline's own classifier",
    "top1_h": "linear eval on h (encoder output)",
    "top1_gh": "linear eval on g(h) (projection head output)",
    "knn_top1": "weighted kNN on h",
    "semi": "the whole network fine-tuned on a class-balanced subset of the training labels (eval.semi), "
            "test top-1",
}


def _bench_seconds(path: Path) -> float:
    if not path.exists():
        return float("nan")
    return float(pd.read_csv(path, sep="\t")["s"].sum())


# Provenance columns of every row (provenance.record); rows of one table made by different code
# versions are flagged (`code_versions`).
PROVENANCE = ["code_version", "torch", "cuda", "device", "threads"]


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


def fmt(mean: float, std: float, n: int, digits: int = 1) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if n < 2 or pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(agg_row, metric="top1", digits=1) -> str:
    return fmt(agg_row[f"{metric}_mean"], agg_row[f"{metric}_std"], int(agg_row["n"]), digits)


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def layout(study: str, agg: pd.DataFrame, axes: dict) -> pd.DataFrame:
    """The study in the paper's layout (a display table of strings)."""
    names = list(axes)
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
            table.append([a] + [_cell(val[(a, b)]) if (a, b) in val else "" for b in present]
                         + [f"{sum(means) / len(means):.1f}"])
        return pd.DataFrame(table, columns=["1st \\ 2nd"] + present + ["row average"])
    if study == "projection_head":
        rows = []
        for _, r in agg.iterrows():
            rows.append([r["head"], "-" if r["head"] == "None" else r["out_dim"], _cell(r, "top1_h"),
                         "-" if r["head"] == "None" else _cell(r, "top1_gh")])
        out = pd.DataFrame(rows, columns=["projection head", "output dim", "eval on h", "eval on g(h)"])
        return out.drop_duplicates(subset=["projection head", "output dim"])
    if study in ("losses", "temperature"):
        cols = ["top1", "knn_top1", "contrastive_acc", "entropy"]
        rows = [[r["setting"]] + [_cell(r, c, 2 if c == "entropy" else 1) for c in cols] for _, r in agg.iterrows()]
        return pd.DataFrame(rows, columns=["setting", "linear top-1", "kNN top-1", "contrastive acc", "entropy"])
    if study == "methods":
        semi = [c[:-5] for c in agg.columns if c.startswith("semi_") and c.endswith("_mean")]
        rows = [[r["method"], _cell(r), _cell(r, "knn_top1")] + [_cell(r, c) for c in semi]
                + [fmt(r["wall_seconds_mean"] / 60, r["wall_seconds_std"] / 60, int(r["n"]), 2)]
                for _, r in agg.iterrows()]
        return pd.DataFrame(rows, columns=["method", "linear top-1", "kNN top-1"]
                            + [f"{c[5:-3]}% labels (fine-tune)" for c in semi] + ["wall time per run (min)"])
    if len(names) == 1:
        return pd.DataFrame([[r[names[0]], _cell(r)] for _, r in agg.iterrows()], columns=[names[0], "top-1"])
    rows_keys, col_key = names[:-1], names[-1]
    out = []
    for key, grp in agg.groupby(rows_keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append(list(key) + [_cell(grp[grp[col_key] == c].iloc[0]) if (grp[col_key] == c).any() else ""
                                        for c in axes[col_key]])
    return pd.DataFrame(out, columns=rows_keys + [f"{col_key} {c}" for c in axes[col_key]])


def best_per_loss(agg: pd.DataFrame) -> pd.DataFrame:
    """Table 4: the best setting of each loss (the paper tuned each loss and reported its best)."""
    family = agg["setting"].str.replace(r" [tm]=.*$", "", regex=True)
    best = agg.assign(loss=family).sort_values("top1_mean", ascending=False).groupby("loss", sort=False).head(1)
    return pd.DataFrame([[r["loss"], r["setting"], _cell(r)] for _, r in best.iterrows()],
                        columns=["loss", "best setting", "linear top-1"])


def write(preset: str, study: str, runs_dir: Path, out_dir: Path, extra: tuple[str, ...] = (),
          title_suffix: str = "", n_seeds: int = 0) -> pd.DataFrame:
    """results/<tag>/tables/<study>.csv, <study>_runs.csv and <study>.md."""
    runs = studies.expand(preset, study, extra, n_seeds)
    df = collect(runs, runs_dir)
    axes = studies.axes(study, preset)
    agg = aggregate(df, list(axes))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = studies.spec()["studies"][study]
    n = sorted(set(agg["n"]))
    md = [f"## {spec['title']}", "", f"Preset `{preset}`{title_suffix}; mean ± std over {'/'.join(map(str, n))} "
          f"seed(s) per cell. Protocol: {PROTOCOL['top1']}.", "", _md(layout(study, agg, axes)), ""]
    if study == "methods":
        md += [f"Every method: the same data, augmentations, encoder, head, optimiser, batch size and epochs. "
               f"Semi-supervised: {PROTOCOL['semi']}.", ""]
    if study == "losses":
        md += ["Best setting per loss (as the paper's Table 4 reports):", "", _md(best_per_loss(agg)), ""]
    cost = df["wall_seconds"].where(df["wall_seconds"].notna(), df["train_seconds"])
    md += [f"Cost: {len(df)} runs ({df['run_id'].nunique()} distinct pretrainings), {cost.sum() / 60:.1f} min of "
           "job time."]
    versions = code_versions(df)
    md += ["", f"Code version: {versions[0]}." if len(versions) == 1 else
           f"**Warning: the rows were made by {len(versions)} code versions** ({', '.join(versions)}); see the "
           "`code_version` column of the runs table."]
    for name, frame in ((f"{study}.csv", agg), (f"{study}_runs.csv", df)):
        tmp = out_dir / f".{name}.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out_dir / name)
    tmp = out_dir / f".{study}.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out_dir / f"{study}.md")
    return agg
