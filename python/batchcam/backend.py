"""Which implementation computes the map: `set_backend`, `get_backend` and `BATCHCAM_BACKEND`.

- "fused": the op `torch.ops.batchcam.fused_cam`; on CUDA it runs DEFAULT_GPU_KERNEL.
- "triton", "cuda": the op, with that GPU kernel on CUDA tensors.
- "reference": the plain-PyTorch composition (`batchcam.reference`).
CPU tensors always run the C++ kernel under every backend except "reference".
"""
import os

import torch

from . import _C  # noqa: F401  (registers the kernels: whether the C++/CUDA ones are there decides below)

BACKENDS = ("fused", "triton", "cuda", "reference")
GPU_KERNELS = ("triton", "cuda")


# Whether batchcam._C registered the CUDA implementation of cam_forward, which it does when built
# with its C++/CUDA kernels (setup.py: torch with CUDA and nvcc). Read here, on loading _C, before
# batchcam.ops registers the Python one of an extension built without them.
_CUDA_KERNELS_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key("batchcam::cam_forward", "CUDA")


def cuda_kernels_built() -> bool:
    """Whether the extension was built with its C++/CUDA kernels."""
    return _CUDA_KERNELS_BUILT


# The GPU kernel of "fused": C++/CUDA where built (less time as launched from Python, its host cost
# being the lower; docs/performance.md), else Triton.
DEFAULT_GPU_KERNEL = "cuda" if cuda_kernels_built() else "triton"

_backend = None  # None: not chosen yet, BATCHCAM_BACKEND or "fused" on first use


def validate_backend(name):
    if name not in BACKENDS:
        raise ValueError(f"batchcam backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Chooses the backend of every later `batchcam.fused_cam` call (and of graphs compiled later)."""
    global _backend
    _backend = validate_backend(name)


def get_backend() -> str:
    """The current backend: set_backend's, else $BATCHCAM_BACKEND, else "fused"."""
    if _backend is not None:
        return _backend
    return validate_backend(os.environ.get("BATCHCAM_BACKEND", "fused"))


def gpu_kernel(backend: str) -> str:
    """The GPU kernel a (non-reference) backend runs on CUDA tensors."""
    return backend if backend in GPU_KERNELS else DEFAULT_GPU_KERNEL
