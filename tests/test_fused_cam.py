"""The op's contract (docs/op.md) on every backend present, for every CAM method:
torch.ops.batchcam.fused_cam against the float64 reference, forward and backward, dtypes, layouts,
shapes, ties, NaN, empty inputs, gradcheck, opcheck, torch.compile, determinism. What only one
backend's kernels need is in test_kernels.py."""
import functools

import pytest
import torch

import batchcam
from helpers import BACKENDS, DTYPES, METHOD_PARAMS, assert_close, check_against_reference, make_inputs, op_for, to64

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
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_matches_reference(device, backend, method, shape, dtype, channels_last):
    a, g = make_inputs(shape, dtype, device, channels_last, requires_grad=True, method=method)
    check_against_reference(op_for(backend), a, g, method=method)


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_options(device, backend, method, normalize, relu, channels_last):
    a, g = make_inputs((5, 24, 6, 5), torch.float32, device, channels_last, requires_grad=True, method=method)
    check_against_reference(op_for(backend), a, g, relu=relu, normalize=normalize, eps=1e-3, method=method)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("wrt", ["activations", "gradients", "both"])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_gradient_of_one_input(device, backend, method, wrt):
    a, g = make_inputs((3, 20, 4, 5), torch.float32, device, method=method)
    a.requires_grad_(wrt in ("activations", "both"))
    g.requires_grad_(wrt in ("gradients", "both"))
    _, grads = check_against_reference(op_for(backend), a, g, method=method)
    assert (grads[0] is not None) == a.requires_grad and (grads[1] is not None) == g.requires_grad


def tied_inputs(device, relu, method):
    """Positions 3 and 17 share the largest score and, without ReLU, 8 and 21 the smallest. Each of
    those positions has one nonzero channel, so its score is a single term and the tie is exact in
    any summation order (identical columns are not: torch's channel sum rounds differently at
    different positions). Channel 0 makes the largest: A = 100 and a positive weight or G. Channel 1
    the smallest: A = 100 and a negative weight (zero for Grad-CAM++, whose other scores are
    positive), A = -100 and G = 1 (layercam, hirescam), or A = 0 (elementwise, whose terms are >= 0).
    Grad-CAM++'s other channels get a tenth of their gradients: its weights scale as the gradients
    and as 1 / sum_p A, so its scores would otherwise not grow with A."""
    a, g = (t.flatten(2).clone() for t in make_inputs((4, 12, 5, 5), torch.float64, device, method=method))
    weight_based = method not in batchcam.definitions.ELEMENTWISE_METHODS
    if method == "gradcampp":
        g[:, 2:] *= 0.1
    g[:, 0] = g[:, 0].abs() + 0.1
    if weight_based:
        g[:, 1] = -g[:, 1].abs() - 0.1
    for p in (3, 17):
        a[:, :, p] = 0
        a[:, 0, p], g[:, 0, p] = 100, 1
    for p in () if relu else (8, 21):
        a[:, :, p] = 0
        a[:, 1, p] = {"layercam": -100, "hirescam": -100, "elementwise": 0}.get(method, 100)
        g[:, 1, p] = g[:, 1, p] if weight_based else 1
    return a.view(4, 12, 5, 5), g.view(4, 12, 5, 5)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("normalize", ["minmax", "max"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_ties_split_the_gradient(device, backend, method, relu, normalize, dtype):
    a, g = tied_inputs(device, relu, method)
    y_ref = batchcam.fused_cam_reference(a, g, relu=relu, normalize=normalize, method=method).flatten(1)
    assert ((y_ref == y_ref.amax(1, keepdim=True)).sum(1) == 2).all()
    assert relu or ((y_ref == y_ref.amin(1, keepdim=True)).sum(1) == 2).all()
    a, g = (t.to(dtype).requires_grad_() for t in (a, g))
    check_against_reference(op_for(backend), a, g, relu=relu, normalize=normalize, method=method)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_map_zeroed_by_relu_is_zero_with_finite_gradient(device, backend, method, normalize):
    a, g = make_inputs((3, 8, 4, 4), torch.float32, device)
    if method == "gradcampp":  # positive activations, negative gradients: every weight is 0
        a, g = a.abs() + 0.1, -g.abs() - 0.1
    else:  # negative activations and positive gradients: every score < 0 (or 0, elementwise)
        a, g = -a.abs() - 0.1, g.abs() + 0.1
    a, g = a.requires_grad_(), g.requires_grad_()
    y = batchcam.fused_cam(a, g, normalize=normalize, method=method, backend=backend)
    assert torch.equal(y, torch.zeros_like(y))
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert torch.isfinite(ga).all() and torch.isfinite(gg).all()
    check_against_reference(op_for(backend), a, g, normalize=normalize, method=method)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_nan_stays_in_its_sample(device, backend, method, channels_last):
    a, g = make_inputs((4, 10, 5, 6), torch.float32, device, channels_last, method=method)
    a[1, 3, 2, 2] = float("nan")
    a.requires_grad_()
    g.requires_grad_()
    y = batchcam.fused_cam(a, g, method=method, backend=backend)
    ga, gg = torch.autograd.grad(y, (a, g), torch.ones_like(y))
    assert torch.isnan(y[1]).all()
    clean = [0, 2, 3]
    y_ref = batchcam.fused_cam_reference(to64(a), to64(g), method=method)
    assert_close(y[clean], y_ref[clean], y_ref[clean].float(), "map of clean samples")
    assert torch.isfinite(ga[clean]).all() and torch.isfinite(gg[clean]).all()
    check_against_reference(op_for(backend), a[clean].detach().requires_grad_(),
                            g[clean].detach().requires_grad_(), method=method)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_empty_batch(device, backend, method):
    a, g = make_inputs((0, 6, 3, 4), torch.float32, device, requires_grad=True)
    y = batchcam.fused_cam(a, g, method=method, backend=backend)
    assert y.shape == (0, 3, 4)
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert ga.shape == a.shape and gg.shape == g.shape


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_no_channels(device, backend, method):
    """C = 0: every score is an empty sum, so the map is zeros (not left unwritten)."""
    a, g = make_inputs((3, 0, 4, 5), torch.float32, device, requires_grad=True)
    y = batchcam.fused_cam(a, g, method=method, backend=backend)
    assert torch.equal(y, torch.zeros(3, 4, 5, device=device))
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert ga.shape == a.shape and gg.shape == g.shape


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_gradcheck(device, backend, method, normalize, relu):
    a, g = make_inputs((2, 5, 3, 4), torch.float64, device, requires_grad=True, method=method)
    fn = functools.partial(batchcam.fused_cam, normalize=normalize, relu=relu, method=method, backend=backend)
    # Triton's interpreter runs a kernel in milliseconds: check random projections of the Jacobian
    fast = device == "cpu" and backend == "triton"
    assert torch.autograd.gradcheck(fn, (a, g), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x: fn(x, g.detach()), (a,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda x: fn(a.detach(), x), (g,), fast_mode=fast)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_double_backward_raises(device, backend, method):
    a, g = make_inputs((2, 5, 3, 4), torch.float64, device, requires_grad=True, method=method)
    y = batchcam.fused_cam(a, g, method=method, backend=backend)
    (ga,) = torch.autograd.grad(y.square().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ga.sum(), a)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_opcheck(device, backend, method, channels_last):
    for requires_grad in (False, True):
        a, g = make_inputs((3, 6, 4, 5), torch.float32, device, channels_last, requires_grad=requires_grad,
                           method=method)
        torch.library.opcheck(torch.ops.batchcam.fused_cam.default, (a, g), {"normalize": "max", "method": method})
        torch.library.opcheck(torch.ops.batchcam.cam_forward.default, (a, g, True, "minmax", 1e-7, method, backend))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_torch_compile_fullgraph(device, backend, method):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def loss(a, g):
        y = torch.ops.batchcam.fused_cam(a, g, method=method)
        return (y * 2.0).sum() + batchcam.fused_cam(a, g, method=method, backend=backend).mean()

    a, g = make_inputs((3, 6, 4, 5), torch.float32, device, requires_grad=True, method=method)
    grads = torch.autograd.grad(loss(a, g), (a, g))
    a_ref, g_ref = (t.detach().clone().requires_grad_() for t in (a, g))
    y_ref = batchcam.fused_cam_reference(a_ref, g_ref, method=method)
    expected = torch.autograd.grad((y_ref * 2.0).sum() + y_ref.mean(), (a_ref, g_ref))
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 512, 7, 7), (16, 64, 9, 9)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_deterministic(device, backend, method, shape, channels_last):
    a, g = make_inputs(shape, torch.float32, device, channels_last, requires_grad=True, method=method)
    runs = []
    for _ in range(2):
        y = batchcam.fused_cam(a, g, method=method, backend=backend)
        runs.append((y, *torch.autograd.grad(y, (a, g), torch.ones_like(y))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_gradient_layouts(device, backend, method):
    """Channels-last activations are read in place: their gradient comes back channels-last, the
    layout the kernel computed in. Grad-CAM's gradient of the gradients, constant over the spatial
    positions, is a broadcast view of (B, C) values; every other method's is channels-last too."""
    a, g = make_inputs((2, 8, 5, 6), torch.float32, device, channels_last=True, requires_grad=True, method=method)
    y = batchcam.fused_cam(a, g, method=method, backend=backend)
    ga, gg = torch.autograd.grad(y.sum(), (a, g))
    assert ga.is_contiguous(memory_format=torch.channels_last) and not ga.is_contiguous()
    assert gg.shape == g.shape
    if method == "gradcam":
        assert gg.stride()[2:] == (0, 0)
    else:
        assert gg.is_contiguous(memory_format=torch.channels_last) and not gg.is_contiguous()


def test_other_strides_are_copied():
    a, g = make_inputs((6, 8, 5, 6), torch.float32)
    a_t, g_t = a.transpose(2, 3), g.transpose(2, 3)  # neither contiguous nor channels-last
    torch.testing.assert_close(batchcam.fused_cam(a_t, g_t), batchcam.fused_cam(a_t.contiguous(), g_t.contiguous()))
    a_s, g_s = a[::2], g[::2]  # every other sample
    torch.testing.assert_close(batchcam.fused_cam(a_s, g_s), batchcam.fused_cam(a_s.contiguous(), g_s.contiguous()))




def test_unknown_method_lists_the_methods():
    a, g = make_inputs((2, 3, 4, 4))
    for backend in ("fused", "reference"):
        with pytest.raises(ValueError, match=r"method must be one of .*gradcampp.*got 'gradcam\+\+'"):
            batchcam.fused_cam(a, g, method="gradcam++", backend=backend)
    with pytest.raises(RuntimeError, match="method must be 'gradcam'"):
        torch.ops.batchcam.cam_forward(a, g, True, "minmax", 1e-7, "gradcam++", "fused")
