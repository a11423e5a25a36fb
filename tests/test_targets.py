"""Targets beyond class indices, batched: segmentation and embedding scores against a plain
per-sample computation of the same score (pytorch-grad-cam's target objects), output= selection
for models returning dicts, tuples or objects, and BatchCAM with the same targets and reshape."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import batchcam
from batchcam.targets import class_scores

from test_explain import vit_case


class TinySegmenter(nn.Module):
    """(B, 3, H, W) -> (B, K, H, W) logits; `features` is the layer explained."""

    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.head(self.features(x))


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.proj = nn.Linear(8, 6)

    def forward(self, x):
        return self.proj(self.features(x).mean((2, 3)))


def segmentation_case(masks_per_sample):
    torch.manual_seed(0)
    model = TinySegmenter().double()
    x = torch.rand(3, 3, 10, 12, dtype=torch.float64)
    classes = torch.tensor([2, 0, 3])
    masks = torch.rand(3, 10, 12, dtype=torch.float64) > 0.5
    return model, x, classes, masks if masks_per_sample else masks[0]


@pytest.mark.parametrize("masks_per_sample", [True, False])
def test_segmentation_target_is_the_per_sample_masked_sum(masks_per_sample):
    model, x, classes, masks = segmentation_case(masks_per_sample)
    out = model(x)
    scores = class_scores(out, batchcam.SegmentationTarget(classes, masks))
    per_mask = masks if masks_per_sample else masks.expand(3, -1, -1)
    # pytorch-grad-cam's SemanticSegmentationTarget, one sample at a time
    expected = torch.stack([(out[b][classes[b]] * per_mask[b]).sum() for b in range(3)])
    torch.testing.assert_close(scores, expected)
    maps = batchcam.explain(model, model.features, x, batchcam.SegmentationTarget(classes, masks))
    one_by_one = batchcam.explain(model, model.features, x,
                                  [lambda o, c=int(c), m=m: (o[c] * m).sum() for c, m in zip(classes, per_mask)])
    torch.testing.assert_close(maps, one_by_one)
    no_mask = class_scores(out, batchcam.SegmentationTarget(1))
    torch.testing.assert_close(no_mask, out[:, 1].sum((1, 2)))


def test_embedding_target_is_the_per_sample_cosine_similarity():
    torch.manual_seed(0)
    model = Embedder().double()
    x = torch.rand(4, 3, 9, 9, dtype=torch.float64)
    for reference in (torch.randn(6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)):
        out = model(x)
        refs = reference.expand(4, -1)
        expected = torch.stack([F.cosine_similarity(out[b], refs[b], dim=0) for b in range(4)])
        torch.testing.assert_close(class_scores(out, batchcam.EmbeddingTarget(reference)), expected)
        maps = batchcam.explain(model, model.features, x, batchcam.EmbeddingTarget(reference))
        one_by_one = batchcam.explain(model, model.features, x,
                                      [lambda o, r=r: F.cosine_similarity(o, r, dim=0) for r in refs])
        torch.testing.assert_close(maps, one_by_one)


def test_target_errors_name_the_problem():
    model, x, classes, masks = segmentation_case(True)
    out = model(x)
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 4\)"):
        class_scores(out, batchcam.SegmentationTarget(torch.tensor([0, 1, 4])))
    with pytest.raises(ValueError, match=r"masks must be \(10, 12\) or \(3, 10, 12\)"):
        class_scores(out, batchcam.SegmentationTarget(classes, masks[:, :5]))
    with pytest.raises(ValueError, match=r"the reference must be \(6,\) or \(2, 6\)"):
        class_scores(torch.randn(2, 6), batchcam.EmbeddingTarget(torch.randn(5)))
    with pytest.raises(ValueError, match="class-index targets need logits.*SegmentationTarget"):
        batchcam.explain(model, model.features, x, classes)


@dataclass
class ModelOutput:  # what HuggingFace models return: fields by attribute (and by key)
    logits: torch.Tensor
    hidden: torch.Tensor


class Wrapped(nn.Module):
    """SimpleCNN-like classifier returning its logits inside a dict, a tuple or an object."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.features(x)
        logits = self.fc(h.mean((2, 3)))
        return {"dict": {"logits": logits, "hidden": h}, "tuple": (h, logits),
                "object": ModelOutput(logits, h), "tensor": logits}[self.kind]


@pytest.mark.parametrize("kind, selector", [("dict", "logits"), ("tuple", 1), ("tuple", -1), ("object", "logits"),
                                            ("dict", lambda out: out["logits"])])
def test_output_selector(kind, selector):
    torch.manual_seed(0)
    model = Wrapped(kind).double()
    plain = Wrapped("tensor").double()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    expected = batchcam.explain(plain, plain.features, x)
    torch.testing.assert_close(batchcam.explain(model, model.features, x, output=selector), expected)
    with batchcam.BatchCAM(model, model.features, output=selector) as cam, \
            batchcam.BatchCAM(plain, plain.features) as plain_cam:
        (logits, maps), (plain_logits, plain_maps) = cam(x), plain_cam(x)
    torch.testing.assert_close(logits, plain_logits)
    torch.testing.assert_close(maps, plain_maps)


def test_output_selector_errors():
    x = torch.rand(2, 1, 8, 8)
    model = Wrapped("dict")
    with pytest.raises(ValueError, match=r"keys \['logits', 'hidden'\], not a tensor: pass output="):
        batchcam.explain(model, model.features, x)
    with pytest.raises(ValueError, match=r"output='scores': the model's output has keys \['logits', 'hidden'\]"):
        batchcam.explain(model, model.features, x, output="scores")
    model = Wrapped("tuple")
    with pytest.raises(ValueError, match="output=2: the model returned 2 outputs"):
        batchcam.explain(model, model.features, x, output=2)


def test_batchcam_takes_reshape_and_targets():
    model, x, to_maps = vit_case()
    target = batchcam.EmbeddingTarget(torch.randn(10, dtype=torch.float64))
    expected = batchcam.explain(model, model.block, x, target, reshape=to_maps, size="layer", normalize="none")
    with batchcam.BatchCAM(model, model.block, reshape=to_maps, normalize="none") as cam:
        _, maps = cam(x, target)
    torch.testing.assert_close(maps, expected)
