"""The paper's findings, checked against this run's tables (never written by hand).

Each finding is a claim "A > B" where A and B are quantities computed per seed from the
per-run tables (`<study>_runs.csv`). The verdict rule (also stated in the summary and README):

  d_s = A_s - B_s for every seed s both sides have; n = number of such seeds.
  n < 2                                 -> "inconclusive (1 seed)", whatever the sign.
  mean(d) >  t(0.975, n-1) * sd(d)/√n   -> "reproduced"  (a paired two-sided t-test at 5%)
  mean(d) < -t(0.975, n-1) * sd(d)/√n   -> "not reproduced" (the opposite ordering holds)
  otherwise                             -> "inconclusive"

t(q, k) is Student's t quantile with k degrees of freedom (4.30 for 3 seeds, 2.78 for 5); it is
computed here (`t_quantile`), scipy is not a dependency. A paired comparison over seeds: seed s
of every cell shares initialisation and data order.

Where a claim compares against "the best other" cell, choosing it by its mean on the very seeds
that then test it favours whichever cell was lucky (winner's curse). So the choice is
cross-fitted: the value at seed s is that of the cell with the best mean over the *other* seeds;
the row names the cells so chosen (e.g. "crop+sobel ×2, color+sobel ×1"). With one seed there is
nothing to leave out and the row says "chosen on the tested seed".

The untrained encoder (same architecture, random initialisation, same linear evaluation) is
read from `untrained_runs.csv` when the grid made it; every cell of every study table whose mean
falls below its mean is listed, and flagged in the findings rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import params
from .tables import best_left_out, code_versions
from .tables import per_seed as _per_seed

T_LEVEL = 0.975  # two-sided 5%
BASELINE_TABLE = "untrained"
RULE = ("paired over seeds: d = A - B per seed; reproduced if mean(d) > t·sd(d)/√n, not reproduced if "
        "mean(d) < -t·sd(d)/√n, otherwise inconclusive, with t the 97.5% Student-t quantile on n - 1 degrees of "
        "freedom (a two-sided paired t-test at 5%: t = 12.71, 4.30, 3.18, 2.78 for n = 2, 3, 4, 5); with one seed "
        "always 'inconclusive (1 seed)'. A 'best' cell is chosen leaving the tested seed out")


def _t_pdf(x: float, k: float) -> float:
    c = math.lgamma((k + 1) / 2) - math.lgamma(k / 2) - 0.5 * math.log(k * math.pi)
    return math.exp(c - (k + 1) / 2 * math.log1p(x * x / k))


def _t_cdf(x: float, k: float, steps: int = 2000) -> float:
    """P(T <= x) for x >= 0 by Simpson's rule on the density over [0, x] (smooth, so exact to ~1e-10)."""
    h = x / steps
    s = _t_pdf(0.0, k) + _t_pdf(x, k) + sum((4 if i % 2 else 2) * _t_pdf(i * h, k) for i in range(1, steps))
    return 0.5 + s * h / 3


def t_quantile(q: float, dof: int) -> float:
    """Student's t quantile: the x with P(T_dof <= x) = q, for q in (0.5, 1) (bisection on the CDF)."""
    if not 0.5 < q < 1 or dof < 1:
        raise ValueError(f"t_quantile needs q in (0.5, 1) and dof >= 1, got q={q}, dof={dof}")
    if dof == 1:  # Cauchy
        return math.tan(math.pi * (q - 0.5))
    if dof == 2:
        a = 4 * q * (1 - q)
        return 2 * (q - 0.5) * math.sqrt(2 / a)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < q:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < q else (lo, mid)
    return (lo + hi) / 2


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
    t = t_quantile(T_LEVEL, n - 1)
    if mean > t * se:
        return "reproduced", mean, se, n
    if mean < -t * se:
        return "not reproduced", mean, se, n
    return "inconclusive", mean, se, n


AUG_PROTOCOL = {"augmentations": "one branch, the paper's Fig. 5 protocol", "augmentations_both": "both branches"}


def _augmentations(t, study="augmentations"):
    aug = t[study]
    where = f" ({AUG_PROTOCOL.get(study, study)})"
    pairs = [p for p in aug["pair"].unique() if "+" in p]
    singles = [p for p in aug["pair"].unique() if "+" not in p]
    if "crop+color" in pairs and len(pairs) > 1:
        other, b = best_left_out(aug, "pair", [p for p in pairs if p != "crop+color"])
        yield ("crop + color is the best pair of augmentations" + where, "crop+color",
               _per_seed(aug, pair="crop+color"), f"best other pair ({other})", b)
    if pairs and singles:
        (bp, a), (bs, b) = best_left_out(aug, "pair", pairs), best_left_out(aug, "pair", singles)
        yield ("no single augmentation suffices: the best composition beats the best single op" + where,
               f"best pair ({bp})", a, f"best single op ({bs})", b)


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
    loss = t["losses"]
    settings = list(loss["setting"].unique())
    xent, a = best_left_out(loss, "setting", [s for s in settings if s.startswith("NT-Xent")])
    rest, b = best_left_out(loss, "setting", [s for s in settings if not s.startswith("NT-Xent")])
    yield ("NT-Xent beats NT-Logistic and margin triplet (each at its best setting)", f"NT-Xent ({xent})", a,
           f"best other ({rest})", b)


def _temperature(t):
    temp = t["temperature"]
    moderate = [s for s in temp["setting"].unique() if s in ("l2, t=0.1", "l2, t=0.5")]
    extremes = [s for s in temp["setting"].unique() if s not in moderate]
    (bm, a), (be, b) = best_left_out(temp, "setting", moderate), best_left_out(temp, "setting", extremes)
    yield ("l2 normalisation with a moderate temperature beats the extremes", f"best moderate ({bm})", a,
           f"best extreme ({be})", b)


def _batch_epochs(t):
    be_ = t["batch_epochs"]
    be_ = be_[be_["lr_scaling"] == "linear"]
    batches = sorted(be_["batch"].unique(), key=int)
    epochs = sorted(be_["epochs"].unique(), key=int)
    g = {e: _per_seed(be_, batch=batches[-1], epochs=e) - _per_seed(be_, batch=batches[0], epochs=e)
         for e in (epochs[0], epochs[-1])}
    # Fig. 9's claim has two parts: at few epochs the bigger batch is ahead, and the lead shrinks with
    # more epochs. The second alone would also hold when the bigger batch is behind everywhere, just
    # less so at few epochs, so each part is its own row.
    yield ("a bigger batch helps when training for few epochs",
           f"gain of batch {batches[-1]} over {batches[0]} at {epochs[0]} epochs", g[epochs[0]],
           "no gain", g[epochs[0]] * 0.0)
    yield ("the gain of a bigger batch shrinks with more epochs",
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
CLAIMS["augmentations_both"] = lambda t: _augmentations(t, "augmentations_both")
GAINS = ("color_strength", "batch_epochs")  # studies whose claims compare gains, not accuracies
LABEL_COLS = {"pair", "method", "strength", "depth", "width", "head", "out_dim", "setting", "lr_scaling", "batch",
              "epochs"}


def _claims(t: dict[str, pd.DataFrame]):
    """Yield (study, finding, A label, A per seed, B label, B per seed) for every study present."""
    for study, claims in CLAIMS.items():
        if study in t:
            for claim in claims(t):
                yield (study, *claim)


def read_tables(tables_dir: Path, suffix: str = "_runs") -> dict[str, pd.DataFrame]:
    """{study: table} of every `<study><suffix>.csv` (labels kept as strings)."""
    return {path.name.removesuffix(f"{suffix}.csv"): pd.read_csv(
        path, dtype={c: str for c in LABEL_COLS}, keep_default_na=False, na_values=[""])
        for path in Path(tables_dir).glob(f"*{suffix}.csv") if suffix or not path.stem.endswith("_runs")}


def baseline(t: dict[str, pd.DataFrame]) -> pd.Series | None:
    """Per-seed top-1 of the untrained encoder (`untrained_runs.csv`), or None when the grid has none."""
    if BASELINE_TABLE not in t or t[BASELINE_TABLE].empty:
        return None
    return t[BASELINE_TABLE].groupby("seed")["top1"].mean()


def below_baseline(aggs: dict[str, pd.DataFrame], floor: float) -> pd.DataFrame:
    """Every cell of every aggregated study table (`<study>.csv`) whose mean accuracy is below `floor`."""
    rows = []
    for study, agg in sorted(aggs.items()):
        if study == BASELINE_TABLE:
            continue
        labels = [c for c in agg.columns if c in LABEL_COLS]
        for metric in [m for m in ("top1", "top1_h", "top1_gh") if f"{m}_mean" in agg]:
            if metric != "top1" and study != "projection_head":
                continue
            for _, r in agg[agg[f"{metric}_mean"] < floor].iterrows():
                rows.append({"study": study, "cell": ", ".join(f"{c}={r[c]}" for c in labels), "metric": metric,
                             "mean": float(r[f"{metric}_mean"])})
    return pd.DataFrame(rows, columns=["study", "cell", "metric", "mean"]).drop_duplicates()


def evaluate(tables_dir: Path) -> pd.DataFrame:
    """One row per finding: verdict, both sides' means, the paired difference and its standard error; the
    `below_untrained` column names the sides whose mean accuracy is below the untrained encoder."""
    t = read_tables(tables_dir)
    base = baseline(t)
    floor = float(base.mean()) if base is not None else math.nan
    rows = []
    for study, finding, a_label, a, b_label, b in _claims(t):
        v, mean, se, n = verdict(a, b)
        low = [] if study in GAINS else [s for s, x in (("A", a), ("B", b)) if x.mean() < floor]
        rows.append({"finding": finding, "verdict": v, "A": a_label, "A_mean": a.mean(), "B": b_label,
                     "B_mean": b.mean(), "difference": mean, "std_error": se, "seeds": n,
                     "below_untrained": " ".join(low)})
    out = pd.DataFrame(rows)
    out.attrs["untrained"] = floor
    out.attrs["untrained_std"] = float(base.std()) if base is not None and len(base) > 1 else math.nan
    return out


def write(tables_dir: Path, out_md: Path, preset: str, dataset: str, cost: pd.DataFrame | None = None) -> None:
    df = evaluate(tables_dir)
    out_md = Path(out_md)
    df.to_csv(out_md.with_name("findings.csv"), index=False)
    counts = df["verdict"].value_counts().to_dict()
    floor = df.attrs["untrained"]
    lines = [f"# SimCLR findings on preset `{preset}` ({dataset})", "",
             "Computed from the tables in `tables/` by `simclr-ablations findings`; not written by hand.", "",
             f"Verdict rule: {RULE}.", "",
             "Accuracy is linear evaluation on frozen features h (supervised rows: the supervised classifier).", ""]
    if not math.isnan(floor):
        sd = df.attrs["untrained_std"]
        lines += [f"Untrained encoder (same architecture, random init, same linear eval): {floor:.1f}"
                  + ("" if math.isnan(sd) else f" ± {sd:.1f}") + "; a side below it is marked ⚠.", ""]
    lines += ["| finding | verdict | A | B | A − B (± s.e.) | seeds |", "|---|---|---|---|---|---|"]
    for r in df.itertuples():
        diff = "-" if math.isnan(r.difference) else f"{r.difference:+.1f}" + (
            "" if math.isnan(r.std_error) else f" ± {r.std_error:.1f}")
        mark = {s: " ⚠" if s in r.below_untrained.split() else "" for s in ("A", "B")}
        lines.append(f"| {r.finding} | **{r.verdict}** | {r.A}: {r.A_mean:.1f}{mark['A']} | "
                     f"{r.B}: {r.B_mean:.1f}{mark['B']} | {diff} | {r.seeds} |")
    lines += ["", "Summary: " + ", ".join(f"{v}: {k}" for k, v in counts.items()) + "."]
    versions = sorted({v for runs in read_tables(tables_dir, "_runs").values() for v in code_versions(runs)})
    lines += ["", f"Code version of every run: {versions[0]}." if len(versions) == 1 else
              f"**Warning: these tables mix {len(versions)} code versions** ({', '.join(versions)}): the runs "
              "were not all made by the same code (column `code_version` of `tables/<study>_runs.csv`)."]
    if not math.isnan(floor):
        low = below_baseline(read_tables(tables_dir, ""), floor)
        lines += ["", f"## Cells below the untrained encoder ({floor:.1f})", ""]
        lines += ["None."] if low.empty else ["| study | cell | metric | mean |", "|---|---|---|---|"] + [
            f"| {r.study} | {r.cell} | {r.metric} | {r.mean:.1f} |" for r in low.itertuples()]
    if cost is not None:
        lines += ["", "## Cost", "", "| study | runs | distinct runs | job time (min) |", "|---|---|---|---|"]
        lines += [f"| {r.study} | {r.runs} | {r.distinct} | {r.minutes:.1f} |" for r in cost.itertuples()]
        lines += [f"| **total (distinct runs)** | | {int(cost.attrs.get('distinct_total', 0))} | "
                  f"{cost.attrs.get('minutes_total', 0):.1f} |"]
    with params.atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


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
