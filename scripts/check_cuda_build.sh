#!/usr/bin/env bash
# The CUDA extension built, linked and loaded on a machine without a GPU: a CUDA build of torch
# (2.14.1, CUDA 13.0) in a virtual environment, nvcc 13.0, no TORCH_CUDA_ARCH_LIST, the command a
# user runs. Checks that the build names the architectures it compiled for, that the C++/CUDA
# kernels are registered, and runs the op's CPU tests against this build (the CPU kernels are the
# same code however the extension was built). Run by CI; about 10 minutes the first time.
#
#   bash scripts/check_cuda_build.sh [VENV]      (default /tmp/batchcam-cuda-build)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/batchcam-cuda-build}"
# The toolkit: $CUDA_HOME, else the newest /usr/local/cuda-* (nvcc on PATH may be a wrapper script).
nvcc_home="${CUDA_HOME:-$(ls -d /usr/local/cuda*/ 2>/dev/null | sort -V | tail -1)}"
nvcc_home="${nvcc_home%/}"
[ -x "$nvcc_home/bin/nvcc" ] || { echo "check_cuda_build: needs the CUDA toolkit (set CUDA_HOME)" >&2; exit 2; }

echo "check_cuda_build: torch 2.14.1 (CUDA 13.0) in $venv"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 numpy==2.4.6 pillow==13.0.0 tqdm==4.70.1 pytest==9.0.3 \
  "setuptools<82" wheel ninja==1.13.2

# A copy of the tree: the in-place build would otherwise replace this checkout's extension.
tree="$venv/batchcam"
rm -rf "$tree" && mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$tree"
cd "$tree"
unset TORCH_CUDA_ARCH_LIST
echo "check_cuda_build: pip install --no-build-isolation -e . (CUDA_HOME=$nvcc_home, no GPU, no arch list)"
CUDA_HOME="$nvcc_home" PATH="$nvcc_home/bin:$PATH" MAX_JOBS=2 \
  "$venv/bin/python" -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps -e . \
  > "$venv/build.log" 2>&1 || { tail -40 "$venv/build.log"; exit 1; }
# setup.py's own lines (pip -v indents them): the architectures built for.
grep -E "batchcam: (no GPU|torch is built|no CUDA headers)" "$venv/build.log" | sed 's/^ *//' | sort -u
grep -q "building the CUDA kernels for" "$venv/build.log"
"$venv/bin/python" -c "import torch, batchcam; assert batchcam.backend.cuda_kernels_built(), 'no C++/CUDA kernels'; \
print('check_cuda_build: torch', torch.__version__, '- C++/CUDA kernels registered')"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_fused_cam.py tests/test_kernels.py -k "not triton" 2>&1 | tail -2
