"""The study grid with the real Snakemake (and DVC for versioning it), on the smoke preset."""

import json
import re

import pandas as pd
import pytest
import torch

from simclr_ablations import params as P
from simclr_ablations import studies

from conftest import copy_project, run

pytestmark = pytest.mark.e2e


def test_smoke_grid_outputs(smoke_grid):
    res = smoke_grid / "results/smoke"
    for study in studies.names():
        for f in (f"tables/{study}.csv", f"tables/{study}.md", f"tables/{study}_runs.csv", f"figures/{study}.png",
                  f"figures/{study}.pdf"):
            assert (res / f).stat().st_size > 0, f
        runs = pd.read_csv(res / f"tables/{study}_runs.csv")
        assert len(runs) == len(studies.expand("smoke", study))
        assert runs["top1"].between(0, 100).all() and runs["params"].map(json.loads).map(dict).all()
    meth = pd.read_csv(res / "tables/methods.csv")
    assert len(meth) == 7 and meth["semi_1pct_mean"].between(0, 100).all() and meth["semi_10pct_mean"].notna().all()
    assert "1% labels (fine-tune)" in (res / "tables/methods.md").read_text()
    aug = pd.read_csv(res / "tables/augmentations.csv")
    assert len(aug) == 28 and aug["n"].eq(1).all()
    summary = (res / "README.md").read_text()
    findings = pd.read_csv(res / "findings.csv")
    assert len(findings) >= 11 and set(findings["verdict"]) == {"inconclusive (1 seed)"}
    assert "crop + color is the best pair" in summary and "Verdict rule" in summary
    # shared runs are trained once: one folder per pretraining, fewer than (study, cell, seed) rows
    every = studies.expand("smoke")
    folders = {d.name for d in (smoke_grid / "runs/grid").iterdir()}
    assert folders == set(studies.unique(every)) and len(folders) < len(every)
    # every training job left a log, a benchmark and its provenance; every result file carries the code version
    for d in (smoke_grid / "runs/grid").iterdir():
        assert (d / "pretrain.bench.tsv").exists() and (d / "pretrain.log").exists()
        for record in [d / "train.json", *d.glob("eval/*/metrics.json")]:
            prov = json.loads(record.read_text())["provenance"]
            keys = {"code_version", "torch", "cuda", "device", "device_name", "threads", "wall_seconds"}
            assert keys <= set(prov), record
        full = json.loads((d / "provenance.json").read_text())
        assert full["source_hash"] in full["code_version"] and full["threads"] == 1
    for study in studies.names():
        runs = pd.read_csv(res / f"tables/{study}_runs.csv")
        assert runs["code_version"].notna().all() and runs["device"].eq("cpu").all()
        # the CPU and the ISA of its kernels (results of one run differ between AVX2 and AVX512)
        isa = torch.backends.cpu.get_cpu_capability()
        assert runs["pretrain_device_name"].str.endswith(f"({isa})").all(), runs["pretrain_device_name"]
    assert "Code version of every run:" in summary


def test_cells_that_differ_only_in_evaluation_share_one_pretraining(smoke_grid):
    """e.g. the methods study's SimCLR cell (semi-supervised evaluation on) and a color_strength cell."""
    shared = {}
    for r in studies.expand("smoke"):
        shared.setdefault(r.id, set()).add(r.eval_id)
    pairs = {rid: evs for rid, evs in shared.items() if len(evs) > 1}
    assert pairs, "the smoke grid has no two cells that differ only in evaluation"
    for rid, evs in pairs.items():
        assert len(list((smoke_grid / "runs/grid" / rid).glob("model.pt"))) == 1
        assert {d.name for d in (smoke_grid / "runs/grid" / rid / "eval").iterdir()} >= evs
        bench = pd.read_csv(smoke_grid / "runs/grid" / rid / "pretrain.bench.tsv", sep="\t")
        assert len(bench) == 1  # trained once


def test_rerun_does_nothing(smoke_grid):
    out = run(["snakemake", "-n", "--config", "preset=smoke"], smoke_grid).stdout
    assert "Nothing to be done" in out, out[-2000:]


def test_report(smoke_grid):
    run(["snakemake", "--report", "report.html", "--config", "preset=smoke"], smoke_grid)
    assert (smoke_grid / "report.html").stat().st_size > 10_000


def test_dvc_roundtrip_of_the_grid(smoke_grid, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "modify", "--local", "local", "url", remote], smoke_grid)
    run(["snakemake", "-c1", "record", "--config", "preset=smoke"], smoke_grid)
    for f in ("data/grid.dvc", "runs/grid.dvc", "results/smoke.dvc"):
        assert (smoke_grid / f).exists(), f
    run(["git", "add", "-A"], smoke_grid)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "grid"], smoke_grid)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", smoke_grid, clone], tmp_path)
    run(["dvc", "remote", "modify", "--local", "local", "url", remote], clone)
    run(["dvc", "pull", "data/grid.dvc", "runs/grid.dvc", "results/smoke.dvc"], clone)
    assert (clone / "results/smoke/README.md").read_text() == (smoke_grid / "results/smoke/README.md").read_text()
    # restored files have checkout-order mtimes and the clone has no .snakemake metadata: mark them up to date
    run(["snakemake", "--touch", "-c1", "--config", "preset=smoke"], clone)
    out = run(["snakemake", "-n", "--config", "preset=smoke"], clone).stdout
    assert "Nothing to be done" in out, out[-3000:]
    # and a real change still triggers a rerun: the params of one study's runs
    changed = run(["snakemake", "-n", "--config", "preset=smoke", "seeds=2"], clone).stdout
    assert "pretrain" in changed and "Nothing to be done" not in changed


def test_studies_subset(tmp_path):
    work = copy_project(tmp_path / "p")
    out = run(["snakemake", "-n", "--config", "preset=smoke", "studies=[methods]"], work).stdout
    n = len(studies.unique(studies.expand("smoke", "methods")))
    assert f"pretrain {n}" in " ".join(out.split()) and "table 1" in " ".join(out.split())


def test_dry_run_of_gpu_preset_lists_every_run_without_data(tmp_path):
    work = copy_project(tmp_path / "p")
    out = run(["snakemake", "-n", "--config", "preset=cifar10"], work).stdout
    n = len(studies.unique(studies.expand("cifar10")))
    assert f"pretrain       {n}" in out or f"pretrain {n}" in " ".join(out.split())
    assert not (work / "data").exists() and not (work / "runs").exists()


@pytest.mark.parametrize("config, words", [
    (["preset=nope"], ["invalid configuration", "allowed presets are"]),
    (["preset=smoke", "dataset=mnist"], ["dataset"]),
    (["preset=smoke", "seeds=-1"], ["seeds"]),
    (["preset=smoke", "studies=[methods,colour]"], ["unknown studies", "colour", "color_strength"]),
])
def test_bad_config_fails_at_dag_time(tmp_path, config, words):
    work = copy_project(tmp_path / "p")
    proc = run(["snakemake", "-n", "--config", *config], work, check=False)
    assert proc.returncode != 0
    for w in words:
        assert w in proc.stdout + proc.stderr


def _jobs(out: str, rule: str) -> list[str]:
    """The text blocks of a dry run's `rule <rule>:` jobs (resources and shell command)."""
    return [b for b in out.split("\nrule ")[1:] if b.startswith(f"{rule}:")]


def test_dry_run_of_imagenet_on_slurm_lists_every_job_with_its_gpus(tmp_path):
    """`snakemake -n --profile slurm --config preset=imagenet`: every pretraining asks for 8 GPUs and runs
    one torchrun of 8 processes, every evaluation 1 GPU; no data is touched. With nodes=2 (one study):
    2 nodes, one torchrun per node through srun and a c10d rendezvous."""
    work = copy_project(tmp_path / "p")
    out = run(["snakemake", "-n", "-p", "--profile", "slurm", "--config", "preset=imagenet"], work).stdout
    pre, ev = _jobs(out, "pretrain"), _jobs(out, "evaluate")
    assert len(pre) == len(studies.unique(studies.expand("imagenet"))) > 100
    assert all("gpu=8" in b and "torchrun --standalone --nproc_per_node=8 -m simclr_ablations.cli pretrain" in b
               for b in pre)
    assert ev and all("gpu=1" in b for b in ev)
    out = run(["snakemake", "-n", "-p", "--profile", "slurm", "--config", "preset=imagenet", "nodes=2",
               "studies=[temperature]"], work).stdout
    pre = _jobs(out, "pretrain")
    parts = ("nodes=2", "tasks=2", "mpi=srun", "--ntasks-per-node=1 --gpus-per-node=8",
             "srun --nodes=$SLURM_NNODES --ntasks-per-node=1", "torchrun --nnodes=$SLURM_NNODES --nproc_per_node=8",
             "--rdzv_backend=c10d")
    assert pre and all(part in b for b in pre for part in parts), pre[0]
    assert not (work / "data").exists() and not (work / "runs").exists()


def test_cpu_amp_switch_renames_every_pretraining(tmp_path):
    """`--config cpu_amp=True` passes runtime.cpu_amp=true to every run: other pretraining ids, same count."""
    work = copy_project(tmp_path / "p")
    ids = {}
    for amp in ("False", "True"):
        out = run(["snakemake", "-n", "-p", "--config", "preset=smoke", f"cpu_amp={amp}", "studies=[temperature]"],
                  work).stdout
        ids[amp] = {re.search(r"runs/grid/(\w+)/model\.pt", b)[1] for b in _jobs(out, "pretrain")}
    assert ids["False"] and len(ids["False"]) == len(ids["True"]) and not ids["False"] & ids["True"]
    expected = {P.pretrain_id(r.params) for r in studies.expand("smoke", "temperature", ("runtime.cpu_amp=true",))}
    assert ids["True"] == expected


def test_changed_files_under_data_root_rerun_prepare(tmp_path):
    """Snakemake sees the files under data.root (issue 15, item 5): after one image changes, `prepare`
    is due again (a params trigger), and so is everything downstream of it."""
    import numpy as np
    from PIL import Image

    work = copy_project(tmp_path / "p")
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(5):
            Image.fromarray(np.full((8, 8, 3), 40 * k + (c == "b") * 20, dtype=np.uint8)).save(root / c / f"{k}.png")
    cfg = ["--config", "preset=smoke", "dataset=imagefolder", f"data_root={root}", "image_size=8", "studies=[methods]"]
    run(["snakemake", "-c1", "--until", "prepare", *cfg], work)
    assert not _jobs(run(["snakemake", "-n", "--until", "prepare", *cfg], work).stdout, "prepare")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "a" / "9.png")
    out = run(["snakemake", "-n", "--until", "prepare", *cfg], work).stdout
    assert len(_jobs(out, "prepare")) == 1 and "Params have changed" in out, out
