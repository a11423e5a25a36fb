"""Where the time of `batchcam.explain` goes on a GPU: device time against a plain forward (each
backend), host time per call, the calls that synchronise with the device, and profiler tables.

    python benchmarks/tools/profile_explain.py > profile.txt      # needs CUDA and torchvision
"""
import os
import sys
import warnings

import torch
import torchvision
from triton.testing import do_bench

import batchcam
from batchcam.models import build_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from common import host_and_wall  # noqa: E402


def synchronising_calls(fn):
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    torch.cuda.set_sync_debug_mode(0)
    return [str(w.message).splitlines()[0] for w in caught if "synchronizing" in str(w.message)]


def profile(name, model, layer, x):
    with torch.no_grad():
        targets = model(x).argmax(1)

    def forward():
        with torch.no_grad():
            return model(x)

    fns = {"forward": forward}
    for backend in ("triton", "cuda", "reference"):
        fns[backend] = (lambda b: lambda: batchcam.explain(model, layer, x, targets, backend=b))(backend)
    for fn in fns.values():
        fn()
    for rep in range(2):
        times = {k: round(do_bench(fn, rep=300, return_mode="median"), 3) for k, fn in fns.items()}
        print(f"{name} device ms (do_bench, run {rep}): {times}", flush=True)
    for k, fn in fns.items():
        host, wall = (seconds * 1e3 for seconds in host_and_wall(fn))
        print(f"{name} {k}: host {host:.2f} ms/call, wall {wall:.2f} ms/call", flush=True)
    print(f"{name} synchronising calls in one explain: {synchronising_calls(fns['triton'])}", flush=True)
    for k in ("triton", "reference"):
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                fns[k]()
            torch.cuda.synchronize()
        for sort in ("cuda_time_total", "cpu_time_total"):
            print(f"--- {name} {k}, 3 calls, by {sort}")
            print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60))


def main():
    torch.manual_seed(0)
    setups = [
        ("resnet50 224x224, 64", torchvision.models.resnet50(), "layer4", (64, 3, 224, 224)),
        ("resnet18 28x28, 64", build_model("resnet18"), "target_layer", (64, 1, 28, 28)),
    ]
    for name, model, layer, shape in setups:
        model = model.cuda().eval()
        profile(name, model, getattr(model, layer), torch.rand(shape, device="cuda"))


if __name__ == "__main__":
    main()
