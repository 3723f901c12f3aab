"""DAG build time of the study grid: `snakemake -n -q --config preset=P` for each preset.

Each preset is timed cold (the expanded-grid cache .snakemake/simclr-plan removed first: what the
first dry run after a params or code change pays), warm (the cache present: what every later dry
run pays) and job (the Snakemake inside one Slurm job, `--mode remote --target-jobs pretrain:run=ID`,
dry: what every job pays before the rule's own command starts). Wall time and the CPU time (user +
sys) of the snakemake process are printed; on a shared machine the CPU time is the steadier one.

    .venv/bin/python bench/dag.py [--presets smoke cpu cifar10] [--repeats 3] [--project .]

Prints one line per preset and mode, e.g.
`dag cifar10 warm: wall 2.10 s, cpu 2.05 s (median of 3; 384 pretrainings)`. The dry run's own checks
(params, plan) make a failing dry run exit non-zero here too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snakemake_bin() -> str:
    here = Path(sys.executable).parent / "snakemake"
    return str(here) if here.exists() else "snakemake"


def dry_run(project: Path, preset: str, job: str = "") -> tuple[float, float]:
    """(wall s, cpu s) of one `snakemake -n -q` in `project`; with `job` (rule:wildcard=value), of the
    Snakemake that a Slurm job runs for it (`--mode remote --target-jobs`), dry."""
    before = os.times()
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(project / "src"))  # that project's code, not the installed one
    extra = ["--mode", "remote", "--target-jobs", job, "--allowed-rules", job.split(":")[0], "--nolock"] if job else []
    proc = subprocess.run([snakemake_bin(), "-n", "-q", "--config", f"preset={preset}", *extra], cwd=project,
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed for preset {preset}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["smoke", "cpu", "cifar10"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--project", type=Path, default=ROOT, help="the project folder (its .snakemake/ is used)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.project / "src"))
    from simclr_ablations import studies

    cache = args.project / ".snakemake" / "simclr-plan"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for preset in args.presets:
        runs = studies.unique(studies.expand(preset))
        n, job = len(runs), f"pretrain:run={next(iter(runs))}"
        for mode in ("cold", "warm", "job"):
            times = []
            for _ in range(args.repeats):
                if mode == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                times.append(dry_run(args.project, preset, job if mode == "job" else ""))
            wall = statistics.median(t[0] for t in times)
            cpu = statistics.median(t[1] for t in times)
            print(f"dag {preset} {mode}: wall {wall:.2f} s, cpu {cpu:.2f} s (median of {args.repeats}; "
                  f"{n} pretrainings)", flush=True)


if __name__ == "__main__":
    main()
