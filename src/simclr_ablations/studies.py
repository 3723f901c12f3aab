"""Expand the studies of params/studies.yaml into runs, identified by their resolved params.

The Snakefile and the table/figure commands both call `expand`, so they always agree on which
runs make up a study. A run has two identities (params.py): its pretraining (`id`, the digest of
everything that changes the trained weights) and its evaluation (`eval_id`, the pretraining plus
the eval settings). A pretraining shared by several studies or presets, or by cells that differ
only in how they are evaluated, is trained once. This module does not import torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import params


@dataclass(frozen=True)
class Run:
    study: str
    cell: tuple[tuple[str, str], ...]  # ((axis, label), ...)
    seed: int
    settings: tuple[str, ...]  # key=value, applied on top of the preset
    params: dict = field(compare=False, hash=False, repr=False)
    id: str = ""  # pretraining id: runs/<...>/<id>/model.pt
    eval_id: str = ""  # evaluation id: runs/<...>/<id>/eval/<eval_id>/metrics.json

    def metrics_path(self, runs_dir) -> str:
        return f"{runs_dir}/{self.id}/eval/{self.eval_id}/metrics.json"

    def labels(self) -> dict:
        return dict(self.cell)

    def cli_args(self, preset: str) -> str:
        return " ".join(["--preset", shlex.quote(preset)] + [f"--set {shlex.quote(s)}" for s in self.settings])


def spec() -> dict:
    """params/studies.yaml (parsed once per process; do not modify the result)."""
    path = params.PARAMS_DIR / "studies.yaml"
    st = path.stat()
    return params._read_cached(str(path), st.st_mtime_ns, st.st_size)


def names() -> list[str]:
    return list(spec()["studies"])


def seeds(preset: str, n: int = 0, study: str | None = None) -> list[int]:
    """Replicate seeds: `n` if given, else the study's `seeds_for[preset]`, else `seeds[preset]` of
    studies.yaml (a cheap study can afford more seeds than the preset's budget gives every study)."""
    table, known = spec()["seeds"], params.presets()
    unknown = sorted(set(table) - set(known) - {"default"})
    if unknown:
        raise params.ParamsError(f"studies.yaml: seeds names unknown presets {unknown}; allowed: "
                                 f"{', '.join(known)}, default")
    own = (spec()["studies"][study].get("seeds_for") or {}).get(preset) if study else None
    if own is not None and (isinstance(own, bool) or not isinstance(own, int) or own < 1):
        raise params.ParamsError(f"studies.yaml: {study}.seeds_for.{preset} = {own!r}; allowed: an integer >= 1")
    return list(range(n or own or table.get(preset, table["default"])))


_DUMPED: dict[str, str] = {}  # YAML text of each value seen (the grid repeats few values many times)


def _setting(key: str, value) -> str:
    tag = json.dumps(value, sort_keys=True)
    if tag not in _DUMPED:
        _DUMPED[tag] = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"{key}={_DUMPED[tag]}"


def axes(study: str, preset: str) -> dict[str, dict[str, dict]]:
    """{axis: {label: settings}} after the preset's shrink, pairs expanded."""
    s = spec()["studies"][study]
    out = {}
    for axis, values in s["axes"].items():
        if "pairs" in values:
            ops = values["pairs"]
            values = {f"{a}+{b}" if a != b else a: {"augment.ops": [a] if a == b else [a, b]}
                      for i, a in enumerate(ops) for b in ops[i:]}
        keep = s.get("shrink", {}).get(preset, {}).get(axis)
        if keep:
            unknown = set(keep) - set(values)
            if unknown:
                raise params.ParamsError(f"studies.yaml: {study}.shrink.{preset}.{axis} names unknown labels "
                                         f"{sorted(unknown)}; allowed: {list(values)}")
            values = {k: v for k, v in values.items() if k in keep}
        out[axis] = values
    return out


def check_preset_keys(study: str) -> None:
    """A per-preset section (`shrink`, `base_for`, `seeds_for`) naming no preset would silently do nothing."""
    s, known = spec()["studies"][study], params.presets()
    for section in ("shrink", "base_for", "seeds_for"):
        unknown = sorted(set(s.get(section) or {}) - set(known))
        if unknown:
            raise params.ParamsError(f"studies.yaml: {study}.{section} names unknown presets {unknown}; "
                                     f"allowed: {', '.join(known)}")


def expand(preset: str, study: str | None = None, extra: tuple[str, ...] = (), n_seeds: int = 0) -> list[Run]:
    """Every run of `study` (or of all studies) for `preset`, validated. `extra` settings (e.g. a
    dataset override) apply to every run; `n_seeds` overrides the preset's number of replicates."""
    runs = []
    for name in [study] if study else names():
        check_preset_keys(name)
        s = spec()["studies"][name]
        base = [_setting(k, v) for k, v in {**(s.get("base") or {}), **s.get("base_for", {}).get(preset, {})}.items()]
        grid = axes(name, preset)
        replicates = seeds(preset, n_seeds, name)
        for combo in itertools.product(*[list(v.items()) for v in grid.values()]):
            cell = tuple((axis, label) for axis, (label, _) in zip(grid, combo))
            sets = base + [_setting(k, v) for _, st in combo for k, v in st.items()]
            for seed in replicates:
                settings = tuple(list(extra) + sets + [f"seed={seed}"])
                try:
                    p = params.load(preset or None, settings=list(settings))  # "": no preset
                except params.ParamsError as e:
                    raise params.ParamsError(f"study {name!r}, cell {dict(cell)}: {e}") from e
                runs.append(Run(name, cell, seed, settings, p, params.pretrain_id(p), params.eval_id(p)))
    return runs


PLANS_KEPT = 16  # newest cached plans kept (one per preset, config and version of the params)


def plan_key(preset: str, names: list[str], extra: tuple[str, ...], n_seeds: int) -> str:
    """Digest of everything an expansion depends on: the params files (default, presets, studies),
    the source of the code that expands and names runs (params.py, studies.py) and the arguments."""
    h = hashlib.sha256(repr((preset, list(names), tuple(extra), n_seeds)).encode())
    here = Path(__file__).resolve().parent
    for f in sorted(params.PARAMS_DIR.rglob("*.yaml")) + [here / "params.py", here / "studies.py"]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def plan(preset: str, names: list[str], extra: tuple[str, ...] = (), n_seeds: int = 0,
         cache_dir: str | Path | None = None) -> dict[str, list[Run]]:
    """{study: expand(preset, study, extra, n_seeds)} for the Snakefile. With `cache_dir`, the result is
    kept in cache_dir/plan-<plan_key>.json, so that the next process that reads the Snakefile (a
    dry run, a Slurm job) loads it instead of expanding and validating the grid again. Only this
    code writes that folder; an unreadable file is ignored and rewritten."""
    path = Path(cache_dir) / f"plan-{plan_key(preset, names, extra, n_seeds)}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return {name: [_run(r) for r in runs] for name, runs in json.loads(path.read_text()).items()}
        except (ValueError, KeyError, TypeError):  # a damaged cache: expand again below
            pass
    out = {name: expand(preset, name, extra, n_seeds) for name in names}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({name: [r.__dict__ for r in runs] for name, runs in out.items()}))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        for stale in sorted(path.parent.glob("plan-*.json"), key=lambda f: f.stat().st_mtime)[:-PLANS_KEPT]:
            stale.unlink(missing_ok=True)
    return out


def _run(d: dict) -> Run:
    """A Run from its JSON form (plain data: a cache file never runs code)."""
    return Run(d["study"], tuple(tuple(c) for c in d["cell"]), d["seed"], tuple(d["settings"]), d["params"],
               d["id"], d["eval_id"])


def unique(runs: list[Run]) -> dict[str, Run]:
    """One Run per pretraining id (the first study that asks for it)."""
    out: dict[str, Run] = {}
    for r in runs:
        out.setdefault(r.id, r)
    return out


def unique_evals(runs: list[Run]) -> dict[tuple[str, str], Run]:
    """One Run per (pretraining id, evaluation id)."""
    out: dict[tuple[str, str], Run] = {}
    for r in runs:
        out.setdefault((r.id, r.eval_id), r)
    return out


def data_settings(p: dict) -> list[str]:
    """Settings that reproduce p's data params (for the prepare rule)."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield _setting(prefix + k, v)
    return list(flat(params.data_params(p), "data."))
