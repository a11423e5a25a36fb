"""TorchCAM's Grad-CAM++ weights are not the Grad-CAM++ formula: a demonstration on a tiny model.

TorchCAM's `GradCAMpp._get_weights` (torchcam/methods/gradient.py) computes alpha = G^2 and then
divides `alpha[idx][mask].div_(denominator)`: boolean indexing returns a copy, so the in-place
division never reaches alpha, and the weights come out as sum_p relu(G) G^2. This script computes
TorchCAM's raw maps (normalized=False) for a small random CNN and compares them with the maps of
three candidate weightings, from the layer's activations A and gradients G captured by hooks:

- sum_p relu(G) G^2                                  (what the code above computes)
- pytorch-grad-cam's alpha = G^2 / (2 G^2 + S G^3 + 1e-6), S = sum_p A   (batchcam's gradcampp)
- TorchCAM's own intended alpha = G^2 / (2 G^2 + sum_p G^3 A + 1e-8)

It needs torchcam (benchmark environment, see benchmarks/bench_explain.py) and appends the
differences to benchmarks/results/torchcam_gradcampp.jsonl.

    python benchmarks/tools/torchcam_gradcampp.py
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import batchcam  # noqa: E402
from common import machine, write_result  # noqa: E402


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


def captured(model, layer, x, targets):
    """The layer's output A and the gradient G of the summed target scores with respect to it."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(x)
        (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), g


def maps_from_weights(a, w):
    return torch.relu((w[:, :, None, None] * a).sum(1))


def scaled(maps):
    """Each sample's map scaled to [0, 1] (min-max), so that maps of any magnitude compare."""
    lo, hi = maps.flatten(1).aminmax(dim=1)
    return (maps - lo[:, None, None]) / (hi - lo)[:, None, None]


def main():
    from torchcam.methods import GradCAMpp

    model = tiny_model()
    layer = model[3]  # the ReLU after the second convolution: positive activations
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    a, g = captured(model, layer, x, targets)
    with GradCAMpp(model, target_layer=layer) as extractor:
        torchcam_maps = extractor(class_idx=targets.tolist(), scores=model(x), normalized=False)[0]

    g2, g3, S = g * g, g ** 3, a.sum((2, 3), keepdim=True)
    candidates = {
        "sum_p relu(G) G^2": (torch.relu(g) * g2).sum((2, 3)),
        "pytorch-grad-cam alpha (batchcam gradcampp)": (torch.relu(g) * torch.where(
            g != 0, g2 / (2 * g2 + S * g3 + 1e-6), 0)).sum((2, 3)),
        "TorchCAM's intended alpha": (torch.relu(g) * torch.where(
            g2 > 0, g2 / (2 * g2 + (g3 * a).sum((2, 3), keepdim=True) + 1e-8), g2)).sum((2, 3)),
    }
    batchcam_maps = batchcam.fused_cam(a, g, method="gradcampp", normalize="none")
    reference = scaled(torchcam_maps)
    header = ["weights", "max |TorchCAM map - map| (both min-max scaled)"]
    rows = [[name, f"{(scaled(maps_from_weights(a, w)) - reference).abs().max().item():.2e}"]
            for name, w in candidates.items()]
    rows.append(["batchcam.fused_cam(method='gradcampp')",
                 f"{(scaled(batchcam_maps) - reference).abs().max().item():.2e}"])
    import torchcam

    table, paths = write_result("torchcam_gradcampp", machine(torch.device("cpu")), header, rows,
                                {"torchcam": torchcam.__version__}, None)
    print(table)
    print("\nwritten: " + ", ".join(paths))


if __name__ == "__main__":
    sys.exit(main())
