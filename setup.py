"""Builds batchcam._C: the op schemas, the C++ CPU kernels and, where the CUDA toolkit is found
and torch was built with CUDA, the CUDA kernels.

Environment:
  BATCHCAM_SKIP_CUDA_BUILD=1   build the CPU kernels only, even where nvcc is found
  BATCHCAM_DEBUG=1             -O0 -g instead of -O3
  TORCH_CUDA_ARCH_LIST         CUDA architectures (torch's own switch, e.g. "9.0")
  MAX_JOBS                     parallel compile jobs (torch's own switch)
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _use_cuda():
    if os.environ.get("BATCHCAM_SKIP_CUDA_BUILD", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def cxx_flags():
    """Compiler flags of the C++ sources: no -march, so the library runs on any CPU of its
    architecture; the AVX2 kernels are compiled apart and chosen at run time (csrc/cpu/)."""
    debug = os.environ.get("BATCHCAM_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -ffp-contract=off: floating-point arithmetic exactly as written (GCC's default in C++ fuses
    # a * b + c into an FMA where it vectorises, so one kernel instantiation could round
    # differently from another); FMAs only where the code asks for them.
    return cxx + ["-fopenmp", "-ffp-contract=off", "-DPy_LIMITED_API=0x03090000"]


def _extension():
    debug = os.environ.get("BATCHCAM_DEBUG", "0") == "1"
    cxx = cxx_flags()
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    kwargs = dict(
        name="batchcam._C",
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if not _use_cuda():
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
    return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                         **kwargs)


if __name__ == "__main__":
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )
