"""Test-time augmentation for smoother maps (`explain(..., smooth="tta")`): every augmented copy
of the batch in one batch, one forward and one backward, each copy's map mapped back onto the
original image and the copies' maps averaged (pytorch-grad-cam's aug_smooth, which runs one
forward and backward per copy).

An augmentation is a pair (augment images (B, C, H, W), map back maps (B, H, W)).
"""
import itertools

import torch


def flip(horizontal: bool = True):
    """Mirror left-right (or top-bottom): its own inverse."""
    dim = -1 if horizontal else -2
    return (lambda x: x.flip(dim)), (lambda m: m.flip(dim))


def multiply(factor: float):
    """Scale the image's values (brightness); the map stays where it is."""
    return (lambda x: x * factor), (lambda m: m)


def shift(dy: int, dx: int):
    """Move the image by (dy, dx) pixels (cyclically); the map is moved back."""
    return (lambda x: x.roll((dy, dx), (-2, -1))), (lambda m: m.roll((-dy, -dx), (-2, -1)))


def compose(*steps):
    """The augmentations applied in order, mapped back in reverse order."""
    def augment(x):
        for forward, _ in steps:
            x = forward(x)
        return x

    def back(m):
        for _, backward in reversed(steps):
            m = backward(m)
        return m

    return augment, back


def default_augmentations():
    """pytorch-grad-cam's: no flip and a horizontal flip, each at 0.9, 1 and 1.1 times the image."""
    identity = (lambda x: x), (lambda m: m)
    return [compose(mirror, multiply(factor))
            for mirror, factor in itertools.product((identity, flip()), (0.9, 1.0, 1.1))]


def augmented_batch(images, targets, augmentations):
    """The copies of `images` (a tensor) one after the other, and the targets repeated for them
    (None and a callable on the whole batch stay as they are)."""
    batch = torch.cat([augment(images) for augment, _ in augmentations])
    if targets is None or callable(targets):
        return batch, targets
    if isinstance(targets, (list, tuple)) and targets and callable(targets[0]):
        return batch, list(targets) * len(augmentations)
    targets = torch.as_tensor(targets)
    return batch, targets.repeat(len(augmentations)) if targets.dim() == 1 else targets


def mean_of_copies(maps, augmentations):
    """(copies * B, H, W) maps of the augmented batch -> (B, H, W): each mapped back, averaged."""
    chunks = maps.chunk(len(augmentations))
    return torch.stack([back(m) for (_, back), m in zip(augmentations, chunks)]).mean(0)
