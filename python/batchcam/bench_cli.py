"""`batchcam bench`: the fused op against the plain-PyTorch reference on shapes of your choosing,
on this machine: forward (no grad) and forward+backward (gradients of both inputs), after checking
that both give the same maps.

    batchcam bench --shape 64,512,7,7 --shape 16,256,56,56 --channels-last
    batchcam bench --device cuda --dtype bfloat16 --shape 256,2048,7,7 --method all

Times are medians of torch.utils.benchmark's blocked runs (CUDA synchronised), with every intra-op
thread. benchmarks/bench_op.py is the thorough version behind the README's figures (bandwidth
floor, torch.compile, candidates run round-robin, CUDA-graph GPU times, result files).
"""
import torch
import torch.utils.benchmark as benchmark

from .definitions import METHODS
from .devices import resolve_device
from .functional import fused_cam

# Largest |fused - reference| accepted before timing, on maps in [0, 1]: the two round differently
# (summation order, and for half dtypes the final cast).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def parse_shape(text, channels_last=False):
    """'B,C,H,W' (any number of spatial dims) -> a tuple of positive ints."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--shape must be comma-separated integers such as 64,512,7,7, got {text!r}") from None
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(f"--shape must be (B, C, *S) with at least one spatial dim, all >= 1, got {text!r}")
    if channels_last and len(shape) not in CHANNELS_LAST:
        raise ValueError(f"--channels-last needs a 4-D or 5-D shape, got {text!r}")
    return shape


def make_inputs(shape, dtype, device, channels_last):
    """Activations (positive, as after a ReLU) and gradients (B, C, *S), requiring grad, and a
    gradient for the (B, *S) maps."""
    a, g = torch.randn(shape, device=device, dtype=dtype).abs(), torch.randn(shape, device=device, dtype=dtype)
    if channels_last:
        a, g = (t.contiguous(memory_format=CHANNELS_LAST[len(shape)]) for t in (a, g))
    grad_map = torch.randn((shape[0], *shape[2:]), device=device, dtype=dtype)
    return a.requires_grad_(), g.requires_grad_(), grad_map


def median_seconds(fn, min_run_time):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def bench_shape(shape, dtype, device, channels_last, min_run_time, backend="fused", method="gradcam"):
    """{pass: {backend: seconds}} for "fwd" and "fwd+bwd", `backend` and "reference"; raises if
    their maps disagree."""
    a, g, grad_map = make_inputs(shape, dtype, device, channels_last)
    with torch.no_grad():
        maps = fused_cam(a, g, method=method, backend=backend).double()
        error = (maps - fused_cam(a, g, method=method, backend="reference").double()).abs().max().item()
    if not error <= TOLERANCE[dtype]:
        raise RuntimeError(f"{backend} and reference {method} maps differ by {error:.3g} at {shape} {dtype} "
                           f"(tolerance {TOLERANCE[dtype]:g}): please report this")

    def forward(name):
        def run():
            with torch.no_grad():
                fused_cam(a, g, method=method, backend=name)
        return run

    def forward_backward(name):
        return lambda: torch.autograd.grad(fused_cam(a, g, method=method, backend=name), (a, g), grad_map)

    return {pass_name: {name: median_seconds(make(name), min_run_time) for name in (backend, "reference")}
            for pass_name, make in (("fwd", forward), ("fwd+bwd", forward_backward))}


def run_bench(args):
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = [parse_shape(s, args.channels_last) for s in (args.shape or ["64,512,7,7"])]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"batchcam.fused_cam, backend {args.backend!r} vs 'reference': {where}, {args.dtype}"
          f"{', channels-last' if args.channels_last else ''}, torch {torch.__version__}\n")
    print(f"| method | shape | pass | {args.backend} us | reference us | reference/{args.backend} |")
    print("|---|---|---|---|---|---|")
    for method in METHODS if args.method == "all" else [args.method]:
        for shape in shapes:
            times = bench_shape(shape, dtype, device, args.channels_last, args.min_run_time, args.backend, method)
            for pass_name, t in times.items():
                print(f"| {method} | {','.join(map(str, shape))} | {pass_name} | {t[args.backend] * 1e6:.1f} | "
                      f"{t['reference'] * 1e6:.1f} | {t['reference'] / t[args.backend]:.2f} |", flush=True)
