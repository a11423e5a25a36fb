"""Which implementation computes the map: `set_backend`, `get_backend` and `BATCHCAM_BACKEND`.

- "fused": the op `torch.ops.batchcam.fused_cam`; on CUDA it runs DEFAULT_GPU_KERNEL.
- "triton", "cuda": the op, with that GPU kernel on CUDA tensors.
- "reference": the plain-PyTorch composition (`batchcam.reference`).
CPU tensors always run the C++ kernel under every backend except "reference".
"""
import os

BACKENDS = ("fused", "triton", "cuda", "reference")
GPU_KERNELS = ("triton", "cuda")
# The GPU kernel of "fused". benchmarks/bench_op.py on an H100 (README, performance): Triton takes
# less GPU time at 5 of 7 shapes (C++/CUDA at B = 8 and channels-last), and is there wherever
# torch has CUDA; C++/CUDA takes about half the host time per call (better for launch-bound loops).
DEFAULT_GPU_KERNEL = "triton"

_backend = None  # None: not chosen yet, BATCHCAM_BACKEND or "fused" on first use


def _validate(name):
    if name not in BACKENDS:
        raise ValueError(f"batchcam backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Chooses the backend of every later `batchcam.fused_cam` call (and of graphs compiled later)."""
    global _backend
    _backend = _validate(name)


def get_backend() -> str:
    """The current backend: set_backend's, else $BATCHCAM_BACKEND, else "fused"."""
    if _backend is not None:
        return _backend
    return _validate(os.environ.get("BATCHCAM_BACKEND", "fused"))


def gpu_kernel(backend: str) -> str:
    """The GPU kernel a (non-reference) backend runs on CUDA tensors."""
    return backend if backend in GPU_KERNELS else DEFAULT_GPU_KERNEL
