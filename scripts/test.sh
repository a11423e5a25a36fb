#!/usr/bin/env bash
# Set-up, then the whole test suite (GPU tests are skipped without a CUDA device), in 2 processes
# (pytest-xdist): most of its time is Triton's interpreter, single-threaded Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest -q -n 2 "$@"
