"""`batchcam.fused_cam`: the batched Grad-CAM map with a per-call backend choice."""
import torch

from .backend import _validate, get_backend, gpu_kernel
from .ops import check_inputs, fused_cam_op
from .reference import fused_cam_reference


def fused_cam(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True,
              normalize: str = "minmax", eps: float = 1e-7, backend: str | None = None) -> torch.Tensor:
    """Grad-CAM maps of a whole batch.

    Args:
        activations: (B, C, *S) feature maps of the target layer; float16, bfloat16, float32 or
            float64; contiguous or channels-last (read in place).
        gradients: (B, C, *S) gradients of the target scores with respect to `activations`.
        relu: rectify the weighted sum before normalising.
        normalize: "minmax" ((r - min) / (max - min + eps)), "max" (r / (max + eps)) or "none".
        eps: >= 0, added to the normaliser.
        backend: "fused", "triton", "cuda" or "reference"; None uses `batchcam.get_backend()`.

    Returns:
        (B, *S) maps in the dtype of `activations`, differentiable with respect to both inputs.
    """
    backend = get_backend() if backend is None else _validate(backend)
    if backend == "reference":
        check_inputs(activations, gradients, normalize, eps)
        return fused_cam_reference(activations, gradients, relu, normalize, eps)
    return fused_cam_op(activations, gradients, relu, normalize, eps, gpu_kernel(backend))
