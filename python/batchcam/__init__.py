"""batchcam: batched Grad-CAM maps as fused, autograd-aware torch ops (Batch-CAM, arXiv 2510.00664).

Layers, each importing only from itself and the layers above it in this list:
- the op: definitions, backend, ops (checks, fake kernels, dispatch), reference, functional;
- CAM: targets, capture, cam (BatchCAM), explanation (explain), metrics;
- training: losses, models, data, checkpoints, outputs, devices, training, figures, study, compare;
- the command line: cli, explain_cli, evaluate_cli, bench_cli.
"""
from . import metrics, ops  # noqa: F401  (ops registers torch.ops.batchcam.*)
from .backend import get_backend, set_backend
from .cam import BatchCAM
from .explanation import explain
from .figures import overlay
from .functional import fused_cam
from .reference import fused_cam_reference
from .targets import EmbeddingTarget, SegmentationTarget

__all__ = ["BatchCAM", "EmbeddingTarget", "SegmentationTarget", "explain", "fused_cam", "fused_cam_reference",
           "get_backend", "overlay", "set_backend"]
