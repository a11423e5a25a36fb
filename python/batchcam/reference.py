"""The plain-PyTorch composition of the batched CAM maps: the oracle every kernel is tested
against, and the `backend="reference"` of `batchcam.fused_cam`.

Autograd through this composition defines the gradients the fused kernels must give (`amin` and
`amax` split the gradient evenly among tied extremes, `relu` has zero gradient at 0).

The methods follow pytorch-grad-cam (pytorch_grad_cam/): `grad_cam.py` (gradcam),
`xgrad_cam.py` (xgradcam, its eps 1e-7), `grad_cam_plusplus.py` (gradcampp, its eps 1e-6 and
alpha = 0 where G = 0), `layer_cam.py` (layercam), `hirescam.py` (hirescam) and
`grad_cam_elementwise.py` (elementwise). TorchCAM's Grad-CAM++ (`torchcam/methods/gradient.py`)
differs: its weights come out as sum_p relu(G) G^2 (benchmarks/tools/torchcam_gradcampp.py).
"""
import torch

from .definitions import METHODS, accumulation_dtype

XGRADCAM_EPS = 1e-7
GRADCAMPP_EPS = 1e-6


def channel_sum_terms(a, g, method):
    """The (B, C, *S) terms whose sum over channels is each method's score s (B, *S)."""
    spatial = tuple(range(2, a.dim()))
    if method == "gradcam":
        return g.mean(dim=spatial, keepdim=True) * a
    if method == "xgradcam":
        return (g * a).sum(dim=spatial, keepdim=True) / (a.sum(dim=spatial, keepdim=True) + XGRADCAM_EPS) * a
    if method == "gradcampp":
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum(dim=spatial, keepdim=True) * g2 * g + GRADCAMPP_EPS)
        alpha = torch.where(g != 0, alpha, 0)
        return (torch.relu(g) * alpha).sum(dim=spatial, keepdim=True) * a
    if method == "layercam":
        return torch.relu(g) * a
    if method == "hirescam":
        return g * a
    if method == "elementwise":
        return torch.relu(g * a)
    raise ValueError(f"fused_cam: method must be one of {METHODS}, got {method!r}")


def fused_cam_reference(activations, gradients, relu=True, normalize="minmax", eps=1e-7, method="gradcam"):
    """CAM maps of a batch: (B, C, *S) activations and gradients -> (B, *S) maps."""
    acc = accumulation_dtype(activations.dtype)
    s = channel_sum_terms(activations.to(acc), gradients.to(acc), method).sum(dim=1)  # (B, *S)
    r = torch.relu(s) if relu else s
    flat = r.flatten(1)
    keep = (-1,) + (1,) * (r.dim() - 1)
    if flat.shape[1] == 0:  # P = 0: no positions to normalise over (amin/amax refuse empty rows)
        y = r
    elif normalize == "minmax":
        lo, hi = flat.amin(dim=1).view(keep), flat.amax(dim=1).view(keep)
        y = (r - lo) / (hi - lo + eps)
    elif normalize == "max":
        y = r / (flat.amax(dim=1).view(keep) + eps)
    else:
        y = r
    return y.to(activations.dtype)
