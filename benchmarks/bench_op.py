"""fused_cam against the eager reference and torch.compile of the reference, in one process.

For each shape: forward (no grad) and forward+backward (autograd.grad of the map with respect to
both inputs), median of many runs (CPU: the candidates run round-robin, one call each per round,
so the machine's drift spreads over all of them). The bytes floor is 2 passes over B*C*P elements
for the forward; for forward+backward 4 for Grad-CAM (its gG is a broadcast of B x C values) and
6 for every other method (the backward reads A and G and writes gA and gG; docs/op.md), at the
copy bandwidth measured here. With several methods, each method's fused time is also given as a
ratio to Grad-CAM's on the same shape and pass, timed in the same run.

    python benchmarks/bench_op.py                      # CPU, shapes scaled to 2 cores
    python benchmarks/bench_op.py --repeats 3          # CPU: also the run-to-run range of eager/fused
    python benchmarks/bench_op.py --method all --float32-only   # every CAM method
    python benchmarks/bench_op.py --device cuda --method all    # GPU: every GPU kernel built
"""
import argparse
import functools
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batchcam  # noqa: E402
from batchcam.definitions import METHODS  # noqa: E402
from common import (CPU_SHAPES, DTYPE_NAMES, GPU_SHAPES, copy_bandwidth, forward_and_backward, machine,  # noqa: E402
                    make, measure_graph, measure_interleaved, write_result)

# Passes over B*C*P elements of the bytes floor: forward, forward+backward (docs/op.md).
FLOOR_PASSES = {"fwd": 2, "fwd+bwd": 6}
GRADCAM_FLOOR_PASSES = {"fwd": 2, "fwd+bwd": 4}


def time_shape(shape, device, kernels, budget_s, method="gradcam"):
    """{(name, pass): seconds} as launched from Python (CPU: the candidates of a pass run
    round-robin, common.py) and, on CUDA, {(name, pass, "gpu"): seconds} replayed from a CUDA graph."""
    a, g, gy = make(shape, device)
    a = a.abs()  # as after a ReLU (xgradcam and gradcampp divide by a channel's sum of A)
    torch._dynamo.reset()  # one shape's two graphs at a time: never past the recompile limit
    reference = functools.partial(batchcam.fused_cam_reference, method=method)
    compiled = torch.compile(reference, dynamic=False)
    candidates = {f"fused:{k}": (lambda k: lambda x, y: batchcam.fused_cam(x, y, method=method, backend=k))(k)
                  for k in kernels}
    candidates["eager"] = reference
    candidates["compile"] = compiled

    def forward(fn):
        def run():
            with torch.no_grad():
                return fn(a, g)
        return run

    rounds = 30 if device.type == "cpu" else None
    times = {}
    for pass_name, make_run in (("fwd", forward),
                                ("fwd+bwd", lambda fn: forward_and_backward(fn, a.detach(), g.detach(), gy))):
        runs = {n: make_run(fn) for n, fn in candidates.items()}
        for n, t in measure_interleaved(runs, device, rounds, budget_s=budget_s).items():
            times[n, pass_name] = t
        if device.type == "cuda":
            for n, run in runs.items():
                times[n, pass_name, "gpu"] = measure_graph(run)
    return times


def merge_repeats(repeats, kernels):
    """Times of several repeats of one shape -> (median of each timing, {pass: (lowest, highest)
    eager/fused ratio as launched, fused the faster kernel of each repeat})."""
    merged = {key: None if any(r[key] is None for r in repeats) else statistics.median(r[key] for r in repeats)
              for key in repeats[0]}
    spread = {}
    for pass_name in ("fwd", "fwd+bwd"):
        ratios = [r["eager", pass_name] / min(r[f"fused:{k}", pass_name] for k in kernels) for r in repeats]
        spread[pass_name] = (min(ratios), max(ratios))
    return merged, spread


def _us(seconds):
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


def _ratio(num, den):
    return "-" if num is None or den is None else f"{num / den:.2f}"


def table_rows(shape, times, kernels, bandwidth, gpu, method="gradcam", gradcam_times=None):
    """Two rows (fwd, fwd+bwd): times, then ratios (and, given Grad-CAM's times of the same shape,
    the fused time over Grad-CAM's). On a GPU the floor ratio and the faster kernel use the
    CUDA-graph (GPU) times; eager and compile ratios are given both ways, each against the fused
    kernel that is faster that way."""
    B, C, H, W, dtype, channels_last = shape
    nbytes = B * C * H * W * torch.empty((), dtype=dtype).element_size()
    rows = []
    for pass_name, passes in (GRADCAM_FLOOR_PASSES if method == "gradcam" else FLOOR_PASSES).items():
        floor = passes * nbytes / bandwidth
        names = [f"fused:{k}" for k in kernels] + ["eager", "compile"]
        mode = ("gpu",) if gpu else ()  # the times that rank the kernels
        fused = {k: times[(f"fused:{k}", pass_name, *mode)] for k in kernels}
        best = min(fused, key=lambda k: float("inf") if fused[k] is None else fused[k])
        row = [method, f"{B},{C},{H},{W}", DTYPE_NAMES[dtype], "NHWC" if channels_last else "NCHW", pass_name,
               _us(floor)]
        row += [_us(times[n, pass_name]) for n in names]
        row += [_us(times[n, pass_name, "gpu"]) for n in names] if gpu else []
        launched_best = min(times[f"fused:{k}", pass_name] for k in kernels)
        row += [_ratio(floor, fused[best]), _ratio(times["eager", pass_name], launched_best),
                _ratio(times["compile", pass_name], launched_best)]
        if gpu:
            row += [_ratio(times["eager", pass_name, "gpu"], fused[best]),
                    _ratio(times["compile", pass_name, "gpu"], fused[best])]
        row += [best] if len(kernels) > 1 else []
        if gradcam_times is not None:
            row += [_ratio(fused[best], min(gradcam_times[(f"fused:{k}", pass_name, *mode)] for k in kernels))]
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--budget", type=float, default=None, help="GPU: seconds of runs per measurement")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="also write the result files here")
    parser.add_argument("--quick", action="store_true", help="first two shapes only (smoke test)")
    parser.add_argument("--method", default="gradcam", choices=[*METHODS, "all"],
                        help="the CAM method, or every method in turn (default: gradcam)")
    parser.add_argument("--float32-only", action="store_true", help="the float32 shapes only")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every shape this many times, all shapes in turn each time; the "
                             "table gives medians and the range of eager/fused over the repeats")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        shapes, budget = GPU_SHAPES, args.budget or 0.5
        kernels = ["triton"] + (["cuda"] if batchcam.backend.cuda_kernels_built() else [])
    else:
        shapes, budget, kernels = CPU_SHAPES, args.budget or 2.0, ["fused"]
    shapes = shapes[:2] if args.quick else shapes
    shapes = [s for s in shapes if s[4] == torch.float32] if args.float32_only else shapes
    methods = list(METHODS) if args.method == "all" else [args.method]
    versus_gradcam = len(methods) > 1
    bandwidth = copy_bandwidth(device)
    info = machine(device)
    print(f"{info['device']}: copy bandwidth {bandwidth / 1e9:.1f} GB/s; torch {info['torch']}")

    names = kernels + ["eager", "compile"]
    header = ["method", "shape (B,C,H,W)", "dtype", "layout", "pass", "floor us"] + [f"{n} us" for n in names]
    header += [f"{n} gpu us" for n in names] if gpu else []
    header += ["floor/fused", "eager/fused", "compile/fused"]
    header += ["eager/fused gpu", "compile/fused gpu"] if gpu else []
    header += ["faster kernel"] if len(kernels) > 1 else []
    header += ["fused/gradcam fused"] if versus_gradcam else []
    header += ["eager/fused range"] if args.repeats > 1 else []
    rows, repeats = [], {(method, shape): [] for method in methods for shape in shapes}
    for repeat in range(args.repeats):
        if args.repeats > 1:
            print(f"repeat {repeat + 1} of {args.repeats}", flush=True)
        for shape in shapes:
            for method in methods:
                repeats[method, shape].append(time_shape(shape, device, kernels, budget, method))
            if repeat < args.repeats - 1:
                continue
            merged = {method: merge_repeats(repeats[method, shape], kernels) for method in methods}
            for method in methods:
                times, spread = merged[method]
                gradcam_times = merged["gradcam"][0] if versus_gradcam else None
                for row in table_rows(shape, times, kernels, bandwidth, gpu, method, gradcam_times):
                    row += [f"{spread[row[4]][0]:.2f}-{spread[row[4]][1]:.2f}"] if args.repeats > 1 else []
                    rows.append(row)
                    print(" | ".join(row), flush=True)
    notes = {"copy_bandwidth_GBps": bandwidth / 1e9, "kernels": kernels, "repeats": args.repeats,
             "floor_passes": {"gradcam": GRADCAM_FLOOR_PASSES, "other methods": FLOOR_PASSES},
             "inputs": "activations |randn| (as after a ReLU), gradients randn"}
    if "triton" in kernels:
        from batchcam_kernels import fused_cam as triton_kernels

        notes["triton_launch"] = {"tile_elements": list(triton_kernels.TILE_ELEMENTS.values()),
                                  "loop_stages": list(triton_kernels.LOOP_STAGES.values())}
    if gpu:
        notes["columns"] = ("'us': do_bench (L2 flushed), launched from Python, host overhead included "
                            "where the host is slower than the GPU; 'gpu us': replayed from a CUDA graph "
                            "(kernels alone); floor/fused and the faster kernel use the gpu times")
    table, paths = write_result("bench_op", info, header, rows, notes, args.out)
    print(f"\n{info['device']}, copy bandwidth {bandwidth / 1e9:.1f} GB/s, commit {info['commit']}\n")
    print(table)
    print("\nwritten: " + ", ".join(paths))


if __name__ == "__main__":
    sys.exit(main())
