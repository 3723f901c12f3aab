"""What data a run read: a content digest of the dataset's files under `data.root` (or, for the
embedded dataset, of the params that generate it).

The prepare step records it (meta.json), DVC's `fingerprint` stage rewrites it on every `dvc repro`
(prepare reruns when it changed), and a checkpoint or model trained on other data is never resumed
or evaluated. Snakemake reruns `prepare` when the *listing* changes (`of_listing`: path, size and
mtime of every file, a `params:` trigger that costs a stat per file, like Snakemake's own mtime rule).
Hashing every byte of a large image folder takes minutes, so a digest is cached (under
$SIMCLR_ABLATIONS_CACHE, else $XDG_CACHE_HOME or ~/.cache) keyed by the listing: it is recomputed
only when a file was added, removed or touched. torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import params


def cache_dir() -> Path:
    base = os.environ.get("SIMCLR_ABLATIONS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "simclr-ablations")
    return Path(base) / "fingerprints"


def files(root: Path) -> list[Path]:
    """Every file under root (symlinked folders followed), hidden files and folders left out, sorted."""
    out = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(folder, n) for n in names if not n.startswith(".")]
    return sorted(out)


def _listing(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for f in paths:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def of_folder(root: Path) -> str:
    """A 16-hex digest of the names and bytes of every file under root ('absent' if root does not exist)."""
    root = Path(root).absolute()
    if not root.is_dir():
        return "absent"
    paths = files(root)
    key = _listing(root, paths)
    cached = cache_dir() / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"
    try:
        entry = json.loads(cached.read_text())
        if entry.get("listing") == key:
            return entry["digest"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    for f in paths:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()[:16]
    try:  # a cache that cannot be written (read-only home) only costs time
        cached.parent.mkdir(parents=True, exist_ok=True)
        with params.atomic_path(cached) as tmp:
            tmp.write_text(json.dumps({"root": str(root), "listing": key, "digest": digest}))
    except OSError:
        pass
    return digest


def of_data(d: dict) -> str:
    """The fingerprint of the data that the data params `d` read."""
    if d["dataset"] == "synthetic":
        return params.digest({"synthetic": params.synthetic_identity(d["synthetic"]), "image_size": d["image_size"]})
    return of_folder(Path(d["root"]))


def of_listing(d: dict) -> str:
    """Cheaper than of_data (no file is read): a digest of the path, size and mtime of every file."""
    if d["dataset"] == "synthetic":
        return of_data(d)
    root = Path(d["root"]).absolute()
    return _listing(root, files(root))[:16] if root.is_dir() else "absent"
