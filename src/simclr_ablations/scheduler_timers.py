"""One pending re-evaluation timer in Snakemake's local scheduler, not one per finished job.

Snakemake 9's job scheduler (scheduling/job_scheduler.py) ends every scheduling pass that leaves
ready jobs waiting by arming `threading.Timer(timespan, release)` for its job-rate limiter (default
100 jobs per 1 s), and the timer's release runs another pass, which arms another timer. Every
finished job also releases a pass, and so starts one more such chain: after N finished jobs of a
grid that keeps jobs waiting, about N passes a second re-resolve the params and resources of every
ready job. Measured on the `cpu` grid (2 cores, 296 jobs): 133 timer threads alive after 150 jobs,
and the main snakemake process had used 12 CPU-minutes by minute 57 of the run, on a machine whose
two cores the training jobs need. The timers are also non-daemon threads, so a longer timespan
(the documented knob) makes every snakemake process wait that long at exit.

`coalesce()` keeps the scheduler's behaviour (a pass at most `timespan` after a pass that left jobs
waiting, so the rate limiter still admits them) with at most one pending timer, a daemon one. It
patches the method only if it is there with the expected signature, so a Snakemake that renames it
runs unpatched (and says so in the log) rather than failing.
"""

from __future__ import annotations

import inspect
import threading

PATCHED = "_simclr_ablations_coalesced"


def _schedule_once(self, delay) -> None:
    with _LOCK:
        if getattr(self, "_simclr_reevaluation_pending", False):
            return
        self._simclr_reevaluation_pending = True

    def fire():
        with _LOCK:
            self._simclr_reevaluation_pending = False
        self._open_jobs.release()

    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()


_LOCK = threading.Lock()
setattr(_schedule_once, PATCHED, True)


def coalesce(scheduler_class=None) -> bool:
    """Patch `JobScheduler._schedule_reevalutation` (sic); True if patched now or before."""
    if scheduler_class is None:
        try:
            from snakemake.scheduling.job_scheduler import JobScheduler as scheduler_class
        except ImportError:
            return False
    method = getattr(scheduler_class, "_schedule_reevalutation", None)
    if method is None:
        return False
    if getattr(method, PATCHED, False):
        return True
    if list(inspect.signature(method).parameters) != ["self", "delay"]:
        return False
    scheduler_class._schedule_reevalutation = _schedule_once
    return True
