"""Batch-CAM losses (docs/training.md): reconstructions, distances, class prototypes.

The reconstruction of sample b is its image masked by its upsampled map, R_b = up(cam_b) * x_b.
- PrototypeLoss: mean over the batch of d(R_b, P_{y_b}), P_y the global prototype of class y.
- BatchCAMLoss: mean over the samples whose class has at least two samples in the batch of
  d(R_b, mean of the reconstructions of class y_b in the batch). Classes absent from the batch
  are skipped, a class with a single sample contributes nothing, and a batch with no such class
  gives 0 (never NaN). The class mean is not detached: both sides move toward each other.
Distances, per sample: "l1" mean |a - b|, "l2" mean (a - b)^2, "ssim" 1 - SSIM(a, b) (Gaussian
window 11, sigma 1.5, data range 1, K1 0.01, K2 0.03: Wang et al. 2004, and scikit-image's
structural_similarity with gaussian_weights=True, use_sample_covariance=False).
"""
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .functional import upsample_maps

DISTANCES = ("l1", "l2", "ssim")


def reconstruct(maps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """up(cam) * x: maps (B, h, w) bilinearly upsampled to the images' (B, C, H, W) size."""
    return upsample_maps(maps.to(images.dtype), images.shape[2:]).unsqueeze(1) * images


def _gaussian_window(size=11, sigma=1.5, device=None, dtype=None):
    x = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample SSIM of (B, C, H, W) images (mean over the valid window positions)."""
    channels = a.shape[1]
    g = _gaussian_window(device=a.device, dtype=a.dtype)
    wx = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    wy = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t):  # separable Gaussian filter, valid positions only
        return F.conv2d(F.conv2d(t, wx, groups=channels), wy, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample distance (B,) between (B, C, H, W) images."""
    if kind == "l1":
        return (a - b).abs().flatten(1).mean(dim=1)
    if kind == "l2":
        return (a - b).square().flatten(1).mean(dim=1)
    if kind == "ssim":
        return 1.0 - ssim(a, b)
    raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


@torch.no_grad()
def class_prototypes(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     batch_size: int = 4096) -> torch.Tensor:
    """Mean image per class (num_classes, C, H, W) in one pass, summed over every process when
    torch.distributed is initialised (each process passing its own shard). A class with no
    image gets a zero prototype."""
    sums = torch.zeros((num_classes, *images.shape[1:]), dtype=torch.float64, device=images.device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=images.device)
    for start in range(0, len(labels), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        sums.index_add_(0, y, x.to(torch.float64))
        counts += torch.bincount(y, minlength=num_classes).to(torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    shape = (-1,) + (1,) * (images.dim() - 1)
    return (sums / counts.clamp_min(1).view(shape)).to(images.dtype)


class PrototypeLoss(nn.Module):
    """Mean over the batch of d(up(cam_b) * x_b, P_{y_b})."""

    def __init__(self, prototypes: torch.Tensor, kind: str = "l2"):
        super().__init__()
        distance(prototypes[:1], prototypes[:1], kind)  # validates `kind`
        self.register_buffer("prototypes", prototypes)
        self.kind = kind

    def forward(self, maps, images, labels):
        return distance(reconstruct(maps, images), self.prototypes[labels], self.kind).mean()


class BatchCAMLoss(nn.Module):
    """Mean over samples of classes with at least two samples in the batch of
    d(R_b, mean of R over the batch's samples of class y_b)."""

    def __init__(self, kind: str = "l2"):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")
        self.kind = kind

    def forward(self, maps, images, labels):
        recon = reconstruct(maps, images)
        classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        sums = torch.zeros((len(classes), *recon.shape[1:]), dtype=recon.dtype, device=recon.device)
        sums = sums.index_add(0, inverse, recon)
        means = sums / counts.view(-1, *(1,) * (recon.dim() - 1)).to(recon.dtype)
        shared = counts[inverse] >= 2
        per_sample = distance(recon, means[inverse], self.kind)
        # where() rather than indexing keeps the graph's shapes static; no class pair gives 0
        return torch.where(shared, per_sample, 0.0).sum() / shared.sum().clamp_min(1)
