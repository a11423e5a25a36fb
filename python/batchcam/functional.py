"""`batchcam.fused_cam`: the batched Grad-CAM map with a per-call backend choice; `upsample_maps`:
maps brought to an image's size."""
import torch
from torch.nn import functional as F

from .backend import get_backend, gpu_kernel, validate_backend
from .ops import check_inputs, fused_cam_op
from .reference import fused_cam_reference


def fused_cam(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True,
              normalize: str = "minmax", eps: float = 1e-7, method: str = "gradcam",
              backend: str | None = None) -> torch.Tensor:
    """CAM maps of a whole batch (Grad-CAM and its family, `method`).

    Args:
        activations: (B, C, *S) feature maps of the target layer; float16, bfloat16, float32 or
            float64; contiguous or channels-last (read in place).
        gradients: (B, C, *S) gradients of the target scores with respect to `activations`.
        relu: rectify the weighted sum before normalising.
        normalize: "minmax" ((r - min) / (max - min + eps)), "max" (r / (max + eps)) or "none".
        eps: >= 0, added to the normaliser.
        method: "gradcam", "xgradcam", "gradcampp" (Grad-CAM++), "layercam", "hirescam" or
            "elementwise" (formulas: docs/op.md).
        backend: "fused", "triton", "cuda" or "reference"; None uses `batchcam.get_backend()`.

    Returns:
        (B, *S) maps in the dtype of `activations`, differentiable with respect to both inputs.
    """
    backend = get_backend() if backend is None else validate_backend(backend)
    if backend == "reference":
        check_inputs(activations, gradients, normalize, eps, relu, method)
        return fused_cam_reference(activations, gradients, relu, normalize, eps, method)
    return fused_cam_op(activations, gradients, relu, normalize, eps, method, gpu_kernel(backend))


def upsample_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, *S) maps -> (B, *size), each sample on its own: linear, bilinear or trilinear for 1, 2
    or 3 spatial dims, with half-pixel centres (align_corners=False, as cv2.resize).

    The maps go through `F.interpolate` as the B channels of one image rather than as B images of
    one channel: the same values, faster on CPU, where ATen's kernel vectorises over channels
    (docs/performance.md); on CUDA the two layouts run the same loops.
    """
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.dim() - 1]
    return F.interpolate(maps.unsqueeze(0), size=tuple(size), mode=mode, align_corners=False)[0]
