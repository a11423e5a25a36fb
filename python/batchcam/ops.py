"""Python side of the batchcam ops whose schemas csrc/fused_cam.cpp defines: input checks, fake
kernels, the Triton ops (and, in an extension built without CUDA kernels, the CUDA implementation
of cam_forward / cam_backward) and the public composite `torch.ops.batchcam.fused_cam`.

    fused_cam(A, G, relu, normalize, eps, method)  public, CompositeImplicitAutograd (here):
      -> cam_forward(A, G, ..., gpu_kernel)[0]     kernels: CPU (C++), CUDA (C++, or here where
                                                   the extension has no CUDA kernels);
                                                   autograd: csrc/fused_cam_autograd.cpp
           backward: cam_backward(gy, A, G, w, s, ext, ..., output_mask)
"""
import math
import numbers

import torch

from . import _C  # noqa: F401  (registers the schemas and the CPU kernels)
from .backend import cuda_kernels_built
from .backend import get_backend
from .backend import gpu_kernel as kernel_for_backend
from .definitions import ELEMENTWISE_METHODS, METHODS, NORMALIZE_MODES, accumulation_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_inputs(activations, gradients, normalize="minmax", eps=1e-7, relu=True, method="gradcam"):
    """Raises a ValueError/TypeError naming the problem for every input fused_cam rejects."""
    for name, t in (("activations", activations), ("gradients", gradients)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fused_cam: {name} must be a Tensor, got {type(t).__name__}")
    if activations.dim() < 3:
        raise ValueError(
            "fused_cam: activations must have shape (B, C, *S) with at least one spatial dim, "
            f"got shape {tuple(activations.shape)}"
        )
    if activations.shape != gradients.shape:
        raise ValueError(
            f"fused_cam: activations {tuple(activations.shape)} and gradients "
            f"{tuple(gradients.shape)} must have the same shape"
        )
    if activations.dtype not in FLOAT_DTYPES or gradients.dtype != activations.dtype:
        raise TypeError(
            "fused_cam: activations and gradients must share one floating dtype "
            f"(float16, bfloat16, float32, float64), got {activations.dtype} and {gradients.dtype}"
        )
    if activations.device != gradients.device:
        raise ValueError(
            f"fused_cam: activations on {activations.device} and gradients on "
            f"{gradients.device} must be on the same device"
        )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"fused_cam: eps must be a number, got {type(eps).__name__} {eps!r}")
    if not isinstance(relu, bool):
        raise TypeError(f"fused_cam: relu must be True or False, got {type(relu).__name__} {relu!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"fused_cam: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if not eps >= 0:
        raise ValueError(f"fused_cam: eps must be >= 0, got {eps}")
    if method not in METHODS:
        raise ValueError(f"fused_cam: method must be one of {METHODS}, got {method!r}")


# --- Public composite -------------------------------------------------------------------------


def fused_cam_op(activations, gradients, relu, normalize, eps, method, kernel):
    """Checks the inputs, then runs the forward kernel (autograd-aware) and returns the map."""
    check_inputs(activations, gradients, normalize, eps, relu, method)
    return torch.ops.batchcam.cam_forward(activations, gradients, relu, normalize, eps, method, kernel)[0]


def _fused_cam_composite(activations, gradients, relu=True, normalize="minmax", eps=1e-7, method="gradcam"):
    return fused_cam_op(activations, gradients, relu, normalize, eps, method, kernel_for_backend(get_backend()))


torch.library.impl("batchcam::fused_cam", "CompositeImplicitAutograd", _fused_cam_composite)


# --- Fake kernels -------------------------------------------------------------------------------


@torch.library.register_fake("batchcam::cam_forward")
def _cam_forward_fake(activations, gradients, relu, normalize, eps, method, gpu_kernel):
    torch._check(activations.dim() >= 3, lambda: "fused_cam: activations need a spatial dim")
    torch._check(activations.shape == gradients.shape, lambda: "fused_cam: shape mismatch")
    torch._check(activations.dtype == gradients.dtype, lambda: "fused_cam: dtype mismatch")
    B, C = activations.shape[:2]
    P = math.prod(activations.shape[2:])
    acc = accumulation_dtype(activations.dtype)
    y = activations.new_empty((B, *activations.shape[2:]))
    return (
        y,
        activations.new_empty((B, 0 if method in ELEMENTWISE_METHODS else C), dtype=acc),
        activations.new_empty((B, P), dtype=acc),
        activations.new_empty((B, 2), dtype=acc),
    )


@torch.library.register_fake("batchcam::cam_backward")
def _cam_backward_fake(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps,
                       method, gpu_kernel, output_mask):
    grad_a = torch.empty_like(activations) if output_mask[0] else None
    grad_g = None
    if output_mask[1]:  # Grad-CAM's: its (B, C) values
        grad_g = activations.new_empty(activations.shape[:2]) if method == "gradcam" else torch.empty_like(activations)
    return grad_a, grad_g


@torch.library.register_fake("batchcam::impute_linear")
def _impute_linear_fake(images, removed, tol, max_iterations, solver="auto"):
    return images.new_empty(images.shape)  # contiguous, whatever the images' layout


# --- CUDA ---------------------------------------------------------------------------------------
# The Triton kernels, as the ops triton_cam_forward / triton_cam_backward. Where the extension was
# built with its C++/CUDA kernels, the CUDA implementation of cam_forward / cam_backward is C++ and
# calls these only for gpu_kernel "triton"; otherwise the one below, in Python, runs Triton.


def _triton_cam_forward(activations, gradients, relu, normalize, eps, method):
    from batchcam_kernels import cam_forward

    return cam_forward(activations, gradients, relu, normalize, eps, method)


def _triton_cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method,
                         output_mask):
    from batchcam_kernels import cam_backward

    return cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method,
                        output_mask)


torch.library.impl("batchcam::triton_cam_forward", "CUDA", _triton_cam_forward)
torch.library.impl("batchcam::triton_cam_backward", "CUDA", _triton_cam_backward)


def _require_triton(gpu_kernel):
    if gpu_kernel == "cuda":
        raise RuntimeError(
            "batchcam backend 'cuda' needs the extension built with CUDA (torch with CUDA and nvcc "
            "found at build time; see setup.py). Use backend 'triton' instead, or rebuild."
        )


def _cam_forward_cuda(activations, gradients, relu, normalize, eps, method, gpu_kernel):
    _require_triton(gpu_kernel)
    return _triton_cam_forward(activations, gradients, relu, normalize, eps, method)


def _cam_backward_cuda(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method,
                       gpu_kernel, output_mask):
    _require_triton(gpu_kernel)
    return _triton_cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps,
                                method, output_mask)


if not cuda_kernels_built():
    torch.library.impl("batchcam::cam_forward", "CUDA", _cam_forward_cuda)
    torch.library.impl("batchcam::cam_backward", "CUDA", _cam_backward_cuda)
