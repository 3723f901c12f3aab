"""A real one-node Slurm cluster on this machine, for the end-to-end tests of `--profile slurm`.

munged, slurmctld and slurmd run in the foreground as children of the test process, on loopback,
with all their state under one temporary folder; the node has fake GPUs (gres.conf `File=` entries
are character devices with the numbers of /dev/null), so that `--gpus` requests are scheduled as on
a GPU cluster while the training code, which finds no CUDA driver, runs on the CPU. The packages
are installed with apt-get when missing (CI starts from a fresh machine). Whatever happens, every
job is cancelled and every daemon started here is stopped by its PID. One test session at a time
runs the cluster (a lock file): the ports and /etc/slurm are the machine's.

Pitfalls this handles (found on Debian 12, Slurm 22.05, snakemake-executor-plugin-slurm 2.x):
- slurm.conf must be at the default path /etc/slurm/slurm.conf: the job step strips SLURM_CONF
  (and most SLURM_* variables) before its inner `srun`; it is a symlink made here and removed after.
- the Debian packages do not start services (policy-rc.d): the daemons are started by hand.
- there is no slurmdbd: `sacct` does not work, status queries use `squeue`, which sees finished
  jobs for MinJobAge seconds (set long, so that `scontrol show job` shows every job of a test).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = {"slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd", "munged": "/usr/sbin/munged"}
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
ETC = Path("/etc/slurm")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
PIDS = Path("/run/simclr-ablations-test-slurm")  # PIDs of the daemons of the running test cluster
LOCK = Path("/run/simclr-ablations-test-slurm.lock")  # held by the session that runs the test cluster
FAKE_GPUS = 4


def _sh(cmd, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ensure_installed() -> None:
    """Install the Slurm and munge packages with apt-get if any tool is missing; fail (never skip)
    when that cannot be done here."""
    missing = [d for d in DAEMONS.values() if not Path(d).exists()] + [c for c in CLIENTS if not shutil.which(c)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} missing) and cannot be installed here: the Slurm "
                    f"tests need root and apt-get to run `apt-get install {' '.join(PACKAGES)}` (or install them).")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _sh(["apt-get", "update", "-q"], timeout=600, env=env)
        _sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], timeout=900, env=env)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"could not install Slurm with apt-get: {e}")


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class Cluster:
    """The running cluster: its folder, node, limits and a few queries for the tests."""

    def __init__(self, base: Path):
        self.base = base
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.mem_mb = max(1000, int(_mem_mb() * 0.8))
        self.gpus = FAKE_GPUS
        self.procs: dict[str, subprocess.Popen] = {}
        self.links: list[Path] = []

    # ---- queries -----------------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (finished ones for MinJobAge), as `scontrol show job` fields."""
        out = _sh(["scontrol", "show", "job", "-o"], check=False).stdout
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()
                if line.startswith("JobId=")]

    def active(self) -> list[dict]:
        return [j for j in self.jobs() if j["JobState"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                                              "REQUEUED", "SUSPENDED", "RESIZING")]

    def wait_drained(self, timeout=120) -> None:
        """Wait until no job is pending or running."""
        end = time.monotonic() + timeout
        while self.active():
            if time.monotonic() > end:
                raise TimeoutError(f"jobs still active after {timeout}s: {self.active()}")
            time.sleep(0.5)

    def cancel_all(self) -> None:
        _sh(["scancel", "--user", os.environ.get("USER") or "root"], check=False)
        with contextlib.suppress(TimeoutError):
            self.wait_drained(60)

    def logs(self) -> str:
        return "\n".join(f"==> {p.name} <==\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.base / "log").glob("*")) if p.is_file())

    # ---- lifecycle ---------------------------------------------------------------------------
    def _link(self, target: Path, link: Path) -> None:
        if link.is_symlink():  # left by an earlier test session that died before its teardown
            link.unlink()
        elif link.exists():
            raise RuntimeError(f"{link} exists and is not ours: refusing to replace the configuration of a real "
                               f"Slurm installation (run the Slurm tests on a machine without one)")
        link.symlink_to(target)
        self.links.append(link)

    def _write_conf(self) -> None:
        b = self.base
        for d in ("etc", "state", "spool", "log", "run"):
            (b / d).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = b / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
        (b / "etc/gres.conf").write_text(
            f"NodeName={self.node} Name=gpu Type=fake File={b}/fakegpu[0-{self.gpus - 1}]\n")
        (b / "etc/slurm.conf").write_text(f"""\
ClusterName=ci
SlurmctldHost={self.node}(127.0.0.1)
GresTypes=gpu
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge=3600
KillWait=5
JobRequeue=1
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={b}/log/jobcomp.txt
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:fake:{self.gpus} \
State=UNKNOWN
PartitionName=main Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        ETC.mkdir(parents=True, exist_ok=True)
        self._link(b / "etc/slurm.conf", ETC / "slurm.conf")
        self._link(b / "etc/gres.conf", ETC / "gres.conf")

    def _munge_works(self) -> bool:
        if not MUNGE_SOCKET.exists() or not shutil.which("munge"):
            return False
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       timeout=10).returncode == 0

    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        log = open(self.base / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, **kw)
        log.close()
        PIDS.mkdir(exist_ok=True)
        (PIDS / f"{name}.pid").write_text(f"{self.procs[name].pid} {cmd[0]}\n")

    @staticmethod
    def reap_stale() -> None:
        """Stop the daemons of an earlier test cluster whose session was killed before its teardown
        (by the PIDs it recorded, and only if they still run the recorded program). Called with the
        machine lock held, so no other session is using them."""
        for f in sorted(PIDS.glob("*.pid")) if PIDS.exists() else []:
            pid, exe = f.read_text().split()
            try:
                alive = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() == exe
            except OSError:
                alive = False
            if alive:
                os.kill(int(pid), signal.SIGTERM)
                for _ in range(100):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
                else:
                    os.kill(int(pid), signal.SIGKILL)
            f.unlink()

    def start(self, timeout=90) -> None:
        self.reap_stale()
        self._write_conf()
        if not self._munge_works():  # reuse a running munged (it is not ours to stop), else start one
            if not Path("/etc/munge/munge.key").exists():
                _sh(["runuser", "-u", "munge", "--", "mungekey", "--create"])
            Path("/run/munge").mkdir(mode=0o755, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            self._spawn("munged", [DAEMONS["munged"], "--foreground", "--force"], user="munge", group="munge")
            self._wait(self._munge_works, 20, "munged did not answer")
        # -D: foreground (the PID is ours); -i: ignore state left by an earlier cluster
        self._spawn("slurmctld", [DAEMONS["slurmctld"], "-D", "-i"])
        self._wait(lambda: _sh(["scontrol", "ping"], check=False).returncode == 0, timeout, "slurmctld did not answer")
        self._spawn("slurmd", [DAEMONS["slurmd"], "-D"])
        self._wait(lambda: _sh(["sinfo", "-h", "-o", "%t"], check=False).stdout.strip() == "idle", timeout,
                   "the node did not become idle")

    def _wait(self, ok, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not ok():
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead or time.monotonic() > end:
                raise RuntimeError(f"{what} (exited daemons: {dead}); logs:\n{self.logs()}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Cancel every job, stop every daemon started here by its PID, remove the /etc links."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            with contextlib.suppress(FileNotFoundError):
                (PIDS / f"{name}.pid").unlink()
        for link in self.links:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()


@contextlib.contextmanager
def machine_lock(timeout: float = 3600) -> Iterator[None]:
    """One test cluster per machine (its ports and /etc/slurm are shared): a second test session
    waits here until the first has torn its cluster down. The lock goes with its holder's process,
    so daemons left by a session that was killed are safe to stop (Cluster.reap_stale)."""
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    holder = os.pread(fd, 100, 0).decode(errors="replace").strip()
                    pytest.fail(f"another test session ({holder}) has run the Slurm test cluster for more than "
                                f"{timeout:.0f} s ({LOCK})")
                time.sleep(2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def one_node_cluster(base: Path) -> Iterator[Cluster]:
    ensure_installed()
    with machine_lock():
        cluster = Cluster(base)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A one-node Slurm cluster with fake GPUs, for the whole test session. A SIGTERM to pytest
    (e.g. from a CI timeout) becomes a KeyboardInterrupt, so that the teardown still runs."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with one_node_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
            yield cluster
    finally:
        signal.signal(signal.SIGTERM, previous)
