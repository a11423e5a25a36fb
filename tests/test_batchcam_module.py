"""batchcam.BatchCAM: one forward and one autograd.grad per batch; the backend changes nothing else."""
import pytest
import torch
from torch import nn

import batchcam
from batchcam.definitions import METHODS


class SmallCNN(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))

    def forward(self, x):
        return self.head(self.features(x))


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = SmallCNN().double()
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    return model, model.features[3], x


@pytest.mark.parametrize("create_graph", [False, True])
def test_backends_agree_on_maps_and_parameter_gradients(create_graph):
    results = {}
    for backend in ("reference", "fused"):
        model, layer, x = model_and_batch()
        labels = torch.tensor([0, 1, 2, 3, 4, 0])
        with batchcam.BatchCAM(model, layer, backend=backend) as cam:
            logits, maps = cam(x, labels, create_graph=create_graph)
        assert all(p.grad is None for p in model.parameters())
        loss = (maps - 0.5).square().mean() + nn.functional.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results[backend] = (logits, maps, grads)
    ref, fused = results["reference"], results["fused"]
    torch.testing.assert_close(fused[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-10, atol=1e-12)
    for g_fused, g_ref in zip(fused[2], ref[2]):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-9, atol=1e-12)


def test_create_graph_trains_through_the_gradients():
    """With create_graph the map's gradient reaches parameters only through dScore/dA as well."""
    grads = {}
    for create_graph in (False, True):
        model, layer, x = model_and_batch()
        with batchcam.BatchCAM(model, layer) as cam:
            _, maps = cam(x, create_graph=create_graph)
        grads[create_graph] = torch.autograd.grad(maps.sum(), model.head[2].weight, allow_unused=True)[0]
    assert grads[False] is None  # the head only shapes the weights, which are constants here
    assert grads[True] is not None and grads[True].abs().sum() > 0


def test_maps_match_manual_grad_cam():
    model, layer, x = model_and_batch()
    with batchcam.BatchCAM(model, layer) as cam:
        logits, maps = cam(x)
    feats = model.features(x)
    out = model.head(feats)
    score = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (g,) = torch.autograd.grad(score, feats)
    torch.testing.assert_close(maps, batchcam.fused_cam_reference(feats, g))
    assert maps.shape == (6, 6, 6)


@pytest.mark.parametrize("method", METHODS)
def test_maps_of_every_method(method):
    """BatchCAM(method=) runs the method's map on the layer's activations and gradients."""
    model, layer, x = model_and_batch()
    with batchcam.BatchCAM(model, layer, method=method) as cam:
        _, maps = cam(x)
    feats = model.features(x)
    out = model.head(feats)
    (g,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), feats)
    torch.testing.assert_close(maps, batchcam.fused_cam_reference(feats, g, method=method))
    with pytest.raises(ValueError, match="method must be one of"):
        batchcam.BatchCAM(model, layer, method="scorecam")


def test_mode_hooks_and_no_state():
    model, layer, x = model_and_batch()
    model.eval()
    cam = batchcam.BatchCAM(model, layer)
    cam(x, train=True)
    assert not model.training
    assert cam._capture.outputs is None
    assert len(layer._forward_hooks) == 1
    cam.close()
    assert len(layer._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="after close"):
        cam(x)


def test_frozen_model_still_explained():
    model, layer, x = model_and_batch()
    model.requires_grad_(False)
    with torch.no_grad(), batchcam.BatchCAM(model, layer) as cam:
        _, maps = cam(x)
    assert maps.shape == (6, 6, 6) and torch.isfinite(maps).all()


@pytest.mark.parametrize("targets,message", [
    (torch.tensor([0, 1]), r"targets must be a \(6,\) integer tensor"),
    (torch.tensor([0, 1, 2, 3, 4, 9]), r"targets must lie in \[0, 5\)"),
    (torch.zeros(6), "integer tensor"),
])
def test_bad_targets(targets, message):
    model, layer, x = model_and_batch()
    with batchcam.BatchCAM(model, layer) as cam, pytest.raises(ValueError, match=message):
        cam(x, targets)


def test_bad_target_layer():
    model, _, x = model_and_batch()
    with pytest.raises(ValueError, match="not a submodule"):
        batchcam.BatchCAM(model, nn.Conv2d(1, 1, 1))
    with batchcam.BatchCAM(model, model.head[2]) as cam:  # (B, C): the gradient is the weight, maps (B, 1)
        assert cam(x)[1].shape == (6, 1)

    class Scalar(nn.Module):  # one value per sample: no channel dim
        def forward(self, t):
            return t.sum(1)

    class Lift(nn.Module):
        def forward(self, t):
            return torch.stack([t, -t], dim=1)

    net = nn.Sequential(nn.Linear(4, 3), Scalar(), Lift())
    with batchcam.BatchCAM(net, net[1]) as cam, pytest.raises(ValueError, match=r"\(B, C, \*S\)"):
        cam(torch.randn(5, 4))
