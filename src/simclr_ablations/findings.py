"""The paper's findings, checked against this run's tables (never written by hand).

Each finding is a claim "A > B" where A and B are quantities computed per seed from the
per-run tables (`<study>_runs.csv`). The verdict rule (also stated in the summary and README):

  d_s = A_s - B_s for every seed s both sides have; n = number of such seeds.
  n < 2                        -> "inconclusive (1 seed)", whatever the sign.
  mean(d) > 2 * sd(d)/sqrt(n)  -> "reproduced"  (the ordering holds beyond the seed-to-seed spread)
  mean(d) < -2 * sd(d)/sqrt(n) -> "not reproduced" (the opposite ordering holds beyond the spread)
  otherwise                    -> "inconclusive" (the difference is within the spread)

A paired comparison over seeds: seed s of every cell shares initialisation and data order.
Where a claim compares against "the best other" cell, that cell is chosen by its mean.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

RULE = ("paired over seeds: d = A - B per seed; reproduced if mean(d) > 2·sd(d)/√n, not reproduced if "
        "mean(d) < -2·sd(d)/√n, otherwise inconclusive; with one seed always 'inconclusive (1 seed)'")


def verdict(a: pd.Series, b: pd.Series) -> tuple[str, float, float, int]:
    """(verdict, mean difference, its standard error, n) for the claim a > b, both indexed by seed."""
    d = (a - b).dropna()
    n = len(d)
    if n == 0:
        return "missing", math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return "inconclusive (1 seed)", mean, math.nan, n
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if mean > 2 * se:
        return "reproduced", mean, se, n
    if mean < -2 * se:
        return "not reproduced", mean, se, n
    return "inconclusive", mean, se, n


def _per_seed(df: pd.DataFrame, metric: str = "top1", **where) -> pd.Series:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k].isin(v) if isinstance(v, list) else sel[k] == v]
    return sel.groupby("seed")[metric].mean()


def _best(df: pd.DataFrame, key: str, candidates: list, metric: str = "top1", **where):
    means = {c: _per_seed(df, metric, **{key: c}, **where).mean() for c in candidates}
    means = {c: m for c, m in means.items() if not math.isnan(m)}
    return max(means, key=means.get) if means else None


def _augmentations(t):
    aug = t["augmentations"]
    pairs = [p for p in aug["pair"].unique() if "+" in p]
    singles = [p for p in aug["pair"].unique() if "+" not in p]
    if "crop+color" in pairs and len(pairs) > 1:
        other = _best(aug, "pair", [p for p in pairs if p != "crop+color"])
        yield ("crop + color is the best pair of augmentations", "crop+color", _per_seed(aug, pair="crop+color"),
               f"best other pair ({other})", _per_seed(aug, pair=other))
    if pairs and singles:
        bp, bs = _best(aug, "pair", pairs), _best(aug, "pair", singles)
        yield ("no single augmentation suffices: the best composition beats the best single op",
               f"best pair ({bp})", _per_seed(aug, pair=bp), f"best single op ({bs})", _per_seed(aug, pair=bs))


def _color_strength(t):
    col = t["color_strength"]
    strengths = list(dict.fromkeys(col["strength"]))
    lo, hi = strengths[0], "1" if "1" in strengths else strengths[-1]
    gain = {m: _per_seed(col, method=m, strength=hi) - _per_seed(col, method=m, strength=lo)
            for m in ("SimCLR", "Supervised")}
    yield ("stronger color distortion helps SimCLR more than supervised learning",
           f"SimCLR gain ({lo} -> {hi})", gain["SimCLR"], f"supervised gain ({lo} -> {hi})", gain["Supervised"])


def _projection_head(t):
    head = t["projection_head"]
    yield ("a nonlinear projection head beats a linear one (eval on h)", "non-linear",
           _per_seed(head, "top1_h", head="Non-linear"), "linear", _per_seed(head, "top1_h", head="Linear"))
    yield ("a linear projection head beats no projection (eval on h)", "linear",
           _per_seed(head, "top1_h", head="Linear"), "none", _per_seed(head, "top1_h", head="None"))
    yield ("the representation before the head (h) beats the one after it (g(h)), nonlinear head", "h",
           _per_seed(head, "top1_h", head="Non-linear"), "g(h)", _per_seed(head, "top1_gh", head="Non-linear"))


def _losses(t):
    loss = t["losses"].assign(family=lambda d: d["setting"].str.replace(r" [tm]=.*$", "", regex=True))
    xent = _best(loss, "setting", [s for s in loss["setting"].unique() if s.startswith("NT-Xent")])
    rest = _best(loss, "setting", [s for s in loss["setting"].unique() if not s.startswith("NT-Xent")])
    yield ("NT-Xent beats NT-Logistic and margin triplet (each at its best setting)", f"NT-Xent ({xent})",
           _per_seed(loss, setting=xent), f"best other ({rest})", _per_seed(loss, setting=rest))


def _temperature(t):
    temp = t["temperature"]
    moderate = [s for s in temp["setting"].unique() if s in ("l2, t=0.1", "l2, t=0.5")]
    extremes = [s for s in temp["setting"].unique() if s not in moderate]
    bm, be = _best(temp, "setting", moderate), _best(temp, "setting", extremes)
    yield ("l2 normalisation with a moderate temperature beats the extremes", f"best moderate ({bm})",
           _per_seed(temp, setting=bm), f"best extreme ({be})", _per_seed(temp, setting=be))


def _batch_epochs(t):
    be_ = t["batch_epochs"]
    be_ = be_[be_["lr_scaling"] == "linear"]
    batches = sorted(be_["batch"].unique(), key=int)
    epochs = sorted(be_["epochs"].unique(), key=int)
    g = {e: _per_seed(be_, batch=batches[-1], epochs=e) - _per_seed(be_, batch=batches[0], epochs=e)
         for e in (epochs[0], epochs[-1])}
    yield ("a bigger batch helps most when training for few epochs",
           f"gain of batch {batches[-1]} over {batches[0]} at {epochs[0]} epochs", g[epochs[0]],
           f"same gain at {epochs[-1]} epochs", g[epochs[-1]])


def _encoder(t):
    enc = t["encoder"]
    enc = enc[enc["method"] == "SimCLR"]
    widths = list(dict.fromkeys(enc["width"]))
    depths = list(dict.fromkeys(enc["depth"]))
    yield ("wider encoders help (SimCLR, averaged over depths)", f"width {widths[-1]}",
           _per_seed(enc, width=widths[-1]), f"width {widths[0]}", _per_seed(enc, width=widths[0]))
    yield ("deeper encoders help (SimCLR, averaged over widths)", f"depth {depths[-1]}",
           _per_seed(enc, depth=depths[-1]), f"depth {depths[0]}", _per_seed(enc, depth=depths[0]))


def _methods(t):
    m = t["methods"]
    names = set(m["method"])
    if {"SimCLR", "SimCLRv2"} <= names and "semi_1pct" in m:
        yield ("SimCLRv2 (3-layer head, fine-tuned from its middle layer) beats SimCLR with 1% of the labels",
               "SimCLRv2, 1% labels", _per_seed(m, "semi_1pct", method="SimCLRv2"),
               "SimCLR, 1% labels", _per_seed(m, "semi_1pct", method="SimCLR"))
    if {"MoCo v2", "MoCo v2 (bank)"} <= names:
        yield ("MoCo: a queue of negatives beats a memory bank (MoCo, Fig. 3)", "queue",
               _per_seed(m, method="MoCo v2"), "memory bank", _per_seed(m, method="MoCo v2 (bank)"))
    if {"WCL", "SimCLR"} <= names:
        yield ("WCL's weak labels improve on SimCLR (WCL, Table 1)", "WCL", _per_seed(m, method="WCL"),
               "SimCLR", _per_seed(m, method="SimCLR"))


CLAIMS = {name: globals()[f"_{name}"] for name in (
    "augmentations", "color_strength", "projection_head", "losses", "temperature", "batch_epochs", "encoder",
    "methods")}


def _claims(t: dict[str, pd.DataFrame]):
    """Yield (finding, A label, A per seed, B label, B per seed) for every study present."""
    for study, claims in CLAIMS.items():
        if study in t:
            yield from claims(t)


def evaluate(tables_dir: Path) -> pd.DataFrame:
    t = {}
    for path in Path(tables_dir).glob("*_runs.csv"):
        label_cols = {"pair", "method", "strength", "depth", "width", "head", "out_dim", "setting", "lr_scaling",
                      "batch", "epochs"}
        t[path.name.removesuffix("_runs.csv")] = pd.read_csv(path, dtype={c: str for c in label_cols},
                                                             keep_default_na=False, na_values=[""])
    rows = []
    for finding, a_label, a, b_label, b in _claims(t):
        v, mean, se, n = verdict(a, b)
        rows.append({"finding": finding, "verdict": v, "A": a_label, "A_mean": a.mean(), "B": b_label,
                     "B_mean": b.mean(), "difference": mean, "std_error": se, "seeds": n})
    return pd.DataFrame(rows)


def write(tables_dir: Path, out_md: Path, preset: str, dataset: str, cost: pd.DataFrame | None = None) -> None:
    df = evaluate(tables_dir)
    out_md = Path(out_md)
    df.to_csv(out_md.with_name("findings.csv"), index=False)
    counts = df["verdict"].value_counts().to_dict()
    lines = [f"# SimCLR findings on preset `{preset}` ({dataset})", "",
             "Computed from the tables in `tables/` by `simclr-ablations findings`; not written by hand.", "",
             f"Verdict rule: {RULE}.", "",
             "Accuracy is linear evaluation on frozen features h (supervised rows: the supervised classifier).",
             "", "| finding | verdict | A | B | A − B (± s.e.) | seeds |", "|---|---|---|---|---|---|"]
    for r in df.itertuples():
        diff = "-" if math.isnan(r.difference) else f"{r.difference:+.1f}" + (
            "" if math.isnan(r.std_error) else f" ± {r.std_error:.1f}")
        lines.append(f"| {r.finding} | **{r.verdict}** | {r.A}: {r.A_mean:.1f} | {r.B}: {r.B_mean:.1f} | {diff} "
                     f"| {r.seeds} |")
    lines += ["", "Summary: " + ", ".join(f"{v}: {k}" for k, v in counts.items()) + "."]
    if cost is not None:
        lines += ["", "## Cost", "", "| study | runs | distinct runs | job time (min) |", "|---|---|---|---|"]
        lines += [f"| {r.study} | {r.runs} | {r.distinct} | {r.minutes:.1f} |" for r in cost.itertuples()]
        lines += [f"| **total (distinct runs)** | | {int(cost.attrs.get('distinct_total', 0))} | "
                  f"{cost.attrs.get('minutes_total', 0):.1f} |"]
    tmp = out_md.with_name(".tmp-" + out_md.name)
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out_md)


def cost_table(tables_dir: Path) -> pd.DataFrame:
    """Job time per study (from Snakemake's benchmark files), and the total over distinct runs."""
    rows, seen = [], {}
    for path in sorted(Path(tables_dir).glob("*_runs.csv")):
        df = pd.read_csv(path)
        t = df["wall_seconds"].where(df["wall_seconds"].notna(), df["train_seconds"])
        rows.append({"study": path.name.removesuffix("_runs.csv"), "runs": len(df), "distinct": df["run_id"].nunique(),
                     "minutes": t.groupby(df["run_id"]).first().sum() / 60})
        seen.update(dict(zip(df["run_id"], t)))
    out = pd.DataFrame(rows)
    out.attrs["distinct_total"] = len(seen)
    out.attrs["minutes_total"] = sum(seen.values()) / 60
    return out
