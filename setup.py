"""Builds batchcam._C: the op schemas, the C++ CPU kernels and, where torch was built with CUDA
and a matching CUDA toolkit (nvcc) is found, the CUDA kernels. No GPU is needed to build them.

Environment:
  BATCHCAM_SKIP_CUDA_BUILD=1   build the CPU kernels only, even where nvcc is found
  BATCHCAM_DEBUG=1             -O0 -g instead of -O3
  TORCH_CUDA_ARCH_LIST         CUDA architectures (torch's own switch, e.g. "9.0"); unset with no
                               GPU visible: DEFAULT_CUDA_ARCHS
  MAX_JOBS                     parallel compile jobs (torch's own switch)
"""
import glob
import os
import re
import subprocess

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# The architectures the CUDA kernels are written for (Ampere, Hopper), plus PTX for newer cards.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _nvcc_version():
    """(major, minor) of $CUDA_HOME/bin/nvcc, or None where it does not run."""
    try:
        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _use_cuda():
    """Whether to build the CUDA kernels; says in one line why not where torch has CUDA."""
    if torch.version.cuda is None or os.environ.get("BATCHCAM_SKIP_CUDA_BUILD", "0") == "1":
        return False
    nvcc = _nvcc_version() if CUDA_HOME else None
    torch_major = int(torch.version.cuda.split(".")[0])
    if nvcc is None or nvcc[0] != torch_major:
        found = f"nvcc {nvcc[0]}.{nvcc[1]} at {CUDA_HOME}" if nvcc else "no nvcc (set CUDA_HOME)"
        print(f"batchcam: torch is built with CUDA {torch.version.cuda} but {found}: building the CPU kernels only")
        return False
    if not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        print(f"batchcam: no CUDA headers in {CUDA_HOME}/include (set CUDA_HOME to the CUDA toolkit's folder): "
              "building the CPU kernels only")
        return False
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        print(f"batchcam: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building the CUDA kernels for "
              f"{DEFAULT_CUDA_ARCHS}")
    return True


def cxx_flags():
    """Compiler flags of the C++ sources: no -march, so the library runs on any CPU of its
    architecture; the AVX2 kernels are compiled apart and chosen at run time (csrc/cpu/)."""
    debug = os.environ.get("BATCHCAM_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -ffp-contract=off: floating-point arithmetic exactly as written (GCC's default in C++ fuses
    # a * b + c into an FMA where it vectorises, so one kernel instantiation could round
    # differently from another); FMAs only where the code asks for them. -fno-trapping-math: no
    # code reads floating-point exception flags, so a select between two computed values (x <= 0 ?
    # 0 : t, with t a division) is vectorised instead of branching around the division.
    return cxx + ["-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-DPy_LIMITED_API=0x030A0000"]


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
        options={"bdist_wheel": {"py_limited_api": "cp310"}},  # requires-python >= 3.10
    )
