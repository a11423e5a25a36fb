"""The op's contract (docs/op.md) on every backend present: torch.ops.batchcam.fused_cam against the
float64 reference, forward and backward, dtypes, layouts, shapes, ties, NaN, empty inputs,
gradcheck, opcheck, torch.compile, determinism. What only one backend's kernels need is in
test_kernels.py."""
import functools

import pytest
import torch

import batchcam
from helpers import BACKENDS, DTYPES, assert_close, check_against_reference, make_inputs, op_for, to64

SHAPES = [
    (3, 37, 5, 7),  # odd sizes
    (1, 64, 7, 7),  # B = 1: the channel reduction is split across tasks
    (64, 16, 7, 7),  # B = 64
    (4, 32, 1, 1),  # P = 1
    (3, 2048, 3, 5),  # large C
    (3, 40, 17),  # 3-D (B, C, N)
    (2, 8, 3, 4, 5),  # 5-D volumes
]


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


