"""The op's definitions on the Python side, as csrc/cam_definitions.h defines them for C++ and CUDA
(and batchcam_kernels numbers the normalisations for Triton): one home for each."""
import torch

# How each sample's rectified map r is normalised: (r - min) / (max - min + eps), r / (max + eps), r.
NORMALIZE_MODES = ("minmax", "max", "none")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 for float64, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32

# The CAM methods (csrc/cam_definitions.h: Method; formulas in csrc/cam_methods.h and docs/op.md):
# weight-based (a weight per channel, from that channel's A and G) and element-wise.
WEIGHT_METHODS = ("gradcam", "xgradcam", "gradcampp")
ELEMENTWISE_METHODS = ("layercam", "hirescam", "elementwise")
METHODS = WEIGHT_METHODS + ELEMENTWISE_METHODS
