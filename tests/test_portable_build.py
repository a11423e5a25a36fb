"""The extension runs on any x86-64 CPU: the C++ is built without -march, the AVX2/FMA/F16C
kernels are compiled apart (csrc/cpu/fused_cam_cpu_avx2.cpp) and chosen at run time where the CPU
has them. Checked here: which kernels run, the baseline kernels against the float64 reference
(through the whole op, in a process that forces them), and that no instruction beyond the
baseline lies outside the run-time-chosen functions of the built library."""
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import batchcam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = batchcam._C.__file__


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU's flags from /proc/cpuinfo")
def test_the_best_kernels_this_cpu_has_run():
    expected = "avx2" if {"avx2", "fma", "f16c"} <= cpu_flags() else "baseline"
    assert torch.ops.batchcam.cpu_capability() == expected


def test_baseline_kernels_match_reference():
    """The op tests of the CPU kernels (every dtype, layout and shape class, ties, NaN, gradcheck,
    opcheck) and of the imputation with the baseline kernels forced by BATCHCAM_CPU_CAPABILITY."""
    env = {**os.environ, "BATCHCAM_CPU_CAPABILITY": "baseline"}
    probe = subprocess.run([sys.executable, "-c", "import torch, batchcam; print(torch.ops.batchcam.cpu_capability())"],
                           env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "baseline", probe.stderr[-2000:]
    runs = (("not triton", ("test_fused_cam.py", "test_kernels.py")), ("impute", ("test_metrics.py",)))
    for selection, files in runs:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
                                *(os.path.join(ROOT, "tests", name) for name in files)],
                               env=env, capture_output=True, text=True, cwd=ROOT)
        assert tests.returncode == 0, tests.stdout[-4000:]
        assert re.search(r"\d+ passed", tests.stdout)


def test_unknown_capability_is_refused():
    env = {**os.environ, "BATCHCAM_CPU_CAPABILITY": "avx9"}
    run = subprocess.run([sys.executable, "-c", "import torch, batchcam; torch.ops.batchcam.cpu_capability()"],
                         env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "BATCHCAM_CPU_CAPABILITY must be 'baseline' or 'avx2', got 'avx9'" in run.stderr


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_no_avx_outside_the_avx2_kernels():
    """Every VEX-encoded instruction (AVX, AVX2, FMA, F16C) of batchcam._C lies in a function of
    the namespace batchcam::avx2, which runs only where the CPU has them."""
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", LIBRARY], capture_output=True,
                             text=True, check=True).stdout
    function, outside, inside = None, {}, 0
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        mnemonic = fields[1].split()[0] if len(fields) > 1 and fields[1].split() else ""
        if mnemonic.startswith("v") and re.search(r"%[xyz]mm|vzeroupper", line):
            if "batchcam::avx2::" in function:
                inside += 1
            else:
                outside.setdefault(function, line.strip())
    assert not outside, f"VEX instructions outside batchcam::avx2: {list(outside.items())[:5]}"
    if platform.machine() == "x86_64":
        assert inside > 0, "no AVX2 kernels in the library"
