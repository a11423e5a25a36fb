"""Batch-CAM losses: distances against independent implementations, prototypes, edge cases."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from batchcam.functional import upsample_maps
from batchcam.losses import BatchCAMLoss, PrototypeLoss, class_prototypes, distance, reconstruct, ssim


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 28, 28, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(4, 1, 28, 28, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(4):
        ref = metrics.structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert abs(float(ours[i]) - ref) < 1e-10
    assert torch.allclose(ssim(a, a), torch.ones(4, dtype=torch.float64))


def test_l1_l2_match_numpy():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 1, 8, 8, generator=gen), torch.rand(3, 1, 8, 8, generator=gen)
    an, bn = a.numpy(), b.numpy()
    np.testing.assert_allclose(distance(a, b, "l1"), np.abs(an - bn).mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(distance(a, b, "l2"), ((an - bn) ** 2).mean(axis=(1, 2, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="distance must be one of"):
        distance(a, b, "cosine")


def test_ssim_is_differentiable():
    a = torch.rand(2, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ssim(x, b), (a,))


def test_reconstruct_upsamples_maps():
    maps = torch.ones(2, 7, 7)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(reconstruct(maps, x), x)
    maps = torch.rand(3, 7, 5, dtype=torch.float64)
    x = torch.rand(3, 2, 28, 20, dtype=torch.float64)
    up = F.interpolate(maps.unsqueeze(1), size=(28, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(reconstruct(maps, x), up * x, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("spatial", "size", "mode"), [((5,), (17,), "linear"), ((7, 5), (28, 19), "bilinear"),
                                                       ((3, 4, 5), (6, 9, 7), "trilinear")])
def test_upsample_maps_upsamples_each_map_alone(spatial, size, mode):
    """The maps go through interpolate as one image's channels: the values and gradients of B
    one-channel images."""
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(4, *spatial, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.rand(4, *size, generator=gen, dtype=torch.float64)
    ours = upsample_maps(maps, size)
    expected = F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False)[:, 0]
    assert ours.shape == (4, *size) and ours.is_contiguous()
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(torch.autograd.grad(ours, maps, grad)[0],
                               torch.autograd.grad(expected, maps, grad)[0], rtol=0, atol=1e-14)


def test_class_prototypes_are_class_means():
    x = torch.rand(50, 1, 4, 4)
    y = torch.randint(0, 3, (50,))
    protos = class_prototypes(x, y, 4, batch_size=7)
    for c in range(3):
        torch.testing.assert_close(protos[c], x[y == c].mean(0))
    assert torch.equal(protos[3], torch.zeros(1, 4, 4))  # a class with no image


@pytest.mark.parametrize("kind", ["l1", "l2", "ssim"])
def test_batchcam_loss_edge_cases(kind):
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(5, 7, 7, generator=gen, requires_grad=True)
    x = torch.rand(5, 1, 28, 28, generator=gen)
    loss = BatchCAMLoss(kind)
    # every class alone: nothing to compare, 0 and a finite (zero) gradient
    alone = loss(maps, x, torch.tensor([0, 1, 2, 3, 4]))
    (g,) = torch.autograd.grad(alone, maps)
    assert alone.item() == 0 and torch.isfinite(g).all() and not g.any()
    # class 9 has one sample: it contributes nothing
    labels = torch.tensor([0, 0, 1, 1, 9])
    with_single = loss(maps, x, labels)
    without = loss(maps[:4], x[:4], labels[:4])
    torch.testing.assert_close(with_single, without)
    # by hand: mean over the 4 paired samples of d(R_b, class mean)
    recon = reconstruct(maps[:4], x[:4])
    means = torch.stack([recon[:2].mean(0)] * 2 + [recon[2:4].mean(0)] * 2)
    torch.testing.assert_close(without, distance(recon, means, kind).mean())


def test_prototype_loss():
    protos = torch.rand(3, 1, 28, 28)
    maps, x, y = torch.rand(4, 7, 7), torch.rand(4, 1, 28, 28), torch.tensor([0, 2, 2, 1])
    expected = distance(reconstruct(maps, x), protos[y], "l1").mean()
    torch.testing.assert_close(PrototypeLoss(protos, "l1")(maps, x, y), expected)
    with pytest.raises(ValueError, match="distance must be one of"):
        PrototypeLoss(protos, "huber")
