"""Triton kernels of the batched CAM maps (Grad-CAM and its family), forward and backward (docs/op.md).

Motivation. The plain-PyTorch composition launches a kernel per line and materialises the
B x C x P product `w * A`; autograd through it adds as many again. Per sample b, with P spatial
positions and C channels, the map is

    w[c] = 1/P sum_p G[c,p]            s[p] = sum_c w[c] A[c,p]          r = relu(s)
    y    = (r - min r) / (max r - min r + eps)      (or r / (max r + eps), or r)

and its vector-Jacobian product, given gy:

    gr = (gy + [r = min] g_lo / n_lo + [r = max] g_hi / n_hi) / d   (ties share evenly)
    gs = gr * [s > 0]        gA[c,p] = w[c] gs[p]        gG[c,p] = gw[c] = 1/P sum_p A[c,p] gs[p]

Bytes. The forward reads A and G once (2 B*C*P elements) and writes O(B*(C+P)); the backward
reads A once and writes gA (2 B*C*P); gG, constant over p, is returned as its B x C values
(`gw`) and broadcast by the caller. Splitting the channel reduction of s across programs (so
that small batches still fill the GPU) writes per-split partial sums that a second kernel adds
in a fixed order: no atomics, bitwise reproducible results. With one split per sample the
forward kernel finishes the map itself; where a channel's positions fit one tile, the forward
reads A and G in one pass and the backward computes gs itself (one kernel per pass).

The other methods (METHOD, formulas in csrc/cam_methods.h) run the same kernels: the weight-based
ones (xgradcam, gradcampp) compute w[c] from their channel's rows of A and G (Grad-CAM++ in two
passes, S = sum_p A first), the element-wise ones (layercam, hirescam, elementwise) sum a term
h(A, G) over channels and have no weights. Their backward writes a full gG (B, C, P) and reads G.

Layout. A sample is read through (stride_c, stride_p): (P, 1) for contiguous inputs and (1, C)
for channels-last ones, so both are read in place. Sample offsets are int64; offsets within a
sample are int32 (fewer registers) unless one sample has 2^31 elements or more (WIDE).
"""
import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

# The normalisations' and methods' codes, as csrc/cam_definitions.h numbers them (Normalize, Method).
MINMAX, MAX, NONE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
NORMALIZE_CODES = {"minmax": MINMAX.value, "max": MAX.value, "none": NONE.value}
GRADCAM, XGRADCAM, GRADCAMPP = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
LAYERCAM, HIRESCAM, ELEMENTWISE = tl.constexpr(3), tl.constexpr(4), tl.constexpr(5)
METHOD_CODES = {"gradcam": 0, "xgradcam": 1, "gradcampp": 2, "layercam": 3, "hirescam": 4, "elementwise": 5}
# pytorch-grad-cam's constants (csrc/cam_methods.h): XGrad-CAM's and Grad-CAM++'s denominators.
XGRADCAM_EPS = tl.constexpr(1e-7)
GRADCAMPP_EPS = tl.constexpr(1e-6)


# --- Kernels ------------------------------------------------------------------------------------


@triton.jit
def _tile_offsets(c0, p0, c_end, P, stride_c, stride_p, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                  WIDE: tl.constexpr):
    """Channels, positions, element offsets within the sample and mask of one BLOCK_C x BLOCK_P tile."""
    cs = c0 + tl.arange(0, BLOCK_C)
    ps = p0 + tl.arange(0, BLOCK_P)
    if WIDE:
        offsets = cs[:, None].to(tl.int64) * stride_c + ps[None, :].to(tl.int64) * stride_p
    else:
        offsets = cs[:, None] * stride_c + ps[None, :] * stride_p
    mask = (cs < c_end)[:, None] & (ps < P)[None, :]
    return cs, ps, offsets, mask


@triton.jit
def _load_tile(X, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
               ACC: tl.constexpr, WIDE: tl.constexpr):
    """One BLOCK_C x BLOCK_P tile of a sample, zero outside it, in the accumulation type."""
    cs, ps, offsets, mask = _tile_offsets(c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, WIDE)
    return tl.load(X + offsets, mask=mask, other=0).to(ACC)


@triton.jit
def _positive_part(v):
    """relu that keeps NaN, as torch.relu does."""
    return tl.where((v > 0) | (v != v), v, 0.0)


@triton.jit
def _elementwise_term(a, g, METHOD: tl.constexpr):
    """h(a, g) of an element-wise method: relu(g) a, g a or relu(g a)."""
    if METHOD == LAYERCAM:
        h = _positive_part(g) * a
    elif METHOD == HIRESCAM:
        h = g * a
    else:
        h = _positive_part(g * a)
    return h


@triton.jit
def _elementwise_partials(a, g, METHOD: tl.constexpr):
    """(dh/da, dh/dg) of an element-wise method (relu's derivative 0 at 0, as torch's)."""
    if METHOD == LAYERCAM:
        da = _positive_part(g)
        dg = tl.where(g > 0, a, 0.0)
    elif METHOD == HIRESCAM:
        da = g
        dg = a
    else:
        on = g * a > 0
        da = tl.where(on, g, 0.0)
        dg = tl.where(on, a, 0.0)
    return da, dg


@triton.jit
def _gradcampp_term(g, S):
    """Grad-CAM++'s t(g, S) = g^3 / (2 g^2 + S g^3 + 1e-6) where g > 0 (NaN for NaN, else 0)."""
    g2 = g * g
    t = g * (g2 / (2.0 * g2 + S * g2 * g + GRADCAMPP_EPS))  # relu(g) alpha, as the reference
    return tl.where((g > 0) | (g != g), t, 0.0)


@triton.jit
def _gradcampp_term_grad(g, S):
    """dt/dg = g^2 (2 g^2 + 3e-6) / D^2 (the S terms of the quotient rule cancel) where g > 0, else 0."""
    g2 = g * g
    d = 2.0 * g2 + S * g2 * g + GRADCAMPP_EPS
    return tl.where((g > 0) | (g != g), g2 * (2.0 * g2 + 3.0 * GRADCAMPP_EPS) / (d * d), 0.0)


@triton.jit
def _tile_weights(a, g, P, METHOD: tl.constexpr):
    """w of a tile's channels from their whole rows of A and G (zero past the last position)."""
    if METHOD == GRADCAM:
        w = tl.sum(g, axis=1) / P
    elif METHOD == XGRADCAM:
        w = tl.sum(g * a, axis=1) / (tl.sum(a, axis=1) + XGRADCAM_EPS)
    else:
        w = tl.sum(_gradcampp_term(g, tl.sum(a, axis=1)[:, None]), axis=1)
    return w


@triton.jit
def _row_weights(a_sample, g_sample, c0, c_end, P, stride_c, stride_p, METHOD: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
                 STAGES: tl.constexpr):
    """w of channels [c0, c0 + BLOCK_C) from their rows of A and G, tile by tile (reduced once)."""
    first = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)  # G (gradcam), G A (xgradcam), A (gradcampp)
    second = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)  # A (xgradcam)
    for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
        if METHOD == GRADCAM:
            first += _load_tile(g_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
        else:
            a = _load_tile(a_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            if METHOD == XGRADCAM:
                g = _load_tile(g_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
                first += g * a
                second += a
            else:
                first += a
    if METHOD == GRADCAM:
        w = tl.sum(first, axis=1) / P
    elif METHOD == XGRADCAM:
        w = tl.sum(first, axis=1) / (tl.sum(second, axis=1) + XGRADCAM_EPS)
    else:  # Grad-CAM++: a second pass over G, with S = sum_p A
        S = tl.sum(first, axis=1)
        for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
            g = _load_tile(g_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            second += _gradcampp_term(g, S[:, None])
        w = tl.sum(second, axis=1)
    return w


@triton.jit
def _forward_partial_kernel(
    A,  # activations (B, C, P) at (stride_b, stride_c, stride_p)
    G,  # gradients, same shape and strides
    W,  # out: channel weights (B, C), ACC dtype
    S_PART,  # out: partial scores (B, SPLITS, P) of each channel split, ACC dtype
    EXT,  # out, if FINISH: (min, max) of the rectified scores (B, 2), ACC dtype
    Y,  # out, if FINISH: map (B, P), dtype of the activations
    C, P, stride_b, stride_c, stride_p, channels_per_split, eps,
    RELU: tl.constexpr, NORMALIZE: tl.constexpr, METHOD: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
    ONE_P_TILE: tl.constexpr, STAGES: tl.constexpr, FINISH: tl.constexpr,
):
    """Weights and partial scores of one (sample, channel split). FINISH (one split, so that
    S_PART is the scores (B, P)): the extremes and the map too, with no second kernel."""
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    c_start = split * channels_per_split
    c_end = tl.minimum(c_start + channels_per_split, C)
    a_sample = A + b * stride_b
    g_sample = G + b * stride_b
    w_sample = W + b * C
    s_part = S_PART + (b * tl.num_programs(1) + split) * P

    if ONE_P_TILE:
        # A channel's positions fit one tile: w (weight-based methods) and s[p] += w[c] A[c, p], or
        # s[p] += h(A[c, p], G[c, p]) (element-wise ones), in one pass, the tiles of A and G loaded
        # together. Tiles are summed elementwise and reduced once at the end: the loop carries no
        # cross-thread reduction.
        s_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
        for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=STAGES):
            g = _load_tile(g_sample, c0, 0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            a = _load_tile(a_sample, c0, 0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            if METHOD >= LAYERCAM:  # the element-wise methods
                s_tiles += _elementwise_term(a, g, METHOD)
            else:
                cs = c0 + tl.arange(0, BLOCK_C)
                w = _tile_weights(a, g, P, METHOD)
                tl.store(w_sample + cs, w, mask=cs < c_end)
                s_tiles += w[:, None] * a
        ps = tl.arange(0, BLOCK_P)
        tl.store(s_part + ps, tl.sum(s_tiles, axis=0), mask=ps < P)
    else:
        if METHOD < LAYERCAM:
            # w of this split's channels, from whole rows of tiles
            for c0 in range(c_start, c_end, BLOCK_C):
                w = _row_weights(a_sample, g_sample, c0, c_end, P, stride_c, stride_p, METHOD,
                                 BLOCK_C, BLOCK_P, ACC, WIDE, STAGES)
                cs = c0 + tl.arange(0, BLOCK_C)
                tl.store(w_sample + cs, w, mask=cs < c_end)
            tl.debug_barrier()  # the weights just stored are read back below by other threads

        # s[p] = sum_c w[c] A[c, p] (or h(A, G)) over this split's channels, reduced once per column of tiles
        for p0 in range(0, P, BLOCK_P):
            s_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=STAGES):
                a = _load_tile(a_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
                if METHOD >= LAYERCAM:
                    g = _load_tile(g_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
                    s_tiles += _elementwise_term(a, g, METHOD)
                else:
                    cs = c0 + tl.arange(0, BLOCK_C)
                    w = tl.load(w_sample + cs, mask=cs < c_end, other=0)
                    s_tiles += w[:, None] * a
            ps = p0 + tl.arange(0, BLOCK_P)
            tl.store(s_part + ps, tl.sum(s_tiles, axis=0), mask=ps < P)
    if FINISH:
        tl.debug_barrier()  # the scores just stored are read back by other threads
        _finish_sample(S_PART, EXT, Y, b, P, eps, RELU, NORMALIZE, BLOCK_P, ACC)


@triton.jit
def _rectify(s, RELU: tl.constexpr):
    """relu that keeps NaN, as torch.relu does."""
    if RELU:
        return tl.where((s > 0) | (s != s), s, 0.0)
    return s


@triton.jit
def _normaliser(lo, hi, eps, NORMALIZE: tl.constexpr):
    """(shift, divisor) of the normalisation y = (r - shift) / divisor."""
    if NORMALIZE == MINMAX:
        return lo, hi - lo + eps
    if NORMALIZE == MAX:
        return 0.0 * lo, hi + eps
    return 0.0 * lo, 1.0 + 0.0 * lo


@triton.jit
def _finish_sample(S, EXT, Y, b, P, eps, RELU: tl.constexpr, NORMALIZE: tl.constexpr,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """From sample b's scores in S (B, P): the extremes of r = relu(s) (NaN if any r is NaN)
    into EXT and the map into Y."""
    lo = tl.full([BLOCK_P], float("inf"), ACC)
    hi = tl.full([BLOCK_P], float("-inf"), ACC)
    nan = tl.zeros([BLOCK_P], dtype=tl.int32)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        mask = ps < P
        r = _rectify(tl.load(S + b * P + ps, mask=mask, other=0), RELU)
        lo = tl.minimum(lo, tl.where(mask, r, float("inf")))
        hi = tl.maximum(hi, tl.where(mask, r, float("-inf")))
        nan += (mask & (r != r)).to(tl.int32)
    has_nan = tl.sum(nan, axis=0) > 0
    lo_b = tl.where(has_nan, float("nan"), tl.min(lo, axis=0))
    hi_b = tl.where(has_nan, float("nan"), tl.max(hi, axis=0))
    tl.store(EXT + 2 * b, lo_b)
    tl.store(EXT + 2 * b + 1, hi_b)
    shift, divisor = _normaliser(lo_b, hi_b, eps, NORMALIZE)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        r = _rectify(tl.load(S + b * P + ps, mask=ps < P, other=0), RELU)
        y = (r - shift) / divisor
        tl.store(Y + b * P + ps, y.to(Y.dtype.element_ty), mask=ps < P)


@triton.jit
def _forward_finish_kernel(
    S_PART,  # partial scores (B, SPLITS, P)
    S,  # out: scores (B, P), ACC dtype
    EXT,  # out: (min, max) of the rectified scores (B, 2), ACC dtype
    Y,  # out: map (B, P), dtype of the activations
    SPLITS, P, eps,
    RELU: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    # s = sum of the split partials, in split order
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        mask = ps < P
        s = tl.zeros([BLOCK_P], dtype=ACC)
        for split in range(0, SPLITS):
            s += tl.load(S_PART + (b * SPLITS + split) * P + ps, mask=mask, other=0)
        tl.store(S + b * P + ps, s, mask=mask)
    tl.debug_barrier()  # the scores just stored are read back by other threads
    _finish_sample(S, EXT, Y, b, P, eps, RELU, NORMALIZE, BLOCK_P, ACC)


@triton.jit
def _score_grad_terms(GY, S, EXT, b, P, eps, RELU: tl.constexpr, NORMALIZE: tl.constexpr,
                      BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """(lo, hi, d, g_lo, g_hi) of sample b, such that gr = (gy + [r = lo] g_lo + [r = hi] g_hi) / d."""
    lo = tl.load(EXT + 2 * b)
    hi = tl.load(EXT + 2 * b + 1)
    shift, d = _normaliser(lo, hi, eps, NORMALIZE)
    g_lo = 0.0 * lo
    g_hi = 0.0 * lo
    if NORMALIZE != NONE:
        sum_gy = tl.zeros([BLOCK_P], dtype=ACC)
        sum_gy_y = tl.zeros([BLOCK_P], dtype=ACC)
        n_lo = tl.zeros([BLOCK_P], dtype=tl.int32)
        n_hi = tl.zeros([BLOCK_P], dtype=tl.int32)
        for p0 in range(0, P, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            mask = ps < P
            r = _rectify(tl.load(S + b * P + ps, mask=mask, other=0), RELU)
            gy = tl.load(GY + b * P + ps, mask=mask, other=0).to(ACC)
            sum_gy += gy
            sum_gy_y += gy * ((r - shift) / d)
            n_lo += (mask & (r == lo)).to(tl.int32)
            n_hi += (mask & (r == hi)).to(tl.int32)
        total_gy_y = tl.sum(sum_gy_y, axis=0)
        # d * dy_p/dhi = -y_p;  d * dy_p/dlo = y_p - 1 (minmax); ties share evenly
        g_hi = -total_gy_y / tl.maximum(tl.sum(n_hi, axis=0), 1)
        if NORMALIZE == MINMAX:
            g_lo = (total_gy_y - tl.sum(sum_gy, axis=0)) / tl.maximum(tl.sum(n_lo, axis=0), 1)
    return lo, hi, d, g_lo, g_hi


@triton.jit
def _score_grad(GY, S, b, P, ps, mask, lo, hi, d, g_lo, g_hi, RELU: tl.constexpr, ACC: tl.constexpr):
    """gs of sample b at positions ps (zero outside mask). One division, after the sum, so that
    terms that cancel (P = 1: r = lo = hi) cancel exactly whatever the division's rounding."""
    s = tl.load(S + b * P + ps, mask=mask, other=0)
    r = _rectify(s, RELU)
    gr = tl.load(GY + b * P + ps, mask=mask, other=0).to(ACC)
    gr = (gr + tl.where(r == lo, g_lo, 0.0) + tl.where(r == hi, g_hi, 0.0)) / d
    if RELU:
        gr = tl.where(s > 0, gr, 0.0)
    return gr


@triton.jit
def _score_grad_kernel(
    GY,  # gradient of the map (B, P)
    S,  # scores saved by the forward (B, P)
    EXT,  # extremes saved by the forward (B, 2)
    GS,  # out: gradient of the scores (B, P), ACC dtype
    P, eps,
    RELU: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    lo, hi, d, g_lo, g_hi = _score_grad_terms(GY, S, EXT, b, P, eps, RELU, NORMALIZE, BLOCK_P, ACC)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        mask = ps < P
        tl.store(GS + b * P + ps, _score_grad(GY, S, b, P, ps, mask, lo, hi, d, g_lo, g_hi, RELU, ACC),
                 mask=mask)


@triton.jit
def _backward_kernel(
    A,  # activations (B, C, P) at (stride_b, stride_c, stride_p)
    G,  # gradients, same shape and strides (read by every method but Grad-CAM)
    W,  # channel weights (B, C) (weight-based methods)
    GY,  # gradient of the map (B, P), read if ONE_P_TILE
    S,  # scores saved by the forward (B, P), read if ONE_P_TILE
    EXT,  # extremes saved by the forward (B, 2), read if ONE_P_TILE
    GS,  # gradient of the scores (B, P) from _score_grad_kernel, read unless ONE_P_TILE
    GA,  # out: gradient of the activations, same strides as A (if WRITE_GA)
    GG,  # out: gradient of the gradients (if WRITE_GG): Grad-CAM's per channel (B, C), dtype of A;
         # every other method's same strides as A
    C, P, stride_b, stride_c, stride_p, channels_per_split, eps,
    RELU: tl.constexpr, NORMALIZE: tl.constexpr, METHOD: tl.constexpr, WRITE_GA: tl.constexpr,
    WRITE_GG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
    ONE_P_TILE: tl.constexpr, STAGES: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c_start = tl.program_id(1) * channels_per_split
    c_end = tl.minimum(c_start + channels_per_split, C)
    gs_sample = tl.zeros([BLOCK_P], dtype=ACC)
    if ONE_P_TILE:
        # The sample's positions fit one tile: its gs is computed here, once per program, from
        # the saved scores (a few hundred bytes) rather than by a kernel of its own.
        ps = tl.arange(0, BLOCK_P)
        lo, hi, d, g_lo, g_hi = _score_grad_terms(GY, S, EXT, b, P, eps, RELU, NORMALIZE, BLOCK_P, ACC)
        gs_sample = _score_grad(GY, S, b, P, ps, ps < P, lo, hi, d, g_lo, g_hi, RELU, ACC)
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=STAGES if ONE_P_TILE else 1):
        cs = c0 + tl.arange(0, BLOCK_C)
        if METHOD == GRADCAM:
            # gA[c, p] = w[c] gs[p];  gw[c] = 1/P sum_p A[c, p] gs[p] (reduced once per row of tiles)
            w = tl.load(W + b * C + cs, mask=cs < c_end, other=0)
            if ONE_P_TILE:
                gw_tiles = _backward_tile(A, gs_sample, GA, w, b, c0, 0, c_end, P, stride_b, stride_c, stride_p,
                                          WRITE_GA, WRITE_GG, BLOCK_C, BLOCK_P, ACC, WIDE)
            else:
                gw_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
                for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
                    ps = p0 + tl.arange(0, BLOCK_P)
                    gs = tl.load(GS + b * P + ps, mask=ps < P, other=0)
                    gw_tiles += _backward_tile(A, gs, GA, w, b, c0, p0, c_end, P, stride_b, stride_c, stride_p,
                                               WRITE_GA, WRITE_GG, BLOCK_C, BLOCK_P, ACC, WIDE)
            if WRITE_GG:
                gw = tl.sum(gw_tiles, axis=1) / P
                tl.store(GG + b * C + cs, gw.to(GG.dtype.element_ty), mask=cs < c_end)
        else:
            _method_backward_rows(A, G, W, GS, GA, GG, gs_sample, b, c0, c_end, C, P, stride_b, stride_c,
                                  stride_p, METHOD, WRITE_GA, WRITE_GG, BLOCK_C, BLOCK_P, ACC, WIDE,
                                  ONE_P_TILE, STAGES)


@triton.jit
def _method_backward_rows(A, G, W, GS, GA, GG, gs_sample, b, c0, c_end, C, P, stride_b, stride_c, stride_p,
                          METHOD: tl.constexpr, WRITE_GA: tl.constexpr, WRITE_GG: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
                          ONE_P_TILE: tl.constexpr, STAGES: tl.constexpr):
    """gA and gG of channels [c0, c0 + BLOCK_C) for every method but Grad-CAM (csrc/cam_methods.h):
    element-wise  gA = gs dh/da,             gG = gs dh/dg
    xgradcam      gA = w gs + x (G - w),     gG = x A,             x = gw / (S + 1e-7)
    gradcampp     gA = w gs + x,             gG = gw dt/dg(G, S),  x = -gw sum_p t(G, S)^2
    with gw = sum_p gs A and S = sum_p A of each channel (a first pass over its row of tiles)."""
    a_sample = A + b * stride_b
    g_sample = G + b * stride_b
    cs = c0 + tl.arange(0, BLOCK_C)
    w = tl.zeros([BLOCK_C], dtype=ACC)
    gw = tl.zeros([BLOCK_C], dtype=ACC)
    S = tl.zeros([BLOCK_C], dtype=ACC)
    x = tl.zeros([BLOCK_C], dtype=ACC)
    if METHOD < LAYERCAM:
        w = tl.load(W + b * C + cs, mask=cs < c_end, other=0)
        gw_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
        s_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
        for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
            gs = _scores_grad_at(GS, gs_sample, b, p0, P, BLOCK_P, ONE_P_TILE)
            a = _load_tile(a_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            gw_tiles += a * gs[None, :]
            s_tiles += a
        gw = tl.sum(gw_tiles, axis=1)
        S = tl.sum(s_tiles, axis=1)
        if METHOD == XGRADCAM:
            x = gw / (S + XGRADCAM_EPS)
        else:
            t2_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
                g = _load_tile(g_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
                t = _gradcampp_term(g, S[:, None])
                t2_tiles += t * t
            x = -gw * tl.sum(t2_tiles, axis=1)
    for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
        gs = _scores_grad_at(GS, gs_sample, b, p0, P, BLOCK_P, ONE_P_TILE)
        _, _, offsets, mask = _tile_offsets(c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, WIDE)
        a = tl.load(a_sample + offsets, mask=mask, other=0).to(ACC)
        g = tl.load(g_sample + offsets, mask=mask, other=0).to(ACC)
        if METHOD >= LAYERCAM:
            da, dg = _elementwise_partials(a, g, METHOD)
            da = da * gs[None, :]
            dg = dg * gs[None, :]
        elif METHOD == XGRADCAM:
            da = w[:, None] * gs[None, :] + x[:, None] * (g - w[:, None])
            dg = x[:, None] * a
        else:
            da = w[:, None] * gs[None, :] + x[:, None]
            dg = gw[:, None] * _gradcampp_term_grad(g, S[:, None])
        if WRITE_GA:
            tl.store(GA + b * stride_b + offsets, da.to(GA.dtype.element_ty), mask=mask)
        if WRITE_GG:
            tl.store(GG + b * stride_b + offsets, dg.to(GG.dtype.element_ty), mask=mask)


@triton.jit
def _scores_grad_at(GS, gs_sample, b, p0, P, BLOCK_P: tl.constexpr, ONE_P_TILE: tl.constexpr):
    """gs at positions [p0, p0 + BLOCK_P): the program's own (ONE_P_TILE) or from GS."""
    if ONE_P_TILE:
        gs = gs_sample
    else:
        ps = p0 + tl.arange(0, BLOCK_P)
        gs = tl.load(GS + b * P + ps, mask=ps < P, other=0)
    return gs


@triton.jit
def _backward_tile(A, gs, GA, w, b, c0, p0, c_end, P, stride_b, stride_c, stride_p,
                   WRITE_GA: tl.constexpr, WRITE_GG: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr):
    """Stores the tile's gA = w gs (if WRITE_GA); returns its A * gs (zeros unless WRITE_GG)."""
    cs, ps, offsets, mask = _tile_offsets(c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, WIDE)
    if WRITE_GA:
        tl.store(GA + b * stride_b + offsets, (w[:, None] * gs[None, :]).to(GA.dtype.element_ty), mask=mask)
    if WRITE_GG:
        return tl.load(A + b * stride_b + offsets, mask=mask, other=0).to(ACC) * gs[None, :]
    return tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)


# --- Launch configuration -----------------------------------------------------------------------

# Elements per tile (contiguous, channels-last) and programs per SM the channel splits aim for:
# Tile sizes and programs per SM as benchmarks/tools/tune_triton.py found best on an H100
# (benchmarks/results/tune_triton.jsonl).
TILE_ELEMENTS = {False: 4096, True: 8192}
PROGRAMS_PER_SM = 4
# Software-pipelining depth of the tile loops (contiguous, channels-last; 1: none): pipelining helps
# the channels-last loops and slows the contiguous ones (tune_triton.py, same record).
LOOP_STAGES = {False: 1, True: 3}
# Samples of at least this many elements are addressed with int64 offsets within the sample too.
WIDE_OFFSETS_FROM = 2**31


def launch_config(B, C, P, channels_last, device):
    """Tile sizes, channel splits per sample and warps: the one place launch heuristics live.

    Tiles run along the contiguous axis (positions for NCHW, channels for NHWC) and hold about
    TILE_ELEMENTS elements. The channel reduction is split across programs until about
    PROGRAMS_PER_SM programs per SM run (each split keeping at least a few tiles of channels); on
    CPU (Triton's interpreter) one program per sample and split keeps the grid small. Plain
    integer arithmetic: this runs on every call, and triton.cdiv / next_power_of_2 cost
    microseconds each on the host (benchmarks/profile_gpu_host.py).
    """
    tile = TILE_ELEMENTS[channels_last]
    if channels_last:
        block_c = min(_next_power_of_2(C), 256)
        block_p = max(tile // block_c, 1)
        block_p = min(block_p, _next_power_of_2(P))
    else:
        block_p = min(_next_power_of_2(P), 1024)
        block_c = min(max(tile // block_p, 1), _next_power_of_2(C))
    if device.type == "cuda":
        programs = PROGRAMS_PER_SM * _multiprocessors(device)
        max_splits = max(_cdiv(C, 4 * block_c), 1)
        splits = min(max(_cdiv(programs, B), 1), max_splits)
    else:
        splits = min(2, _cdiv(C, block_c))
    channels_per_split = _cdiv(_cdiv(C, splits), block_c) * block_c
    splits = _cdiv(C, channels_per_split)
    return block_c, block_p, splits, channels_per_split, 8 if block_c * block_p >= 4096 else 4


def _cdiv(n, d):
    return -(-n // d)


def _next_power_of_2(n):
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _multiprocessors(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def _finish_block(P):
    return min(_next_power_of_2(P), 4096)


# --- Entry points: plain functions over tensors -------------------------------------------------


def _on_device(device):
    """`device` made the current CUDA device for the launches (Triton launches on the current
    device, whatever device the tensors are on); nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _is_channels_last_dense(t):
    return t.movedim(1, -1).is_contiguous()


def _prepare(activations):
    """(channels_last, B, C, P, strides (b, c, p)) of the layout the kernels read the activations in."""
    B, C = activations.shape[:2]
    P = math.prod(activations.shape[2:])
    channels_last = not activations.is_contiguous() and _is_channels_last_dense(activations)
    strides = (C * P, 1, C) if channels_last else (C * P, P, 1)
    return channels_last, B, C, P, strides


def _to_layout(t, channels_last):
    if not channels_last:
        return t.contiguous()
    return t if _is_channels_last_dense(t) else t.movedim(1, -1).contiguous().movedim(-1, 1)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def cam_forward(activations, gradients, relu, normalize, eps, method="gradcam"):
    """Map (B, *S), weights (B, C) ((B, 0) for the element-wise methods), scores (B, P) and
    extremes (B, 2) of `fused_cam`."""
    with _on_device(activations.device):
        channels_last, B, C, P, (stride_b, stride_c, stride_p) = _prepare(activations)
        a = _to_layout(activations, channels_last)
        g = _to_layout(gradients, channels_last)
        acc = _acc_dtype(a.dtype)
        code = METHOD_CODES[method]
        y = torch.empty((B, *a.shape[2:]), dtype=a.dtype, device=a.device)
        w = torch.empty((B, 0 if code >= LAYERCAM.value else C), dtype=acc, device=a.device)
        s = torch.empty((B, P), dtype=acc, device=a.device)
        ext = torch.empty((B, 2), dtype=acc, device=a.device)
        if a.numel() == 0:  # no channels (C = 0): the scores are empty sums, so the map is zeros
            return y.zero_(), w.zero_(), s.zero_(), ext.zero_()
        block_c, block_p, splits, per_split, warps = launch_config(B, C, P, channels_last, a.device)
        finish = splits == 1  # one program holds the whole sample's scores: it finishes the map itself
        s_part = s if finish else torch.empty((B, splits, P), dtype=acc, device=a.device)
        options = dict(RELU=relu, NORMALIZE=NORMALIZE_CODES[normalize], ACC=_tl_acc(a.dtype))
        _forward_partial_kernel[(B, splits)](
            a, g, w, s_part, ext, y, C, P, stride_b, stride_c, stride_p, per_split, eps, METHOD=code,
            BLOCK_C=block_c, BLOCK_P=block_p, WIDE=C * P >= WIDE_OFFSETS_FROM, ONE_P_TILE=P <= block_p,
            STAGES=LOOP_STAGES[channels_last], FINISH=finish, num_warps=warps, **options,
        )
        if not finish:
            _forward_finish_kernel[(B,)](s_part, s, ext, y, splits, P, eps, BLOCK_P=_finish_block(P), num_warps=4,
                                         **options)
        return y, w, s, ext


def cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps,
                 method="gradcam", output_mask=(True, True)):
    """(gA (B, C, *S) or None, gG or None): gradients of `fused_cam`'s map with respect to the
    activations and the gradients; Grad-CAM's gG as its per-channel values (B, C), every other
    method's in full, in the layout of gA (Grad-CAM does not read `gradients`)."""
    with _on_device(activations.device):
        channels_last, B, C, P, (stride_b, stride_c, stride_p) = _prepare(activations)
        a = _to_layout(activations, channels_last)
        code = METHOD_CODES[method]
        g = a if code == GRADCAM.value else _to_layout(gradients, channels_last)
        ga = torch.empty_like(a) if output_mask[0] else None
        gg = None
        if output_mask[1]:
            gg = torch.empty((B, C), dtype=a.dtype, device=a.device) if code == GRADCAM.value else torch.empty_like(a)
        if a.numel() == 0 or not any(output_mask):
            return ga, gg
        block_c, block_p, splits, per_split, warps = launch_config(B, C, P, channels_last, a.device)
        one_p_tile = P <= block_p
        grad_map, scores, extremes = grad_map.contiguous(), scores.contiguous(), extremes.contiguous()
        options = dict(RELU=relu, NORMALIZE=NORMALIZE_CODES[normalize], ACC=_tl_acc(a.dtype))
        gs = scores  # not read: with one tile of positions the backward kernel computes gs itself
        if not one_p_tile:
            gs = torch.empty_like(scores)
            _score_grad_kernel[(B,)](grad_map, scores, extremes, gs, P, eps, BLOCK_P=_finish_block(P), num_warps=4,
                                     **options)
        _backward_kernel[(B, splits)](
            a, g, weights.contiguous(), grad_map, scores, extremes, gs,
            ga if ga is not None else a, gg if gg is not None else a,
            C, P, stride_b, stride_c, stride_p, per_split, eps, METHOD=code,
            WRITE_GA=ga is not None, WRITE_GG=gg is not None, BLOCK_C=block_c, BLOCK_P=block_p,
            WIDE=C * P >= WIDE_OFFSETS_FROM, ONE_P_TILE=one_p_tile, STAGES=LOOP_STAGES[channels_last],
            num_warps=warps, **options,
        )
        return ga, gg
