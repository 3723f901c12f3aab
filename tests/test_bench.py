"""Smoke test of bench/throughput.py: it runs and prints its final line (no timing thresholds)."""

import re
import subprocess
import sys

from conftest import ROOT

FINAL = re.compile(r"^pretrain throughput: (\d+(?:\.\d+)?) images/s \(preset smoke, cpu, \d+ threads, "
                   r"R18 x0\.0625, batch 128\)$")


def test_throughput_script_smoke():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--preset", "smoke", "--steps", "2",
                           "--warmup", "0", "--repeats", "1", "--device", "cpu", "--threads", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    m = FINAL.match(lines[-1])
    assert m, f"unexpected final line: {lines[-1]!r}"
    assert float(m.group(1)) > 0
    assert any(line.startswith("per-job overhead: ") for line in lines)


def test_dag_script_smoke(tmp_path):
    """bench/dag.py times a cold and a warm dry run and a job's Snakemake; the cold run leaves the plan cache behind."""
    from conftest import copy_project

    work = copy_project(tmp_path / "project")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "dag.py"), "--presets", "smoke", "--repeats", "1",
                           "--project", str(work)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    for mode, line in zip(("cold", "warm", "job"), lines[-3:]):
        assert re.match(rf"^dag smoke {mode}: wall \d+\.\d\d s, cpu \d+\.\d\d s \(median of 1; \d+ pretrainings\)$",
                        line), line
    assert list((work / ".snakemake" / "simclr-plan").glob("plan-*.json"))
