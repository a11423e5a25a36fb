"""Faithfulness metrics of maps, batched on the model's device: every perturbed copy of every
sample goes through the model in batches, no loop over samples.

- `confidence_change`: score(x * map) - score(x) per sample (pytorch-grad-cam's
  CamMultImageConfidenceChange; differentiable with respect to the maps), and from it
  `average_drop_increase`: Grad-CAM++'s average drop (mean of max(0, Y - O) / Y, in %) and
  increase in confidence (% of samples with O > Y).
- `deletion_curve` / `insertion_curve`: the score as pixels are removed from (or added to) the
  image in the map's order, most relevant first, over `steps` steps, and the area under it
  (RISE, TorchCAM, Xplique). With `temperature`, a soft mask sigmoid((map - threshold) / t)
  replaces the hard one: differentiable with respect to the maps, for training.
- `road`: ROAD (Rong et al. 2022; pytorch-grad-cam's ROAD* classes): the pixels above (MoRF) or
  below (LeRF) each percentile of the map replaced by the noisy linear imputation of their
  neighbours, a linear system solved for the whole batch at once by conjugate gradients.

Scores are the target class's softmax probability (`score="probability"`) or logit
(`score="logit"`); targets are (B,) class indices, None for the classes predicted on the
original images. Maps are (B, H, W) at the images' size, in [0, 1] for the multiplied image.
"""
import torch
from torch.nn import functional as F

from .targets import select_output

SCORES = ("probability", "logit")


def _check(images, maps, score):
    if images.dim() != 4:
        raise ValueError(f"metrics: images must be (B, C, H, W), got {tuple(images.shape)}")
    if maps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"metrics: maps must be {(images.shape[0], *images.shape[2:])} (B, H, W) at the images' "
                         f"size, got {tuple(maps.shape)}")
    if score not in SCORES:
        raise ValueError(f"metrics: score must be one of {SCORES}, got {score!r}")


def target_scores(model, images, targets, score="probability", output=None, batch_size=None):
    """(N,) scores of `targets` (N,) for `images` (N, C, H, W), in forwards of `batch_size`
    images; differentiable when grad mode is on."""
    parts = []
    step = batch_size or len(images)
    for start in range(0, len(images), step):
        out = select_output(model(images[start:start + step]), output)
        if score == "probability":
            out = out.to(torch.promote_types(out.dtype, torch.float32)).softmax(1)
        parts.append(out.gather(1, targets[start:start + step, None].to(out.device))[:, 0])
    return torch.cat(parts) if parts else images.new_zeros(0)


def _targets(model, images, targets, output):
    if targets is None:
        with torch.no_grad():
            return select_output(model(images), output).argmax(1)
    targets = torch.as_tensor(targets, device=images.device).long()
    if targets.shape != images.shape[:1]:
        raise ValueError(f"metrics: targets must be ({len(images)},) class indices, got {tuple(targets.shape)}")
    return targets


def _scores_before_after(model, images, maps, targets, score, output, batch_size):
    """Scores of the images (no gradient) and of images * maps (a graph only for maps that require
    grad), for the targets or the predicted classes."""
    targets = _targets(model, images, targets, output)
    with torch.no_grad():
        before = target_scores(model, images, targets, score, output, batch_size)
    with torch.set_grad_enabled(torch.is_grad_enabled() and maps.requires_grad):
        masked = images * maps.unsqueeze(1).to(images.dtype)
        return before, target_scores(model, masked, targets, score, output, batch_size)


def confidence_change(model, images, maps, targets=None, *, score="probability", output=None, batch_size=None):
    """(B,) score(images * maps) - score(images) (maps broadcast over channels); differentiable
    with respect to the maps."""
    _check(images, maps, score)
    before, after = _scores_before_after(model, images, maps, targets, score, output, batch_size)
    return after - before


@torch.no_grad()
def average_drop_increase(model, images, maps, targets=None, *, score="probability", output=None, batch_size=None):
    """Grad-CAM++'s {"average_drop": mean max(0, Y - O) / Y * 100, "increase": % of O > Y}, with
    Y the score of the image and O that of the image times its map."""
    _check(images, maps, score)
    before, after = _scores_before_after(model, images, maps, targets, score, output, batch_size)
    drop = (before - after).clamp(min=0) / before
    return {"average_drop": 100 * drop.mean().item(), "increase": 100 * (after > before).float().mean().item()}


def _masks(maps, fractions, temperature):
    """(S, B, H, W) masks of the pixels removed at each fraction: the fraction of most relevant
    pixels (stable order: ties by position), or a soft sigmoid mask around the same threshold."""
    flat = maps.flatten(1)
    pixels = flat.shape[1]
    counts = torch.round(fractions * pixels).long()
    if temperature is None:
        order = torch.argsort(flat.detach(), dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=maps.device).expand_as(order))
        masks = rank[None] < counts[:, None, None]
        return masks.view(len(fractions), *maps.shape).to(maps.dtype)
    ordered = torch.sort(flat, dim=1, descending=True).values
    # threshold k: midway between the last pixel removed and the first kept (it moves with the map)
    padded = torch.cat([ordered[:, :1] + 1, ordered, ordered[:, -1:] - 1], dim=1)
    thresholds = (padded[:, counts] + padded[:, counts + 1]).T / 2  # (S, B)
    masks = torch.sigmoid((flat[None] - thresholds[..., None]) / temperature)
    return masks.view(len(fractions), *maps.shape)


def _perturbation_curve(model, images, maps, targets, steps, baseline, insertion, score, output, batch_size,
                        temperature):
    """(curves, AUC) of deletion or insertion; a graph only for soft masks of maps that require grad."""
    with torch.set_grad_enabled(temperature is not None and maps.requires_grad and torch.is_grad_enabled()):
        return _curve(model, images, maps, targets, steps, baseline, insertion, score, output, batch_size,
                      temperature)


def _curve(model, images, maps, targets, steps, baseline, insertion, score, output, batch_size, temperature):
    _check(images, maps, score)
    if steps < 1:
        raise ValueError(f"metrics: steps must be >= 1, got {steps}")
    targets = _targets(model, images, targets, output)
    batch = len(images)
    fractions = torch.linspace(0, 1, steps + 1, device=images.device, dtype=torch.float64)
    baseline = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    per_forward = max(1, (batch_size or batch) // max(batch, 1))
    curves = []
    start, end = (baseline, images) if insertion else (images, baseline)  # a pixel's value at mask 0 and 1
    for first in range(0, steps + 1, per_forward):
        masks = _masks(maps, fractions[first:first + per_forward], temperature).unsqueeze(2).to(images.dtype)
        perturbed = torch.where(masks.bool(), end, start) if temperature is None else torch.lerp(start, end, masks)
        flat = perturbed.reshape(-1, *images.shape[1:])
        curves.append(target_scores(model, flat, targets.repeat(len(masks)), score, output).view(len(masks), batch))
    curve = torch.cat(curves).T  # (B, steps + 1)
    auc = (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / steps  # trapezoids over [0, 1]
    return curve, auc


def deletion_curve(model, images, maps, targets=None, *, steps=16, baseline=0.0, score="probability", output=None,
                   batch_size=None, temperature=None):
    """(curves (B, steps + 1), AUC (B,)): the score after removing the k/steps most relevant
    pixels (set to `baseline`: a value or an image batch), k = 0..steps. Lower AUC: a more
    faithful map. `temperature`: soft masks, differentiable with respect to the maps."""
    return _perturbation_curve(model, images, maps, targets, steps, baseline, False, score, output, batch_size,
                               temperature)


def insertion_curve(model, images, maps, targets=None, *, steps=16, baseline=0.0, score="probability", output=None,
                    batch_size=None, temperature=None):
    """(curves (B, steps + 1), AUC (B,)): the score of `baseline` with the k/steps most relevant
    pixels of the image put back, k = 0..steps. Higher AUC: a more faithful map."""
    return _perturbation_curve(model, images, maps, targets, steps, baseline, True, score, output, batch_size,
                               temperature)


# ROAD's noisy linear imputer: each removed pixel is the weighted mean of its 8 neighbours (weights
# 1/6 edge, 1/12 corner, renormalised at the image border), removed neighbours being unknowns too.
_NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def _neighbour_sum(v, kernel):
    """sum_j w_ij v_j over the 8 neighbours of every pixel of (N, 1, H, W) `v` (zero outside).
    float32: as one depthwise convolution over (1, N, H, W), about 8x faster on CPU than the
    plain convolution of N one-channel images; float64 has no fast depthwise path there."""
    if v.dtype == torch.float32:
        n = v.shape[0]
        return F.conv2d(v.view(1, n, *v.shape[2:]), kernel.expand(n, 1, 3, 3), padding=1, groups=n).view_as(v)
    return F.conv2d(v, kernel, padding=1)


IMPUTE_SOLVERS = ("auto", "direct", "cg")


def linear_impute(images, removed, noise=0.0, tol=None, max_iterations=None, generator=None, solver="auto"):
    """Images (N, C, H, W) with the pixels where `removed` (N, H, W) is True replaced by the solution
    of sum_j w_ij (v_i - x_j) = 0 over the neighbours j of every removed pixel i (pytorch-grad-cam's
    NoisyLinearImputer, scipy's spsolve there), then `noise` * N(0, 1) added to them.
    On CPU the C++ op batchcam::impute_linear solves in float64, per image, with `solver` "direct"
    (a band Cholesky factorisation shared by the image's channels; memory: unknowns x image width
    doubles), "cg" (conjugate gradients per channel to a relative residual of `tol`, default 1e-10
    for float64 images, 1e-8 for others) or "auto" (per image the cheaper: direct unless the hole
    spans more than about 96 pixels per channel, csrc/cpu/impute_cpu_kernels.h). Elsewhere by
    _impute_by_convolutions, conjugate gradients in the images' precision, at least float32
    (default tol 1e-6 in float32, 1e-10 in float64; solver "direct" is CPU only). A channel whose
    every pixel is removed has no solution (scipy: a singular matrix) and comes out zero."""
    if solver not in IMPUTE_SOLVERS:
        raise ValueError(f"linear_impute: solver must be one of {IMPUTE_SOLVERS}, got {solver!r}")
    n, c, h, w = images.shape
    x = images.to(torch.promote_types(images.dtype, torch.float32))
    max_iterations = max_iterations or 4 * (h + w) + 100
    if x.device.type == "cpu":
        tol = tol if tol is not None else 1e-10 if x.dtype == torch.float64 else 1e-8
        filled = torch.ops.batchcam.impute_linear(x, removed.bool(), tol, max_iterations, solver)
    elif solver == "direct":
        raise ValueError(f"linear_impute: solver 'direct' runs on CPU only, the images are on {x.device}")
    else:
        filled = _impute_by_convolutions(x, removed, tol, max_iterations)
    if noise:
        unknown = removed[:, None].to(x.dtype)
        filled = filled + noise * unknown * torch.randn(filled.shape, dtype=x.dtype, device=x.device,
                                                        generator=generator)
    return filled.to(images.dtype)


# Rows (image channels) solved together by _impute_by_convolutions: few enough that the solver's
# vectors stay in cache (about 0.5 MB each in float32), and each chunk stops at its own convergence.
_IMPUTE_CHUNK_ELEMENTS = 2 ** 17


def _impute_by_convolutions(x, removed, tol, max_iterations):
    """linear_impute's solve in tensor operations, for any device: conjugate gradients with 3x3
    convolutions as the operator, a chunk of image channels at a time (_IMPUTE_CHUNK_ELEMENTS
    pixels: the vectors stay in cache and a chunk of small holes stops early)."""
    n, c, h, w = x.shape
    tol = tol if tol is not None else 1e-6 if x.dtype == torch.float32 else 1e-10
    unknown = removed.to(x.dtype).unsqueeze(1).expand(n, c, h, w).reshape(n * c, 1, h, w)
    values = x.reshape(n * c, 1, h, w) * (1 - unknown)
    kernel = _NEIGHBOURS.to(x)[None, None]
    degree = F.conv2d(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device), kernel, padding=1)  # border weights
    rows = max(1, _IMPUTE_CHUNK_ELEMENTS // (h * w))
    solved = torch.cat([_solve_unknowns(values[i:i + rows], unknown[i:i + rows], degree, kernel, tol, max_iterations)
                        for i in range(0, n * c, rows)])
    return (values + unknown * solved).view(n, c, h, w)


def _solve_unknowns(values, unknown, degree, kernel, tol, max_iterations):
    """The unknowns of linear_impute's system for rows (K, 1, H, W) of known `values`, by conjugate
    gradients until every row's residual is below `tol` relative to its right-hand side."""
    def operator(v):  # (D - W) restricted to the unknowns: symmetric positive definite
        return unknown * (degree * v - _neighbour_sum(v * unknown, kernel))

    tiny = torch.finfo(values.dtype).tiny
    rhs = unknown * _neighbour_sum(values, kernel)
    v = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).flatten(1).sum(1)
    target = tol ** 2 * rr.clamp(min=tiny)
    for _ in range(max_iterations):
        if bool((rr <= target).all()):
            break
        ap = operator(p)
        alpha = rr / (p * ap).flatten(1).sum(1).clamp(min=tiny)
        v = v + alpha[:, None, None, None] * p
        r = r - alpha[:, None, None, None] * ap
        rr_next = (r * r).flatten(1).sum(1)
        p = r + (rr_next / rr.clamp(min=tiny))[:, None, None, None] * p
        rr = rr_next
    return v


ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_ORDERS = ("morf", "lerf", "combined")


def road_masks(ranked, percentiles=ROAD_PERCENTILES):
    """(P, B, H, W) bool: the pixels of `ranked` (B, H, W) at or above each of its percentiles,
    ROAD's removed pixels. The thresholds are numpy.percentile's linear interpolation, in float64
    rounded to the maps' dtype as numpy's is, and compared in that dtype (pytorch-grad-cam keeps
    map < threshold)."""
    q = torch.tensor([p / 100 for p in percentiles], dtype=torch.float64, device=ranked.device)
    flat = ranked.flatten(1)
    thresholds = torch.quantile(flat.double(), q, dim=1).to(flat.dtype)  # (P, B)
    return (flat[None] >= thresholds[..., None]).view(len(q), *ranked.shape)


@torch.no_grad()
def road(model, images, maps, targets=None, *, order="combined", percentiles=ROAD_PERCENTILES, noise=0.01,
         score="probability", output=None, batch_size=None, generator=None):
    """ROAD per sample (B,): the change of score when the pixels at or above each percentile of
    the map (order "morf": most relevant first) or below it ("lerf": least relevant first; the
    map is read as 1 - map) are imputed, averaged over `percentiles`; "combined" is
    (lerf - morf) / 2, as pytorch-grad-cam's ROADCombined. The imputation of every sample at
    every percentile is one batched solve (`linear_impute`)."""
    _check(images, maps, score)
    if order not in ROAD_ORDERS:
        raise ValueError(f"road: order must be one of {ROAD_ORDERS}, got {order!r}")
    targets = _targets(model, images, targets, output)
    before = target_scores(model, images, targets, score, output, batch_size)
    batch, pixels, count = images.shape[0], images.shape[2:], len(percentiles)

    def change(ranked):  # mean over the percentiles of score(imputed) - score(image), (B,)
        removed = road_masks(ranked, percentiles)  # (P, B, H, W)
        imputed = linear_impute(images.repeat(count, 1, 1, 1), removed.reshape(-1, *pixels), noise,
                                generator=generator)
        after = target_scores(model, imputed, targets.repeat(count), score, output, batch_size).view(count, batch)
        return (after - before).mean(0)

    if order == "morf":
        return change(maps)
    lerf = change(1 - maps)
    return lerf if order == "lerf" else (lerf - change(maps)) / 2
