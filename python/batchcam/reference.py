"""The plain-PyTorch composition of the batched Grad-CAM map: the oracle every kernel is tested
against, and the `backend="reference"` of `batchcam.fused_cam`.

Autograd through this composition defines the gradients the fused kernels must give (`amin` and
`amax` split the gradient evenly among tied extremes, `relu` has zero gradient at 0).
"""
import torch

from .definitions import accumulation_dtype


def fused_cam_reference(activations, gradients, relu=True, normalize="minmax", eps=1e-7):
    """Grad-CAM maps of a batch: (B, C, *S) activations and gradients -> (B, *S) maps."""
    acc = accumulation_dtype(activations.dtype)
    a, g = activations.to(acc), gradients.to(acc)
    spatial = tuple(range(2, a.dim()))
    w = g.mean(dim=spatial, keepdim=True)  # channel weights (B, C, 1, ...)
    s = (w * a).sum(dim=1)  # weighted activation sum (B, *S)
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
