"""Host time per call of the op's GPU paths: where the Triton path's launch overhead goes.

bench_op.py's "as launched" columns show the Triton kernels' forward+backward through autograd
costing the host several times the C++/CUDA kernels' at small shapes. This times, per call and
without waiting for the GPU, each layer of that path for both kernels: the kernel entry points
called directly, the op without autograd, and forward+backward through autograd (with the
backward on autograd's device thread, as by default, and on the calling thread); then profiles
(cProfile) the Python side of the Triton calls.

    python benchmarks/tools/profile_gpu_host.py [--shape 1024,64,7,7] [--out DIR]
"""
import argparse
import cProfile
import functools
import io
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, bench_op
import batchcam  # noqa: E402
from batchcam_kernels import fused_cam as triton_kernels  # noqa: E402
from common import forward_and_backward, host_and_wall, machine, make, write_result  # noqa: E402

OPTIONS = (True, "minmax", 1e-7, "gradcam")


def host_seconds(fn, calls):
    """Seconds of host time per call: `calls` calls issued back to back, the GPU not waited for."""
    for _ in range(5):
        fn()
    return host_and_wall(fn, calls)[0]


def autograd_call(kernel, a, g, gy):
    return forward_and_backward(functools.partial(batchcam.fused_cam, backend=kernel), a.detach(), g.detach(), gy)


def candidates(a, g, gy):
    _, w, s, ext = triton_kernels.cam_forward(a, g, *OPTIONS)
    ops = torch.ops.batchcam
    runs = {
        "triton cam_forward, direct": lambda: triton_kernels.cam_forward(a, g, *OPTIONS),
        "triton cam_backward, direct": lambda: triton_kernels.cam_backward(gy, a, g, w, s, ext, *OPTIONS, (True, True)),
        "cuda cam_forward, direct": lambda: ops.cam_forward(a, g, *OPTIONS, "cuda"),
        "cuda cam_backward, direct": lambda: ops.cam_backward(gy, a, g, w, s, ext, *OPTIONS, "cuda", [True, True]),
    }
    for kernel in ("triton", "cuda"):
        def forward(kernel=kernel):
            with torch.no_grad():
                return batchcam.fused_cam(a, g, backend=kernel)
        runs[f"{kernel} op forward, no grad"] = forward
        runs[f"{kernel} fwd+bwd through autograd"] = autograd_call(kernel, a, g, gy)
    runs["eager reference fwd+bwd through autograd"] = autograd_call("reference", a, g, gy)
    return runs


def profile(fn, calls, sort, lines):
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(lines)
    return text.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1024,64,7,7")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    a, g, gy = make((*shape, torch.float32, False), torch.device("cuda"))
    rows = [[name, f"{host_seconds(fn, args.calls) * 1e6:.1f}"] for name, fn in candidates(a, g, gy).items()]
    torch.autograd.set_multithreading_enabled(False)  # the backward on this thread
    for kernel in ("triton", "cuda"):
        fn = autograd_call(kernel, a, g, gy)
        rows.append([f"{kernel} fwd+bwd, backward on this thread", f"{host_seconds(fn, args.calls) * 1e6:.1f}"])
    table, paths = write_result("profile_gpu_host", machine("cuda"), ["call", "host us per call"], rows,
                                {"shape": args.shape, "dtype": "fp32", "calls": args.calls}, args.out)
    print(f"{table}\n\nwritten: {', '.join(paths)}")
    print("\ncProfile, triton cam_backward direct, by own time:")
    print(profile(candidates(a, g, gy)["triton cam_backward, direct"], args.calls, "tottime", 15))
    print("cProfile, triton fwd+bwd (backward on this thread), by cumulative time:")
    print(profile(autograd_call("triton", a, g, gy), args.calls, "cumulative", 30))
    torch.autograd.set_multithreading_enabled(True)


if __name__ == "__main__":
    sys.exit(main())
