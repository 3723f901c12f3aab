"""`snakemake --profile slurm` on a real one-node Slurm cluster with fake GPUs (tests/slurm_cluster.py):
preemption and failures on small targets, then the whole smoke grid.

The GPU stages ask for `--gpus=1` (slurm/config.yaml); the node schedules them on its fake GPUs and
the training code, which finds no CUDA driver, runs on the CPU with the preset's thread count, as
`snakemake -c2` does locally, so both give the same numbers. Snakemake always runs under
`timeout -k`; the cluster's daemons are stopped by PID at the end of the session.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_cluster import Cluster, slurm_cluster  # noqa: F401  (the fixture)

from simclr_ablations import studies

from conftest import ROOT, copy_project, run

pytestmark = pytest.mark.e2e

# CI override for the grid on a 2-core node: one Slurm job per run (pretrain + evaluate grouped), which
# halves the number of Snakemake start-ups inside jobs; the fault tests use the profile as it is.
GRID_GROUPS = ["--groups", "pretrain=run", "evaluate=run"]
# A pretraining job that lives long enough to be requeued after its first checkpoint: the `cpu`
# preset (10 epochs of 3000 images) on 16-pixel images, about 3 s an epoch on one core.
LONG = ("cpu", "16")


def env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def snakemake(work: Path, *args, timeout: int, check=True) -> subprocess.CompletedProcess:
    return run(["timeout", "-k", "20", timeout, "snakemake", *args], work, timeout=timeout + 60, check=check)


def start_snakemake(work: Path, *args, timeout: int, log: Path) -> subprocess.Popen:
    """Snakemake in the background (in its own process group, led by `timeout`)."""
    with open(log, "w") as out:
        return subprocess.Popen(["timeout", "-k", "20", str(timeout), "snakemake", *map(str, args)], cwd=work,
                                stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: int, expect_rc=0) -> str:
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert rc == expect_rc, f"snakemake exited {rc}:\n{text[-6000:]}"
    return text


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             every=0.2):
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}:\n{log.read_text()[-5000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-5000:]}" if log else ""))
        time.sleep(every)


def child_of(pid: int) -> int:
    """The PID of the child process of `pid` (Snakemake under `timeout`)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            return int(stat.parent.name)
    raise AssertionError(f"process {pid} has no child")


def jobs_of(cluster: Cluster, work: Path) -> list[dict]:
    return [j for j in cluster.jobs() if j.get("WorkDir") == str(work)]


def job_of(cluster: Cluster, work: Path, rule: str, run_id: str, state: str | None = None) -> dict | None:
    for j in jobs_of(cluster, work):
        if j.get("Comment") == f"rule_{rule}_wildcards_{run_id}" and (state is None or j["JobState"] == state):
            return j
    return None


def seconds(t: str) -> int:
    days, _, hms = t.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def metrics(work: Path, run_id: str) -> tuple[float, float]:
    m = json.loads((work / f"runs/grid/{run_id}/metrics.json").read_text())
    return m["linear_top1"], m["knn_top1"]


def started(log_text: str, rule: str) -> dict[str, str]:
    """{Snakemake job id: run id} of the `rule` jobs a Snakemake log shows it started."""
    return dict(re.findall(rf"\nrule {rule}:\n(?:    .*\n)*?    jobid: (\d+)\n(?:    .*\n)*?    wildcards: "
                           rf"run=([0-9a-f]{{12}})", log_text))


def finished(log_text: str, rule: str) -> set[str]:
    """Run ids of the `rule` jobs a Snakemake log shows it saw complete."""
    ids = started(log_text, rule)
    return {ids[j] for j in re.findall(rf"Finished jobid: (\d+) \(Rule: {rule}\)", log_text) if j in ids}


def smoke_ids(study: str) -> list[str]:
    return list(studies.unique(studies.expand("smoke", study)))


# ---- preemption and failures ------------------------------------------------------------------


def test_requeued_pretraining_resumes_from_its_checkpoint(slurm_cluster, tmp_path):  # noqa: F811
    preset, size = LONG
    run_id = studies.expand(preset, "temperature", (f"data.image_size={size}",))[0].id
    target = f"runs/grid/{run_id}/metrics.json"
    config = ["--config", f"preset={preset}", f"image_size={size}"]
    work = copy_project(tmp_path / "slurm")
    ref = copy_project(tmp_path / "local")
    log, ref_log = tmp_path / "slurm.log", tmp_path / "local.log"
    # the uninterrupted reference runs locally, on the other core, meanwhile
    reference = start_snakemake(ref, target, "-c1", *config, timeout=900, log=ref_log)
    proc = start_snakemake(work, target, "--profile", "slurm", *config, timeout=900, log=log)
    try:
        ckpt = work / f"runs/grid/{run_id}/checkpoint.pt"
        job = wait_for(lambda: ckpt.exists() and job_of(slurm_cluster, work, "pretrain", run_id, "RUNNING"), 300,
                       "the first checkpoint of the running pretraining job", proc, log, every=0.1)
        run(["scontrol", "requeue", job["JobId"]], work)
        # Slurm holds a requeued job for ~2 minutes (BeginTime); release it now, as an admin could
        wait_for(lambda: job_of(slurm_cluster, work, "pretrain", run_id, "PENDING"), 60, "the requeued job", proc, log)
        run(["scontrol", "update", f"JobId={job['JobId']}", "StartTime=now"], work)
        finish(proc, log, 900)
        finish(reference, ref_log, 900)
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    pretrain_log = (work / f"runs/grid/{run_id}/pretrain.log").read_text()
    resumed = re.search(rf"resuming from checkpoint runs/grid/{run_id}/checkpoint.pt at epoch (\d+) \(of (\d+)\)",
                        pretrain_log)
    assert resumed and 1 <= int(resumed[1]) < int(resumed[2]), pretrain_log[-3000:]
    pretrain_jobs = [j for j in jobs_of(slurm_cluster, work) if j["Comment"] == f"rule_pretrain_wildcards_{run_id}"]
    assert len(pretrain_jobs) == 1 and pretrain_jobs[0]["Restarts"] == "1", pretrain_jobs  # the same job, requeued
    assert pretrain_jobs[0]["JobState"] == "COMPLETED" and "gpu" in pretrain_jobs[0]["TresPerJob"], pretrain_jobs
    assert metrics(work, run_id) == metrics(ref, run_id)
    hist = [pd.read_csv(w / f"runs/grid/{run_id}/history.csv").drop(columns=["seconds", "images_per_s"])
            for w in (work, ref)]
    pd.testing.assert_frame_equal(*hist)


def test_job_larger_than_the_node_fails_fast(slurm_cluster, tmp_path):  # noqa: F811
    work = copy_project(tmp_path / "p")
    run_id = smoke_ids("temperature")[0]
    too_big = tmp_path / "too_big.yaml"  # a preset whose jobs ask for more memory than the node has
    mem = slurm_cluster.mem_mb * 4
    too_big.write_text(f"resources:\n  smoke: {{threads: 1, gpu: 0, mem_mb: {mem}, runtime: 15}}\n")
    t0 = time.monotonic()
    proc = snakemake(work, f"runs/grid/{run_id}/metrics.json", "--profile", "slurm", "--configfile", too_big,
                     "--config", "preset=smoke", timeout=300, check=False)
    elapsed = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-4000:]
    assert "SLURM sbatch failed" in text and "Requested node configuration is not available" in text, text[-4000:]
    assert elapsed < 120, f"took {elapsed:.0f} s"
    # Slurm keeps a record of each rejected submission (the first and the retries); none ran
    rejected = jobs_of(slurm_cluster, work)
    attempts = 1 + yaml.safe_load((ROOT / "slurm/config.yaml").read_text())["retries"]
    assert len(rejected) == attempts and all(j["JobState"] == "FAILED" and j["Reason"] == "BadConstraints"
                                      and j["RunTime"] == "00:00:00" for j in rejected), rejected


def test_cancelled_job_is_retried(slurm_cluster, smoke_grid, tmp_path):  # noqa: F811
    run_id = smoke_ids("temperature")[0]
    work = copy_project(tmp_path / "p")
    log = tmp_path / "snakemake.log"
    proc = start_snakemake(work, f"runs/grid/{run_id}/metrics.json", "--profile", "slurm", "--config",
                           "preset=smoke", timeout=600, log=log)
    try:
        job = wait_for(lambda: job_of(slurm_cluster, work, "pretrain", run_id, "RUNNING"), 300,
                       "the pretraining job to run", proc, log)
        run(["scancel", job["JobId"]], work)
        text = finish(proc, log, 600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"SLURM-job '{job['JobId']}' failed, SLURM status is: 'CANCELLED'" in text, text[-4000:]
    pretrain_jobs = [j for j in jobs_of(slurm_cluster, work) if j["Comment"] == f"rule_pretrain_wildcards_{run_id}"]
    assert [j["JobState"] for j in pretrain_jobs] == ["CANCELLED", "COMPLETED"], pretrain_jobs
    assert metrics(work, run_id) == metrics(smoke_grid, run_id)


def test_killed_snakemake_continues_where_it_stopped(slurm_cluster, smoke_grid, tmp_path):  # noqa: F811
    study = "temperature"
    ids = set(smoke_ids(study))
    work = copy_project(tmp_path / "p")
    log = tmp_path / "first.log"
    target = f"results/smoke/tables/{study}.csv"
    proc = start_snakemake(work, target, "--profile", "slurm", "--config", "preset=smoke", timeout=900, log=log)
    try:
        # kill Snakemake (SIGKILL: no clean-up) once it has seen a run finish and another job runs
        wait_for(lambda: finished(log.read_text(), "evaluate")
                 and any(j["JobState"] == "RUNNING" for j in jobs_of(slurm_cluster, work)), 600,
                 "a finished run and a running job", proc, log)
        in_flight = {(j["Comment"].split("_")[1], j["Comment"].rsplit("_", 1)[1])
                     for j in jobs_of(slurm_cluster, work) if j["JobState"] in ("RUNNING", "PENDING")}
        os.kill(child_of(proc.pid), signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = log.read_text()  # what Snakemake saw complete before it died
    done = {rule: finished(first, rule) for rule in ("pretrain", "evaluate")}
    in_flight = {(rule, r) for rule, r in in_flight if r not in done[rule]}
    assert done["evaluate"] and in_flight and not (work / target).exists()
    stamps = {r: [(work / f"runs/grid/{r}/{f}").stat().st_mtime_ns for f in ("model.pt", "metrics.json")]
              for r in done["evaluate"]}
    # its jobs outlive it; cancel them (they may have written outputs Snakemake never saw complete)
    for j in jobs_of(slurm_cluster, work):
        if j["JobState"] in ("RUNNING", "PENDING"):
            run(["scancel", j["JobId"]], work, check=False)
    slurm_cluster.wait_drained()
    # a job can finish inside Slurm between the kill and the scancel: its job step (a Snakemake of its
    # own) then records the output complete, and a rerun rightly keeps it
    finished_alone = {(j["Comment"].split("_")[1], j["Comment"].rsplit("_", 1)[1]) for j in jobs_of(slurm_cluster, work)
                      if j["JobState"] == "COMPLETED"}
    partial = {(rule, r) for r in ids for rule, f in (("pretrain", "model.pt"), ("evaluate", "metrics.json"))
               if (work / f"runs/grid/{r}/{f}").exists() and r not in done[rule]}
    snakemake(work, "--unlock", "--config", "preset=smoke", timeout=120)
    again = snakemake(work, target, "--profile", "slurm", "--config", "preset=smoke", timeout=900)
    text = again.stdout + again.stderr
    redone = {rule: set(started(text, rule).values()) for rule in ("pretrain", "evaluate")}
    # no finished run is run again, and its files are untouched
    assert not redone["pretrain"] & done["pretrain"] and not redone["evaluate"] & done["evaluate"], redone
    for r in done["evaluate"]:
        assert [(work / f"runs/grid/{r}/{f}").stat().st_mtime_ns for f in ("model.pt", "metrics.json")] == stamps[r]
    # what was running, or was written but not seen complete, is redone: no partial output is taken as done
    for rule, r in in_flight | partial:
        assert r in redone[rule] or (rule, r) in finished_alone, (rule, r, text[-4000:])
    for rule in ("pretrain", "evaluate"):
        kept = {r for rl, r in finished_alone if rl == rule}
        assert ids - done[rule] - kept <= redone[rule] <= ids - done[rule], (rule, redone, kept)
    for r in ids:
        assert metrics(work, r) == metrics(smoke_grid, r), r
    assert (work / target).exists()
    print(f"\nkilled Snakemake: {len(done['evaluate'])} runs finished before, in flight {sorted(in_flight)}, "
          f"outputs written but not seen complete {sorted(partial)}, finished inside Slurm after the kill "
          f"{sorted(finished_alone - {(rl, r) for rl in done for r in done[rl]})}")


# ---- the whole smoke grid ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_grid(slurm_cluster, tmp_path_factory):  # noqa: F811
    """The project after `snakemake --profile slurm --config preset=smoke` on the test cluster."""
    work = copy_project(tmp_path_factory.mktemp("slurm-grid") / "project")
    t0 = time.monotonic()
    out = snakemake(work, "--profile", "slurm", *GRID_GROUPS, "--config", "preset=smoke", timeout=2400)
    return work, time.monotonic() - t0, out.stdout + out.stderr


def test_smoke_grid_through_slurm_equals_local(slurm_grid, slurm_cluster, smoke_grid):  # noqa: F811
    work, wall, log = slurm_grid
    res = work / "results/smoke"
    for study in studies.names():
        for f in (f"tables/{study}.csv", f"tables/{study}.md", f"tables/{study}_runs.csv", f"figures/{study}.png",
                  f"figures/{study}.pdf"):
            assert (res / f).stat().st_size > 0, f
    assert "crop + color is the best pair" in (res / "README.md").read_text()

    # every run went through sbatch as one GPU job (1 GPU, 1 CPU per GPU, the preset's memory)
    run_ids = set(studies.unique(studies.expand("smoke")))
    jobs = jobs_of(slurm_cluster, work)
    assert len(jobs) == len(run_ids), f"{len(jobs)} Slurm jobs for {len(run_ids)} runs"
    for j in jobs:
        assert j["JobState"] == "COMPLETED", j
        assert j["TresPerJob"] == "gres:gpu:1" and j["CpusPerTres"] == "gres:gpu:1", j
        assert j["Comment"] == "rule_run_evaluate_pretrain" and "mem=2000M" in j["TRES"], j
    assert len(re.findall(r"has been submitted with SLURM jobid", log)) == len(run_ids)

    # the same numbers as the local `snakemake -c2` grid, run by run
    local = {d.name for d in (smoke_grid / "runs/grid").iterdir()}
    assert local == run_ids == {d.name for d in (work / "runs/grid").iterdir()}
    differ = {r: (metrics(smoke_grid, r), metrics(work, r)) for r in run_ids
              if metrics(smoke_grid, r) != metrics(work, r)}
    assert not differ, f"Slurm and local metrics differ (local, slurm): {differ}"
    for study in studies.names():  # the tables too, but for the timings
        a, b = (pd.read_csv(w / f"results/smoke/tables/{study}.csv").filter(regex="^(?!.*seconds)")
                for w in (smoke_grid, work))
        pd.testing.assert_frame_equal(a, b)

    # cost of going through Slurm: time in jobs beyond the rules' own (benchmark) time
    job_s = sum(seconds(j["RunTime"]) for j in jobs)
    rule_s = sum(float(pd.read_csv(work / f"runs/grid/{r}/{stage}.bench.tsv", sep="\t")["s"].iloc[0])
                 for r in run_ids for stage in ("pretrain", "evaluate"))
    print(f"\nslurm smoke grid: wall {wall:.0f} s, {len(jobs)} Slurm jobs on {slurm_cluster.cpus} CPUs; time in "
          f"jobs {job_s} s, of which rules {rule_s:.0f} s: {(job_s - rule_s) / len(jobs):.1f} s overhead per job")
