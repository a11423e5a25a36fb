"""The Triton kernels compile to GPU machine code on a machine without a GPU (the CPU tests run
them in Triton's interpreter, which skips code generation)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "compile_triton_for_gpu.py"), "90"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = re.fullmatch(r"compiled (\d+) kernels for sm_90", result.stdout.strip())
    assert compiled and int(compiled.group(1)) > 0, result.stdout[-2000:]
