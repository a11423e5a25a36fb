"""torch.ops.batchcam.fused_cam against the float64 reference: every backend present, forward and
backward, dtypes, layouts, shapes, ties, NaN, gradcheck, opcheck, torch.compile, determinism."""
import contextlib
import functools

import pytest
import torch

import batchcam
from helpers import DTYPES, assert_close, check_against_reference, make_inputs, to64, triton_kernels_on_cpu

BACKENDS = [
    pytest.param("cpu", "fused", id="cpu"),
    pytest.param("cpu", "triton", id="cpu-triton-interpreter"),
] + [
    pytest.param("cuda", kernel, id=f"cuda-{kernel}", marks=pytest.mark.gpu)
    for kernel in ("triton", "cuda")
]

SHAPES = [
    (3, 37, 5, 7),  # odd sizes
    (1, 64, 7, 7),  # B = 1: the channel reduction is split across tasks
    (64, 16, 7, 7),  # B = 64
    (4, 32, 1, 1),  # P = 1
    (3, 2048, 3, 5),  # large C
    (3, 40, 17),  # 3-D (B, C, N)
    (2, 8, 3, 4, 5),  # 5-D volumes
]


@pytest.fixture(autouse=True)
def _triton_interpreter_on_cpu(request):
    """For the ("cpu", "triton") cases, the op's CPU kernels are the Triton ones, interpreted."""
    params = getattr(request.node, "callspec", None)
    params = params.params if params else {}
    if params.get("device") == "cpu" and params.get("backend") == "triton":
        with triton_kernels_on_cpu():
            yield
    else:
        yield


def op_for(backend):
    """batchcam.fused_cam with `backend` (the device is the inputs')."""
    return functools.partial(batchcam.fused_cam, backend=backend)


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device, backend, shape, dtype, channels_last):
    a, g = make_inputs(shape, dtype, device, channels_last, requires_grad=True)
    check_against_reference(op_for(backend), a, g)


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_options(device, backend, normalize, relu, channels_last):
    a, g = make_inputs((5, 24, 6, 5), torch.float32, device, channels_last, requires_grad=True)
    check_against_reference(op_for(backend), a, g, relu=relu, normalize=normalize, eps=1e-3)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("wrt", ["activations", "gradients", "both"])
def test_gradient_of_one_input(device, backend, wrt):
    a, g = make_inputs((3, 20, 4, 5), torch.float32, device)
    a.requires_grad_(wrt in ("activations", "both"))
    g.requires_grad_(wrt in ("gradients", "both"))
    _, grads = check_against_reference(op_for(backend), a, g)
    assert (grads[0] is not None) == a.requires_grad and (grads[1] is not None) == g.requires_grad


def tied_inputs(device, relu):
    """Two positions per sample share the largest score (and, without ReLU, two the smallest)."""
    a, g = make_inputs((4, 12, 5, 5), torch.float64, device)
    s = batchcam.fused_cam_reference(a, g, relu=False, normalize="none").flatten(1)
    a = a.flatten(2).clone()
    for b in range(a.shape[0]):
        hi, lo = int(s[b].argmax()), int(s[b].argmin())
        a[b, :, (hi + 1) % 25] = a[b, :, hi]
        if not relu:
            a[b, :, (lo + 3) % 25] = a[b, :, lo]
    return a.view(4, 12, 5, 5), g


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("normalize", ["minmax", "max"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_ties_split_the_gradient(device, backend, relu, normalize, dtype):
    a, g = tied_inputs(device, relu)
    y_ref = batchcam.fused_cam_reference(a, g, relu=relu, normalize=normalize)
    assert ((y_ref.flatten(1) == y_ref.flatten(1).amax(1, keepdim=True)).sum(1) >= 2).all()
    a, g = (t.to(dtype).requires_grad_() for t in (a, g))
    check_against_reference(op_for(backend), a, g, relu=relu, normalize=normalize)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
def test_map_zeroed_by_relu_is_zero_with_finite_gradient(device, backend, normalize):
    a, g = make_inputs((3, 8, 4, 4), torch.float32, device)
    a = (-a.abs() - 0.1).requires_grad_()  # negative activations ...
    g = (g.abs() + 0.1).requires_grad_()  # ... and positive weights: every score < 0
    y = batchcam.fused_cam(a, g, normalize=normalize, backend=backend)
    assert torch.equal(y, torch.zeros_like(y))
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert torch.isfinite(ga).all() and torch.isfinite(gg).all()
    check_against_reference(op_for(backend), a, g, normalize=normalize)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_nan_stays_in_its_sample(device, backend, channels_last):
    a, g = make_inputs((4, 10, 5, 6), torch.float32, device, channels_last)
    a[1, 3, 2, 2] = float("nan")
    a.requires_grad_()
    g.requires_grad_()
    y = batchcam.fused_cam(a, g, backend=backend)
    ga, gg = torch.autograd.grad(y, (a, g), torch.ones_like(y))
    assert torch.isnan(y[1]).all()
    clean = [0, 2, 3]
    y_ref = batchcam.fused_cam_reference(to64(a), to64(g))
    assert_close(y[clean], y_ref[clean], y_ref[clean].float(), "map of clean samples")
    assert torch.isfinite(ga[clean]).all() and torch.isfinite(gg[clean]).all()
    check_against_reference(op_for(backend), a[clean].detach().requires_grad_(),
                            g[clean].detach().requires_grad_())


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_empty_batch(device, backend):
    a, g = make_inputs((0, 6, 3, 4), torch.float32, device, requires_grad=True)
    y = batchcam.fused_cam(a, g, backend=backend)
    assert y.shape == (0, 3, 4)
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert ga.shape == a.shape and gg.shape == g.shape


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_no_channels(device, backend):
    """C = 0: every score is an empty sum, so the map is zeros (not left unwritten)."""
    a, g = make_inputs((3, 0, 4, 5), torch.float32, device, requires_grad=True)
    y = batchcam.fused_cam(a, g, backend=backend)
    assert torch.equal(y, torch.zeros(3, 4, 5, device=device))
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert ga.shape == a.shape and gg.shape == g.shape


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck(device, backend, normalize, relu):
    a, g = make_inputs((2, 5, 3, 4), torch.float64, device, requires_grad=True)
    fn = functools.partial(batchcam.fused_cam, normalize=normalize, relu=relu, backend=backend)
    # Triton's interpreter runs a kernel in milliseconds: check random projections of the Jacobian
    fast = device == "cpu" and backend == "triton"
    assert torch.autograd.gradcheck(fn, (a, g), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x: fn(x, g.detach()), (a,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x: fn(a.detach(), x), (g,), fast_mode=fast)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_double_backward_raises(device, backend):
    a, g = make_inputs((2, 5, 3, 4), torch.float64, device, requires_grad=True)
    y = batchcam.fused_cam(a, g, backend=backend)
    (ga,) = torch.autograd.grad(y.square().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ga.sum(), a)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_opcheck(device, backend, channels_last):
    for requires_grad in (False, True):
        a, g = make_inputs((3, 6, 4, 5), torch.float32, device, channels_last, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.batchcam.fused_cam.default, (a, g), {"normalize": "max"})
        torch.library.opcheck(torch.ops.batchcam.cam_forward.default, (a, g, True, "minmax", 1e-7, backend))


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def loss(a, g):
        return (torch.ops.batchcam.fused_cam(a, g) * 2.0).sum() + batchcam.fused_cam(a, g, backend=backend).mean()

    a, g = make_inputs((3, 6, 4, 5), torch.float32, device, requires_grad=True)
    grads = torch.autograd.grad(loss(a, g), (a, g))
    a_ref, g_ref = (t.detach().clone().requires_grad_() for t in (a, g))
    y_ref = batchcam.fused_cam_reference(a_ref, g_ref)
    expected = torch.autograd.grad((y_ref * 2.0).sum() + y_ref.mean(), (a_ref, g_ref))
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 512, 7, 7), (16, 64, 9, 9)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_deterministic(device, backend, shape, channels_last):
    a, g = make_inputs(shape, torch.float32, device, channels_last, requires_grad=True)
    runs = []
    for _ in range(2):
        y = batchcam.fused_cam(a, g, backend=backend)
        runs.append((y, *torch.autograd.grad(y, (a, g), torch.ones_like(y))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(1, 256, 15, 17), (3, 37, 23, 29), (40, 24, 9, 9)], ids=str)
def test_cpu_results_do_not_depend_on_the_thread_count(shape, channels_last):
    """The CPU kernel splits samples into blocks by shape only and adds the blocks' partial sums in
    a fixed order: one thread and two give the same bits (shapes: one sample in many blocks, a few
    samples in several, one block per sample; each large enough to be split between threads, over
    the kernel's 16384 elements per task)."""
    a, g = make_inputs(shape, torch.float32, "cpu", channels_last, requires_grad=True)
    gy = torch.randn((shape[0], *shape[2:]), generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = batchcam.fused_cam(a, g, backend="fused")
            runs.append((y, *torch.autograd.grad(y, (a, g), gy)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*runs):
        assert torch.equal(one, two)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_gradient_layouts(device, backend):
    """Channels-last activations are read in place: their gradient comes back channels-last, the
    layout the kernel computed in. The gradient of the gradients, constant over the spatial
    positions, is a broadcast view of (B, C) values."""
    a, g = make_inputs((2, 8, 5, 6), torch.float32, device, channels_last=True, requires_grad=True)
    y = batchcam.fused_cam(a, g, backend=backend)
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert ga.is_contiguous(memory_format=torch.channels_last) and not ga.is_contiguous()
    assert gg.shape == g.shape and gg.stride()[2:] == (0, 0)


def test_other_strides_are_copied():
    a, g = make_inputs((6, 8, 5, 6), torch.float32)
    a_t, g_t = a.transpose(2, 3), g.transpose(2, 3)  # neither contiguous nor channels-last
    torch.testing.assert_close(batchcam.fused_cam(a_t, g_t), batchcam.fused_cam(a_t.contiguous(), g_t.contiguous()))
    a_s, g_s = a[::2], g[::2]  # every other sample
    torch.testing.assert_close(batchcam.fused_cam(a_s, g_s), batchcam.fused_cam(a_s.contiguous(), g_s.contiguous()))


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 37, 23, 29), (2, 300, 3, 3), (1, 6, 257)], ids=str)
def test_cpu_half_precision_is_float32_arithmetic_rounded_once(shape, dtype, channels_last):
    """The CPU kernel computes half-precision inputs in float32 (Half rows converted in chunks of
    256 with F16C, or 8 at a time in the AVX2 dot) and rounds each output once: bitwise what it
    returns for the same values given as float32, rounded. Shapes: rows of several chunks and a
    tail, C not a multiple of 4 or 8. Several seeds: a difference in one instantiation's rounding
    (e.g. a * b + c fused into an FMA in one and not the other) shows in ~2% of single draws."""
    options = (True, "minmax", 1e-7, "fused")
    for seed in range(10):
        a, g = make_inputs(shape, dtype, "cpu", channels_last, seed=seed)
        every_third = (0, slice(None)) + (slice(None, None, 3),) * (len(shape) - 2)
        a[every_third] = float("nan") if shape[0] > 1 else 0.0  # NaN in one sample only, or ties
        gy = torch.randn((shape[0], *shape[2:]), generator=torch.Generator().manual_seed(seed)).to(dtype)
        y, w, s, ext = torch.ops.batchcam.cam_forward(a, g, *options)
        y32, w32, s32, ext32 = torch.ops.batchcam.cam_forward(a.float(), g.float(), *options)
        ga, gw = torch.ops.batchcam.cam_backward(gy, a, w, s, ext, *options, [True, True])
        ga32, gw32 = torch.ops.batchcam.cam_backward(gy.float(), a.float(), w32, s32, ext32, *options, [True, True])
        for half, single in ((y, y32), (w, w32), (s, s32), (ext, ext32), (ga, ga32), (gw, gw32)):
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


@pytest.mark.gpu
@pytest.mark.skipif(not batchcam.backend.cuda_kernels_built(), reason="extension built without CUDA kernels")
@pytest.mark.usefixtures("poisoned_empty")
def test_fused_runs_the_cuda_kernel_where_built(monkeypatch):
    """Backend "fused" on CUDA tensors runs the C++/CUDA kernel when the extension has it: the
    Triton entry points, replaced by ones that fail, are never called."""
    import batchcam_kernels

    def triton_called(*args, **kwargs):
        raise AssertionError("backend 'fused' ran the Triton kernel")

    monkeypatch.setattr(batchcam_kernels, "cam_forward", triton_called)
    monkeypatch.setattr(batchcam_kernels, "cam_backward", triton_called)
    a, g = make_inputs((5, 300, 7, 7), torch.float32, "cuda", requires_grad=True)
    check_against_reference(functools.partial(batchcam.fused_cam, backend="fused"), a, g)


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
