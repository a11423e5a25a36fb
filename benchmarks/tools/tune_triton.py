"""Sweeps two launch parameters of the Triton kernels (batchcam_kernels/fused_cam.py:
TILE_ELEMENTS and LOOP_STAGES) on a GPU, for the forward and the backward kernels alone, and
prints each configuration's time relative to the current default.

    python benchmarks/tools/tune_triton.py [--out DIR]
"""
import argparse
import itertools
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, bench_op
from batchcam_kernels import fused_cam as kernels  # noqa: E402
from common import GPU_SHAPES, machine, make, measure, write_result  # noqa: E402

TILES = (4096, 8192)
STAGES = (1, 2, 3)


def time_config(inputs, tile, stages, budget):
    """(forward, backward) seconds; infinite where this configuration fails to compile or run."""
    kernels.TILE_ELEMENTS, kernels.LOOP_STAGES = {False: tile, True: tile}, {False: stages, True: stages}
    a, g, gy = inputs
    try:
        y, w, s, ext = kernels.cam_forward(a, g, True, "minmax", 1e-7)
        fwd = measure(lambda: kernels.cam_forward(a, g, True, "minmax", 1e-7), "cuda", budget_s=budget)
        bwd = measure(lambda: kernels.cam_backward(gy, a, w, s, ext, True, "minmax", 1e-7, (True, True)),
                      "cuda", budget_s=budget)
    except Exception as error:  # a sweep reports a failing configuration and goes on
        print(f"tile {tile}, stages {stages}, shape {tuple(a.shape)}: {type(error).__name__}: {error}".splitlines()[0])
        return math.inf, math.inf
    return fwd, bwd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds of runs per measurement")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    default_tiles, default_stages = dict(kernels.TILE_ELEMENTS), dict(kernels.LOOP_STAGES)
    header = ["shape (B,C,H,W)", "dtype", "layout", "tile", "loop stages", "fwd us", "bwd us",
              "fwd / default", "bwd / default"]
    rows, ratios = [], {}
    for shape in GPU_SHAPES:
        inputs = make(shape, "cuda")
        times = {(t, n): time_config(inputs, t, n, args.budget) for t, n in itertools.product(TILES, STAGES)}
        B, C, H, W, dtype, channels_last = shape
        base = times[default_tiles[channels_last], default_stages[channels_last]]
        for n in STAGES:
            fwd, bwd = times[default_tiles[channels_last], n]
            ratios.setdefault((channels_last, n), []).extend([fwd / base[0], bwd / base[1]])
        for (tile, stages), (fwd, bwd) in times.items():
            row = [f"{B},{C},{H},{W}", str(dtype).replace("torch.", ""), "NHWC" if channels_last else "NCHW",
                   tile, stages, f"{fwd * 1e6:.1f}", f"{bwd * 1e6:.1f}", f"{fwd / base[0]:.2f}",
                   f"{bwd / base[1]:.2f}"]
            rows.append(row)
            print(" | ".join(map(str, row)), flush=True)
    kernels.TILE_ELEMENTS, kernels.LOOP_STAGES = default_tiles, default_stages
    best_stages = {layout: min(STAGES, key=lambda n: math.prod(ratios[layout, n])) for layout in (False, True)}
    print("loop stages with the lowest product of forward and backward times at the default tiles: "
          f"contiguous {best_stages[False]}, channels-last {best_stages[True]}")
    table, paths = write_result("tune_triton", machine("cuda"), header, rows,
                                {"default_tiles": list(default_tiles.values()),
                                 "default_stages": list(default_stages.values()),
                                 "best_stages": list(best_stages.values())},
                                args.out)
    print(f"\n{table}\n\nwritten: {', '.join(paths)}")


if __name__ == "__main__":
    sys.exit(main())
