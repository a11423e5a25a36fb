"""The CPU kernels of this working tree against another commit's, built alike, timed in one process.

On a shared VM, CPU timings move by 20% or more from one process to the next; two builds timed in
turn within one process compare to a few percent. Each build is an op library of its own (the C++
namespace and the torch library renamed by -Dbatchcam=...), compiled with the flags of setup.py's
cxx_flags and Python's own, as setuptools compiles them (-fwrapv among them changes GCC's code
here by up to 2x).
Forward and backward kernels are called directly (no autograd), each timed as the fastest of 25
rounds of repeated calls, after a check that both builds agree (the map, gA and gG).

    python benchmarks/tools/ab_cpu_kernel.py --base HEAD~1
    python benchmarks/tools/ab_cpu_kernel.py --base 6789897 --threads 1 --dtype float16 --shape 32,64,7,7
    python benchmarks/tools/ab_cpu_kernel.py --base HEAD --base-flags=-march=native   # vs a native build
"""
import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, bench_op
from common import git, machine, make, source_at, write_result  # noqa: E402

from batchcam.definitions import METHODS  # noqa: E402

# setup.py's cxx_flags for a release build (keep the two alike).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-DPy_LIMITED_API=0x030A0000"]
# (B, C, H, W, channels_last): the CPU shapes of bench_op.py, plus channels-last at small batches.
SHAPES = [(256, 64, 7, 7, False), (64, 512, 7, 7, False), (64, 2048, 7, 7, False), (1, 2048, 14, 14, False),
          (16, 256, 56, 56, False), (16, 256, 56, 56, True), (2, 256, 28, 28, True), (1, 512, 14, 14, True),
          (4, 2048, 7, 7, True)]


def build(label, commit, workdir, extra_flags=()):
    """torch.ops.<namespace> of the schemas and CPU kernels at `commit` (None: the working tree),
    with `extra_flags` besides CXX_FLAGS."""
    import shlex
    import sysconfig

    from torch.utils.cpp_extension import load

    if commit is None:
        paths = git("ls-files", "--cached", "--others", "--exclude-standard", "csrc").split()
    else:
        paths = git("ls-tree", "-r", "--name-only", commit, "csrc").split()
    # The schemas and the CPU kernels (and every header); not the autograd, which names the ops
    # of the real library in strings that the renaming does not reach.
    paths = [p for p in paths if os.path.dirname(p) in ("csrc", "csrc/cpu")
             and (p.endswith(".h") or p == "csrc/fused_cam.cpp" or p.startswith("csrc/cpu/"))]
    for path in paths:
        target = os.path.join(workdir, label, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        text = open(os.path.join(ROOT, path)).read() if commit is None else source_at(commit, path)
        open(target, "w").write(text)
    namespace = f"batchcam_ab_{label}"
    flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "") + CXX_FLAGS + list(extra_flags)
    flags.append(f"-Dbatchcam={namespace}")
    load(name=namespace, sources=[os.path.join(workdir, label, p) for p in paths if p.endswith(".cpp")],
         extra_cflags=flags, extra_ldflags=["-fopenmp"], is_python_module=False,
         build_directory=os.path.join(workdir, label))
    return getattr(torch.ops, namespace)


def kernels(ops, a, g, gy, method):
    """The forward and backward kernel calls of one build, on fixed inputs."""
    if "method" in str(ops.cam_forward.default._schema):  # builds from the method family on
        options, saved = (True, "minmax", 1e-7, method, "fused"), (a, g)
    elif method == "gradcam":
        options, saved = (True, "minmax", 1e-7, "fused"), (a,)
    else:
        raise SystemExit(f"ab_cpu_kernel: the base build has Grad-CAM only, not {method!r}")
    _, w, s, ext = ops.cam_forward(a, g, *options)
    return {"fwd": lambda: ops.cam_forward(a, g, *options),
            "bwd": lambda: ops.cam_backward(gy, *saved, w, s, ext, *options, [True, True])}


def fastest(calls, runs, rounds=25):
    """{key: seconds per call}: the fastest round of `runs` calls, the functions taking turns."""
    best = dict.fromkeys(calls, float("inf"))
    for fn in calls.values():
        fn()
    for _ in range(rounds):
        for key, fn in calls.items():
            start = time.perf_counter()
            for _ in range(runs):
                fn()
            best[key] = min(best[key], (time.perf_counter() - start) / runs)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="commit to compare the working tree with")
    parser.add_argument("--base-flags", default="", help="compiler flags for the base build only (e.g. -march=native)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--method", default="gradcam", choices=METHODS, help="the CAM method (default: gradcam)")
    parser.add_argument("--shape", action="append", help="B,C,H,W[,nhwc] (repeatable; default: SHAPES)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="also write the result files here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    shapes = SHAPES if not args.shape else [
        (*map(int, s.split(",")[:4]), s.endswith(",nhwc")) for s in args.shape]
    base_commit = git("rev-parse", "--short", args.base).strip()
    with tempfile.TemporaryDirectory() as workdir:
        print("building both (about a minute each)", flush=True)
        builds = {"base": build("base", base_commit, workdir, args.base_flags.split()),
                  "this": build("this", None, workdir)}

    header = ["shape (B,C,H,W)", "layout", "base fwd us", "this fwd us", "this/base fwd",
              "base bwd us", "this bwd us", "this/base bwd"]
    rows = []
    for B, C, H, W, channels_last in shapes:
        a, g, gy = make((B, C, H, W, dtype, channels_last), torch.device("cpu"))
        a = a.abs()  # as after a ReLU (xgradcam and gradcampp divide by a channel's sum of A), as bench_op
        calls = {(label, name): fn for label, ops in builds.items()
                 for name, fn in kernels(ops, a, g, gy, args.method).items()}
        # the two builds agree on the map and on both gradients
        pairs = [(calls["base", "fwd"]()[0], calls["this", "fwd"]()[0]),
                 *zip(calls["base", "bwd"](), calls["this", "bwd"]())]
        for base_out, this_out in pairs:
            torch.testing.assert_close(this_out.double(), base_out.double(), rtol=1e-2, atol=1e-3, equal_nan=True)
        best = fastest(calls, runs=max(1, int(2e6 / a.numel())))
        row = [f"{B},{C},{H},{W}", "NHWC" if channels_last else "NCHW"]
        for name in ("fwd", "bwd"):
            row += [f"{best['base', name] * 1e6:.1f}", f"{best['this', name] * 1e6:.1f}",
                    f"{best['this', name] / best['base', name]:.2f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)
    info = machine(torch.device("cpu"))
    notes = {"base": base_commit, "base_flags": args.base_flags, "threads": args.threads, "dtype": args.dtype,
             "cam_method": args.method, "inputs": "activations |randn|, gradients randn",
             "method": "kernels called directly; fastest of 25 rounds, the two builds in turn"}
    table, paths = write_result("ab_cpu_kernel", info, header, rows, notes, args.out)
    print("\n" + table + "\nwritten: " + ", ".join(paths))


if __name__ == "__main__":
    main()
