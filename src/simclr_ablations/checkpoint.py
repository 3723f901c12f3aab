"""Safe files for runs: atomic writes, tensor-only loads, finiteness checks, a run-folder lock and
checkpoints that survive a kill or a corrupt file.

* `save_atomic` / `write_text_atomic` write to a per-process temp name, fsync and rename, and remove
  the temp file when anything fails (a full disk included), so a reader sees the old file or the new.
* `load` reads with `torch.load(weights_only=True)`: tensors and plain types only, never code.
* `save_checkpoint` keeps the last two checkpoints (checkpoint.pt, checkpoint.prev.pt);
  `load_checkpoint` tries them newest first and moves a corrupt one aside with a message.
* `RunLock` holds an exclusive `flock` on `<run>/.lock` while a process writes the run; a second
  writer is refused. The kernel drops the lock when the holder dies, even by kill -9.

Environment variable `SIMCLR_FAULT=save:N:STAGE` kills the process (SIGKILL) inside the N-th
checkpoint save at STAGE (`partial`: half the temp file written; `rotate`: after the previous
checkpoint was renamed, before the new one is in place). It exists for the fault-injection tests.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
import signal
import time
from pathlib import Path

import torch


class UserError(Exception):
    """A problem with the user's input or environment, reported in one or two lines (exit code 2)."""


class CorruptFile(UserError):
    """A file we wrote cannot be read back (truncated, foreign or damaged)."""


class RunBusy(UserError):
    """Another process is writing the run folder."""


class NotFinite(UserError):
    """Weights, buffers or features hold NaN or inf."""


_saves = {"n": 0}


def _fault(stage: str) -> None:
    spec = os.environ.get("SIMCLR_FAULT", "")
    if spec.startswith("save:"):
        _, n, want = spec.split(":")
        if int(n) == _saves["n"] and want == stage:
            os.kill(os.getpid(), signal.SIGKILL)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_bytes_atomic(data: bytes, path: Path, fault: bool = False) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if fault:
                f.flush()
                _fault("partial")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise UserError(f"no space left on the device writing {path}; free some space and rerun "
                            "(the previous file is intact)") from err
        raise


def save_atomic(obj, path: Path) -> None:
    """torch.save `obj` to `path` atomically (per-process temp name, fsync, rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _write_bytes_atomic(buf.getvalue(), Path(path))


def torch_save_file(obj, path: Path) -> None:
    """torch.save straight to `path` (no copy in memory), a full disk reported as a UserError."""
    try:
        torch.save(obj, path)
    except (RuntimeError, OSError) as err:
        if getattr(err, "errno", None) == errno.ENOSPC or "unexpected pos" in str(err) or \
                shutil.disk_usage(Path(path).parent).free < (1 << 20):
            Path(path).unlink(missing_ok=True)
            raise UserError(f"no space left on the device writing {path}; free some space and rerun") from err
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _write_bytes_atomic(text.encode(), Path(path))


def load(path: Path, what: str, map_location=None) -> dict:
    """Tensors and plain types from `path` (weights_only: no code runs); CorruptFile if unreadable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle of foreign objects, garbage
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CorruptFile(f"{what} {path} is unreadable or holds more than tensors ({first})") from err
    if not isinstance(blob, dict):
        raise CorruptFile(f"{what} {path} does not hold a dict of tensors")
    return blob


def check_finite(tensors: dict, what: str) -> None:
    """Raise NotFinite naming the first NaN/inf entry of a {name: tensor} mapping."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise NotFinite(f"{what}: '{name}' holds NaN or inf; training diverged "
                            "(try a lower pretrain.lr or a higher pretrain.temperature)")


def check_finite_modules(what: str, *modules) -> None:
    for m in modules:
        if m is not None:
            check_finite(dict(m.state_dict()), what)


def check_features(model: torch.nn.Module, x: torch.Tensor, what: str) -> None:
    """Features of a few fixed images at every head layer, in eval mode, must be finite (finite weights can
    still overflow: one update at a huge lr leaves weights ~1e29 and every feature NaN)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        h = model.encoder(x)
        layers = model.head.layers_out(h) if hasattr(model, "head") else [h]
    model.train(was)
    check_finite({f"features at layer {i}": t.float() for i, t in enumerate(layers)}, what)


def load_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict, with a shape or key mismatch reported as CorruptFile."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CorruptFile(f"{what} does not fit this model ({str(err).splitlines()[0][:200]})") from err


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write `path` atomically, keeping the previous one as <stem>.prev.pt."""
    path = Path(path)
    _saves["n"] += 1
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    prev = previous(path)
    if path.exists():
        os.replace(path, prev)
        _fault("rotate")
    _write_bytes_atomic(data, path, fault=True)


def previous(path: Path) -> Path:
    return Path(path).with_name(Path(path).stem + ".prev.pt")


def move_aside(path: Path, log) -> Path:
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, dest)
    log(f"warning: {path} is corrupt; moved it to {dest.name}")
    return dest


def load_checkpoint(path: Path, log, map_location=None, use=None) -> dict | None:
    """The newest readable checkpoint (path, then its .prev.pt), or None; corrupt ones are moved aside.

    `use(blob)` applies a loaded checkpoint (and may raise CorruptFile if it does not fit); it is
    called here so that a checkpoint that loads but does not fit also falls back to the previous.
    """
    for candidate in (Path(path), previous(path)):
        if not candidate.exists():
            continue
        try:
            blob = load(candidate, "checkpoint", map_location)
            for key in ("run_id", "epoch", "model", "optimizer", "history"):
                if key not in blob:
                    raise CorruptFile(f"checkpoint {candidate} lacks '{key}'")
            if use is not None and use(blob) is False:
                continue
            return blob
        except CorruptFile as err:
            log(f"warning: {err}")
            move_aside(candidate, log)
    return None


class RunLock:
    """An exclusive, non-blocking lock on `<folder>/.lock`, released by `release()` or process death."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise RunBusy(f"run folder {folder} is being written by another process (pid {holder}); "
                          "wait for it to finish or use another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        for stale in Path(folder).glob(".*.*.tmp"):  # left by a killed writer: nobody else writes here now
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()
