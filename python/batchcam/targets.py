"""What a map explains: one score per sample, taken from the model's output for the whole batch
at once (no loop over samples).

- class indices: a (B,) tensor (None: each sample's predicted class) of a (B, classes) output;
- `SegmentationTarget(classes, masks)`: over a (B, K, H, W) output, the sum of class k's logits
  over a mask per sample (pytorch-grad-cam's SemanticSegmentationTarget, batched);
- `EmbeddingTarget(reference)`: cosine similarity of each sample's embedding to a reference
  (pytorch-grad-cam's SimilarityToConceptTarget, batched);
- any callable on the batched output returning (B,) scores, or B callables on one sample's
  output each (pytorch-grad-cam's target objects).
`select_output` picks the tensor to score from a model that returns a dict, a tuple or an object
with attributes (HuggingFace-style outputs).
"""
import torch
from torch.nn import functional as F


class SegmentationTarget:
    """Scores of a segmentation output (B, K, H, W): sum_{h,w} output[b, classes[b], h, w] * masks[b, h, w].

    classes: an int or a (B,) integer tensor. masks: None (every pixel), a (H, W) mask for every
    sample or (B, H, W) masks, boolean or weights.
    """

    def __init__(self, classes, masks=None):
        self.classes, self.masks = classes, masks

    def __call__(self, output):
        if output.dim() < 3:
            raise ValueError(f"SegmentationTarget: the output must be (B, K, *spatial), got {tuple(output.shape)}")
        batch, kinds = output.shape[:2]
        classes = torch.as_tensor(self.classes, device=output.device).long()
        classes = classes.expand(batch) if classes.dim() == 0 else classes
        if classes.shape != (batch,):
            raise ValueError(f"SegmentationTarget: classes must be an int or ({batch},), got {tuple(classes.shape)}")
        if classes.device.type == "cpu" and batch and (classes.min() < 0 or classes.max() >= kinds):
            raise ValueError(f"SegmentationTarget: classes must lie in [0, {kinds}), got {classes.tolist()}")
        chosen = output[torch.arange(batch, device=output.device), classes]  # (B, *spatial)
        if self.masks is not None:
            masks = torch.as_tensor(self.masks, device=output.device)
            if masks.shape not in (chosen.shape, chosen.shape[1:]):
                raise ValueError(f"SegmentationTarget: masks must be {tuple(chosen.shape[1:])} or "
                                 f"{tuple(chosen.shape)}, got {tuple(masks.shape)}")
            chosen = chosen * masks.to(chosen.dtype)
        return chosen.flatten(1).sum(1)


class EmbeddingTarget:
    """Scores of an embedding output (B, D) (or (B, *dims), flattened): the cosine similarity of
    each sample's embedding to `reference`, one (D,) for every sample or (B, D)."""

    def __init__(self, reference, eps: float = 1e-8):
        self.reference, self.eps = reference, eps

    def __call__(self, output):
        flat = output.flatten(1)
        reference = torch.as_tensor(self.reference, device=flat.device, dtype=flat.dtype)
        reference = reference.expand(len(flat), -1) if reference.dim() == 1 else reference
        if reference.shape != flat.shape:
            raise ValueError(f"EmbeddingTarget: the reference must be ({flat.shape[1]},) or {tuple(flat.shape)}, "
                             f"got {tuple(torch.as_tensor(self.reference).shape)}")
        return F.cosine_similarity(flat, reference, dim=1, eps=self.eps)


def select_output(output, selector=None):
    """The tensor to score from a model's output: `selector` None (the output itself, which must
    then be a tensor), a key (dicts and HuggingFace-style outputs, or an attribute name), an index
    (tuples and lists) or a callable on the output."""
    if selector is None:
        if isinstance(output, torch.Tensor):
            return output
        found = f"a dict with keys {list(output)}" if isinstance(output, dict) else type(output).__name__
        raise ValueError(f"the model returned {found}, not a tensor: pass output= (a key, an index or a callable) "
                         "to pick the one to explain")
    if callable(selector):
        picked = selector(output)
    elif isinstance(selector, int) and isinstance(output, (tuple, list)):
        if not -len(output) <= selector < len(output):
            raise ValueError(f"output={selector}: the model returned {len(output)} outputs")
        picked = output[selector]
    elif isinstance(selector, str) and isinstance(output, dict):
        if selector not in output:
            raise ValueError(f"output={selector!r}: the model's output has keys {list(output)}")
        picked = output[selector]
    elif isinstance(selector, str) and hasattr(output, selector):
        picked = getattr(output, selector)
    else:
        raise ValueError(f"output={selector!r}: cannot pick it from the model's {type(output).__name__}")
    if not isinstance(picked, torch.Tensor):
        raise ValueError(f"output={selector!r} gives a {type(picked).__name__}, not a tensor")
    return picked


def class_scores(output: torch.Tensor, targets=None) -> torch.Tensor:
    """(B,) scores to explain from the model's (selected) output: a callable's scores (any output
    shape), B callables' scores, or the logit of each sample's target class (None: the predicted
    one; a (B,) tensor of class indices) of a (B, classes) output."""
    if callable(targets):
        scores = targets(output)
        if scores.shape != output.shape[:1]:
            raise ValueError(f"a target callable must return ({output.shape[0]},) scores, got {tuple(scores.shape)}")
        return scores
    if isinstance(targets, (list, tuple)) and targets and callable(targets[0]):
        if len(targets) != output.shape[0]:
            raise ValueError(f"{len(targets)} target callables for a batch of {output.shape[0]}")
        return torch.stack([t(row) for t, row in zip(targets, output)])
    if output.dim() != 2:
        raise ValueError(f"class-index targets need logits (B, classes), got {tuple(output.shape)}: for other "
                         "outputs pass a target (SegmentationTarget, EmbeddingTarget or a callable)")
    if targets is None:
        targets = output.argmax(dim=1)
    targets = torch.as_tensor(targets)
    if targets.shape != output.shape[:1] or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be a ({output.shape[0]},) integer tensor, got "
                         f"{tuple(targets.shape)} {targets.dtype}")
    # The range is checked here for targets on the CPU; checking targets on a GPU would wait for
    # the whole forward to finish (gather's own bounds check still catches them there).
    if targets.device.type == "cpu" and targets.numel() and (targets.min() < 0 or targets.max() >= output.shape[1]):
        raise ValueError(f"targets must lie in [0, {output.shape[1]}), got {targets.tolist()}")
    return output.gather(1, targets.to(output.device, torch.long)[:, None])[:, 0]
