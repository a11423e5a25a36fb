#!/usr/bin/env bash
# Installs everything batchcam needs on a fresh machine (CPU) and builds the extension.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -r requirements.txt
# --no-build-isolation: build against the torch just installed, not a fresh download.
MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip install -q --disable-pip-version-check \
    --no-build-isolation -e .
