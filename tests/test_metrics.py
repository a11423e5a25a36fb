"""batchcam.metrics against straightforward per-sample implementations (one image, one step at a
time; ROAD's imputation as pytorch-grad-cam sets it up, solved by scipy), the soft versions'
gradients, and the errors."""
import numpy as np
import pytest
import torch
from torch import nn

from batchcam import metrics

sparse = pytest.importorskip("scipy.sparse")
from scipy.sparse.linalg import spsolve  # noqa: E402


def case(batch=5, size=(9, 11), channels=3, seed=0, ties=False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(24, 4)).double().eval()
    images = torch.rand(batch, channels, *size, dtype=torch.float64)
    maps = torch.rand(batch, *size, dtype=torch.float64)
    if ties:
        maps = (maps * 4).round() / 4
    return model, images, maps, torch.randint(0, 4, (batch,))


def probability(model, x, target):
    return model(x[None]).softmax(1)[0, target].item()


@torch.no_grad()
def reference_curve(model, images, maps, targets, steps, insertion):
    """One sample, one step at a time: pixels in the map's order (stable), most relevant first."""
    curves = np.zeros((len(images), steps + 1))
    for b in range(len(images)):
        order = np.argsort(-maps[b].flatten().numpy(), kind="stable")
        for k in range(steps + 1):
            chosen = np.zeros(order.size, dtype=bool)
            chosen[order[:int(round(k / steps * order.size))]] = True
            chosen = torch.from_numpy(chosen).view(maps.shape[1:])
            x = torch.where(chosen, images[b], torch.zeros_like(images[b])) if insertion else \
                torch.where(chosen, torch.zeros_like(images[b]), images[b])
            curves[b, k] = probability(model, x, targets[b])
    return curves, np.trapezoid(curves, dx=1 / steps, axis=1)


@pytest.mark.parametrize("insertion", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_deletion_and_insertion_match_the_per_sample_loop(insertion, ties):
    model, images, maps, targets = case(ties=ties)
    fn = metrics.insertion_curve if insertion else metrics.deletion_curve
    curve, auc = fn(model, images, maps, targets, steps=7, batch_size=12)
    expected_curve, expected_auc = reference_curve(model, images, maps, targets, 7, insertion)
    np.testing.assert_allclose(curve.numpy(), expected_curve, atol=1e-12)
    np.testing.assert_allclose(auc.numpy(), expected_auc, atol=1e-12)
    whole, _ = fn(model, images, maps, targets, steps=7)  # every step of every sample in one forward
    torch.testing.assert_close(whole, curve)


def test_confidence_change_and_average_drop():
    model, images, maps, targets = case()
    change = metrics.confidence_change(model, images, maps, targets)
    with torch.no_grad():
        before = np.array([probability(model, images[b], targets[b]) for b in range(5)])
        after = np.array([probability(model, images[b] * maps[b], targets[b]) for b in range(5)])
    assert not change.requires_grad  # no graph through the model for maps without grad
    np.testing.assert_allclose(change.numpy(), after - before, atol=1e-12)
    summary = metrics.average_drop_increase(model, images, maps, targets)
    assert summary["average_drop"] == pytest.approx(100 * np.mean(np.maximum(before - after, 0) / before))
    assert summary["increase"] == pytest.approx(100 * np.mean(after > before))
    logits = metrics.confidence_change(model, images, maps, None, score="logit")
    with torch.no_grad():
        predicted = model(images).argmax(1)
        expected = model(images * maps[:, None]).gather(1, predicted[:, None]) - model(images).max(1, True).values
    torch.testing.assert_close(logits, expected[:, 0])
    assert torch.autograd.gradcheck(lambda m: metrics.confidence_change(model, images, m, targets),
                                    (maps.clone().requires_grad_(True),))


def test_soft_curves_are_differentiable_and_approach_the_hard_ones():
    model, images, maps, targets = case(batch=2, size=(5, 6))
    hard, hard_auc = metrics.deletion_curve(model, images, maps, targets, steps=5)
    soft, soft_auc = metrics.deletion_curve(model, images, maps, targets, steps=5, temperature=1e-5)
    torch.testing.assert_close(soft, hard, atol=1e-6, rtol=0)
    maps.requires_grad_(True)
    _, auc = metrics.insertion_curve(model, images, maps, targets, steps=4, temperature=0.05)
    (grad,) = torch.autograd.grad(auc.sum(), maps)
    assert grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        lambda m: metrics.deletion_curve(model, images, m, targets, steps=3, temperature=0.1)[1], (maps,))


def scipy_impute(image, removed):
    """pytorch-grad-cam's NoisyLinearImputer (noise 0), one image: its sparse system, spsolve."""
    c, h, w = image.shape
    weights = {(1, 1): 1 / 12, (0, 1): 1 / 6, (-1, 1): 1 / 12, (1, -1): 1 / 12, (0, -1): 1 / 6, (-1, -1): 1 / 12,
               (1, 0): 1 / 6, (-1, 0): 1 / 6}
    unknown = [(i, j) for i in range(h) for j in range(w) if removed[i, j]]
    index = {p: k for k, p in enumerate(unknown)}
    a = sparse.lil_matrix((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for k, (i, j) in enumerate(unknown):
        total = 0.0
        for (di, dj), wt in weights.items():
            y, x = i + di, j + dj
            if 0 <= y < h and 0 <= x < w:
                total += wt
                if removed[y, x]:
                    a[k, index[(y, x)]] = wt
                else:
                    b[k] -= wt * image[:, y, x]
        a[k, k] = -total
    out = image.copy()
    solution = np.asarray(spsolve(sparse.csc_matrix(a), b)).reshape(len(unknown), c)
    for k, (i, j) in enumerate(unknown):
        out[:, i, j] = solution[k]
    return out


# linear_impute's solvers: the C++ op's two on CPU, the tensor operations elsewhere (here on CPU,
# 6 image channels at once or in chunks of 4 and 2).
SOLVERS = ["op direct", "op cg", "convolutions", "convolutions in chunks"]


def impute(solver, images, removed, monkeypatch):
    if solver.startswith("op"):
        return metrics.linear_impute(images, removed, tol=1e-12, solver=solver.split()[1])
    if solver == "convolutions in chunks":
        monkeypatch.setattr(metrics, "_IMPUTE_CHUNK_ELEMENTS", 4 * images[0, 0].numel())
    return metrics._impute_by_convolutions(images, removed, 1e-12, 500)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("solver", SOLVERS)
def test_linear_impute_solves_pytorch_grad_cams_system(fraction, solver, monkeypatch):
    torch.manual_seed(1)
    images = torch.rand(3, 2, 12, 10, dtype=torch.float64)
    removed = torch.rand(3, 12, 10) < fraction
    removed[0, :6, :5] = True  # a large hole touching the border
    removed[1, -1, -1] = True  # a corner
    filled = impute(solver, images, removed, monkeypatch)
    for n in range(3):
        expected = scipy_impute(images[n].numpy(), removed[n].numpy())
        np.testing.assert_allclose(filled[n].numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("solver", ["direct", "cg"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 1, 9), (2, 1, 17, 1), (1, 3, 33, 29), (1, 6, 9, 31)])
def test_linear_impute_in_float32_and_channels_last(shape, solver):
    torch.manual_seed(2)
    images = torch.rand(shape).to(memory_format=torch.channels_last)
    removed = torch.rand(shape[0], *shape[2:]) < 0.6
    removed[0, 0, 0], removed[0, -1, -1] = True, False
    filled = metrics.linear_impute(images, removed, solver=solver)
    assert filled.dtype == torch.float32
    for n in range(shape[0]):
        expected = scipy_impute(images[n].double().numpy(), removed[n].numpy())
        np.testing.assert_allclose(filled[n].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("channels, wide", [(1, "cg"), (3, "direct")])
def test_linear_impute_auto_picks_the_solver_per_image(channels, wide):
    """"auto": direct on a narrow band; on a band of 111, CG for one channel (direct up to 96 per
    channel), direct for three. Told apart by their rounding: each is bitwise reproducible."""
    torch.manual_seed(5)
    images = torch.rand(2, channels, 120, 130, dtype=torch.float64)
    removed = torch.zeros(2, 120, 130, dtype=torch.bool)
    removed[0, 40:60, 50:70] = True  # band 20
    removed[1, 5:-5, 5:-5] = True  # band 111 (numbered along the columns)
    auto = metrics.linear_impute(images, removed, tol=1e-13)
    by = {solver: metrics.linear_impute(images, removed, tol=1e-13, solver=solver) for solver in ("direct", "cg")}
    assert not torch.equal(by["direct"][1], by["cg"][1])
    torch.testing.assert_close(by["direct"], by["cg"], rtol=0, atol=1e-9)
    assert torch.equal(auto[0], by["direct"][0]) and torch.equal(auto[1], by[wide][1])


def test_linear_impute_noise_and_kept_pixels():
    torch.manual_seed(3)
    images = torch.rand(2, 3, 9, 8)
    removed = torch.rand(2, 9, 8) < 0.5
    kept = ~removed[:, None].expand_as(images)
    filled = metrics.linear_impute(images, removed)
    noisy = metrics.linear_impute(images, removed, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(filled[kept], images[kept]) and torch.equal(noisy[kept], images[kept])
    assert not torch.allclose(noisy, filled)
    nothing = metrics.linear_impute(images, torch.zeros(2, 9, 8, dtype=torch.bool))
    assert torch.equal(nothing, images)
    everything = metrics.linear_impute(images, torch.ones(2, 9, 8, dtype=torch.bool))  # singular: zeros
    assert torch.equal(everything, torch.zeros_like(images))


def test_impute_linear_op():
    torch.manual_seed(4)
    images, removed = torch.rand(2, 3, 7, 6, dtype=torch.float64), torch.rand(2, 7, 6) < 0.5
    for solver in metrics.IMPUTE_SOLVERS:
        torch.library.opcheck(torch.ops.batchcam.impute_linear.default, (images, removed, 1e-10, 200, solver))
    with pytest.raises(RuntimeError, match=r"removed must be \(N, H, W\) = \(2, 7, 6\)"):
        torch.ops.batchcam.impute_linear(images, removed[:, :6], 1e-10, 200)
    with pytest.raises(RuntimeError, match="images must be float32 or float64"):
        torch.ops.batchcam.impute_linear(images.half(), removed, 1e-10, 200)
    with pytest.raises(RuntimeError, match="solver must be one of auto, direct, cg; got lu"):
        torch.ops.batchcam.impute_linear(images, removed, 1e-10, 200, "lu")
    with pytest.raises(ValueError, match=r"solver must be one of \('auto', 'direct', 'cg'\), got 'lu'"):
        metrics.linear_impute(images, removed, solver="lu")


@pytest.mark.parametrize("order", ["morf", "lerf", "combined"])
def test_road_matches_the_per_sample_imputation(order):
    model, images, maps, targets = case(batch=3, size=(8, 7))
    percentiles = (20, 50, 80)
    ours = metrics.road(model, images, maps, targets, order=order, percentiles=percentiles, noise=0.0)

    def one(b, ranked):
        changes = []
        for p in percentiles:
            removed = ranked >= np.percentile(ranked, p)
            x = torch.from_numpy(scipy_impute(images[b].numpy(), removed))
            with torch.no_grad():
                changes.append(probability(model, x, targets[b]) - probability(model, images[b], targets[b]))
        return np.mean(changes)

    morf = np.array([one(b, maps[b].numpy()) for b in range(3)])
    lerf = np.array([one(b, 1 - maps[b].numpy()) for b in range(3)])
    expected = {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}[order]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6)


def test_metric_errors_name_the_problem():
    model, images, maps, targets = case()
    with pytest.raises(ValueError, match=r"maps must be \(5, 9, 11\)"):
        metrics.deletion_curve(model, images, maps[:, :3], targets)
    with pytest.raises(ValueError, match="score must be one of"):
        metrics.confidence_change(model, images, maps, targets, score="softmax")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        metrics.insertion_curve(model, images, maps, targets, steps=0)
    with pytest.raises(ValueError, match="order must be one of"):
        metrics.road(model, images, maps, targets, order="both")
    with pytest.raises(ValueError, match=r"targets must be \(5,\) class indices"):
        metrics.road(model, images, maps, targets[:2])
