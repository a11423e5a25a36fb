"""Sweeps the two launch parameters of the Triton kernels (batchcam_kernels/fused_cam.py:
TILE_ELEMENTS and PROGRAMS_PER_SM) on a GPU, for the forward and the backward kernels alone,
and prints each configuration's time relative to the current default.

    python benchmarks/tune_triton.py [--out DIR]
"""
import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batchcam_kernels import fused_cam as kernels  # noqa: E402
from bench_op import make  # noqa: E402
from common import machine, measure, write_result  # noqa: E402

SHAPES = [
    (1024, 64, 7, 7, torch.float32, False),
    (256, 2048, 7, 7, torch.float32, False),
    (256, 2048, 7, 7, torch.bfloat16, False),
    (8, 2048, 14, 14, torch.float32, False),
    (64, 256, 56, 56, torch.float32, False),
    (64, 256, 56, 56, torch.float32, True),
]
TILES = (4096, 8192)
PROGRAMS = (2, 4)


def time_config(shape, tile, programs, budget):
    kernels.TILE_ELEMENTS, kernels.PROGRAMS_PER_SM = {False: tile, True: tile}, programs
    a, g, gy = make(shape, "cuda")
    y, w, s, ext = kernels.cam_forward(a, g, True, "minmax", 1e-7)
    fwd = measure(lambda: kernels.cam_forward(a, g, True, "minmax", 1e-7), "cuda", budget_s=budget)
    bwd = measure(lambda: kernels.cam_backward(gy, a, w, s, ext, True, "minmax", 1e-7, (True, True)),
                  "cuda", budget_s=budget)
    return fwd, bwd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds of runs per measurement")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    default_tiles, default_programs = dict(kernels.TILE_ELEMENTS), kernels.PROGRAMS_PER_SM
    header = ["shape (B,C,H,W)", "dtype", "layout", "tile", "programs/SM", "fwd us", "bwd us",
              "fwd / default", "bwd / default"]
    rows = []
    for shape in SHAPES:
        times = {(t, p): time_config(shape, t, p, args.budget) for t, p in itertools.product(TILES, PROGRAMS)}
        B, C, H, W, dtype, channels_last = shape
        base = times[default_tiles[channels_last], default_programs]
        for (tile, programs), (fwd, bwd) in times.items():
            row = [f"{B},{C},{H},{W}", str(dtype).replace("torch.", ""), "NHWC" if channels_last else "NCHW",
                   tile, programs, f"{fwd * 1e6:.1f}", f"{bwd * 1e6:.1f}", f"{fwd / base[0]:.2f}",
                   f"{bwd / base[1]:.2f}"]
            rows.append(row)
            print(" | ".join(map(str, row)), flush=True)
    kernels.TILE_ELEMENTS, kernels.PROGRAMS_PER_SM = default_tiles, default_programs
    table, paths = write_result("tune_triton", machine("cuda"), header, rows,
                                {"default_tiles": list(default_tiles.values()), "default_programs": default_programs},
                                args.out)
    print(f"\n{table}\n\nwritten: {', '.join(paths)}")


if __name__ == "__main__":
    sys.exit(main())
