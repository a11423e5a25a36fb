"""float32 accuracy at large maps: the per-sample sums over P (the channel weights, the tie and
score-gradient sums of the backward, the gradient of the weights) are blocked, so the op's float32
results stay within float32 rounding of the float64 reference at a million positions."""
import contextlib

import pytest
import torch

from batchcam import fused_cam, fused_cam_reference
from helpers import make_inputs, to64, triton_kernels_on_cpu

TOLERANCE = 1e-5  # of max |gA| (and max |gG|): float32 rounding, far below blocked sums' error


def worst_relative_errors(a, g, normalize, method="gradcam"):
    """Worst element of the map, gA and gG against float64, each relative to its largest magnitude."""
    gy = torch.randn((a.shape[0], *a.shape[2:]), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a32, g32 = (t.detach().clone().requires_grad_() for t in (a, g))
    y = fused_cam(a32, g32, normalize=normalize, method=method)
    grads = torch.autograd.grad(y, (a32, g32), gy.float())
    a64, g64 = (to64(t).requires_grad_() for t in (a, g))
    y64 = fused_cam_reference(a64, g64, True, normalize, 1e-7, method)
    grads64 = torch.autograd.grad(y64, (a64, g64), gy)
    return [float((to64(got) - exp).abs().max() / exp.abs().max()) for got, exp in zip((y, *grads), (y64, *grads64))]


CASES = [(kernels, side, channels_last, normalize)
         for kernels in ("cpu", "triton-interpreter") for side in (256, 1024)
         for channels_last in (False, True) for normalize in ("minmax", "max")
         # "max" runs the code of "minmax" less the minimum's term; 20 s in the interpreter at 1024
         if not (kernels != "cpu" and side == 1024 and normalize == "max")]


@pytest.mark.parametrize("kernels,side,channels_last,normalize", CASES)
def test_float32_gradients_at_large_maps(kernels, side, channels_last, normalize):
    a, g = make_inputs((1, 3, side, side), channels_last=channels_last, seed=side)
    with triton_kernels_on_cpu() if kernels != "cpu" else contextlib.nullcontext():
        errors = worst_relative_errors(a, g, normalize)
    assert max(errors) < TOLERANCE, f"worst map, gA, gG error relative to their max: {errors}"


@pytest.mark.parametrize("method", ["xgradcam", "gradcampp"])
def test_weight_methods_over_long_rows(method):
    """The CPU kernels' per-channel sums of these methods, 8 rows at a time, over rows longer than
    one span of the blocked summation (4096 positions), with a short last group of rows."""
    a, g = make_inputs((2, 21, 70, 70), seed=7)
    # Positive activations, as after a ReLU: with signed ones S = sum_p A can cancel to near 0,
    # where these methods' weights are ill-conditioned in any float32 summation order.
    errors = worst_relative_errors(a.abs(), g, "minmax", method)
    assert max(errors) < TOLERANCE, f"worst map, gA, gG error relative to their max: {errors}"
