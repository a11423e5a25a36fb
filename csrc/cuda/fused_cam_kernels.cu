// CUDA kernels of fused_cam (docs/op.md); no torch headers, see fused_cam_kernels.h.
//
// Per sample b, with C channels and P positions, accumulated in acc_t (float; double for double),
// for Grad-CAM:
//   w[c] = 1/P sum_p G[c,p]     s[p] = sum_c w[c] A[c,p]     r = relu(s)     y = normalise(r)
//   gs = d y / d s applied to gy (ties of the extremes share evenly)
//   gA[c,p] = w[c] gs[p]        gw[c] = 1/P sum_p A[c,p] gs[p]  (gG[c,p] = gw[c])
// The other methods (../cam_methods.h) are the template parameter M of the same kernels: other
// channel weights (xgradcam, gradcampp), or a term h(A, G) summed over channels (element-wise).
//
// A sample is a matrix whose columns are contiguous in memory: rows = channels and columns =
// positions for contiguous inputs, the other way round for channels-last ones. Two block-wide
// primitives cover every reduction of both layouts: reduce_rows (one warp per row, reducing along
// the contiguous axis) and reduce_cols (threads along the contiguous axis, reducing across rows).
// Each block handles one (sample, channel split); split partials of s are added by a second
// kernel in a fixed order. Every reduction order is fixed by the launch shape: no atomics, so
// results are bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "../cam_methods.h"
#include "fused_cam_kernels.h"

namespace batchcam::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMinChannelsPerSplit = 32;
constexpr int kBlocksPerSm = 8;

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T v) {
  return static_cast<acc_t>(v);
}
template <>
__device__ __forceinline__ float to_acc<float, __half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename acc_t>
__device__ __forceinline__ T from_acc(acc_t v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// relu that keeps NaN, as torch.relu does.
template <typename acc_t>
__device__ __forceinline__ acc_t rectify(acc_t v, bool relu) {
  return (!relu || v > 0 || isnan(v)) ? v : acc_t(0);
}

struct Sum {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct Min {
  template <typename V>
  __device__ V operator()(V a, V b) const { return b < a ? b : a; }
};
struct Max {
  template <typename V>
  __device__ V operator()(V a, V b) const { return b > a ? b : a; }
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Reduces one value per thread over the block; every thread gets the result.
template <typename acc_t, typename Op>
__device__ acc_t block_reduce(acc_t v, Op op, acc_t* smem /* kWarps */) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // smem may still be read by a previous reduction
  if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t total = smem[0];
  for (int k = 1; k < kWarps; ++k) total = op(total, smem[k]);
  return total;
}

// finish(r, sum_{l in [l0, l1)} term(r, l)) for every row r in [r0, r1), called by lane 0 of the
// row's warp. A warp reduces kRowsPerWarp rows at once (rows warp, warp + kWarps, ...), so that
// short rows (P = 49) still keep several loads in flight per thread.
constexpr int kRowsPerWarp = 4;

template <typename acc_t, typename Term, typename Finish>
__device__ void reduce_rows(int64_t r0, int64_t r1, int64_t l0, int64_t l1, const Term& term, const Finish& finish) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = r0 + warp; r < r1; r += kWarps * kRowsPerWarp) {
    acc_t sum[kRowsPerWarp] = {};
    for (int64_t l = l0 + lane; l < l1; l += 32) {
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        const int64_t row = r + k * kWarps;
        if (row < r1) sum[k] += term(row, l);
      }
    }
#pragma unroll
    for (int k = 0; k < kRowsPerWarp; ++k) {
      const int64_t row = r + k * kWarps;
      const acc_t total = warp_sum(sum[k]);  // every lane takes part in the shuffles
      if (lane == 0 && row < r1) finish(row, total);
    }
  }
}

// finish(l, sum_{r in [r0, r1)} term(r, l)) for every column l in [l0, l1). Threads (ty, tx): tx
// along the contiguous columns, ty across rows; the ty partial sums are combined through shared
// memory in ty order, and finish is called by the thread ty = 0 of the column.
template <typename acc_t, typename Term, typename Finish>
__device__ void reduce_cols(int64_t r0, int64_t r1, int64_t l0, int64_t l1, const Term& term, const Finish& finish,
                            acc_t* smem /* kThreads */) {
  int tx_n = 32;
  while (tx_n < l1 - l0 && tx_n < kThreads) tx_n *= 2;
  const int ty_n = kThreads / tx_n;
  const int tx = threadIdx.x % tx_n, ty = threadIdx.x / tx_n;
  for (int64_t base = l0; base < l1; base += tx_n) {
    const int64_t l = base + tx;
    acc_t sum = 0;
    if (l < l1) {
#pragma unroll 4
      for (int64_t r = r0 + ty; r < r1; r += ty_n) sum += term(r, l);
    }
    smem[threadIdx.x] = sum;
    __syncthreads();
    if (ty == 0 && l < l1) {
      acc_t total = 0;
      for (int k = 0; k < ty_n; ++k) total += smem[k * tx_n + tx];
      finish(l, total);
    }
    __syncthreads();
  }
}

// out[r] = scale * sum_{l in [l0, l1)} m[r * cols + l] * (v ? v[l] : 1), for r in [r0, r1).
template <typename T, typename acc_t, typename out_t>
__device__ void rows_dot(const T* m, int64_t cols, int64_t r0, int64_t r1, int64_t l0, int64_t l1,
                         const acc_t* v, out_t* out, acc_t scale) {
  reduce_rows<acc_t>(
      r0, r1, l0, l1, [&](int64_t r, int64_t l) { return to_acc<acc_t>(m[r * cols + l]) * (v ? v[l] : acc_t(1)); },
      [&](int64_t r, acc_t total) { out[r] = from_acc<out_t>(total * scale); });
}

// out[l] = scale * sum_{r in [r0, r1)} m[r * cols + l] * (v ? v[r] : 1), for l in [l0, l1).
template <typename T, typename acc_t, typename out_t>
__device__ void cols_dot(const T* m, int64_t cols, int64_t r0, int64_t r1, int64_t l0, int64_t l1,
                         const acc_t* v, out_t* out, acc_t scale, acc_t* smem /* kThreads */) {
  reduce_cols<acc_t>(
      r0, r1, l0, l1, [&](int64_t r, int64_t l) { return to_acc<acc_t>(m[r * cols + l]) * (v ? v[r] : acc_t(1)); },
      [&](int64_t l, acc_t total) { out[l] = from_acc<out_t>(total * scale); }, smem);
}

// finish(c, sum_p term(c, p)) for channels c in [c0, c1) of a sample in either layout (term reads
// element (c, p)): reduce_rows along contiguous rows of channels, reduce_cols across rows of
// positions (channels-last).
template <typename acc_t, typename Term, typename Finish>
__device__ void reduce_channels(const CamProblem& pr, int64_t c0, int64_t c1, const Term& term, const Finish& finish,
                                acc_t* smem) {
  if (!pr.channels_last) {
    reduce_rows<acc_t>(c0, c1, 0, pr.P, term, finish);
  } else {
    reduce_cols<acc_t>(0, pr.P, c0, c1, [&](int64_t p, int64_t c) { return term(c, p); }, finish, smem);
  }
  __syncthreads();  // what finish wrote to global memory is read by other threads next
}

// finish(p, sum_{c in [c0, c1)} term(c, p)) for every position p of a sample in either layout.
template <typename acc_t, typename Term, typename Finish>
__device__ void reduce_positions(const CamProblem& pr, int64_t c0, int64_t c1, const Term& term,
                                 const Finish& finish, acc_t* smem) {
  if (!pr.channels_last) {
    reduce_cols<acc_t>(c0, c1, 0, pr.P, term, finish, smem);
  } else {
    reduce_rows<acc_t>(0, pr.P, c0, c1, [&](int64_t p, int64_t c) { return term(c, p); }, finish);
  }
}

// Index of element (c, p) within a sample.
__device__ __forceinline__ int64_t element(const CamProblem& pr, int64_t c, int64_t p) {
  return pr.channels_last ? p * pr.C + c : c * pr.P + p;
}

__device__ __forceinline__ void split_range(const CamProblem& pr, int64_t split, int64_t& c0, int64_t& c1) {
  c0 = split * pr.channels_per_split;
  c1 = c0 + pr.channels_per_split < pr.C ? c0 + pr.channels_per_split : pr.C;
}

// Block (b, split): w for the split's channels (weight-based methods), then their share of s.
template <typename T, typename acc_t, Method M>
__global__ void __launch_bounds__(kThreads) forward_partial_kernel(const T* a, const T* g, acc_t* w,
                                                                   acc_t* s_part, CamProblem pr) {
  __shared__ acc_t smem[kThreads];
  const int64_t b = blockIdx.x, split = blockIdx.y;
  int64_t c0, c1;
  split_range(pr, split, c0, c1);
  const int64_t sample = b * pr.C * pr.P;
  acc_t* wb = w + b * pr.C;
  acc_t* part = s_part + (b * pr.splits + split) * pr.P;
  const T* ab = a + sample;
  const T* gb = g + sample;
  auto at = [&](const T* x, int64_t c, int64_t p) { return to_acc<acc_t>(x[element(pr, c, p)]); };
  if constexpr (is_elementwise(M)) {  // s[p] = sum_c h(A[c,p], G[c,p])
    reduce_positions<acc_t>(
        pr, c0, c1, [&](int64_t c, int64_t p) { return elementwise_term<M>(at(ab, c, p), at(gb, c, p)); },
        [&](int64_t p, acc_t total) { part[p] = total; }, smem);
    return;
  }
  if constexpr (M == Method::GradCam) {
    const acc_t inv_p = acc_t(1) / pr.P;
    reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return at(gb, c, p); },
                           [&](int64_t c, acc_t total) { wb[c] = total * inv_p; }, smem);
  } else {  // S = sum_p A (kept in w), then the weights from it
    reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return at(ab, c, p); },
                           [&](int64_t c, acc_t total) { wb[c] = total; }, smem);
    if constexpr (M == Method::XGradCam) {
      reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return at(gb, c, p) * at(ab, c, p); },
                             [&](int64_t c, acc_t total) { wb[c] = xgradcam_weight(total, wb[c]); }, smem);
    } else {
      reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return gradcampp_term(at(gb, c, p), wb[c]); },
                             [&](int64_t c, acc_t total) { wb[c] = total; }, smem);
    }
  }
  // s[p] = sum_c w[c] A[c,p] over the split's channels
  if (!pr.channels_last) {
    cols_dot(ab, pr.P, c0, c1, 0, pr.P, wb, part, acc_t(1), smem);
  } else {
    rows_dot(ab, pr.C, 0, pr.P, c0, c1, wb, part, acc_t(1));
  }
}

template <typename acc_t>
__device__ __forceinline__ void normaliser(Normalize norm, acc_t lo, acc_t hi, acc_t eps, acc_t& shift,
                                           acc_t& divisor) {
  shift = norm == Normalize::MinMax ? lo : acc_t(0);
  divisor = norm == Normalize::MinMax ? hi - lo + eps : norm == Normalize::Max ? hi + eps : acc_t(1);
}

// Block b: s = sum of the split partials, the extremes of r = relu(s), and y.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_finish_kernel(const acc_t* s_part, acc_t* s, acc_t* ext,
                                                                  T* y, CamProblem pr, CamOptions opt) {
  __shared__ acc_t smem[kWarps];
  const int64_t b = blockIdx.x, P = pr.P;
  const acc_t* part = s_part + b * pr.splits * P;
  acc_t* sb = s + b * P;
  acc_t lo = INFINITY, hi = -INFINITY, nans = 0;
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    acc_t v = part[p];
    for (int64_t k = 1; k < pr.splits; ++k) v += part[k * P + p];
    sb[p] = v;
    const acc_t r = rectify(v, opt.relu);
    if (isnan(r)) {
      nans += 1;
    } else {
      lo = r < lo ? r : lo;
      hi = r > hi ? r : hi;
    }
  }
  lo = block_reduce(lo, Min{}, smem);
  hi = block_reduce(hi, Max{}, smem);
  if (block_reduce(nans, Sum{}, smem) > 0) lo = hi = NAN;
  if (threadIdx.x == 0) {
    ext[2 * b] = lo;
    ext[2 * b + 1] = hi;
  }
  acc_t shift, divisor;
  normaliser(opt.normalize, lo, hi, static_cast<acc_t>(opt.eps), shift, divisor);
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    y[b * P + p] = from_acc<T>((rectify(sb[p], opt.relu) - shift) / divisor);
  }
}

// Block b: gs, the gradient of the scores.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) score_grad_kernel(const T* gy, const acc_t* s, const acc_t* ext,
                                                              acc_t* gs, CamProblem pr, CamOptions opt) {
  // Sums over up to millions of positions in double, tie counts in integers: exact at any P.
  __shared__ double sums_smem[kWarps];
  __shared__ long long counts_smem[kWarps];
  const int64_t b = blockIdx.x, P = pr.P;
  const acc_t lo = ext[2 * b], hi = ext[2 * b + 1];
  acc_t shift, d;
  normaliser(opt.normalize, lo, hi, static_cast<acc_t>(opt.eps), shift, d);
  acc_t g_lo = 0, g_hi = 0;
  if (opt.normalize != Normalize::None) {
    double sum_gy = 0, sum_gy_y = 0;
    long long n_lo = 0, n_hi = 0;
    for (int64_t p = threadIdx.x; p < P; p += kThreads) {
      const acc_t r = rectify(s[b * P + p], opt.relu), g = to_acc<acc_t>(gy[b * P + p]);
      sum_gy += g;
      sum_gy_y += g * ((r - shift) / d);
      n_lo += r == lo;
      n_hi += r == hi;
    }
    sum_gy = block_reduce(sum_gy, Sum{}, sums_smem);
    sum_gy_y = block_reduce(sum_gy_y, Sum{}, sums_smem);
    n_lo = block_reduce(n_lo, Sum{}, counts_smem);
    n_hi = block_reduce(n_hi, Sum{}, counts_smem);
    // d y_p / d hi = -y_p / d;  d y_p / d lo = (y_p - 1) / d  (minmax only)
    g_hi = static_cast<acc_t>(-sum_gy_y / d / (n_hi > 1 ? n_hi : 1));
    if (opt.normalize == Normalize::MinMax) {
      g_lo = static_cast<acc_t>((sum_gy_y - sum_gy) / d / (n_lo > 1 ? n_lo : 1));
    }
  }
  for (int64_t p = threadIdx.x; p < P; p += kThreads) {
    const acc_t sp = s[b * P + p], r = rectify(sp, opt.relu);
    acc_t gr = to_acc<acc_t>(gy[b * P + p]) / d;
    if (r == lo) gr += g_lo;
    if (r == hi) gr += g_hi;
    gs[b * P + p] = (!opt.relu || sp > 0) ? gr : acc_t(0);
  }
}

// Block (b, split): the gradients of the split's channels, each only where wanted (not null).
// Grad-CAM: gA = w gs and gw[c] = 1/P sum_p A[c,p] gs[p] (gG's per-channel values). Other methods
// (cam_methods.h), element-wise: gA = gs dh/da, gG = gs dh/dg; weight-based: each channel's
// gw = sum_p gs A, S = sum_p A and x first (in stats, (B, 3, C)), then
//   xgradcam   gA = w gs + x (G - w),  gG = x A,              x = gw / (S + 1e-7)
//   gradcampp  gA = w gs + x,          gG = gw dt/dg(G, S),   x = -gw sum_p t(G, S)^2
template <typename T, typename acc_t, Method M>
__global__ void __launch_bounds__(kThreads) backward_kernel(const T* a, const T* g, const acc_t* w, const acc_t* gs,
                                                            acc_t* stats, T* ga, T* gg, CamProblem pr) {
  __shared__ acc_t smem[kThreads];
  const int64_t b = blockIdx.x, split = blockIdx.y, C = pr.C, P = pr.P;
  int64_t c0, c1;
  split_range(pr, split, c0, c1);
  const int64_t sample = b * C * P;
  const acc_t* wb = w + b * C;
  const acc_t* gsb = gs + b * P;
  const T* ab = a + sample;
  const T* gb = g + sample;
  auto at = [&](const T* x, int64_t c, int64_t p) { return to_acc<acc_t>(x[element(pr, c, p)]); };
  acc_t* gw = stats + 3 * b * C;
  acc_t* S = gw + C;
  acc_t* x = S + C;
  if constexpr (M == Method::GradCam) {
    if (gg != nullptr) {
      const acc_t inv_p = acc_t(1) / P;
      reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return at(ab, c, p) * gsb[p]; },
                             [&](int64_t c, acc_t total) { gg[b * C + c] = from_acc<T>(total * inv_p); }, smem);
    }
  } else if constexpr (!is_elementwise(M)) {
    reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return at(ab, c, p); },
                           [&](int64_t c, acc_t total) { S[c] = total; }, smem);
    reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) { return at(ab, c, p) * gsb[p]; },
                           [&](int64_t c, acc_t total) {
                             gw[c] = total;
                             if (M == Method::XGradCam) x[c] = xgradcam_weight(total, S[c]);
                           }, smem);
    if constexpr (M == Method::GradCamPP) {
      reduce_channels<acc_t>(pr, c0, c1, [&](int64_t c, int64_t p) {
                               const acc_t t = gradcampp_term(at(gb, c, p), S[c]);
                               return t * t;
                             },
                             [&](int64_t c, acc_t total) { x[c] = -gw[c] * total; }, smem);
    }
  }
  if (M == Method::GradCam && ga == nullptr) return;
  // The split's elements, in memory order; indices within a sample fit 32 bits (C * P < 2^31).
  const uint32_t n = static_cast<uint32_t>(c1 - c0), count = n * static_cast<uint32_t>(P);
  for (uint32_t i = threadIdx.x; i < count; i += kThreads) {
    uint32_t c, p;
    if (!pr.channels_last) {
      c = static_cast<uint32_t>(c0) + i / static_cast<uint32_t>(P);
      p = i % static_cast<uint32_t>(P);
    } else {
      p = i / n;
      c = static_cast<uint32_t>(c0) + i % n;
    }
    const int64_t e = sample + element(pr, c, p);
    if constexpr (M == Method::GradCam) {
      ga[e] = from_acc<T>(wb[c] * gsb[p]);
    } else {
      const acc_t av = to_acc<acc_t>(a[e]), gv = to_acc<acc_t>(g[e]);
      acc_t da, dg;
      if constexpr (is_elementwise(M)) {
        elementwise_partials<M>(av, gv, da, dg);
        da *= gsb[p];
        dg *= gsb[p];
      } else if constexpr (M == Method::XGradCam) {
        da = wb[c] * gsb[p] + x[c] * (gv - wb[c]);
        dg = x[c] * av;
      } else {
        da = wb[c] * gsb[p] + x[c];
        dg = gw[c] * gradcampp_term_grad(gv, S[c]);
      }
      if (ga != nullptr) ga[e] = from_acc<T>(da);
      if (gg != nullptr) gg[e] = from_acc<T>(dg);
    }
  }
}

template <typename T>
cudaError_t forward(const void* a, const void* g, void* y, void* w, void* s, void* ext, void* s_part,
                    const CamProblem& pr, const CamOptions& opt, cudaStream_t stream) {
  using acc_t = acc_type<T>;
  with_method(opt.method, [&](auto method) {
    forward_partial_kernel<T, acc_t, decltype(method)::value><<<dim3(pr.B, pr.splits), kThreads, 0, stream>>>(
        static_cast<const T*>(a), static_cast<const T*>(g), static_cast<acc_t*>(w), static_cast<acc_t*>(s_part), pr);
  });
  forward_finish_kernel<T, acc_t><<<pr.B, kThreads, 0, stream>>>(
      static_cast<const acc_t*>(s_part), static_cast<acc_t*>(s), static_cast<acc_t*>(ext),
      static_cast<T*>(y), pr, opt);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const void* gy, const void* a, const void* g, const void* w, const void* s, const void* ext,
                     void* gs, void* stats, void* ga, void* gg, const CamProblem& pr, const CamOptions& opt,
                     cudaStream_t stream) {
  using acc_t = acc_type<T>;
  score_grad_kernel<T, acc_t><<<pr.B, kThreads, 0, stream>>>(
      static_cast<const T*>(gy), static_cast<const acc_t*>(s), static_cast<const acc_t*>(ext),
      static_cast<acc_t*>(gs), pr, opt);
  with_method(opt.method, [&](auto method) {
    backward_kernel<T, acc_t, decltype(method)::value><<<dim3(pr.B, pr.splits), kThreads, 0, stream>>>(
        static_cast<const T*>(a), static_cast<const T*>(g), static_cast<const acc_t*>(w),
        static_cast<const acc_t*>(gs), static_cast<acc_t*>(stats), static_cast<T*>(ga), static_cast<T*>(gg), pr);
  });
  return cudaGetLastError();
}

}  // namespace

CamProblem make_problem(int64_t B, int64_t C, int64_t P, bool channels_last, int sm_count) {
  const int64_t target = static_cast<int64_t>(kBlocksPerSm) * sm_count;
  int64_t splits = B >= target ? 1 : (target + B - 1) / (B > 0 ? B : 1);
  const int64_t max_splits = C / kMinChannelsPerSplit > 1 ? C / kMinChannelsPerSplit : 1;
  splits = splits < max_splits ? splits : max_splits;
  const int64_t per_split = C > 0 ? (C + splits - 1) / splits : 1;
  return {B, C, P, channels_last, C > 0 ? (C + per_split - 1) / per_split : 1, per_split};
}

cudaError_t launch_cam_forward(DType dtype, const void* a, const void* g, void* y, void* w, void* s,
                               void* ext, void* s_part, const CamProblem& problem,
                               const CamOptions& options, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float16: return forward<__half>(a, g, y, w, s, ext, s_part, problem, options, stream);
    case DType::BFloat16: return forward<__nv_bfloat16>(a, g, y, w, s, ext, s_part, problem, options, stream);
    case DType::Float32: return forward<float>(a, g, y, w, s, ext, s_part, problem, options, stream);
    case DType::Float64: return forward<double>(a, g, y, w, s, ext, s_part, problem, options, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_cam_backward(DType dtype, const void* gy, const void* a, const void* g, const void* w,
                                const void* s, const void* ext, void* gs, void* stats, void* ga, void* gg,
                                const CamProblem& problem, const CamOptions& options, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float16:
      return backward<__half>(gy, a, g, w, s, ext, gs, stats, ga, gg, problem, options, stream);
    case DType::BFloat16:
      return backward<__nv_bfloat16>(gy, a, g, w, s, ext, gs, stats, ga, gg, problem, options, stream);
    case DType::Float32:
      return backward<float>(gy, a, g, w, s, ext, gs, stats, ga, gg, problem, options, stream);
    case DType::Float64:
      return backward<double>(gy, a, g, w, s, ext, gs, stats, ga, gg, problem, options, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace batchcam::cuda
