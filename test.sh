#!/usr/bin/env bash
# Set up (first time) and run the lint and the whole test suite, end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
python -m pytest "$@"
