#!/usr/bin/env bash
# Set up (first time) and run the lint and the whole test suite, end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
lint=$(snakemake --lint 2>&1) || true
echo "$lint"
grep -q 'Congratulations, your workflow is in a good condition' <<<"$lint" || { echo 'snakemake --lint: fix the above'; exit 1; }
snakefmt --check .
python -m pytest "$@"
