"""The Triton kernels of this working tree against another version of batchcam_kernels/fused_cam.py,
on a GPU, in one process: forward and backward entry points called directly (no autograd), each
replayed from a CUDA graph with the L2 cache flushed (the kernels alone), the two versions timed
in turn for several rounds, after a check that they agree.

    python benchmarks/tools/ab_triton.py --base HEAD~1            # a commit (needs git)
    python benchmarks/tools/ab_triton.py --base .ab/fused_cam.py  # a file (e.g. carried to the device)
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, bench_op
from batchcam_kernels import fused_cam as current  # noqa: E402
from common import GPU_SHAPES, machine, make, measure_graph, source_at, write_result  # noqa: E402

OPTIONS = (True, "minmax", 1e-7, "gradcam")


def load_base(base):
    """The module of `base`: a path to a fused_cam.py, or a commit whose fused_cam.py is taken."""
    path = base
    if not os.path.isfile(base):
        path = os.path.join(tempfile.mkdtemp(), "fused_cam_base.py")  # Triton reads a kernel's source file
        with open(path, "w") as f:
            f.write(source_at(base, "batchcam_kernels/fused_cam.py"))
    spec = importlib.util.spec_from_file_location("fused_cam_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calls(kernels, a, g, gy):
    """The forward and backward entry points of one version, on fixed inputs."""
    _, w, s, ext = kernels.cam_forward(a, g, *OPTIONS)
    return {"fwd": lambda: kernels.cam_forward(a, g, *OPTIONS),
            "bwd": lambda: kernels.cam_backward(gy, a, g, w, s, ext, *OPTIONS, (True, True))}


def max_difference(x, y):
    return max((p.double() - q.double()).abs().max().item() for p, q in zip(x, y) if p is not None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a commit, or the path of a fused_cam.py")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both versions in turn (median taken)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    base = load_base(args.base)
    header = ["shape (B,C,H,W)", "dtype", "layout", "pass", "this us", "base us", "this / base", "max |diff|"]
    rows = []
    for shape in GPU_SHAPES:
        a, g, gy = make(shape, "cuda")
        versions = {"this": calls(current, a, g, gy), "base": calls(base, a, g, gy)}
        B, C, H, W, dtype, channels_last = shape
        for pass_name in ("fwd", "bwd"):
            difference = max_difference(versions["this"][pass_name](), versions["base"][pass_name]())
            times = {name: [] for name in versions}
            for _ in range(args.rounds):
                for name, fns in versions.items():
                    times[name].append(measure_graph(fns[pass_name]))
            this, base_time = (statistics.median(times[name]) for name in ("this", "base"))
            row = [f"{B},{C},{H},{W}", str(dtype).replace("torch.", ""), "NHWC" if channels_last else "NCHW",
                   pass_name, f"{this * 1e6:.1f}", f"{base_time * 1e6:.1f}", f"{this / base_time:.2f}",
                   f"{difference:.1e}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    table, paths = write_result("ab_triton", machine("cuda"), header, rows,
                                {"base": args.base, "rounds": args.rounds}, args.out)
    print(f"\n{table}\n\nwritten: {', '.join(paths)}")


if __name__ == "__main__":
    sys.exit(main())
