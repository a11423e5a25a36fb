"""Inputs and comparisons shared by the op tests: one place that says what "correct" means.

A kernel's error against the float64 reference must stay within K times the error of the same
composition run in the kernel's dtype (flash-attention's rule), plus a small dtype floor relative
to the magnitude of the result.
"""
import contextlib
import functools
import warnings

import pytest
import torch

import batchcam
from batchcam import fused_cam_reference
from batchcam.definitions import METHODS

# Every CAM method, as a pytest parameter list.
METHOD_PARAMS = [pytest.param(m, id=m) for m in METHODS]

# The op's implementations the tests run, as (device, backend): the Triton kernels run on CPU in
# Triton's interpreter (conftest.py), the GPU ones only with a CUDA device.
BACKENDS = [
    pytest.param("cpu", "fused", id="cpu"),
    pytest.param("cpu", "triton", id="cpu-triton-interpreter"),
] + [
    pytest.param("cuda", kernel, id=f"cuda-{kernel}", marks=pytest.mark.gpu)
    for kernel in ("triton", "cuda")
]

K = 2.0
K_INTERPRETED = 4.0
# Flags that build the C++ sources as C++17 (torch 2.11's standard) with torch 2.13's headers.
CXX17 = ["-std=c++17", "-Wno-c++20-extensions"]
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-3, torch.float16: 5e-4}
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# Methods that divide by a channel's activation sum S: their tests use positive activations, as
# after a ReLU (with activations of either sign, S near 0 makes the map arbitrarily ill-conditioned).
DIVIDING_METHODS = ("xgradcam", "gradcampp")


def make_inputs(shape, dtype=torch.float32, device="cpu", channels_last=False, seed=0,
                requires_grad=False, method="gradcam"):
    """Fresh random activations and gradients (never zeros), optionally channels-last; positive
    activations for the DIVIDING_METHODS."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=gen, dtype=torch.float64)
    if method in DIVIDING_METHODS:
        a = a.abs()
    g = torch.randn(shape, generator=gen, dtype=torch.float64) + 0.1  # mostly positive weights
    out = []
    for t in (a, g):
        t = t.to(device=device, dtype=dtype)
        if channels_last:
            t = t.movedim(1, -1).contiguous().movedim(-1, 1)
        out.append(t.requires_grad_(requires_grad))
    return out


def op_for(backend):
    """batchcam.fused_cam with `backend` (the device is the inputs')."""
    return functools.partial(batchcam.fused_cam, backend=backend)


def to64(t):
    return t.detach().to(torch.float64)


def assert_close(actual, expected64, same_dtype, name, interpreted=False):
    """|actual - expected64| <= K |same_dtype - expected64|_max + FLOOR * max(1, |expected64|_max).

    `interpreted`: results of Triton's interpreter, which differs from a GPU in two ways that show
    in the last bits: it rounds float32 to bfloat16 toward zero (one more unit in the last place
    of each bfloat16 element allowed), and its tl.sum adds the rows of a tile one after the other
    (a GPU reduces them as a tree), so its sums of thousands of channels may round a few units
    more (K_INTERPRETED)."""
    assert actual.shape == expected64.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected64.shape)}"
    err = (to64(actual) - expected64).abs()
    ref_err = (to64(same_dtype) - expected64).abs().max() if expected64.numel() else 0.0
    scale = expected64.abs().max().clamp_min(1.0) if expected64.numel() else 1.0
    bound = (K_INTERPRETED if interpreted else K) * ref_err + FLOOR[actual.dtype] * scale
    if interpreted and actual.dtype == torch.bfloat16:
        bound = bound + torch.finfo(actual.dtype).eps * expected64.abs()
    bad = ~(err <= bound)  # NaN counts as a mismatch
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{name} ({actual.dtype}): {int(bad.sum())}/{err.numel()} elements off by more than "
            f"{float(bound):.3g}; first at {idx}: got {float(actual[tuple(idx)])}, "
            f"expected {float(expected64[tuple(idx)])}; max error {float(err.nan_to_num(float('inf')).max()):.3g}"
        )


def run_forward_backward(fn, a, g, gy, **kw):
    """Map and (gA, gG) of fn(a, g) by autograd, for the inputs that require grad."""
    y = fn(a, g, **kw)
    wrt = [t for t in (a, g) if t.requires_grad]
    grads = torch.autograd.grad(y, wrt, gy) if wrt else ()
    it = iter(grads)
    return y, tuple(next(it) if t.requires_grad else None for t in (a, g))


def check_against_reference(fn, a, g, seed=1, **kw):
    """Compares fn's map and gradients with the float64 reference and the same-dtype reference."""
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn((a.shape[0], *a.shape[2:]), generator=gen, dtype=torch.float64)
    gy = gy.to(device=a.device, dtype=a.dtype)
    y, grads = run_forward_backward(fn, a, g, gy, **kw)
    a64, g64 = (to64(t).requires_grad_(t.requires_grad) for t in (a, g))
    y64, grads64 = run_forward_backward(fused_cam_reference, a64, g64, to64(gy), **kw)
    a_r, g_r = (t.detach().clone().requires_grad_(t.requires_grad) for t in (a, g))
    y_r, grads_r = run_forward_backward(fused_cam_reference, a_r, g_r, gy, **kw)
    assert y.dtype == a.dtype
    interpreted = a.device.type == "cpu" and getattr(fn, "keywords", {}).get("backend") == "triton"
    assert_close(y, y64, y_r, "map", interpreted)
    for name, got, exp, same in zip(("grad activations", "grad gradients"), grads, grads64, grads_r):
        if exp is not None:
            assert_close(got, exp, same, name, interpreted)
    return y, grads


@contextlib.contextmanager
def cpu_kernels_replaced(cam_forward, cam_backward):
    """Runs the op's CPU dispatch of cam_forward and cam_backward through other implementations:
    the whole op path (checks, autograd, broadcast of the gradient of the gradients) with them."""
    with warnings.catch_warnings(), torch.library._scoped_library("batchcam", "IMPL") as lib:
        warnings.filterwarnings("ignore", "Warning only once for all operators")  # "overriding a kernel"
        lib.impl("cam_forward", cam_forward, "CPU")
        lib.impl("cam_backward", cam_backward, "CPU")
        yield


def triton_kernels_on_cpu():
    """The op on CPU tensors with the Triton kernels (in Triton's interpreter, which conftest.py
    turns on without a GPU), on a machine without a GPU, whichever GPU kernel a call names (the
    default one is C++/CUDA where the extension was built with it, which cannot run on CPU)."""
    import batchcam_kernels

    def cam_forward(activations, gradients, relu, normalize, eps, method, gpu_kernel):
        return batchcam_kernels.cam_forward(activations, gradients, relu, normalize, eps, method)

    def cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method,
                     gpu_kernel, output_mask):
        return batchcam_kernels.cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu,
                                             normalize, eps, method, output_mask)

    return cpu_kernels_replaced(cam_forward, cam_backward)
