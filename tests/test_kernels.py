"""What one backend's kernels need beyond the op's contract (test_fused_cam.py): the CPU kernels'
thread-count independence and half-precision rounding, the Triton kernels' wide offsets, position
tiles and pipelined loops, the C++/CUDA dispatch, CUDA-graph capture, samples of more than 2^31
elements."""
import contextlib
import functools

import pytest
import torch

import batchcam
from helpers import (BACKENDS, METHOD_PARAMS, check_against_reference, make_inputs, op_for, run_forward_backward,
                     to64, triton_kernels_on_cpu)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 256, 15, 17), (3, 37, 23, 29), (40, 24, 9, 9)], ids=str)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_cpu_results_do_not_depend_on_the_thread_count(method, shape, channels_last):
    """The CPU kernel splits samples into blocks by shape only and adds the blocks' partial sums in
    a fixed order: one thread and two give the same bits (shapes: one sample in many blocks, a few
    samples in several, one block per sample; each large enough to be split between threads, over
    the kernel's 16384 elements per task)."""
    a, g = make_inputs(shape, torch.float32, "cpu", channels_last, requires_grad=True, method=method)
    gy = torch.randn((shape[0], *shape[2:]), generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = batchcam.fused_cam(a, g, method=method, backend="fused")
            runs.append((y, *torch.autograd.grad(y, (a, g), gy)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*runs):
        assert torch.equal(one, two)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 37, 23, 29), (2, 300, 3, 3), (1, 6, 257)], ids=str)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_cpu_half_precision_is_float32_arithmetic_rounded_once(method, shape, dtype, channels_last):
    """The CPU kernel computes half-precision inputs in float32 (Half rows converted in chunks of
    256 with F16C, or 8 at a time in the AVX2 dot) and rounds each output once: bitwise what it
    returns for the same values given as float32, rounded. Shapes: rows of several chunks and a
    tail, C not a multiple of 4 or 8. Several seeds: a difference in one instantiation's rounding
    (e.g. a * b + c fused into an FMA in one and not the other) shows in ~2% of single draws."""
    options = (True, "minmax", 1e-7, method, "fused")
    for seed in range(10):
        a, g = make_inputs(shape, dtype, "cpu", channels_last, seed=seed, method=method)
        every_third = (0, slice(None)) + (slice(None, None, 3),) * (len(shape) - 2)
        a[every_third] = float("nan") if shape[0] > 1 else 0.0  # NaN in one sample only, or ties
        gy = torch.randn((shape[0], *shape[2:]), generator=torch.Generator().manual_seed(seed)).to(dtype)
        y, w, s, ext = torch.ops.batchcam.cam_forward(a, g, *options)
        y32, w32, s32, ext32 = torch.ops.batchcam.cam_forward(a.float(), g.float(), *options)
        ga, gg = torch.ops.batchcam.cam_backward(gy, a, g, w, s, ext, *options, [True, True])
        ga32, gg32 = torch.ops.batchcam.cam_backward(gy.float(), a.float(), g.float(), w32, s32, ext32, *options,
                                                     [True, True])
        for half, single in ((y, y32), (w, w32), (s, s32), (ext, ext32), (ga, ga32), (gg, gg32)):
            torch.testing.assert_close(half, single.to(half.dtype), rtol=0, atol=0, equal_nan=True)


TRITON_DEVICES = [
    pytest.param("cpu", id="cpu-triton-interpreter"),
    pytest.param("cuda", id="cuda-triton", marks=pytest.mark.gpu),
]


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_triton_wide_offsets(device, channels_last, monkeypatch):
    """The Triton kernels' int64 in-sample offsets (used from 2^31 elements per sample), forced
    on small inputs."""
    from batchcam_kernels import fused_cam as triton_kernels

    monkeypatch.setattr(triton_kernels, "WIDE_OFFSETS_FROM", 0)
    a, g = make_inputs((3, 37, 5, 7), torch.float32, device, channels_last, requires_grad=True)
    with triton_kernels_on_cpu() if device == "cpu" else contextlib.nullcontext():
        check_against_reference(op_for("triton"), a, g)


@pytest.mark.usefixtures("poisoned_empty")
def test_triton_on_cpu_whatever_the_default_gpu_kernel(monkeypatch):
    """The Triton-on-CPU cases run Triton even where backend "fused" means C++/CUDA (an extension
    built with CUDA kernels): the public op, whose backend is the default one, still runs."""
    monkeypatch.setattr(batchcam.backend, "DEFAULT_GPU_KERNEL", "cuda")
    a, g = make_inputs((3, 37, 5, 7), torch.float32, "cpu", requires_grad=True)
    with triton_kernels_on_cpu():
        check_against_reference(torch.ops.batchcam.fused_cam, a, g)


# Samples wider than one tile of positions (the Triton kernels' nested tile loops) and one that
# is a single tile (their channel loop innermost), in both layouts.
TILE_SHAPES = [
    pytest.param((2, 300, 7, 7), True, id="channels_last-C300"),
    pytest.param((2, 3, 40, 30), False, id="contiguous-P1200"),
    pytest.param((3, 130, 5, 7), False, id="contiguous-one-tile"),
]


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("shape,channels_last", TILE_SHAPES)
def test_position_tiles(device, backend, shape, channels_last):
    a, g = make_inputs(shape, torch.float32, device, channels_last, requires_grad=True)
    check_against_reference(op_for(backend), a, g)


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("shape,channels_last", TILE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_pipelined_loops(stages, shape, channels_last, dtype, monkeypatch):
    """The Triton kernels with software-pipelined tile loops (LOOP_STAGES > 1)."""
    from batchcam_kernels import fused_cam as triton_kernels

    monkeypatch.setattr(triton_kernels, "LOOP_STAGES", {False: stages, True: stages})
    a, g = make_inputs(shape, dtype, "cuda", channels_last, requires_grad=True)
    check_against_reference(op_for("triton"), a, g)


@pytest.mark.skipif(not batchcam.backend.cuda_kernels_built(), reason="extension built without CUDA kernels")
def test_cuda_key_is_cpp_where_built():
    """With the C++/CUDA kernels built, the CUDA implementations of cam_forward and cam_backward
    are C++ (one language crossing: no Python below the op), and Triton is a separate op.
    Runs without a GPU, on an extension built against a CUDA torch (scripts/check_cuda_build.sh)."""
    for op in ("cam_forward", "cam_backward"):
        table = torch._C._dispatch_dump(f"batchcam::{op}")
        cuda = [line for line in table.splitlines() if line.startswith("CUDA")]
        assert cuda and "fused_cam_cuda.cpp" in cuda[0], table
    assert torch._C._dispatch_has_kernel_for_dispatch_key("batchcam::triton_cam_forward", "CUDA")


@pytest.mark.gpu
@pytest.mark.skipif(not batchcam.backend.cuda_kernels_built(), reason="extension built without CUDA kernels")
@pytest.mark.usefixtures("poisoned_empty")
def test_cuda_kernel_never_enters_python(monkeypatch):
    """Backend "fused" (and "cuda") on CUDA tensors runs the C++/CUDA kernel without entering
    Python: the Python Triton implementations and entry points, replaced by ones that fail, are
    never called, forward or backward."""
    import batchcam_kernels

    def python_called(*args, **kwargs):
        raise AssertionError("the C++/CUDA path entered Python")

    monkeypatch.setattr(batchcam_kernels, "cam_forward", python_called)
    monkeypatch.setattr(batchcam_kernels, "cam_backward", python_called)
    monkeypatch.setattr(batchcam.ops, "_triton_cam_forward", python_called)
    monkeypatch.setattr(batchcam.ops, "_triton_cam_backward", python_called)
    a, g = make_inputs((5, 300, 7, 7), torch.float32, "cuda", requires_grad=True)
    for backend in ("fused", "cuda"):
        check_against_reference(functools.partial(batchcam.fused_cam, backend=backend), a, g)


@pytest.mark.gpu
def test_forward_and_backward_capture_in_a_cuda_graph():
    """Both GPU kernels can be captured in a CUDA graph (no host synchronisation, no allocation
    that breaks capture) and the graph replayed on new inputs gives the new maps and gradients."""
    kernels = ["triton"] + (["cuda"] if batchcam.backend.cuda_kernels_built() else [])
    for kernel in kernels:
        a, g = make_inputs((4, 64, 7, 7), torch.float32, "cuda", requires_grad=True)
        gy = torch.randn(4, 7, 7, device="cuda")

        def step():
            y = batchcam.fused_cam(a, g, backend=kernel)
            return (y, *torch.autograd.grad(y, (a, g), gy))

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step()
        new_a, new_g = make_inputs((4, 64, 7, 7), torch.float32, "cuda", seed=7)
        with torch.no_grad():
            a.copy_(new_a)
            g.copy_(new_g)
        graph.replay()
        torch.cuda.synchronize()
        expected = run_forward_backward(batchcam.fused_cam_reference, a.detach().double().requires_grad_(),
                                        g.detach().double().requires_grad_(), gy.double())
        torch.testing.assert_close(outputs[0].double(), expected[0], rtol=1e-4, atol=1e-5)
        for got, want in zip(outputs[1:], expected[1]):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_one_sample_of_more_than_2_31_elements_triton():
    """One bf16 sample of 2.15e9 elements (the Triton kernels' int64 in-sample offsets), checked
    against a float64 composition computed in channel chunks (the whole float64 reference would
    need about 70 GB)."""
    C, H, W = 8200, 512, 512
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(1, C, H, W, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    g = torch.randn(1, C, H, W, device="cuda", dtype=torch.bfloat16, generator=gen)
    y = batchcam.fused_cam(a, g, backend="triton")
    (ga,) = torch.autograd.grad(y, a, torch.ones_like(y))
    w = torch.cat([chunk.double().mean((2, 3)) for chunk in g.split(512, dim=1)], dim=1)  # (1, C)
    s = sum((w[:, c0 : c0 + 512, None, None] * chunk.double()).sum(1)
            for c0, chunk in zip(range(0, C, 512), a.detach().split(512, dim=1)))
    s.requires_grad_()
    y64 = batchcam.fused_cam_reference(s.unsqueeze(1), torch.ones_like(s).unsqueeze(1))  # map of s itself
    (gs,) = torch.autograd.grad(y64, s, torch.ones_like(y64))
    torch.testing.assert_close(to64(y), y64.detach(), rtol=0, atol=2e-2)
    for c in (0, C - 1):  # gA[c, p] = w[c] gs[p]: the first and the last channel
        expected = w[0, c] * gs[0]
        torch.testing.assert_close(to64(ga[0, c]), expected, rtol=2e-2, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["triton", "cuda"])
def test_more_than_2_31_elements_bf16(kernel):
    """int64 offsets: B*C*P > 2^31 (4.3 GB per bf16 input). Checked on a few samples, the first
    and the last, against the float64 reference computed per sample."""
    B, C, H, W = 40, 1024, 256, 206  # 2.16e9 elements
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(B, C, H, W, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    g = torch.randn(B, C, H, W, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    y = batchcam.fused_cam(a, g, backend=kernel)
    (ga,) = torch.autograd.grad(y, a, torch.ones_like(y))
    for b in (0, B - 1):
        a64 = to64(a[b : b + 1]).requires_grad_()
        y64 = batchcam.fused_cam_reference(a64, to64(g[b : b + 1]))
        (ga64,) = torch.autograd.grad(y64, a64, torch.ones_like(y64))
        torch.testing.assert_close(to64(y[b : b + 1]), y64, rtol=0, atol=2e-2)
        torch.testing.assert_close(to64(ga[b : b + 1]), ga64, rtol=2e-2, atol=1e-6 * float(ga64.abs().max()))
