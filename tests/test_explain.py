"""batchcam.explain: maps of a batch for one or several layers, targets, token models, no side effects."""
import gc

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import batchcam
from batchcam.definitions import METHODS
from batchcam.models import SimpleCNN


def setup(seed=0, batch=5):
    torch.manual_seed(seed)
    model = SimpleCNN(width=8).double()
    x = torch.rand(batch, 1, 28, 28, dtype=torch.float64)
    return model, x


def minmax(m, eps=0.0):
    lo, hi = m.flatten(1).amin(1)[:, None, None], m.flatten(1).amax(1)[:, None, None]
    return (m - lo) / (hi - lo + eps)


def manual_grad_cam(model, layer, x, targets=None, rescale=True):
    """Grad-CAM by hand: relu(sum_c mean_p(dS/dA) A), upsampled, min-max scaled (exactly: eps only
    guards the range of the maps, which is tiny for this untrained model)."""
    feats = {}
    handle = layer.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    logits = model(x)
    handle.remove()
    targets = logits.argmax(1) if targets is None else targets
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), feats["a"])
    cam = torch.relu((g.mean((2, 3), keepdim=True) * feats["a"]).sum(1))
    if not rescale:  # pytorch-grad-cam's per-layer step: min-max at layer size, then resize
        cam = minmax(cam, 1e-7)
    up = F.interpolate(cam.unsqueeze(1), size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    return (minmax(up) if rescale else up).detach()


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_single_layer_matches_manual(backend):
    model, x = setup()
    maps = batchcam.explain(model, model.target_layer, x, backend=backend)
    assert maps.shape == (5, 28, 28)
    torch.testing.assert_close(maps, manual_grad_cam(model, model.target_layer, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_every_method(method):
    """explain(method=): the method's map at layer size, min-max scaled, upsampled and scaled."""
    model, x = setup()
    feats = {}
    handle = model.target_layer.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    logits = model(x)
    handle.remove()
    (g,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), feats["a"])
    cam = batchcam.fused_cam_reference(feats["a"], g, method=method)
    expected = minmax(F.interpolate(cam.unsqueeze(1), size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0])
    torch.testing.assert_close(batchcam.explain(model, model.target_layer, x, method=method), expected.detach(),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="method must be one of"):
        batchcam.explain(model, model.target_layer, x, method="gradcam++")


@pytest.mark.parametrize("combine", ["mean", "max"])
def test_several_layers_in_one_pass(combine):
    model, x = setup()
    layers = [model.body[1], model.body[2]]
    maps = batchcam.explain(model, layers, x, combine=combine)
    parts = torch.stack([manual_grad_cam(model, layer, x, rescale=False) for layer in layers])
    combined = parts.mean(0) if combine == "mean" else parts.amax(0)
    torch.testing.assert_close(maps, minmax(combined), rtol=1e-6, atol=1e-6)


def test_targets_as_indices_and_callables():
    model, x = setup()
    idx = torch.tensor([3, 1, 4, 1, 5])
    by_index = batchcam.explain(model, model.target_layer, x, idx)
    torch.testing.assert_close(by_index, manual_grad_cam(model, model.target_layer, x, idx), rtol=1e-6, atol=1e-6)
    by_callable = batchcam.explain(model, model.target_layer, x, lambda logits: logits.gather(1, idx[:, None])[:, 0])
    per_sample = batchcam.explain(model, model.target_layer, x, [lambda row, c=int(c): row[c] for c in idx])
    torch.testing.assert_close(by_callable, by_index)
    torch.testing.assert_close(per_sample, by_index)


def test_sizes():
    model, x = setup()
    assert batchcam.explain(model, model.target_layer, x, size="layer").shape == (5, 7, 7)
    assert batchcam.explain(model, model.target_layer, x, size=(14, 10)).shape == (5, 14, 10)


class TinyViT(nn.Module):
    """Patch embedding to (B, N, C) tokens, a token mixer, a mean-pooled head."""

    def __init__(self, dim=12, patch=4):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, patch)
        self.block = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.head(self.block(tokens).mean(1))


def vit_case():
    """A TinyViT (float64), 3 images, and its tokens' reshape: (B, 49, C) -> (B, C, 7, 7)."""
    torch.manual_seed(0)
    return TinyViT().double(), torch.rand(3, 1, 28, 28, dtype=torch.float64), tokens_to_maps


def tokens_to_maps(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], 7, 7)


def test_reshape_for_token_outputs():
    model, x, to_maps = vit_case()
    maps = batchcam.explain(model, model.block, x, reshape=to_maps)
    tokens = {}
    handle = model.block.register_forward_hook(lambda m, i, o: tokens.setdefault("a", o))
    logits = model(x)
    handle.remove()
    (g,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), tokens["a"])
    a, g = to_maps(tokens["a"]), to_maps(g)
    expected = batchcam.fused_cam_reference(a, g)
    up = F.interpolate(expected.unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(maps, minmax(up).detach(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(3, 49, 12\) read as \(B, C, \*S\).*pass reshape="):
        batchcam.explain(model, model.block, x)


def test_no_side_effects_and_no_growth():
    model, x = setup(batch=2)
    model.train()
    hooks_before = {id(m): len(m._forward_hooks) for m in model.modules()}
    batchcam.explain(model, model.target_layer, x)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert {id(m): len(m._forward_hooks) for m in model.modules()} == hooks_before
    for _ in range(20):
        batchcam.explain(model, model.target_layer, x)
    gc.collect()
    before = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    for _ in range(1000):
        batchcam.explain(model, model.target_layer, x)
    gc.collect()
    after = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    assert after <= before


def test_bad_arguments():
    model, x = setup()
    with pytest.raises(ValueError, match="combine must be one of"):
        batchcam.explain(model, model.target_layer, x, combine="sum")
    with pytest.raises(ValueError, match="size='layer' needs a single target layer"):
        batchcam.explain(model, [model.body[1], model.body[2]], x, size="layer")
    with pytest.raises(ValueError, match="not a submodule"):
        batchcam.explain(model, nn.Linear(2, 2), x)
    with pytest.raises(ValueError, match="at least one target layer"):
        batchcam.explain(model, [], x)
    with pytest.raises(ValueError, match="target callables for a batch of 5"):
        batchcam.explain(model, model.target_layer, x, [lambda r: r[0]] * 2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda", "reference"])
@pytest.mark.parametrize("targets", ["predicted", "given"])
def test_explain_on_gpu_never_waits_for_the_device(backend, targets):
    """No call of explain synchronises with the GPU (a synchronisation would leave the GPU idle
    while the host launches the backward and the maps behind it)."""
    model = SimpleCNN(width=8).cuda()
    x = torch.rand(6, 1, 28, 28, device="cuda")
    target_indices = None if targets == "predicted" else torch.tensor([0, 1, 2, 3, 4, 5], device="cuda")
    batchcam.explain(model, model.target_layer, x, target_indices, backend=backend)  # compiles, loads
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        maps = batchcam.explain(model, model.target_layer, x, target_indices, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert maps.shape == (6, 28, 28) and torch.isfinite(maps).all()


@pytest.mark.parametrize("augmentations", [None, "shifts"])
@pytest.mark.parametrize("targets", [None, "indices", "callables"])
def test_tta_is_the_mean_of_the_copies_in_one_forward(augmentations, targets):
    from batchcam import smoothing

    model, x = setup()
    if augmentations == "shifts":
        augmentations = [smoothing.shift(0, 0), smoothing.shift(2, -1), smoothing.compose(smoothing.flip(False),
                                                                                         smoothing.shift(-1, 3))]
    copies = augmentations or smoothing.default_augmentations()
    idx = torch.tensor([3, 1, 4, 1, 5])
    targets = {"indices": idx, "callables": [lambda row, c=int(c): row[c] for c in idx], None: None}[targets]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].shape[0]))
    smoothed = batchcam.explain(model, model.target_layer, x, targets, smooth="tta", augmentations=augmentations)
    handle.remove()
    assert calls == [len(copies) * len(x)]  # every copy in one forward (and one backward)
    per_copy = [back(batchcam.explain(model, model.target_layer, augment(x), targets)) for augment, back in copies]
    torch.testing.assert_close(smoothed, torch.stack(per_copy).mean(0), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="smooth must be None or 'tta'"):
        batchcam.explain(model, model.target_layer, x, smooth="mean")
    with pytest.raises(ValueError, match="smooth='tta' takes one image tensor, size='input'"):
        batchcam.explain(model, model.target_layer, x, smooth="tta", size="layer")
