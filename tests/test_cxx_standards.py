"""The C++ sources of the op parse as C++17: torch 2.11 (the GPU machines' torch) builds extensions as
C++17, torch 2.13 (CI's, whose build checks C++20) as C++20, and code only C++20 accepts (e.g. class
template argument deduction for aggregates) breaks the GPU build. torch 2.13's own headers use
C++20 extensions that GCC accepts in C++17 with a warning: those warnings are not errors here."""
import os
import subprocess
import sysconfig

import pytest
from helpers import CXX17
from torch.utils.cpp_extension import include_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["csrc/fused_cam.cpp", "csrc/fused_cam_autograd.cpp", "csrc/cpu/fused_cam_cpu.cpp"]


@pytest.mark.parametrize("source", SOURCES)
def test_parses_as_cxx17(source):
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}",
                                                       f"-I{os.path.join(ROOT, 'csrc')}"]
    result = subprocess.run(["g++", *CXX17, "-fsyntax-only", "-fopenmp", "-Wall", "-Werror", *includes,
                             os.path.join(ROOT, source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
