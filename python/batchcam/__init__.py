"""batchcam: batched Grad-CAM maps as fused, autograd-aware torch ops (Batch-CAM, arXiv 2510.00664)."""
from . import ops  # noqa: F401  (registers torch.ops.batchcam.*)
from .backend import get_backend, set_backend
from .cam import BatchCAM
from .explanation import explain
from .functional import fused_cam
from .reference import fused_cam_reference

__all__ = ["BatchCAM", "explain", "fused_cam", "fused_cam_reference", "get_backend", "set_backend"]
