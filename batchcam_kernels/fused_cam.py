"""Triton kernels of the batched Grad-CAM map, forward and backward (docs/op.md).

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

# The normalisations' codes, as csrc/cam_definitions.h numbers them (Normalize).
MINMAX, MAX, NONE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
NORMALIZE_CODES = {"minmax": MINMAX.value, "max": MAX.value, "none": NONE.value}


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
def _forward_partial_kernel(
    A,  # activations (B, C, P) at (stride_b, stride_c, stride_p)
    G,  # gradients, same shape and strides
    W,  # out: channel weights (B, C), ACC dtype
    S_PART,  # out: partial scores (B, SPLITS, P) of each channel split, ACC dtype
    EXT,  # out, if FINISH: (min, max) of the rectified scores (B, 2), ACC dtype
    Y,  # out, if FINISH: map (B, P), dtype of the activations
    C, P, stride_b, stride_c, stride_p, channels_per_split, eps,
    RELU: tl.constexpr, NORMALIZE: tl.constexpr,
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
        # A channel's positions fit one tile: w[c] = 1/P sum_p G[c, p] and s[p] += w[c] A[c, p]
        # in one pass, the tiles of A and G loaded together. Tiles are summed elementwise and
        # reduced once at the end: the loop carries no cross-thread reduction.
        s_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
        for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=STAGES):
            g = _load_tile(g_sample, c0, 0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            a = _load_tile(a_sample, c0, 0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
            cs = c0 + tl.arange(0, BLOCK_C)
            w = tl.sum(g, axis=1) / P
            tl.store(w_sample + cs, w, mask=cs < c_end)
            s_tiles += w[:, None] * a
        ps = tl.arange(0, BLOCK_P)
        tl.store(s_part + ps, tl.sum(s_tiles, axis=0), mask=ps < P)
    else:
        # w[c] = 1/P sum_p G[c, p] for this split's channels, reduced once per row of tiles
        for c0 in range(c_start, c_end, BLOCK_C):
            w_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
                w_tiles += _load_tile(g_sample, c0, p0, c_end, P, stride_c, stride_p,
                                      BLOCK_C, BLOCK_P, ACC, WIDE)
            cs = c0 + tl.arange(0, BLOCK_C)
            tl.store(w_sample + cs, tl.sum(w_tiles, axis=1) / P, mask=cs < c_end)
        tl.debug_barrier()  # the weights just stored are read back below by other threads

        # s[p] = sum_c w[c] A[c, p] over this split's channels, reduced once per column of tiles
        for p0 in range(0, P, BLOCK_P):
            s_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=STAGES):
                cs = c0 + tl.arange(0, BLOCK_C)
                w = tl.load(w_sample + cs, mask=cs < c_end, other=0)
                a = _load_tile(a_sample, c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, ACC, WIDE)
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
    W,  # channel weights (B, C)
    GY,  # gradient of the map (B, P), read if ONE_P_TILE
    S,  # scores saved by the forward (B, P), read if ONE_P_TILE
    EXT,  # extremes saved by the forward (B, 2), read if ONE_P_TILE
    GS,  # gradient of the scores (B, P) from _score_grad_kernel, read unless ONE_P_TILE
    GA,  # out: gradient of the activations, same strides as A (if WRITE_GA)
    GW,  # out: gradient of the gradients per channel (B, C), dtype of A (if WRITE_GW)
    C, P, stride_b, stride_c, stride_p, channels_per_split, eps,
    RELU: tl.constexpr, NORMALIZE: tl.constexpr, WRITE_GA: tl.constexpr, WRITE_GW: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
    ONE_P_TILE: tl.constexpr, STAGES: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c_start = tl.program_id(1) * channels_per_split
    c_end = tl.minimum(c_start + channels_per_split, C)
    if ONE_P_TILE:
        # The sample's positions fit one tile: its gs is computed here, once per program, from
        # the saved scores (a few hundred bytes) rather than by a kernel of its own.
        ps = tl.arange(0, BLOCK_P)
        lo, hi, d, g_lo, g_hi = _score_grad_terms(GY, S, EXT, b, P, eps, RELU, NORMALIZE, BLOCK_P, ACC)
        gs_sample = _score_grad(GY, S, b, P, ps, ps < P, lo, hi, d, g_lo, g_hi, RELU, ACC)
    # gA[c, p] = w[c] gs[p];  gw[c] = 1/P sum_p A[c, p] gs[p] (reduced once per row of tiles)
    for c0 in tl.range(c_start, c_end, BLOCK_C, num_stages=STAGES if ONE_P_TILE else 1):
        cs = c0 + tl.arange(0, BLOCK_C)
        w = tl.load(W + b * C + cs, mask=cs < c_end, other=0)
        if ONE_P_TILE:
            gw_tiles = _backward_tile(A, gs_sample, GA, w, b, c0, 0, c_end, P, stride_b, stride_c, stride_p,
                                      WRITE_GA, WRITE_GW, BLOCK_C, BLOCK_P, ACC, WIDE)
        else:
            gw_tiles = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
            for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
                ps = p0 + tl.arange(0, BLOCK_P)
                gs = tl.load(GS + b * P + ps, mask=ps < P, other=0)
                gw_tiles += _backward_tile(A, gs, GA, w, b, c0, p0, c_end, P, stride_b, stride_c, stride_p,
                                           WRITE_GA, WRITE_GW, BLOCK_C, BLOCK_P, ACC, WIDE)
        if WRITE_GW:
            gw = tl.sum(gw_tiles, axis=1) / P
            tl.store(GW + b * C + cs, gw.to(GW.dtype.element_ty), mask=cs < c_end)


@triton.jit
def _backward_tile(A, gs, GA, w, b, c0, p0, c_end, P, stride_b, stride_c, stride_p,
                   WRITE_GA: tl.constexpr, WRITE_GW: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr):
    """Stores the tile's gA = w gs (if WRITE_GA); returns its A * gs (zeros unless WRITE_GW)."""
    cs, ps, offsets, mask = _tile_offsets(c0, p0, c_end, P, stride_c, stride_p, BLOCK_C, BLOCK_P, WIDE)
    if WRITE_GA:
        tl.store(GA + b * stride_b + offsets, (w[:, None] * gs[None, :]).to(GA.dtype.element_ty), mask=mask)
    if WRITE_GW:
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


def cam_forward(activations, gradients, relu, normalize, eps):
    """Map (B, *S), weights (B, C), scores (B, P) and extremes (B, 2) of `fused_cam`."""
    with _on_device(activations.device):
        channels_last, B, C, P, (stride_b, stride_c, stride_p) = _prepare(activations)
        a = _to_layout(activations, channels_last)
        g = _to_layout(gradients, channels_last)
        acc = _acc_dtype(a.dtype)
        y = torch.empty((B, *a.shape[2:]), dtype=a.dtype, device=a.device)
        w = torch.empty((B, C), dtype=acc, device=a.device)
        s = torch.empty((B, P), dtype=acc, device=a.device)
        ext = torch.empty((B, 2), dtype=acc, device=a.device)
        if a.numel() == 0:  # no channels (C = 0): the scores are empty sums, so the map is zeros
            return y.zero_(), w.zero_(), s.zero_(), ext.zero_()
        block_c, block_p, splits, per_split, warps = launch_config(B, C, P, channels_last, a.device)
        finish = splits == 1  # one program holds the whole sample's scores: it finishes the map itself
        s_part = s if finish else torch.empty((B, splits, P), dtype=acc, device=a.device)
        options = dict(RELU=relu, NORMALIZE=NORMALIZE_CODES[normalize], ACC=_tl_acc(a.dtype))
        _forward_partial_kernel[(B, splits)](
            a, g, w, s_part, ext, y, C, P, stride_b, stride_c, stride_p, per_split, eps,
            BLOCK_C=block_c, BLOCK_P=block_p, WIDE=C * P >= WIDE_OFFSETS_FROM, ONE_P_TILE=P <= block_p,
            STAGES=LOOP_STAGES[channels_last], FINISH=finish, num_warps=warps, **options,
        )
        if not finish:
            _forward_finish_kernel[(B,)](s_part, s, ext, y, splits, P, eps, BLOCK_P=_finish_block(P), num_warps=4,
                                         **options)
        return y, w, s, ext


def cam_backward(grad_map, activations, weights, scores, extremes, relu, normalize, eps, output_mask):
    """(gA (B, C, *S) or None, gw (B, C) or None): gradients of `fused_cam`'s map with respect to
    the activations and, as per-channel values, the gradients."""
    with _on_device(activations.device):
        channels_last, B, C, P, (stride_b, stride_c, stride_p) = _prepare(activations)
        a = _to_layout(activations, channels_last)
        ga = torch.empty_like(a) if output_mask[0] else None
        gw = torch.empty((B, C), dtype=a.dtype, device=a.device) if output_mask[1] else None
        if a.numel() == 0 or not any(output_mask):
            return ga, gw
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
            a, weights.contiguous(), grad_map, scores, extremes, gs,
            ga if ga is not None else a, gw if gw is not None else weights,
            C, P, stride_b, stride_c, stride_p, per_split, eps,
            WRITE_GA=ga is not None, WRITE_GW=gw is not None, BLOCK_C=block_c, BLOCK_P=block_p,
            WIDE=C * P >= WIDE_OFFSETS_FROM, ONE_P_TILE=one_p_tile, STAGES=LOOP_STAGES[channels_last],
            num_warps=warps, **options,
        )
        return ga, gw
