"""`snakemake --profile slurm` on a real one-node Slurm cluster with fake GPUs (tests/slurm_cluster.py):
preemption and failures on small targets, then a reduced study set (SLURM_STUDIES) of the smoke grid.

The GPU stages ask for `--gpus=1` (slurm/config.yaml); the node schedules them on its fake GPUs and
the training code, which finds no CUDA driver, runs on the CPU with the preset's thread count, as
`snakemake -c2` does locally, so both give the same numbers. Snakemake always runs under
`timeout -k`; the cluster's daemons are stopped by PID at the end of the session.

Run folders are found by glob (runs/grid/**/metrics.json) or through `pretrain_dir` / `metrics_target`,
so that the tests hold for today's layout (runs/grid/<run>/) and for the split one of issue 11
(runs/grid/<pretrain_id>/eval/<eval_id>/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_cluster import Cluster, slurm_cluster  # noqa: F401  (the fixture)

from simclr_ablations import params as P
from simclr_ablations import studies

from conftest import ROOT, copy_project, run

pytestmark = pytest.mark.e2e

# The grid through Slurm: two cheap studies that share two runs (so a run asked for by two studies is
# one Slurm job). The whole smoke grid runs locally in tests/test_workflow.py; here it would only repeat.
SLURM_STUDIES = ["temperature", "losses"]
# CI override for the grid on a 2-core node: one Slurm job per run (pretrain + evaluate grouped), which
# halves the number of Snakemake start-ups inside jobs; the fault tests use the profile as it is.
GRID_GROUPS = ["--groups", "pretrain=run", "evaluate=run"]
# A pretraining job that lives long enough to be requeued after its first checkpoint: the `cpu`
# preset (8 epochs of 3000 images) on 16-pixel images, about 3 s an epoch on one core.
LONG = ("cpu", "16")


def studies_arg(names: list[str]) -> str:
    return f"studies=[{','.join(names)}]"


# ---- where a run's files are (today's layout, or issue 11's split ids when params provides them) -----


def pretrain_dir(r: studies.Run) -> str:
    """The folder of a run's pretraining: runs/grid/<pretraining id>."""
    pid = P.pretrain_id(r.params) if hasattr(P, "pretrain_id") else r.id
    return f"runs/grid/{pid}"


def metrics_target(r: studies.Run) -> str:
    """The metrics.json of a run's evaluation."""
    if hasattr(P, "eval_id"):
        return f"{pretrain_dir(r)}/eval/{P.eval_id(r.params)}/metrics.json"
    return f"{pretrain_dir(r)}/metrics.json"


def metrics_of(work: Path) -> dict[str, tuple[float, float]]:
    """{path of each metrics.json under runs/grid, relative to work: (linear top-1, kNN top-1)}."""
    out = {}
    for f in sorted((work / "runs/grid").glob("**/metrics.json")):
        m = json.loads(f.read_text())
        out[str(f.relative_to(work))] = (m["linear_top1"], m["knn_top1"])
    return out


# ---- processes ---------------------------------------------------------------------------------


def env(path_first: Path | None = None) -> dict:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return dict(os.environ, PATH=f"{path_first}:{path}" if path_first else path)


def snakemake(work: Path, *args, timeout: int, check=True) -> subprocess.CompletedProcess:
    return run(["timeout", "-k", "20", timeout, "snakemake", *args], work, timeout=timeout + 60, check=check)


def start_snakemake(work: Path, *args, timeout: int, log: Path, path_first: Path | None = None) -> subprocess.Popen:
    """Snakemake in the background (in its own process group, led by `timeout`); `path_first`: a
    folder of wrapper commands put first on its PATH (and so on its Slurm jobs', which export it)."""
    with open(log, "w") as out:
        return subprocess.Popen(["timeout", "-k", "20", str(timeout), "snakemake", *map(str, args)], cwd=work,
                                stdout=out, stderr=subprocess.STDOUT, env=env(path_first), start_new_session=True)


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


# ---- Slurm jobs and Snakemake logs -------------------------------------------------------------


def jobs_of(cluster: Cluster, work: Path) -> list[dict]:
    return [j for j in cluster.jobs() if j.get("WorkDir") == str(work)]


def rule_of(job: dict) -> str:
    """The rule (or group) a Slurm job was submitted for, from the plugin's comment rule_<name>[_wildcards_...]."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def job_of(cluster: Cluster, work: Path, rule: str, folder: str, state: str | None = None) -> dict | None:
    """The Slurm job of `rule` whose wildcards name the run folder `folder` (runs/grid/<id>)."""
    wildcard = folder.rsplit("/", 1)[1]
    for j in jobs_of(cluster, work):
        if (rule_of(j) == rule and wildcard in j["Comment"].split("_wildcards_", 1)[-1]
                and (state is None or j["JobState"] == state)):
            return j
    return None


def seconds(t: str) -> int:
    days, _, hms = t.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def log_jobs(log_text: str) -> dict[str, dict]:
    """{Snakemake job id: {rule, wildcards, output, ...}} of every job block a Snakemake log (or dry run) shows."""
    out = {}
    for m in re.finditer(r"\n(?:local)?rule (\w+):\n((?:    .*\n)+)", log_text):
        fields = dict(re.findall(r"    (\w+): (.*)\n", m[2]))
        if "jobid" in fields:
            out[fields["jobid"]] = dict(fields, rule=m[1])
    return out


def key(job: dict) -> tuple[str, str]:
    """A Snakemake job as (rule, wildcards): the same in every log, whatever the run-folder layout."""
    return job["rule"], job.get("wildcards", "")


def grid_keys(log_text: str) -> set[tuple[str, str]]:
    """The pretrain and evaluate jobs a Snakemake log (or dry run) shows started."""
    return {key(j) for j in log_jobs(log_text).values() if j["rule"] in ("pretrain", "evaluate")}


def slurm_ids(log_text: str) -> dict[str, str]:
    """{Slurm job id: Snakemake job id} of the jobs a Snakemake log shows it submitted."""
    return {s: j for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log_text)}


def seen_finished(log_text: str) -> set[str]:
    """Snakemake job ids that a Snakemake log shows it saw complete."""
    return set(re.findall(r"Finished jobid: (\d+) ", log_text))


# ---- preemption and failures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory) -> Path:
    """Local `snakemake -c2` results to compare with: the session's whole smoke grid where other tests
    need it anyway (the full suite), else only SLURM_STUDIES (every run the tests here compare)."""
    if any("smoke_grid" in getattr(item, "fixturenames", ()) and getattr(item, "module", None) is not request.module
           for item in request.session.items):
        return request.getfixturevalue("smoke_grid")
    work = copy_project(tmp_path_factory.mktemp("reference") / "project")
    run(["snakemake", "-c2", "--config", "preset=smoke", studies_arg(SLURM_STUDIES)], work)
    return work


def test_requeued_pretraining_resumes_from_its_checkpoint(slurm_cluster, tmp_path):  # noqa: F811
    preset, size = LONG
    r = studies.expand(preset, "temperature", (f"data.image_size={size}",))[0]
    folder, target = pretrain_dir(r), metrics_target(r)
    config = ["--config", f"preset={preset}", f"image_size={size}", studies_arg(["temperature"])]
    work = copy_project(tmp_path / "slurm")
    ref = copy_project(tmp_path / "local")
    log, ref_log = tmp_path / "slurm.log", tmp_path / "local.log"
    # the uninterrupted reference runs locally, on the other core, meanwhile
    reference = start_snakemake(ref, target, "-c1", *config, timeout=900, log=ref_log)
    proc = start_snakemake(work, target, "--profile", "slurm", *config, timeout=900, log=log)
    try:
        ckpt = work / folder / "checkpoint.pt"
        job = wait_for(lambda: ckpt.exists() and job_of(slurm_cluster, work, "pretrain", folder, "RUNNING"), 300,
                       "the first checkpoint of the running pretraining job", proc, log, every=0.1)
        run(["scontrol", "requeue", job["JobId"]], work)
        # Slurm holds a requeued job for ~2 minutes (BeginTime); release it now, as an admin could
        wait_for(lambda: job_of(slurm_cluster, work, "pretrain", folder, "PENDING"), 60, "the requeued job", proc, log)
        run(["scontrol", "update", f"JobId={job['JobId']}", "StartTime=now"], work)
        finish(proc, log, 900)
        finish(reference, ref_log, 900)
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    pretrain_log = (work / folder / "pretrain.log").read_text()
    resumed = re.search(rf"resuming from checkpoint {folder}/checkpoint.pt at epoch (\d+) \(of (\d+)\)",
                        pretrain_log)
    assert resumed and 1 <= int(resumed[1]) < int(resumed[2]), pretrain_log[-3000:]
    pretrain_jobs = [j for j in jobs_of(slurm_cluster, work) if rule_of(j) == "pretrain"]
    # the same job, requeued (seen once under load: Snakemake read FAILED after the requeue and submitted a
    # second job; the daemons' logs and Snakemake's are printed so that the next occurrence says why)
    assert len(pretrain_jobs) == 1 and pretrain_jobs[0]["Restarts"] == "1", \
        f"{pretrain_jobs}\n{slurm_cluster.logs()}\n==> snakemake <==\n{log.read_text()[-4000:]}"
    assert pretrain_jobs[0]["JobState"] == "COMPLETED" and "gpu" in pretrain_jobs[0]["TresPerJob"], pretrain_jobs
    assert metrics_of(work) == metrics_of(ref) and (work / target).exists()
    hist = [pd.read_csv(w / folder / "history.csv").drop(columns=["seconds", "images_per_s"]) for w in (work, ref)]
    pd.testing.assert_frame_equal(*hist)


def test_job_larger_than_the_node_fails_fast(slurm_cluster, tmp_path):  # noqa: F811
    work = copy_project(tmp_path / "p")
    target = metrics_target(studies.expand("smoke", "temperature")[0])
    too_big = tmp_path / "too_big.yaml"  # a preset whose jobs ask for more memory than the node has
    mem = slurm_cluster.mem_mb * 4
    too_big.write_text(f"resources:\n  smoke: {{threads: 1, gpu: 0, mem_mb: {mem}, runtime: 15}}\n")
    t0 = time.monotonic()
    proc = snakemake(work, target, "--profile", "slurm", "--configfile", too_big, "--config", "preset=smoke",
                     studies_arg(["temperature"]), timeout=300, check=False)
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


def test_cancelled_job_is_retried(slurm_cluster, reference, tmp_path):  # noqa: F811
    r = studies.expand("smoke", "temperature")[0]
    folder, target = pretrain_dir(r), metrics_target(r)
    work = copy_project(tmp_path / "p")
    log = tmp_path / "snakemake.log"
    proc = start_snakemake(work, target, "--profile", "slurm", "--config", "preset=smoke",
                           studies_arg(["temperature"]), timeout=600, log=log)
    try:
        job = wait_for(lambda: job_of(slurm_cluster, work, "pretrain", folder, "RUNNING"), 300,
                       "the pretraining job to run", proc, log)
        run(["scancel", job["JobId"]], work)
        text = finish(proc, log, 600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"SLURM-job '{job['JobId']}' failed, SLURM status is: 'CANCELLED'" in text, text[-4000:]
    pretrain_jobs = [j for j in jobs_of(slurm_cluster, work) if rule_of(j) == "pretrain"]
    assert [j["JobState"] for j in pretrain_jobs] == ["CANCELLED", "COMPLETED"], pretrain_jobs
    assert metrics_of(work)[target] == metrics_of(reference)[target]


def gated_commands(folder: Path, gates: Path) -> Path:
    """Wrappers for the first run of the killed-Snakemake test, in `folder`: `sbatch` submits every job
    held (the test releases them one by one: no job starts, nor holds a CPU, unless the test says so);
    `simclr-ablations` runs the real command, then, in a Slurm job with a file gates/<job id>.hold, says
    so in gates/<job id>.written and waits until it is cancelled (its outputs written, the job not done)."""
    folder.mkdir()
    gates.mkdir()
    scripts = {
        "sbatch": f'#!/bin/sh\nexec {shutil.which("sbatch")} --hold "$@"\n',
        "simclr-ablations": f"""#!/bin/sh
"{Path(sys.executable).parent / 'simclr-ablations'}" "$@"
rc=$?
gate="{gates}/$SLURM_JOB_ID"
if [ -n "$SLURM_JOB_ID" ] && [ -e "$gate.hold" ]; then
  : > "$gate.written"
  while :; do sleep 1; done
fi
exit $rc
""",
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def crash(job_id: str) -> None:
    """Kill every process of a running Slurm job at once, as a crash of its node would: all are stopped
    (SIGSTOP) before any is killed, so none sees another die and cleans up."""
    mark = f"SLURM_JOB_ID={job_id}\0".encode()
    pids = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (p / "environ").read_bytes():
                pids.append(int(p.name))
        except OSError:
            continue
    assert pids, f"no process of Slurm job {job_id}"
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def test_killed_snakemake_continues_where_it_stopped(slurm_cluster, reference, tmp_path):  # noqa: F811
    """Snakemake killed (SIGKILL) in a state the test sets up job by job, then rerun, must redo exactly what
    was not finished, leave what was untouched, and finish with the local numbers. At the kill:
    run A: pretrain and evaluate finished, seen so by Snakemake      -> neither is redone, files untouched
    run B: pretrain finished and seen; its evaluate job wrote metrics.json, then its node crashed -> redone
    run C: its pretrain job wrote model.pt, then its node crashed    -> redone (and its evaluate run)
    the other runs: pretrain jobs submitted but held, never started  -> run."""
    study = "temperature"
    work = copy_project(tmp_path / "p")
    log = tmp_path / "first.log"
    target = f"results/smoke/tables/{study}.csv"
    config = ["--config", "preset=smoke", studies_arg([study])]
    planned = grid_keys(snakemake(work, "-n", target, *config, timeout=300).stdout)
    gates = tmp_path / "gates"
    wrappers = gated_commands(tmp_path / "bin", gates)
    proc = start_snakemake(work, target, "--profile", "slurm", *config, timeout=900, log=log, path_first=wrappers)

    def held(rule: str, exclude=()) -> list[str]:
        return sorted((j["JobId"] for j in jobs_of(slurm_cluster, work) if rule_of(j) == rule
                       and j["JobState"] == "PENDING" and j["Reason"] == "JobHeldUser" and j["JobId"] not in exclude),
                      key=int)

    def release(job_id: str) -> None:
        run(["scontrol", "release", job_id], work)

    def seen(*job_ids: str) -> bool:
        text = log.read_text()
        ids = slurm_ids(text)
        return all(ids.get(j) in seen_finished(text) for j in job_ids)

    n_pretrain, n_evaluate = (sum(rule == r for rule, _ in planned) for r in ("pretrain", "evaluate"))
    try:
        pretrains = wait_for(lambda: len(held("pretrain")) == n_pretrain and held("pretrain"), 300,
                             "every pretraining job submitted (held)", proc, log)
        a, b, c = pretrains[:3]
        release(a)
        [eval_a] = wait_for(lambda: held("evaluate"), 300, "the evaluate job of run A", proc, log)
        release(b)
        [eval_b] = wait_for(lambda: held("evaluate", exclude={eval_a}), 300, "the evaluate job of run B", proc, log)
        release(eval_a)
        wait_for(lambda: seen(a, b, eval_a), 300, "Snakemake to see run A and the pretraining of B complete", proc, log)
        for j in (eval_b, c):
            (gates / f"{j}.hold").touch()
            release(j)
        wait_for(lambda: all((gates / f"{j}.written").exists() for j in (eval_b, c)), 300,
                 "the evaluate job of B and the pretrain job of C to write their outputs", proc, log)
        os.kill(child_of(proc.pid), signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = log.read_text()
    snake = log_jobs(first)
    of = {s: snake[j] for s, j in slurm_ids(first).items()}
    def outputs(j):  # Snakemake logs a job's outputs as one comma-separated line
        return [work / f.strip() for f in of[j]["output"].split(",")]

    written = [f for j in (eval_b, c) for f in outputs(j)]
    # its jobs outlive it. The gated ones die as on a node crash: every process of the job stopped, then
    # killed, so that the Snakemake inside cannot clean up; the held ones never started: cancel them
    for j in (eval_b, c):
        crash(j)
    for j in jobs_of(slurm_cluster, work):
        if j["JobState"] in ("RUNNING", "PENDING"):
            run(["scancel", j["JobId"]], work, check=False)
    slurm_cluster.wait_drained()
    assert all(f.exists() for f in written), written  # complete files that no Snakemake saw finished
    states = {j["JobId"]: j["JobState"] for j in jobs_of(slurm_cluster, work)}
    assert {j for j, s in states.items() if s == "COMPLETED"} == {a, b, eval_a}, states
    assert set(states) - {a, b, eval_a} == {eval_b, *pretrains[1:]} - {b}, states  # nothing else was submitted
    done = {key(of[j]) for j in (a, b, eval_a)}
    assert {key(j) for i, j in snake.items() if i in seen_finished(first) and j["rule"] != "prepare"} == done
    assert not (work / target).exists()
    # the outputs of the finished jobs must stay untouched
    stamps = {f: f.stat().st_mtime_ns for j in (a, b, eval_a) for f in outputs(j)}

    snakemake(work, "--unlock", *config, timeout=120)
    again = snakemake(work, target, "--profile", "slurm", *config, timeout=900)
    redone = grid_keys(again.stdout + again.stderr)
    # exactly what was not finished is redone, the written-but-unfinished outputs included
    assert redone == planned - done, (sorted(redone), sorted(planned - done))
    assert {key(of[eval_b]), key(of[c])} <= redone
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
    assert all(j["JobState"] == "COMPLETED" for j in jobs_of(slurm_cluster, work) if j["JobId"] not in states)
    ours, local = metrics_of(work), metrics_of(reference)
    assert len(ours) == n_evaluate and ours == {f: local[f] for f in ours}
    assert (work / target).exists()


# ---- a reduced study set of the smoke grid ------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_grid(slurm_cluster, tmp_path_factory):  # noqa: F811
    """The project after `snakemake --profile slurm --config preset=smoke studies=[SLURM_STUDIES]`."""
    work = copy_project(tmp_path_factory.mktemp("slurm-grid") / "project")
    t0 = time.monotonic()
    out = snakemake(work, "--profile", "slurm", *GRID_GROUPS, "--config", "preset=smoke", studies_arg(SLURM_STUDIES),
                    timeout=2400)
    return work, time.monotonic() - t0, out.stdout + out.stderr


def test_smoke_studies_through_slurm_equal_local(slurm_grid, slurm_cluster, reference):  # noqa: F811
    work, wall, log = slurm_grid
    res = work / "results/smoke"
    for study in SLURM_STUDIES:
        for f in (f"tables/{study}.csv", f"tables/{study}.md", f"tables/{study}_runs.csv", f"figures/{study}.png",
                  f"figures/{study}.pdf"):
            assert (res / f).stat().st_size > 0, f
    findings = (res / "README.md").read_text()
    assert "NT-Xent beats NT-Logistic" in findings and "l2 normalisation with a moderate temperature" in findings

    # every pretraining went through sbatch as one GPU job (1 GPU, 1 CPU per GPU, the preset's memory),
    # a run that both studies ask for once
    runs = studies.unique([r for s in SLURM_STUDIES for r in studies.expand("smoke", s)])
    assert len(runs) < sum(len(studies.expand("smoke", s)) for s in SLURM_STUDIES)  # the studies share runs
    pretrainings = {pretrain_dir(r) for r in runs.values()}
    jobs = jobs_of(slurm_cluster, work)
    assert len(jobs) == len(pretrainings), f"{len(jobs)} Slurm jobs for {len(pretrainings)} pretrainings"
    for j in jobs:
        assert j["JobState"] == "COMPLETED", j
        assert j["TresPerJob"] == "gres:gpu:1" and j["CpusPerTres"] == "gres:gpu:1", j
        assert j["Comment"] == "rule_run_evaluate_pretrain" and "mem=2000M" in j["TRES"], j
    assert len(re.findall(r"has been submitted with SLURM jobid", log)) == len(pretrainings)

    # the same numbers as the local `snakemake -c2` grid, run by run
    ours, local = metrics_of(work), metrics_of(reference)
    assert set(ours) == {metrics_target(r) for r in runs.values()}
    differ = {f: (local.get(f), m) for f, m in ours.items() if local.get(f) != m}
    assert not differ, f"Slurm and local metrics differ (local, slurm): {differ}"
    for study in SLURM_STUDIES:  # the tables too, but for the timings
        a, b = (pd.read_csv(w / f"results/smoke/tables/{study}.csv").filter(regex="^(?!.*seconds)")
                for w in (reference, work))
        pd.testing.assert_frame_equal(a, b)

    # cost of going through Slurm: time in jobs beyond the rules' own (benchmark) time
    job_s = sum(seconds(j["RunTime"]) for j in jobs)
    rule_s = sum(float(pd.read_csv(f, sep="\t")["s"].iloc[0]) for f in (work / "runs/grid").glob("**/*.bench.tsv"))
    print(f"\nslurm smoke grid ({', '.join(SLURM_STUDIES)}): wall {wall:.0f} s, {len(jobs)} Slurm jobs on "
          f"{slurm_cluster.cpus} CPUs; time in jobs {job_s} s, of which rules {rule_s:.0f} s: "
          f"{(job_s - rule_s) / len(jobs):.1f} s overhead per job")


def test_two_gpu_pretraining_is_one_torchrun_in_one_task(slurm_cluster, tmp_path):  # noqa: F811
    """`--config gpus=2`: one Slurm job asking for 2 (fake) GPUs runs one torchrun of 2 gloo processes on
    the CPU. Its log shows both ranks; its weights equal, bit for bit, those of the same command run by a
    local torchrun, and its losses those of 1 process x the whole batch within 1e-2 (float32: the smoke
    network turns rounding into ~1e-3 loss differences after a few steps; tests/test_ddp.py checks the
    2-versus-1 equivalence itself to 1e-5 in float64). The run is the projection-head study's "None"
    cell: the temperature study's first cell (tau = 0.05) with the official output BN is chaotic in
    float32 on the smoke network, where one process with 1 or 2 threads (another summation order)
    already ends epoch 2 at loss 18.47 or 17.62 (without the output BN: 5.534 both); 2 processes
    against 1 differed by 0.04 after epoch 1 and 1.9 after epoch 2."""
    import torch

    from simclr_ablations import pretrain

    r = next(r for r in studies.expand("smoke", "projection_head", ("runtime.gpus=2",))
             if r.params["head"]["type"] == "none")
    folder = pretrain_dir(r)
    work = copy_project(tmp_path / "slurm")
    snakemake(work, f"{folder}/model.pt", "--profile", "slurm", "--config", "preset=smoke", "gpus=2",
              studies_arg(["projection_head"]), timeout=900)
    log = (work / folder / "pretrain.log").read_text()
    assert "rank 0 of 2 (local rank 0, backend gloo)" in log and "rank 1 of 2 (local rank 1, backend gloo)" in log, log
    jobs = [j for j in jobs_of(slurm_cluster, work) if rule_of(j) == "pretrain"]
    assert len(jobs) == 1 and jobs[0]["TresPerJob"] == "gres:gpu:2" and jobs[0]["JobState"] == "COMPLETED", jobs
    data_dir = next((work / "data/grid").iterdir())
    local = tmp_path / "local"
    run(["torchrun", "--standalone", "--nproc_per_node=2", "-m", "simclr_ablations.cli", "pretrain",
         *r.cli_args("smoke").split(), "--data", data_dir, "--out", local], tmp_path)
    w_slurm, w_local = (torch.load(d / "model.pt", weights_only=True)["model"] for d in (work / folder, local))
    assert all(torch.equal(w_slurm[k], w_local[k]) for k in w_slurm)
    one = P.load("smoke", settings=[s for s in r.settings if not s.startswith("runtime.gpus")])
    pretrain.train(one, data_dir, tmp_path / "one", log=lambda *_: None)
    losses = [pd.read_csv(d / "history.csv")["loss"] for d in (work / folder, tmp_path / "one")]
    assert (losses[0] - losses[1]).abs().max() <= 1e-2, losses
