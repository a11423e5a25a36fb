"""Shared by the benchmark scripts: timing, copy bandwidth, the machine record, result data.

Every run appends one record to benchmarks/results/<bench>.jsonl: the machine (card or CPU,
versions, date, commit), the table (header and rows) and the run's settings, with
$BATCHCAM_RESULT_TAG as its tag (a run made under other settings, e.g. glibc's MALLOC_*
variables). Every variable that changes timings (allocator, OpenMP, BLAS threads) is recorded
when set. `python benchmarks/render.py` turns records into the tables of docs/.
"""
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(RESULTS))
TIMING_VARIABLES = ("MALLOC_", "OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "BATCHCAM_BACKEND")


# The benchmarks' shapes, (B, C, H, W, dtype, channels_last): typical target layers (ResNet-18 and
# ResNet-50 at 224x224, an early layer), plus B = 8 and channels-last on GPU.
GPU_SHAPES = [
    (1024, 64, 7, 7, torch.float32, False),
    (256, 512, 7, 7, torch.float32, False),
    (256, 2048, 7, 7, torch.float32, False),
    (64, 256, 56, 56, torch.float32, False),
    (256, 2048, 7, 7, torch.bfloat16, False),
    (8, 2048, 14, 14, torch.float32, False),
    (64, 256, 56, 56, torch.float32, True),
]
# The same shape classes at a quarter of the batch (64, 256, 56, 56 at 16), so that the eager
# forward+backward of the largest fits a few seconds on 2 cores; float16 too (its own CPU path).
CPU_SHAPES = [
    (256, 64, 7, 7, torch.float32, False),
    (64, 512, 7, 7, torch.float32, False),
    (64, 2048, 7, 7, torch.float32, False),
    (16, 256, 56, 56, torch.float32, False),
    (64, 2048, 7, 7, torch.bfloat16, False),
    (64, 2048, 7, 7, torch.float16, False),
    (1, 2048, 14, 14, torch.float32, False),
    (16, 256, 56, 56, torch.float32, True),
]

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def make(shape, device):
    """Random A, G (B, C, H, W) and a map gradient gy (B, H, W) of one benchmark shape."""
    B, C, H, W, dtype, channels_last = shape
    gen = torch.Generator(device=device).manual_seed(0)
    a, g = (torch.randn(B, C, H, W, device=device, dtype=dtype, generator=gen) for _ in range(2))
    if channels_last:
        a, g = (t.contiguous(memory_format=torch.channels_last) for t in (a, g))
    gy = torch.randn(B, H, W, device=device, dtype=dtype, generator=gen)
    return a, g, gy


def forward_and_backward(fn, a, g, gy):
    """A call of autograd.grad of fn(a, g) with respect to both inputs."""
    a, g = a.requires_grad_(), g.requires_grad_()

    def run():
        return torch.autograd.grad(fn(a, g), (a, g), gy)

    return run


def measure(fn, device, reps=None, warmup=3, budget_s=2.0):
    """Median time of fn() in seconds.

    CUDA: triton.testing.do_bench (CUDA events, L2 flushed between runs, `budget_s` of runs).
    CPU: wall time of `reps` runs (default: as many as fit `budget_s`, between 10 and 200).
    """
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=max(int(budget_s * 1000), 20), return_mode="median") / 1e3
    for _ in range(warmup):
        fn()
    if reps is None:
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-6)
        reps = int(min(200, max(10, budget_s / once)))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_graph(fn, reps=50):
    """Median GPU time of fn() in seconds, replayed from a CUDA graph: the kernels alone, without
    the host's launch overhead (which `measure` includes wherever the host is slower than the
    GPU). The L2 cache is flushed before each replay. None if fn cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as error:
        print(f"(not capturable in a CUDA graph: {str(error).splitlines()[0]})")
        return None
    flush = _l2_flush_buffer()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        # Flushed by reading: the cache is left holding clean lines, so no write-back of the
        # flush overlaps the timed replay (zeroing the buffer would leave it dirty).
        flush.sum()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def host_and_wall(fn, calls=10):
    """(host, wall) seconds per call of fn on CUDA: the host's time with the calls issued back to
    back (the GPU not waited for), and the wall time once the GPU has drained them."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    return host, (time.perf_counter() - start) / calls


@functools.cache
def _l2_flush_buffer():
    """256 MB to read before a timed run: more than any GPU's L2 cache."""
    return torch.zeros(64 << 20, dtype=torch.float32, device="cuda")


def measure_interleaved(fns, device, rounds=10, warmup=2, budget_s=0.5, samples=None):
    """{name: median seconds} of several functions. On CPU they run round-robin, one call each
    per round, so that the machine's drift (frequency, other tenants) spreads over all of them
    rather than favouring whichever ran first (`samples`, a dict, receives every round's seconds
    per name); on CUDA each is measured by `measure`."""
    if torch.device(device).type == "cuda":
        return {name: measure(fn, device, budget_s=budget_s) for name, fn in fns.items()}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    if samples is not None:
        samples.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(device, nbytes=1 << 28):
    """Bytes per second of a device-to-same-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), device, reps=20)
    return 2 * nbytes / seconds


def git(*args, check=True):
    """The output of `git *args` in this repository ("" where it fails and check is False)."""
    result = subprocess.run(["git", *args], cwd=REPO, check=check, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def source_at(commit, path):
    """The text of the repository's file `path` at `commit`, for A/B scripts."""
    return git("show", f"{commit}:{path}")


def machine(device):
    """Card or CPU name, versions, date and commit for the result file."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name() + f" ({torch.get_num_threads()} threads)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    # BATCHCAM_COMMIT: for a copy of the tree without its git metadata (e.g. copied to a GPU machine)
    commit = (os.environ.get("BATCHCAM_COMMIT") or git("rev-parse", "--short", "HEAD", check=False).strip()
              or "unknown")
    info = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }
    environment = {k: v for k, v in sorted(os.environ.items()) if k.startswith(TIMING_VARIABLES)}
    return {**info, "environment": environment} if environment else info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(bench, info, header, rows, extra=None, out_dir=None):
    """Appends the run's record to <bench>.jsonl under benchmarks/results/ (and `out_dir`);
    returns its Markdown table and the paths written."""
    record = {"bench": bench, "tag": os.environ.get("BATCHCAM_RESULT_TAG"), "machine": info, "header": header,
              "rows": rows, **(extra or {})}
    paths = []
    for folder in filter(None, (RESULTS, out_dir)):
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, bench + ".jsonl"))
        with open(paths[-1], "a") as f:
            f.write(json.dumps(record) + "\n")
    return markdown_table(header, rows), paths
