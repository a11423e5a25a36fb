"""Every bad input of the op (docs/op.md) raises a clear error naming the problem."""
import pytest
import torch

import batchcam

GOOD = (2, 3, 4, 5)


def inputs(shape=GOOD, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device)


@pytest.mark.parametrize("call", [
    lambda a, g, **kw: batchcam.fused_cam(a, g, **kw),
    lambda a, g, **kw: batchcam.fused_cam(a, g, backend="reference", **kw),
    lambda a, g, **kw: torch.ops.batchcam.fused_cam(a, g, **kw),
], ids=["fused", "reference", "torch.ops"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("case,error,message", [
    ("shape", ValueError, r"activations \(2, 3, 4, 5\) and gradients \(2, 3, 4, 6\) must have the same shape"),
    ("dims", ValueError, r"at least one spatial dim, got shape \(2, 3\)"),
    ("int", TypeError, r"one floating dtype .* got torch.int64 and torch.int64"),
    ("mixed", TypeError, r"got torch.float32 and torch.float64"),
    ("device", ValueError, r"on (cpu|cuda:0) and gradients on (meta|cpu) must be on the same device"),
    ("normalize", ValueError, r"normalize must be one of .* got 'softmax'"),
    ("eps", ValueError, r"eps must be >= 0, got -1"),
])
def test_bad_input(call, device, case, error, message):
    a, g = inputs(device=device)
    kw = {}
    if case == "shape":
        g = torch.randn(2, 3, 4, 6, device=device)
    elif case == "dims":
        a, g = inputs((2, 3), device=device)
    elif case == "int":
        a, g = (torch.ones(GOOD, dtype=torch.int64, device=device),) * 2
    elif case == "mixed":
        g = g.double()
    elif case == "device":
        g = g.to("meta") if device == "cpu" else g.cpu()
    elif case == "normalize":
        kw["normalize"] = "softmax"
    elif case == "eps":
        kw["eps"] = -1.0
    with pytest.raises(error, match=message):
        call(a, g, **kw)


def test_not_a_tensor():
    a, g = inputs()
    with pytest.raises(TypeError, match="gradients must be a Tensor, got list"):
        batchcam.fused_cam(a, g.tolist())
    with pytest.raises(RuntimeError, match="Expected a value of type 'Tensor' for argument 'gradients'"):
        torch.ops.batchcam.fused_cam(a, g.tolist())


def test_unknown_backend():
    a, g = inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        batchcam.fused_cam(a, g, backend="cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        batchcam.set_backend("fast")


def test_backend_from_environment(monkeypatch):
    monkeypatch.setattr(batchcam.backend, "_backend", None)
    monkeypatch.setenv("BATCHCAM_BACKEND", "reference")
    assert batchcam.get_backend() == "reference"
    monkeypatch.setenv("BATCHCAM_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="got 'nonsense'"):
        batchcam.get_backend()
    batchcam.set_backend("triton")
    assert batchcam.get_backend() == "triton"


def test_kernel_checks_guard_direct_calls():
    """The C++ kernel checks what it relies on even when the Python checks are bypassed."""
    a, g = inputs()
    with pytest.raises(RuntimeError, match="must have the same shape"):
        torch.ops.batchcam.cam_forward(a, g[:, :2], True, "minmax", 1e-7, "gradcam", "triton")
    with pytest.raises(RuntimeError, match="normalize must be"):
        torch.ops.batchcam.cam_forward(a, g, True, "l2", 1e-7, "gradcam", "triton")
