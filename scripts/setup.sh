#!/usr/bin/env bash
# Create .venv (Python >= 3.10) with torch, the package and its tools; idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # CPU and CUDA builds both work; these versions install from the local wheel cache on the CI image.
  .venv/bin/pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.14.1}" \
    "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi
if ! .venv/bin/python -c "import simclr_ablations, snakemake, dvc, pytest, ruff" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
fi
