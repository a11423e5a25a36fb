"""The CPU kernels built without -march (BATCHCAM_MARCH="", as for a wheel that runs anywhere):
none of the AVX2 or F16C paths, only code the compiler vectorises for baseline x86-64 (or any
other CPU). Built once (about a minute) as a second op library beside batchcam._C, then run
through the whole op (checks, autograd, the broadcast gradient of the gradients) in place of the
native kernels and checked against the float64 reference like them."""
import functools
import os
import sys

import pytest
import torch
from helpers import check_against_reference, cpu_kernels_replaced, make_inputs

import batchcam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def portable_kernels(tmp_path_factory):
    sys.path.insert(0, ROOT)
    try:
        from setup import load_cpu_kernels
    finally:
        sys.path.remove(ROOT)
    return load_cpu_kernels("batchcam_portable", build_dir=str(tmp_path_factory.mktemp("portable")), march="")


# Rows of 8 and a tail (C = 37, P = 667), one sample in many blocks, one block per sample, P = 1.
SHAPES = [(3, 37, 23, 29), (1, 64, 15, 17), (40, 24, 9, 9), (5, 19, 1, 1)]


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_portable_build_matches_reference(portable_kernels, shape, dtype, channels_last):
    a, g = make_inputs(shape, dtype, "cpu", channels_last, requires_grad=True)
    calls = []

    def recorded(name):
        def run(*args):
            calls.append(name)
            return getattr(portable_kernels, name)(*args)
        return run

    with cpu_kernels_replaced(recorded("cam_forward"), recorded("cam_backward")):
        check_against_reference(functools.partial(batchcam.fused_cam, backend="fused"), a, g)
    assert calls == ["cam_forward", "cam_backward"]  # the portable kernels ran
