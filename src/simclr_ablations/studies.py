"""Expand the studies of params/studies.yaml into runs, identified by their resolved params.

The Snakefile and the table/figure commands both call `expand`, so they always agree on which
runs make up a study. A run has two identities (params.py): its pretraining (`id`, the digest of
everything that changes the trained weights) and its evaluation (`eval_id`, the pretraining plus
the eval settings). A pretraining shared by several studies or presets, or by cells that differ
only in how they are evaluated, is trained once. This module does not import torch.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass, field

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
    return params.read_yaml(params.PARAMS_DIR / "studies.yaml")


def names() -> list[str]:
    return list(spec()["studies"])


def seeds(preset: str, n: int = 0) -> list[int]:
    """Replicate seeds of a preset: `n` if given, else `seeds[preset]` of studies.yaml."""
    table = spec()["seeds"]
    return list(range(n or table.get(preset, table["default"])))


def _setting(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


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


def expand(preset: str, study: str | None = None, extra: tuple[str, ...] = (), n_seeds: int = 0) -> list[Run]:
    """Every run of `study` (or of all studies) for `preset`, validated. `extra` settings (e.g. a
    dataset override) apply to every run; `n_seeds` overrides the preset's number of replicates."""
    runs = []
    for name in [study] if study else names():
        s = spec()["studies"][name]
        base = [_setting(k, v) for k, v in (s.get("base") or {}).items()]
        grid = axes(name, preset)
        for combo in itertools.product(*[list(v.items()) for v in grid.values()]):
            cell = tuple((axis, label) for axis, (label, _) in zip(grid, combo))
            sets = base + [_setting(k, v) for _, st in combo for k, v in st.items()]
            for seed in seeds(preset, n_seeds):
                settings = tuple(list(extra) + sets + [f"seed={seed}"])
                try:
                    p = params.load(preset or None, settings=list(settings))  # "": no preset
                except params.ParamsError as e:
                    raise params.ParamsError(f"study {name!r}, cell {dict(cell)}: {e}") from e
                runs.append(Run(name, cell, seed, settings, p, params.pretrain_id(p), params.eval_id(p)))
    return runs


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
    return list(flat(p["data"], "data."))
