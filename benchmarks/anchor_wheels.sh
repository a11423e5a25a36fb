#!/usr/bin/env bash
# Wheels of the explain benchmark's anchors (pytorch-grad-cam, Captum, TorchCAM) for a machine
# without network access, e.g. a GPU machine: written to .whl/ (git-ignored; copy it along with
# the tree), which gpu_check.sh installs when it is there. Needs PyPI; the packages' own
# dependencies (opencv, matplotlib, scikit-learn, ...) are expected on the target.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl ttach==0.0.3 captum==0.9.0 torchcam==0.5.0
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl grad-cam==1.5.7  # published as a source archive
ls .whl
