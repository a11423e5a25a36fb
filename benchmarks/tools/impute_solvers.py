"""ROAD's imputation on CPU by each solver of batchcam::impute_linear: "direct" (a band Cholesky
factorisation per image, shared by its channels), "cg" (conjugate gradients per channel) and
"auto" (per image the cheaper, csrc/cpu/impute_cpu_kernels.h), through metrics.linear_impute on
ROAD's masks: a smooth map per image (uniform noise on a grid of size / 16, bilinearly
upsampled), the pixels at or above (MoRF) and below (LeRF) each of its 9 percentiles removed
(metrics.road_masks of the map and of 1 - map).

Timed round-robin in one process; the median of the rounds per solver and the range of the
rounds' own ratios. The rows back the crossover of the "auto" rule (kDirectBandPerChannel).

    python benchmarks/tools/impute_solvers.py --rounds 5
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common
from batchcam import metrics  # noqa: E402
from common import machine, measure_interleaved, write_result  # noqa: E402

# (batch, channels, size): bench_metrics' two cases (SimpleCNN's grey 28x28, ResNet-18's RGB
# 64x64, batch 64), then larger images around the rule's crossover, one and three channels.
CASES = ((64, 1, 28), (64, 3, 64), (8, 1, 64), (4, 1, 128), (2, 1, 192), (4, 3, 128), (1, 3, 256), (1, 3, 384))
SOLVERS = ("direct", "cg", "auto")


def road_removed(batch, size, generator):
    """(18 batch, size, size) bool: metrics.road's removed pixels, MoRF then LeRF, percentile by
    percentile."""
    coarse = max(2, size // 16)
    maps = F.interpolate(torch.rand(batch, 1, coarse, coarse, generator=generator), size=(size, size),
                         mode="bilinear", align_corners=False)[:, 0]
    return torch.cat([metrics.road_masks(ranked).reshape(-1, size, size) for ranked in (maps, 1 - maps)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin timing rounds")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    header = ["images x channels, size", "direct s", "cg s", "auto s", "cg / direct", "rounds' cg / direct",
              "auto / faster", "max |direct - cg|"]
    rows = []
    for batch, channels, size in CASES:
        removed = road_removed(batch, size, generator)
        images = torch.rand(removed.shape[0], channels, size, size, generator=generator)
        solve = {name: (lambda name=name: metrics.linear_impute(images, removed, solver=name)) for name in SOLVERS}
        difference = (solve["direct"]() - solve["cg"]()).abs().max().item()
        samples = {}
        median = measure_interleaved(solve, "cpu", rounds=args.rounds, warmup=1, samples=samples)
        ratios = [c / d for c, d in zip(samples["cg"], samples["direct"])]
        rows.append([f"{removed.shape[0]} x {channels}, {size}x{size}", *(f"{median[s]:.3f}" for s in SOLVERS),
                     f"{median['cg'] / median['direct']:.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}",
                     f"{median['auto'] / min(median['direct'], median['cg']):.2f}", f"{difference:.1e}"])
        print(" | ".join(rows[-1]), flush=True)
    table, paths = write_result("impute_solvers", machine(torch.device("cpu")), header, rows,
                                extra={"rounds": args.rounds})
    print()
    print(table)
    print("written:", ", ".join(paths))


if __name__ == "__main__":
    main()
