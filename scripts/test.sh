#!/usr/bin/env bash
# Set-up, then the whole test suite (GPU tests are skipped without a CUDA device).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest -q "$@"
