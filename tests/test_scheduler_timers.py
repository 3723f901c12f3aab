"""scheduler_timers: the real Snakemake scheduler keeps one re-evaluation timer, not one chain per job."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from simclr_ablations import scheduler_timers

SNAKEFILE = """
import threading, time
from simclr_ablations import scheduler_timers
if {patch}:
    assert scheduler_timers.coalesce()
seen = [0, 0]  # most Timer threads alive at once in this (the scheduler's) process, and non-daemon ones
def sample():
    while True:
        timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
        seen[:] = max(seen[0], len(timers)), max(seen[1], sum(not t.daemon for t in timers))
        time.sleep(0.05)
if workflow.is_main_process:
    threading.Thread(target=sample, daemon=True).start()
onsuccess:
    open("timers.txt", "w").write(f"{{seen[0]}} {{seen[1]}}")
rule all:
    input: expand("out/{{i}}.txt", i=range(30))
rule one:
    output: "out/{{i}}.txt"
    shell: "sleep 0.3; touch {{output}}"
"""


@pytest.mark.parametrize("patch", [False, True])
def test_real_snakemake_timer_count(tmp_path, patch):
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(patch=patch)))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "snakemake", "-c1", "-q"], cwd=tmp_path, check=True,
                   capture_output=True)
    took = time.time() - t0
    timers, non_daemon = map(int, (tmp_path / "timers.txt").read_text().split())
    if patch:
        assert timers <= 1 and non_daemon == 0
    else:  # what the patch is for: the unpatched scheduler has gathered a chain per finished job
        assert timers >= 5 and non_daemon == timers
    assert took < 60


def test_one_pending_daemon_timer_releases_once():
    class Fake:
        def __init__(self):
            self._open_jobs = threading.Semaphore(0)

        def _schedule_reevalutation(self, delay):
            raise AssertionError("not patched")

    assert scheduler_timers.coalesce(Fake) and scheduler_timers.coalesce(Fake)  # idempotent
    s = Fake()
    before = threading.active_count()
    for _ in range(50):
        s._schedule_reevalutation(0.2)
    assert threading.active_count() - before == 1
    assert all(t.daemon for t in threading.enumerate() if isinstance(t, threading.Timer))
    assert s._open_jobs.acquire(timeout=2)
    assert not s._open_jobs.acquire(timeout=0.5)  # 50 requests, one release
    s._schedule_reevalutation(0.05)  # fired: the next request arms a new timer
    assert s._open_jobs.acquire(timeout=2)


def test_unknown_signature_is_left_alone():
    class Other:
        def _schedule_reevalutation(self, delay, extra):
            pass

    class Absent:
        pass

    assert not scheduler_timers.coalesce(Other) and not scheduler_timers.coalesce(Absent)
    assert Other._schedule_reevalutation.__name__ == "_schedule_reevalutation"


def test_installed_snakemake_is_patchable():
    assert scheduler_timers.coalesce()
