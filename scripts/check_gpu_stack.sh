#!/usr/bin/env bash
# The GPU machines' software (torch 2.11 with CUDA 13.0, triton 3.6, Python 3.12), checked on a
# machine without a GPU: the extension built with its C++/CUDA kernels (compiled and linked for
# sm_90, not run), the Triton kernels compiled for sm_90 by triton 3.6, and the whole test suite
# (its GPU tests skip). CI covers the CPU machines' torch 2.13 and triton 3.7; the code must work
# on both. Downloads about 5 GB from PyPI into a virtual environment; takes about 10 minutes.
#
#   bash scripts/check_gpu_stack.sh [VENV]      (default /tmp/batchcam-gpu-stack)
#
# Runs on a copy of the working tree (tracked files and untracked ones git does not ignore): the
# extension's in-place build would otherwise replace the one of this checkout. The pytest log is
# written to $VENV/pytest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/batchcam-gpu-stack}"
# torch 2.11 requires setuptools<82; triton 3.6's interpreter fails with numpy 2.4 (a scalar
# conversion numpy 2.3 only warns about).
stack="torch==2.11.0 triton==3.6.0 setuptools<82 numpy==2.3.5"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if command -v python3.12 >/dev/null && python3.12 --version >/dev/null 2>&1; then
    python=python3.12
  elif command -v pyenv >/dev/null && version="$(pyenv versions --bare | grep -E '^3\.12\.' | tail -1)" \
      && [ -n "$version" ]; then
    python="$(pyenv prefix "$version")/bin/python"
  else
    echo "check_gpu_stack: needs Python 3.12 (set PYTHON=/path/to/python3.12)" >&2
    exit 2
  fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
tree="$venv/batchcam"
rm -rf "$tree" && mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$tree"

# No GPU to read the architecture from: the H100 and H200 are sm_90.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export PATH="$venv/bin:${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
BATCHCAM_STACK="$stack" bash "$tree/scripts/setup.sh"
python -c "import batchcam, torch, triton; assert batchcam.backend.cuda_kernels_built(), 'built without CUDA kernels'; \
print('torch', torch.__version__, 'triton', triton.__version__, 'C++/CUDA kernels built')"
cd "$tree" && python -m pytest -q -p no:cacheprovider -rfE 2>&1 | tee "$venv/pytest.txt" | tail -5
