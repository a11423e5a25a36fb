"""Where a fused forward+backward spends its time on CPU, beyond its two kernels.

For each shape, rounds in which every way below runs right after an eager forward+backward of
the reference (as in bench_op.py, where the candidates run round-robin), in an order that
rotates from round to round:
- "autograd": the fused op as users call it (`fused_cam`, then `torch.autograd.grad`);
- "engine": the autograd-aware op and autograd's C++ engine without their Python wrappers
  (`torch.ops.batchcam.cam_forward`, then `Variable._execution_engine.run_backward`, which
  `torch.autograd.grad` calls): its backward's difference to autograd's is that Python;
- "kernels": the same two kernels called directly (`cam_forward`, `cam_backward`);
- a control made of plain aten ops of similar size (`(A * G).sum(1)` and its gradient `gy * G`),
  through autograd and called directly: what autograd costs for ops that are not ours;
- "floor": the memory traffic no implementation can avoid, in aten ops at this machine's speed:
  a forward that reads A and G (their sums), a backward that reads A and writes a fresh tensor of
  its size (`A * 2`). eager/floor is about the most eager/fused can be for any implementation of
  the op: no autograd, no Python and no arithmetic beyond those passes, at aten's own speed.
Medians of each part and of the eager calls (so eager/kernels and eager/autograd are ratios of
one run), and the page faults per forward+backward of each way and of eager. autograd - kernels
is what autograd, the Python around it and the allocation of the gradients add to the kernels.

    python benchmarks/tools/profile_cpu_op.py
"""
import os
import resource
import statistics
import sys
import time

import torch
from torch.autograd import Variable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, bench_op
import batchcam  # noqa: E402
from common import machine, make, write_result  # noqa: E402

SHAPES = [(256, 64, 7, 7), (64, 512, 7, 7), (64, 2048, 7, 7), (1, 2048, 14, 14), (16, 256, 56, 56)]
ROUNDS, WARMUP = 100, 5


def page_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile_shape(shape):
    """{part: median seconds} and {way: page faults per round}."""
    a, g, gy = make((*shape, torch.float32, False), torch.device("cpu"))
    a, g = a.requires_grad_(), g.requires_grad_()
    ad, gd = a.detach(), g.detach()
    options = (True, "minmax", 1e-7, "gradcam", "triton")

    def eager():
        start = time.perf_counter()
        torch.autograd.grad(batchcam.fused_cam_reference(a, g), (a, g), gy)
        return time.perf_counter() - start

    def through_autograd():
        start = time.perf_counter()
        y = batchcam.fused_cam(a, g)
        middle = time.perf_counter()
        torch.autograd.grad(y, (a, g), gy)
        return middle - start, time.perf_counter() - middle

    def through_engine():
        start = time.perf_counter()
        y = torch.ops.batchcam.cam_forward(a, g, *options)[0]
        middle = time.perf_counter()
        Variable._execution_engine.run_backward((y,), (gy,), False, False, (a, g), False, False)
        return middle - start, time.perf_counter() - middle

    def kernels():
        start = time.perf_counter()
        _, w, s, ext = torch.ops.batchcam.cam_forward(ad, gd, *options)
        middle = time.perf_counter()
        torch.ops.batchcam.cam_backward(gy, ad, gd, w, s, ext, *options, [True, True])
        return middle - start, time.perf_counter() - middle

    # A control made of plain aten ops of similar size: y = sum_c A * G, its gradient gy * G.
    def aten_through_autograd():
        start = time.perf_counter()
        y = (a * gd).sum(1)
        middle = time.perf_counter()
        torch.autograd.grad(y, a, gy)
        return middle - start, time.perf_counter() - middle

    def aten_direct():
        start = time.perf_counter()
        (ad * gd).sum(1)
        middle = time.perf_counter()
        gy.unsqueeze(1) * gd
        return middle - start, time.perf_counter() - middle

    def floor():
        start = time.perf_counter()
        ad.sum(), gd.sum()
        middle = time.perf_counter()
        ad * 2.0
        return middle - start, time.perf_counter() - middle

    ways = {"autograd": through_autograd, "engine": through_engine, "kernels": kernels,
            "aten autograd": aten_through_autograd, "aten direct": aten_direct, "floor": floor}
    parts = {"eager": [], **{f"{way} {p}": [] for way in ways for p in ("fwd", "bwd")}}
    faults = {"eager": 0, **{way: 0 for way in ways}}
    order = list(ways.items())
    for round_ in range(WARMUP + ROUNDS):
        # The ways take turns in a rotating order, so that none always follows the same call:
        # which memory a call gets from the allocator depends on what ran before it.
        shift = round_ % len(order)
        for way, run in order[shift:] + order[:shift]:
            before = page_faults()
            seconds = eager()
            if round_ >= WARMUP:
                faults["eager"] += (page_faults() - before) / len(ways)
                parts["eager"].append(seconds)
            before = page_faults()
            forward, backward = run()
            if round_ >= WARMUP:
                faults[way] += page_faults() - before
                parts[f"{way} fwd"].append(forward)
                parts[f"{way} bwd"].append(backward)
    return {k: statistics.median(v) for k, v in parts.items()}, {k: v / ROUNDS for k, v in faults.items()}


def main():
    info = machine("cpu")
    header = ["shape (B,C,H,W)", "kernels fwd us", "kernels bwd us", "autograd fwd us", "autograd bwd us",
              "engine bwd us", "floor fwd+bwd us", "eager fwd+bwd us", "eager/floor", "eager/kernels",
              "eager/autograd", "autograd/kernels",
              "autograd - kernels us", "aten control: autograd - direct us",
              "faults kernels", "faults autograd", "faults eager"]
    rows = []
    for shape in SHAPES:
        t, faults = profile_shape(shape)
        total = {way: t[f"{way} fwd"] + t[f"{way} bwd"]
                 for way in ("kernels", "autograd", "aten direct", "aten autograd", "floor")}
        rows.append([",".join(map(str, shape))] + [f"{t[k] * 1e6:.0f}" for k in
                    ("kernels fwd", "kernels bwd", "autograd fwd", "autograd bwd", "engine bwd")]
                    + [f"{total['floor'] * 1e6:.0f}", f"{t['eager'] * 1e6:.0f}", f"{t['eager'] / total['floor']:.2f}",
                       f"{t['eager'] / total['kernels']:.2f}", f"{t['eager'] / total['autograd']:.2f}",
                       f"{total['autograd'] / total['kernels']:.2f}",
                       f"{(total['autograd'] - total['kernels']) * 1e6:.0f}",
                       f"{(total['aten autograd'] - total['aten direct']) * 1e6:.0f}"]
                    + [f"{faults[k]:.0f}" for k in ("kernels", "autograd", "eager")])
        print(" | ".join(rows[-1]), flush=True)
    table, paths = write_result("profile_cpu_op", info, header, rows,
                                {"method": "each call right after an eager forward+backward; medians of "
                                 f"{ROUNDS} rounds; faults: minor page faults per forward+backward",
                                 "threads": torch.get_num_threads()})
    print("\n" + table + "\n\nwritten: " + ", ".join(paths))


if __name__ == "__main__":
    sys.exit(main())
