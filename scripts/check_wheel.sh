#!/usr/bin/env bash
# The wheel: `pip wheel --no-build-isolation --no-deps .` builds one (against this environment's
# torch), which is installed into a fresh virtual environment with the pinned CPU torch and must
# pass the op's tests there, imported from the wheel, not from this checkout. Run by CI; about
# three minutes.
#
#   bash scripts/check_wheel.sh [VENV]      (default /tmp/batchcam-wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/batchcam-wheel}"
rm -rf "$venv" && python -m venv "$venv"
echo "check_wheel: pip wheel --no-build-isolation --no-deps ."
MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
  -w "$venv/dist" .
wheel="$(ls "$venv"/dist/batchcam-*.whl)"
echo "check_wheel: $(basename "$wheel") into a fresh virtual environment"
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 numpy==2.4.6 pytest==9.0.3 "$wheel"
# The tests run from a copy outside this checkout, so that `import batchcam` finds the wheel.
cp -r tests "$venv/tests"
cd "$venv"
"$venv/bin/python" -c "import batchcam, torch; print('check_wheel: batchcam from', batchcam.__file__, \
'- CPU kernels:', torch.ops.batchcam.cpu_capability())"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_fused_cam.py tests/test_kernels.py tests/test_accuracy.py -k "not triton" \
  2>&1 | tail -2
