"""The op's definitions on the Python side, as csrc/cam_definitions.h defines them for C++ and CUDA
(and batchcam_kernels numbers the normalisations for Triton): one home for each."""
import torch

# How each sample's rectified map r is normalised: (r - min) / (max - min + eps), r / (max + eps), r.
NORMALIZE_MODES = ("minmax", "max", "none")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in: float64 for float64, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32
