#!/usr/bin/env bash
# Set up (first time) and run the main job: `dvc repro` of params/experiment.yaml on the embedded dataset.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
dvc repro "$@"
dvc metrics show
echo "figure: results/experiment/curves.png   metrics: results/experiment/metrics.json"
