// CPU kernels of batchcam::cam_forward and batchcam::cam_backward, compiled once per CPU capability
// (fused_cam_cpu_baseline.cpp, fused_cam_cpu_avx2.cpp) into the namespace BATCHCAM_CPU_CAPABILITY;
// fused_cam_cpu.cpp picks one at run time. BATCHCAM_CPU_AVX2 turns on the AVX2/FMA/F16C paths.
//
// Forward, per sample b (docs/op.md), accumulated in acc_t (float, double for double):
//   w[c] = 1/P sum_p G[c,p]        s[p] = sum_c w[c] A[c,p]        r = relu(s)
//   y    = (r - min r) / (max r - min r + eps)   (or r / (max r + eps), or r)
// Backward, given gy:
//   gr = dy/dr^T gy (ties in the extremes share their gradient evenly)    gs = gr * (s > 0)
//   gA[c,p] = w[c] gs[p]           gG[c,p] = 1/P sum_p' gs[p'] A[c,p']
//
// Work is split into (sample, block) tasks run by at::parallel_for, a block being a range of rows
// (channels of NCHW, positions of channels-last). The number of blocks depends on the shape only,
// and partial sums are combined in a fixed order, so results are bitwise reproducible whatever
// the thread count. Every reduction is one of two primitives over a
// sample seen as rows of contiguous elements: rows_dot (a dot product per row, kept in kLanes
// interleaved partial sums so that -O3 vectorises it without reassociating additions; with AVX2,
// 8 rows at a time in explicit vectors, see rows_dot_8) and rows_axpy (a weighted sum of rows,
// vectorised along the row). Both take kRows rows at a time: independent add chains, and fewer
// passes over the accumulator.
#include "fused_cam_cpu.h"

namespace batchcam {
namespace BATCHCAM_CPU_CAPABILITY {
namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kRows = 4;
// Fewest rows per block: channels (NCHW), positions (channels-last, where more than one block per
// sample costs two more parallel regions).
constexpr int64_t kMinChannelsPerBlock = 16;
constexpr int64_t kMinPositionsPerBlock = 32;
constexpr int64_t kTargetTasks = 32;
// Blocked summation (rows_dot, rows_sum): elements of a row, or rows, summed before the next span.
constexpr int64_t kSpan = 4096;
constexpr int64_t kSpanRows = 1024;

// Tasks per parallel chunk, for tasks of `elements` elements each: at least kMinElementsPerTask
// per chunk, so that small inputs run inline, since waking the thread pool costs more than the work.
int64_t task_grain(int64_t elements) {
  constexpr int64_t kMinElementsPerTask = 16384;
  return std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(elements, 1));
}

// Samples per task of the per-sample stages (O(P) or O(C) work each).
int64_t per_sample_grain(const CamShape& shape) {
  return task_grain(std::max(shape.P, shape.C));
}

// A sample is split into blocks of contiguous rows (channels of NCHW, positions of channels-last):
// enough (sample, block) tasks to occupy every core when B is small, each streaming through one
// contiguous range of memory (column slices of channels-last rows would be read twice).
int64_t blocks_per_sample(const CamShape& shape) {
  const int64_t most = shape.channels_last ? shape.P / kMinPositionsPerBlock : shape.C / kMinChannelsPerBlock;
  const int64_t wanted = (kTargetTasks + shape.B - 1) / std::max<int64_t>(shape.B, 1);
  return std::clamp<int64_t>(wanted, 1, std::max<int64_t>(most, 1));
}

// Half rows reach the arithmetic as float chunks of kChunk elements per row, converted 8 at a time
// with F16C: GCC does not vectorise _Float16 conversions, and one element at a time they cost more
// than the rest of the kernel. kChunk is a multiple of kLanes, so a chunked row is summed in
// exactly the order of an unchunked one. Other dtypes convert inline, vectorised.
constexpr int64_t kChunk = 256;

template <typename scalar_t>
constexpr bool kConvertInChunks = std::is_same_v<scalar_t, c10::Half>;

template <int64_t R, typename acc_t, typename scalar_t>
void convert_rows(const scalar_t* x, int64_t stride, int64_t n, acc_t (&chunk)[R][kChunk]) {
  for (int64_t r = 0; r < R; ++r) {
    const scalar_t* row = x + r * stride;
    int64_t i = 0;
#if BATCHCAM_CPU_AVX2
    if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
      for (; i + 8 <= n; i += 8) {
        const __m128i half8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
        _mm256_storeu_ps(&chunk[r][i], _mm256_cvtph_ps(half8));
      }
    }
#endif
    for (; i < n; ++i) chunk[r][i] = static_cast<acc_t>(row[i]);
  }
}

// fn(rows, row_stride, i0, m) over elements [0, n) of R rows: once on the rows themselves, or, for
// dtypes converted in chunks, on an acc_t copy of elements [i0, i0 + m) of each chunk in turn.
template <int64_t R, typename acc_t, typename scalar_t, typename Fn>
[[gnu::always_inline]] inline void over_rows_in_acc(const scalar_t* x, int64_t stride, int64_t n, const Fn& fn) {
  if constexpr (kConvertInChunks<scalar_t>) {
    acc_t chunk[R][kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      convert_rows<R>(x + i0, stride, m, chunk);
      fn(&chunk[0][0], kChunk, i0, m);
    }
  } else {
    fn(x, stride, int64_t(0), n);
  }
}

// lanes[r][i % kLanes] += x[r * stride + i] * y[i] (y = 1 without HasY), for R rows and i < n.
// Always inlined, into functions whose lanes are a local array (no store to them can change x, y).
template <bool HasY, int64_t R, typename acc_t, typename scalar_t>
[[gnu::always_inline]] inline void accumulate_lanes(const scalar_t* x, int64_t stride, const acc_t* y, int64_t n,
                                                    acc_t (&lanes)[R][kLanes]) {
  auto term = [&](int64_t r, int64_t i) {
    const acc_t v = static_cast<acc_t>(x[r * stride + i]);
    if constexpr (HasY) return v * y[i];
    return v;
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[r][l] += term(r, i + l);
    }
  }
  for (int64_t l = 0; i < n; ++i, ++l) {
    for (int64_t r = 0; r < R; ++r) lanes[r][l] += term(r, i);
  }
}

// out[r] = scale * sum_i x[r * stride + i] * y[i] (y = 1 without HasY), for R rows.
template <bool HasY, int64_t R, typename acc_t, typename scalar_t, typename out_t>
[[gnu::always_inline]] inline void rows_dot_block(const scalar_t* x, int64_t stride, const acc_t* y, int64_t n,
                                                  acc_t scale, out_t* out) {
  acc_t lanes[R][kLanes] = {};
  over_rows_in_acc<R, acc_t>(x, stride, n, [&](const auto* rows, int64_t row_stride, int64_t i0, int64_t m) {
    accumulate_lanes<HasY, R>(rows, row_stride, HasY ? y + i0 : y, m, lanes);
  });
  for (int64_t r = 0; r < R; ++r) {
    acc_t total = 0;
    for (int64_t l = 0; l < kLanes; ++l) total += lanes[r][l];
    out[r] = static_cast<out_t>(total * scale);
  }
}

// Per-element terms of the other weight-based methods' per-channel sums (rows_terms), given the
// elements a, g of A and G and the channel's S = sum_p A: a scalar of() and, with AVX2, 8 lanes.
struct ProductTerm {  // G A: XGrad-CAM's numerator
  template <typename T>
  static T of(T a, T g, T /*S*/) { return g * a; }
#if BATCHCAM_CPU_AVX2
  static __m256 of(__m256 a, __m256 g, __m256 /*S*/) { return _mm256_mul_ps(g, a); }
#endif
};

template <int Power>  // Grad-CAM++'s t(g, S) (its weight) or t^2 (its backward), as gradcampp_term
struct GradCamPPTerm {
  template <typename T>
  static T of(T /*a*/, T g, T S) {
    const T t = gradcampp_term(g, S);
    return Power == 1 ? t : t * t;
  }
#if BATCHCAM_CPU_AVX2
  static __m256 of(__m256 /*a*/, __m256 g, __m256 S) {
    // On g+ = max(0, g) (NaN stays NaN: max_ps returns its second operand if either is NaN), where
    // t is zero for g <= 0 without a mask: t = g+^3 / (S g+^3 + (2 g+^2 + eps)), 6 instructions
    // where a compare and a mask made 7 (the loop is bound by instructions, not by the divider).
    const __m256 gp = _mm256_max_ps(_mm256_setzero_ps(), g);
    const __m256 g2 = _mm256_mul_ps(gp, gp), g3 = _mm256_mul_ps(g2, gp);
    const __m256 d = _mm256_fmadd_ps(S, g3, _mm256_fmadd_ps(g2, _mm256_set1_ps(2.0f),
                                                             _mm256_set1_ps(static_cast<float>(kGradCamPPEps))));
    const __m256 t = _mm256_div_ps(g3, d);
    return Power == 1 ? t : _mm256_mul_ps(t, t);
  }
#endif
};

#if BATCHCAM_CPU_AVX2
// 8 elements as floats (conversions from Half and BFloat16 are exact).
template <typename scalar_t>
[[gnu::always_inline]] inline __m256 load_8(const scalar_t* v) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return _mm256_loadu_ps(v);
  } else {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
    if constexpr (std::is_same_v<scalar_t, c10::Half>) return _mm256_cvtph_ps(bits);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));  // BFloat16
  }
}

// The first m < 8 elements as floats, then zeros: a row's tail, read without reading past it (and
// without a round trip through memory, which costs more than the rest of a short row).
template <typename scalar_t>
[[gnu::always_inline]] inline __m256 load_first(const scalar_t* v, int64_t m) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(v, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m)), lane));
  } else {
    auto at = [&](int64_t i) { return i < m ? static_cast<float>(v[i]) : 0.f; };
    return _mm256_setr_ps(at(0), at(1), at(2), at(3), at(4), at(5), at(6), 0.f);  // m < 8
  }
}

// add(i, load) for the elements [i, i + 8) of rows of n elements: load(v) reads 8 elements from v
// as floats, the last call's only the row's tail (then zeros).
template <typename Add>
[[gnu::always_inline]] inline void over_vectors_8(int64_t n, const Add& add) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) add(i, [](const auto* v) { return load_8(v); });
  if (i < n) add(i, [m = n - i](const auto* v) { return load_first(v, m); });
}

// out[r] = scale * (the sum of sum[r]'s 8 lanes), for 8 rows reduced together by a tree of
// horizontal adds: a fixed order and 9 instructions for 8 rows, where reducing each row's lanes
// alone costs more than summing a short row.
template <typename out_t>
[[gnu::always_inline]] inline void store_row_sums_8(const __m256 (&sum)[8], float scale, out_t* out) {
  const __m256 s01 = _mm256_hadd_ps(sum[0], sum[1]), s23 = _mm256_hadd_ps(sum[2], sum[3]);
  const __m256 s45 = _mm256_hadd_ps(sum[4], sum[5]), s67 = _mm256_hadd_ps(sum[6], sum[7]);
  const __m256 s03 = _mm256_hadd_ps(s01, s23), s47 = _mm256_hadd_ps(s45, s67);
  const __m256 low = _mm256_permute2f128_ps(s03, s47, 0x20), high = _mm256_permute2f128_ps(s03, s47, 0x31);
  alignas(32) float total[8];
  _mm256_store_ps(total, _mm256_mul_ps(_mm256_add_ps(low, high), _mm256_set1_ps(scale)));
  for (int64_t r = 0; r < 8; ++r) out[r] = static_cast<out_t>(total[r]);
}

// rows_dot for 8 rows of float, Half or BFloat16, in AVX2: 8 partial sums per row (lane i % 8),
// then reduced by store_row_sums_8.
template <bool HasY, typename scalar_t, typename out_t>
void rows_dot_8(const scalar_t* x, int64_t stride, const float* y, int64_t n, float scale, out_t* out) {
  __m256 sum[8];
  for (auto& v : sum) v = _mm256_setzero_ps();
  auto add = [&](int64_t i, auto load) {
    const __m256 yv = HasY ? load(y + i) : _mm256_setzero_ps();
    for (int64_t r = 0; r < 8; ++r) {
      const __m256 xv = load(x + r * stride + i);
      sum[r] = HasY ? _mm256_fmadd_ps(xv, yv, sum[r]) : _mm256_add_ps(sum[r], xv);
    }
  };
  over_vectors_8(n, add);
  store_row_sums_8(sum, scale, out);
}

// rows_terms for 8 rows of float, Half or BFloat16 (n <= kSpan), as rows_dot_8.
template <typename Term, typename scalar_t>
void rows_terms_8(const scalar_t* a, const scalar_t* g, int64_t stride, const float* S, int64_t n, float* out) {
  __m256 sum[8];
  for (auto& v : sum) v = _mm256_setzero_ps();
  auto add = [&](int64_t i, auto load) {
    for (int64_t r = 0; r < 8; ++r) {
      const __m256 term = Term::of(load(a + r * stride + i), load(g + r * stride + i),
                                   S ? _mm256_broadcast_ss(S + r) : _mm256_setzero_ps());
      sum[r] = _mm256_add_ps(sum[r], term);
    }
  };
  over_vectors_8(n, add);
  store_row_sums_8(sum, 1.f, out);
}

// rows_sum_and_product for 4 rows of float, Half or BFloat16 (n <= kSpan): each row's two sums in
// the lanes and order of rows_dot_8 (the product's terms as rows_terms_8's ProductTerm), reduced
// together by store_row_sums_8: out[0, 4) the sums of a, out[4, 8) those of g a.
template <typename scalar_t>
void rows_sum_and_product_4(const scalar_t* a, const scalar_t* g, int64_t stride, int64_t n, float* out) {
  __m256 sum[8];
  for (auto& v : sum) v = _mm256_setzero_ps();
  auto add = [&](int64_t i, auto load) {
    for (int64_t r = 0; r < 4; ++r) {
      const __m256 av = load(a + r * stride + i);
      sum[r] = _mm256_add_ps(sum[r], av);
      sum[4 + r] = _mm256_add_ps(sum[4 + r], ProductTerm::of(av, load(g + r * stride + i), av));
    }
  };
  over_vectors_8(n, add);
  store_row_sums_8(sum, 1.f, out);
}
#endif

template <bool HasY, typename acc_t, typename scalar_t, typename out_t>
void rows_dot_short(const scalar_t* x, int64_t stride, const acc_t* y, int64_t rows, int64_t n, acc_t scale,
                    out_t* out) {
  int64_t r = 0;
#if BATCHCAM_CPU_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {  // float, Half and BFloat16 data
    for (; r + 8 <= rows; r += 8) rows_dot_8<HasY>(x + r * stride, stride, y, n, scale, out + r);
  }
#endif
  for (; r + kRows <= rows; r += kRows) rows_dot_block<HasY, kRows>(x + r * stride, stride, y, n, scale, out + r);
  for (; r < rows; ++r) rows_dot_block<HasY, 1>(x + r * stride, stride, y, n, scale, out + r);
}

// fn(i0, m, scale, out) writes scale times the sums of elements [i0, i0 + m) of `rows` rows into
// out[0, rows): called once on whole rows (n <= kSpan, into `out`), else span by span of kSpan
// elements and the spans' sums added up in order (see rows_dot).
template <typename acc_t, typename out_t, typename Fn>
void by_spans(int64_t rows, int64_t n, acc_t scale, out_t* out, const Fn& fn) {
  if (n <= kSpan) return fn(int64_t(0), n, scale, out);
  std::vector<acc_t> span(rows), total(rows, acc_t(0));
  for (int64_t i0 = 0; i0 < n; i0 += kSpan) {
    fn(i0, std::min(kSpan, n - i0), acc_t(1), span.data());
    for (int64_t r = 0; r < rows; ++r) total[r] += span[r];
  }
  for (int64_t r = 0; r < rows; ++r) out[r] = static_cast<out_t>(total[r] * scale);
}

// out[r] = scale * sum_i x[r * stride + i] * y[i] (y = 1 without HasY), for `rows` rows of n
// elements. A row longer than kSpan is summed span by span and the spans' sums added up: blocked
// summation, whose rounding error grows with sqrt(kSpan) + n / kSpan rather than with n, so that
// float32 sums keep float32 accuracy over millions of positions.
template <bool HasY, typename acc_t, typename scalar_t, typename out_t>
void rows_dot(const scalar_t* x, int64_t stride, const acc_t* y, int64_t rows, int64_t n, acc_t scale, out_t* out) {
  by_spans(rows, n, scale, out, [&](int64_t i0, int64_t m, acc_t span_scale, auto* span_out) {
    rows_dot_short<HasY>(x + i0, stride, HasY ? y + i0 : y, rows, m, span_scale, span_out);
  });
}

// out[i] += sum_r w[r] * x[r * stride + i], for i < n.
template <int64_t R, typename acc_t, typename scalar_t>
[[gnu::always_inline]] inline void accumulate_rows(const scalar_t* x, int64_t stride, const acc_t (&w)[R], int64_t n,
                                                   acc_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t v = 0;
    for (int64_t r = 0; r < R; ++r) v += w[r] * static_cast<acc_t>(x[r * stride + i]);
    out[i] += v;
  }
}

// out[i] += sum_r w[r] * x[r * stride + i] (w = 1 when null), for i < n.
template <int64_t R, typename acc_t, typename scalar_t>
[[gnu::always_inline]] inline void rows_axpy_block(const scalar_t* x, int64_t stride, const acc_t* w, int64_t n,
                                                   acc_t* out) {
  acc_t wr[R];
  for (int64_t r = 0; r < R; ++r) wr[r] = w ? w[r] : acc_t(1);
  over_rows_in_acc<R, acc_t>(x, stride, n, [&](const auto* rows, int64_t row_stride, int64_t i0, int64_t m) {
    accumulate_rows<R>(rows, row_stride, wr, m, out + i0);
  });
}

template <typename acc_t, typename scalar_t>
void rows_axpy(const scalar_t* x, int64_t stride, const acc_t* w, int64_t rows, int64_t n, acc_t* out) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) rows_axpy_block<kRows>(x + r * stride, stride, w ? w + r : w, n, out);
  for (; r < rows; ++r) rows_axpy_block<1>(x + r * stride, stride, w ? w + r : w, n, out);
}

// out[i] = sum_r w[r] * x[r * stride + i] (w = 1 when null), for i < n: rows_axpy into zeros, and
// for more than kSpanRows rows blocked as rows_dot is (spans of rows summed apart, then added).
template <typename acc_t, typename scalar_t>
void rows_sum(const scalar_t* x, int64_t stride, const acc_t* w, int64_t rows, int64_t n, acc_t* out) {
  std::fill(out, out + n, acc_t(0));
  if (rows <= kSpanRows) return rows_axpy(x, stride, w, rows, n, out);
  std::vector<acc_t> span(n);
  for (int64_t r0 = 0; r0 < rows; r0 += kSpanRows) {
    std::fill(span.begin(), span.end(), acc_t(0));
    rows_axpy(x + r0 * stride, stride, w ? w + r0 : w, std::min(kSpanRows, rows - r0), n, span.data());
    for (int64_t i = 0; i < n; ++i) out[i] += span[i];
  }
}

// min/max/relu that propagate NaN, as torch.amin/amax/relu do.
template <typename acc_t>
acc_t nan_min(acc_t a, acc_t b) { return (a < b || std::isnan(a)) ? a : b; }
template <typename acc_t>
acc_t nan_max(acc_t a, acc_t b) { return (a > b || std::isnan(a)) ? a : b; }
template <typename acc_t>
acc_t rectify(acc_t v, bool relu) { return (!relu || v > 0 || std::isnan(v)) ? v : acc_t(0); }

template <typename acc_t>
acc_t normaliser(Normalize norm, acc_t lo, acc_t hi, acc_t eps) {
  return norm == Normalize::MinMax ? hi - lo + eps : hi + eps;
}

// Channel block [c0, c1) of an NCHW sample in the forward: w for its channels, its share of s.
template <typename scalar_t, typename acc_t>
void forward_channels(int64_t P, const scalar_t* a, const scalar_t* g, int64_t c0, int64_t c1, acc_t* w,
                      acc_t* s_part) {
  std::fill(s_part, s_part + P, acc_t(0));
  rows_dot<false>(g + c0 * P, P, static_cast<const acc_t*>(nullptr), c1 - c0, P, acc_t(1) / P, w + c0);
  rows_axpy(a + c0 * P, P, w + c0, c1 - c0, P, s_part);
}

// Position block [p0, p1) of a channels-last sample: its partial sum of G's rows (C values).
template <typename scalar_t, typename acc_t>
void sum_positions(int64_t C, const scalar_t* g, int64_t p0, int64_t p1, acc_t* part) {
  rows_sum(g + p0 * C, C, static_cast<const acc_t*>(nullptr), p1 - p0, C, part);
}

// out[i] = scale * sum_k parts[k * n + i]: the blocks' partial sums (of s over channel blocks, of
// w and gw over position blocks), added in block order, in place in parts[0, n).
template <typename acc_t, typename out_t>
void combine_blocks(acc_t* parts, int64_t blocks, int64_t n, acc_t scale, out_t* out) {
  for (int64_t k = 1; k < blocks; ++k) {
    for (int64_t i = 0; i < n; ++i) parts[i] += parts[k * n + i];
  }
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<out_t>(parts[i] * scale);
}

// The extremes (min, max) of the rectified scores of one sample, NaN if any score is NaN (as
// torch.amin/amax). With AVX2, 8 lanes at a time: the scalar loop's compare-and-branch per
// element cost a tenth of a whole forward at 7x7.
template <typename acc_t>
std::array<acc_t, 2> rectified_extremes(int64_t P, const acc_t* s, bool relu) {
  acc_t lo = std::numeric_limits<acc_t>::infinity(), hi = -lo;
  int64_t p = 0;
#if BATCHCAM_CPU_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 lo8 = _mm256_set1_ps(lo), hi8 = _mm256_set1_ps(hi), nan8 = zero;
    for (; p + 8 <= P; p += 8) {
      const __m256 v = _mm256_loadu_ps(s + p), nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
      // rectify(v): v where v > 0 or NaN, else 0. min_ps / max_ps(a, b) are a < b ? a : b and
      // a > b ? a : b, as nan_min / nan_max for numbers; NaN lanes are recorded apart.
      const __m256 r = relu ? _mm256_blendv_ps(zero, v, _mm256_or_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), nan)) : v;
      nan8 = _mm256_or_ps(nan8, nan);
      lo8 = _mm256_min_ps(lo8, r);
      hi8 = _mm256_max_ps(hi8, r);
    }
    if (_mm256_movemask_ps(nan8) != 0) {
      const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
      return {nan, nan};
    }
    alignas(32) float lows[8], highs[8];
    _mm256_store_ps(lows, lo8);
    _mm256_store_ps(highs, hi8);
    for (int64_t l = 0; l < 8; ++l) {
      lo = nan_min(lo, lows[l]);
      hi = nan_max(hi, highs[l]);
    }
  }
#endif
  for (; p < P; ++p) {
    const acc_t r = rectify(s[p], relu);
    lo = nan_min(lo, r);
    hi = nan_max(hi, r);
  }
  return {lo, hi};
}

// Rectifies and normalises the scores s of one sample into y; ext = the extremes of the rectified s.
template <typename scalar_t, typename acc_t>
void finish_sample(int64_t P, const acc_t* s, bool relu, Normalize norm, acc_t eps, acc_t* ext, scalar_t* y) {
  const auto [lo, hi] = rectified_extremes(P, s, relu);
  ext[0] = lo;
  ext[1] = hi;
  const acc_t shift = norm == Normalize::MinMax ? lo : acc_t(0);
  const acc_t scale = norm == Normalize::None ? acc_t(1) : acc_t(1) / normaliser(norm, lo, hi, eps);
  for (int64_t p = 0; p < P; ++p) y[p] = static_cast<scalar_t>((rectify(s[p], relu) - shift) * scale);
}

// gs for one sample: the gradient of the loss with respect to the scores s.
template <typename scalar_t, typename acc_t>
void score_grad_sample(int64_t P, const scalar_t* gy, const acc_t* s, const acc_t* ext, bool relu,
                       Normalize norm, acc_t eps, acc_t* gs) {
  const acc_t lo = ext[0], hi = ext[1];
  acc_t d = 1, g_lo = 0, g_hi = 0;
  int64_t n_lo = 0, n_hi = 0;
  if (norm != Normalize::None) {
    d = normaliser(norm, lo, hi, eps);
    const acc_t shift = norm == Normalize::MinMax ? lo : acc_t(0);
    // Sums over up to millions of positions: in double, so float32 keeps float32 rounding at any P.
    double sum_gy = 0, sum_gy_y = 0;
    for (int64_t p = 0; p < P; ++p) {
      const acc_t r = rectify(s[p], relu), g = static_cast<acc_t>(gy[p]);
      sum_gy += g;
      sum_gy_y += g * ((r - shift) / d);
      n_lo += r == lo;
      n_hi += r == hi;
    }
    // d y_p / d hi = -y_p / d;  d y_p / d lo = (y_p - 1) / d  (minmax only)
    g_hi = static_cast<acc_t>(-sum_gy_y / d / std::max<int64_t>(n_hi, 1));
    if (norm == Normalize::MinMax) g_lo = static_cast<acc_t>((sum_gy_y - sum_gy) / d / std::max<int64_t>(n_lo, 1));
  }
  for (int64_t p = 0; p < P; ++p) {
    const acc_t r = rectify(s[p], relu);
    acc_t gr = static_cast<acc_t>(gy[p]) / d;  // a division, as autograd does: exact cancellations stay exact
    if (r == lo) gr += g_lo;
    if (r == hi) gr += g_hi;
    gs[p] = (!relu || s[p] > 0) ? gr : acc_t(0);
  }
}

// out[i] = scale * v[i] in scalar_t, for i < n (Half: 8 at a time with F16C, see kConvertInChunks).
template <typename scalar_t, typename acc_t>
[[gnu::always_inline]] inline void store_scaled(scalar_t* out, acc_t scale, const acc_t* v, int64_t n) {
  int64_t i = 0;
#if BATCHCAM_CPU_AVX2
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
    const __m256 scale8 = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8) {
      const __m128i half8 = _mm256_cvtps_ph(_mm256_mul_ps(scale8, _mm256_loadu_ps(v + i)), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), half8);
    }
  }
#endif
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(scale * v[i]);
}

// Channel block [c0, c1) of an NCHW sample in the backward, each part only if wanted:
//   gA[c,p] = w[c] gs[p]  and  gw[c] = 1/P sum_p A[c,p] gs[p]  (gG[c,p] = gw[c] for every p).
template <typename scalar_t, typename acc_t>
void backward_channels(int64_t P, const scalar_t* a, const acc_t* w, const acc_t* gs, int64_t c0, int64_t c1,
                       scalar_t* ga, scalar_t* gw) {
  if (gw) rows_dot<true>(a + c0 * P, P, gs, c1 - c0, P, acc_t(1) / P, gw + c0);
  for (int64_t c = c0; ga && c < c1; ++c) store_scaled(ga + c * P, w[c], gs, P);
}

// Position block [p0, p1) of a channels-last sample in the backward: its rows of gA (if wanted)
// and its partial sum of gw (C values, if wanted; gw = 1/P sum of the blocks').
template <typename scalar_t, typename acc_t>
void backward_positions(int64_t C, const scalar_t* a, const acc_t* w, const acc_t* gs, int64_t p0, int64_t p1,
                        scalar_t* ga, acc_t* gw_part) {
  for (int64_t p = p0; ga && p < p1; ++p) store_scaled(ga + p * C, gs[p], w, C);
  if (!gw_part) return;
  rows_sum(a + p0 * C, C, gs + p0, p1 - p0, C, gw_part);
}

// Asks the kernel to back a fresh, still untouched output with 2 MB pages: writing a large
// gradient otherwise costs one page fault per 4 KB, which can take longer than computing it. A hint only: nothing changes where transparent huge pages are off.
void advise_huge_pages(const at::Tensor& fresh) {
#ifdef __linux__
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + fresh.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)fresh;
#endif
}

// The stages of a pass: fn(b, k, r0, r1) on every block k (rows [r0, r1)) of every sample b, or
// fn(b) on every sample.
template <typename Fn>
struct PerBlock {
  Fn fn;
};
template <typename Fn>
struct PerSample {
  Fn fn;
};
// C++17 deduces an aggregate's template arguments only through guides (torch 2.11 builds as C++17).
template <typename Fn>
PerBlock(Fn) -> PerBlock<Fn>;
template <typename Fn>
PerSample(Fn) -> PerSample<Fn>;

template <typename Fn>
void run_task(const PerBlock<Fn>& stage, int64_t b, int64_t k, int64_t rows, int64_t blocks) {
  const int64_t per_block = (rows + blocks - 1) / blocks;
  const int64_t r0 = std::min(k * per_block, rows);
  stage.fn(b, k, r0, std::min(r0 + per_block, rows));
}

template <typename Fn>
void run_task(const PerSample<Fn>& stage, int64_t b, int64_t, int64_t, int64_t) {
  stage.fn(b);
}

template <typename Fn>
void run_stage(const CamShape& shape, int64_t rows, int64_t blocks, const PerBlock<Fn>& stage) {
  at::parallel_for(0, shape.B * blocks, task_grain(shape.C * shape.P / blocks), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) run_task(stage, task / blocks, task % blocks, rows, blocks);
  });
}

template <typename Fn>
void run_stage(const CamShape& shape, int64_t, int64_t, const PerSample<Fn>& stage) {
  at::parallel_for(0, shape.B, per_sample_grain(shape), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) stage.fn(b);
  });
}

// Runs the stages in order. With one block per sample a task runs every stage of its sample (one
// parallel region, the sample still in cache); otherwise each stage is a parallel region of its
// own, since a stage may need every block of the stage before.
template <typename... Stages>
void run_stages(const CamShape& shape, int64_t blocks, const Stages&... stages) {
  const int64_t rows = shape.channels_last ? shape.P : shape.C;
  if (blocks == 1) {
    at::parallel_for(0, shape.B, task_grain(shape.C * shape.P), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) (run_task(stages, b, 0, rows, 1), ...);
    });
    return;
  }
  (run_stage(shape, rows, blocks, stages), ...);
}

// --- The other methods (cam_methods.h): the same stages, with per-element terms -------------------
// The per-channel sums of NCHW rows run hand-vectorised primitives (rows_dot above, and
// rows_terms below for the terms of XGrad-CAM and Grad-CAM++); every other loop of these methods is
// one of these, written for GCC to vectorise, with the same blocking (so the same accuracy) and a
// fixed summation order.

// sum_i f(i) for i < n: kLanes interleaved partial sums, span by span (blocked, as rows_dot). One
// sum per call: GCC vectorises f inlined alone, not a pair of sums returned together.
template <typename acc_t, typename F>
[[gnu::always_inline]] inline acc_t sum_elements(int64_t n, const F& f) {
  acc_t total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kSpan) {
    const int64_t m = std::min(kSpan, n - i0);
    acc_t lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += f(i0 + i + l);
    }
    for (int64_t l = 0; i < m; ++i, ++l) lanes[l] += f(i0 + i);
    acc_t span = 0;
    for (int64_t l = 0; l < kLanes; ++l) span += lanes[l];
    total += span;
  }
  return total;
}

// out[i] = sum_r f(r, i) for i < n over `rows` rows, row by row along i; spans of kSpanRows rows
// summed apart, then added (blocked, as rows_sum). With K = 2, f(r, i) is a pair of terms and out
// holds both sums, out[i] and out[n + i], taken in one pass over the rows.
template <int64_t K = 1, typename acc_t, typename F>
void sum_rows_by(int64_t rows, int64_t n, const F& f, acc_t* out) {
  auto add = [&](int64_t r, acc_t* into) {
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (K == 1) {
        into[i] += f(r, i);
      } else {
        const auto [first, second] = f(r, i);
        into[i] += first;
        into[n + i] += second;
      }
    }
  };
  std::fill(out, out + K * n, acc_t(0));
  std::vector<acc_t> span(rows > kSpanRows ? K * n : 0);
  for (int64_t r0 = 0; r0 < rows; r0 += kSpanRows) {
    acc_t* into = rows > kSpanRows ? span.data() : out;
    if (rows > kSpanRows) std::fill(span.begin(), span.end(), acc_t(0));
    for (int64_t r = r0; r < std::min(r0 + kSpanRows, rows); ++r) add(r, into);
    if (rows > kSpanRows) {
      for (int64_t i = 0; i < K * n; ++i) out[i] += span[i];
    }
  }
}

template <typename acc_t, typename scalar_t>
[[gnu::always_inline]] inline acc_t at(const scalar_t* x, int64_t i) {
  return static_cast<acc_t>(x[i]);
}

// out[r] = sum_i Term::of(a[r * stride + i], g[r * stride + i], S[r]) (S null: 0) for `rows` rows
// of n elements, blocked over spans as rows_dot; with AVX2 8 rows at a time as rows_dot_8.
template <typename Term, typename acc_t, typename scalar_t>
void rows_terms(const scalar_t* a, const scalar_t* g, int64_t stride, const acc_t* S, int64_t rows, int64_t n,
                acc_t* out) {
  by_spans(rows, n, acc_t(1), out, [&](int64_t i0, int64_t m, acc_t, acc_t* span_out) {
    int64_t r = 0;
#if BATCHCAM_CPU_AVX2
    if constexpr (std::is_same_v<acc_t, float>) {
      for (; r + 8 <= rows; r += 8) {
        rows_terms_8<Term>(a + r * stride + i0, g + r * stride + i0, stride, S ? S + r : S, m, span_out + r);
      }
    }
#endif
    for (; r < rows; ++r) {
      const scalar_t* ar = a + r * stride + i0;
      const scalar_t* gr = g + r * stride + i0;
      const acc_t Sr = S ? S[r] : acc_t(0);
      span_out[r] = sum_elements<acc_t>(m, [&](int64_t i) { return Term::of(at<acc_t>(ar, i), at<acc_t>(gr, i), Sr); });
    }
  });
}

// Channels whose per-channel sums are taken together (weight_rows, method_backward_channels): a
// few rows of A and G, still in cache when they are read again.
constexpr int64_t kRowsTogether = 16;

// S[r] = sum_i a[r * stride + i] and products[r] = sum_i g a (the same element of g) for rows <=
// kRowsTogether rows of n elements: XGrad-CAM's two per-channel sums in one pass over the rows of
// A, each taken as rows_dot and rows_terms<ProductTerm> would take it alone, blocked over spans;
// with AVX2 4 rows at a time.
template <typename acc_t, typename scalar_t>
void rows_sum_and_product(const scalar_t* a, const scalar_t* g, int64_t stride, int64_t rows, int64_t n, acc_t* S,
                          acc_t* products) {
  int64_t r = 0;
#if BATCHCAM_CPU_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    const int64_t fours = rows / 4 * 4;
    acc_t both[2 * kRowsTogether];  // per group of 4 rows: 4 sums, then 4 products
    by_spans(2 * fours, n, acc_t(1), both, [&](int64_t i0, int64_t m, acc_t, acc_t* span_out) {
      for (int64_t q = 0; q < fours; q += 4) {
        rows_sum_and_product_4(a + q * stride + i0, g + q * stride + i0, stride, m, span_out + 2 * q);
      }
    });
    for (; r < fours; ++r) {
      S[r] = both[2 * (r / 4 * 4) + r % 4];
      products[r] = both[2 * (r / 4 * 4) + 4 + r % 4];
    }
  }
#endif
  if (r == rows) return;
  rows_dot<false>(a + r * stride, stride, static_cast<const acc_t*>(nullptr), rows - r, n, acc_t(1), S + r);
  rows_terms<ProductTerm>(a + r * stride, g + r * stride, stride, static_cast<const acc_t*>(nullptr), rows - r, n,
                          products + r);
}

// S = sum_p A and w for `rows` channels of a weight-based method, from their rows of A and G
// (n = P elements each).
template <Method M, typename acc_t, typename scalar_t>
void weight_rows(int64_t n, const scalar_t* a, const scalar_t* g, int64_t rows, acc_t* S, acc_t* w) {
  if constexpr (M == Method::XGradCam) {
    rows_sum_and_product(a, g, n, rows, n, S, w);  // S, and sum_p G A
    for (int64_t r = 0; r < rows; ++r) w[r] = xgradcam_weight(w[r], S[r]);
  } else {
    rows_dot<false>(a, n, static_cast<const acc_t*>(nullptr), rows, n, acc_t(1), S);
    rows_terms<GradCamPPTerm<1>>(a, g, n, S, rows, n, w);
  }
}

// Forward of channel block [c0, c1) of an NCHW sample: w for its channels (weight-based), and its
// share of s in s_part.
template <Method M, typename scalar_t, typename acc_t>
void method_forward_channels(int64_t P, const scalar_t* a, const scalar_t* g, int64_t c0, int64_t c1, acc_t* w,
                             acc_t* s_part) {
  if constexpr (is_elementwise(M)) {
    sum_rows_by(c1 - c0, P, [&](int64_t r, int64_t p) {
      const int64_t i = (c0 + r) * P + p;
      return elementwise_term<M>(at<acc_t>(a, i), at<acc_t>(g, i));
    }, s_part);
  } else {
    std::fill(s_part, s_part + P, acc_t(0));
    for (int64_t c = c0; c < c1; c += kRowsTogether) {
      const int64_t rows = std::min(kRowsTogether, c1 - c);
      acc_t S[kRowsTogether];
      weight_rows<M>(P, a + c * P, g + c * P, rows, S, w + c);
      rows_axpy(a + c * P, P, w + c, rows, P, s_part);
    }
  }
}

// fn(write_a, write_g), two std::bool_constant saying which of gA (ga) and gG (gg) are wanted (at
// least one is): the backward's element loops compiled once per case, with no test per element.
template <typename scalar_t, typename Fn>
void with_outputs(const scalar_t* ga, const scalar_t* gg, const Fn& fn) {
  if (ga && gg) return fn(std::true_type{}, std::true_type{});
  if (ga) return fn(std::true_type{}, std::false_type{});
  fn(std::false_type{}, std::true_type{});
}

// The backward of a weight-based method at one element, given its channel's w, gw = sum_p gs A,
// S = sum_p A and x: (gA, gG) =
//   xgradcam   (w gs + x (g - w),  x a)              x = gw / (S + 1e-7)
//   gradcampp  (w gs + x,          gw dt/dg(g, S))    x = gw dw/dS = -gw sum_p t(G[c,p], S)^2
template <Method M, typename acc_t>
[[gnu::always_inline]] inline void weight_method_grads(acc_t a, acc_t g, acc_t gs, acc_t w, acc_t gw, acc_t S,
                                                       acc_t x, acc_t& ga, acc_t& gg) {
  if constexpr (M == Method::XGradCam) {
    ga = w * gs + x * (g - w);
    gg = x * a;
  } else {
    ga = w * gs + x;
    gg = gw * gradcampp_term_grad(g, S);
  }
}

// (gA, gG) at one element of any method but Grad-CAM, given gs at its position (and, for the
// weight-based methods, its channel's w, gw, S and x).
template <Method M, typename acc_t>
[[gnu::always_inline]] inline void element_grads(acc_t a, acc_t g, acc_t gs, acc_t w, acc_t gw, acc_t S, acc_t x,
                                                 acc_t& ga, acc_t& gg) {
  if constexpr (is_elementwise(M)) {
    elementwise_partials<M>(a, g, ga, gg);
    ga *= gs;
    gg *= gs;
  } else {
    weight_method_grads<M>(a, g, gs, w, gw, S, x, ga, gg);
  }
}

// gA and gG (each if WriteA, WriteG) of one channel row of an NCHW sample, given gs and the
// channel's w, gw, S, x. Apart, with restrict pointers: GCC vectorises the loop only if it can tell
// the outputs from the inputs, which it checks at run time for a few pointers only.
template <Method M, bool WriteA, bool WriteG, typename scalar_t, typename acc_t>
void channel_row_grads(int64_t P, const scalar_t* __restrict__ a, const scalar_t* __restrict__ g,
                       const acc_t* __restrict__ gs, acc_t w, acc_t gw, acc_t S, acc_t x, scalar_t* __restrict__ ga,
                       scalar_t* __restrict__ gg) {
  for (int64_t p = 0; p < P; ++p) {
    acc_t da, dg;
    element_grads<M>(at<acc_t>(a, p), at<acc_t>(g, p), gs[p], w, gw, S, x, da, dg);
    if constexpr (WriteA) ga[p] = static_cast<scalar_t>(da);
    if constexpr (WriteG) gg[p] = static_cast<scalar_t>(dg);
  }
}

// Backward of channel block [c0, c1) of an NCHW sample, gA and gG each only if wanted: element-wise
// methods gA = gs dh/da, gG = gs dh/dg; weight-based ones as weight_method_grads.
template <Method M, typename scalar_t, typename acc_t>
void method_backward_channels(int64_t P, const scalar_t* a, const scalar_t* g, const acc_t* w, const acc_t* gs,
                              int64_t c0, int64_t c1, scalar_t* ga, scalar_t* gg) {
  with_outputs(ga, gg, [&](auto write_a, auto write_g) {
    for (int64_t first = c0; first < c1; first += kRowsTogether) {
      // Per-channel values of kRowsTogether channels (weight-based): gw = sum_p gs A, S = sum_p A,
      // x of weight_method_grads (Grad-CAM++: -gw sum_p t(G, S)^2).
      const int64_t rows = std::min(kRowsTogether, c1 - first);
      acc_t gw[kRowsTogether] = {}, S[kRowsTogether] = {}, x[kRowsTogether] = {};
      if constexpr (!is_elementwise(M)) {
        const scalar_t* ar = a + first * P;
        rows_dot<false>(ar, P, static_cast<const acc_t*>(nullptr), rows, P, acc_t(1), S);
        rows_dot<true>(ar, P, gs, rows, P, acc_t(1), gw);
        if constexpr (M == Method::XGradCam) {
          for (int64_t r = 0; r < rows; ++r) x[r] = xgradcam_weight(gw[r], S[r]);
        } else {
          rows_terms<GradCamPPTerm<2>>(ar, g + first * P, P, S, rows, P, x);
          for (int64_t r = 0; r < rows; ++r) x[r] *= -gw[r];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t c = first + r, at_c = c * P;
        channel_row_grads<M, decltype(write_a)::value, decltype(write_g)::value>(
            P, a + at_c, g + at_c, gs, is_elementwise(M) ? acc_t(0) : w[c], gw[r], S[r], x[r],
            ga ? ga + at_c : ga, gg ? gg + at_c : gg);
      }
    }
  });
}

// gA and gG (each if WriteA, WriteG) of `rows` positions of a channels-last sample, given each
// channel's w, gw, S, x (weight-based methods). Apart, with restrict pointers: GCC vectorises the
// loop over channels only if it can tell the outputs from the inputs, which it checks at run time
// for a few pointers only.
template <Method M, bool WriteA, bool WriteG, typename scalar_t, typename acc_t>
void position_rows_grads(int64_t C, int64_t rows, const scalar_t* __restrict__ a, const scalar_t* __restrict__ g,
                         const acc_t* __restrict__ w, const acc_t* __restrict__ gw, const acc_t* __restrict__ S,
                         const acc_t* __restrict__ x, const acc_t* __restrict__ gs, scalar_t* __restrict__ ga,
                         scalar_t* __restrict__ gg) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      acc_t da, dg;
      if constexpr (is_elementwise(M)) {  // no per-channel values
        element_grads<M>(at<acc_t>(a, i), at<acc_t>(g, i), gs[r], acc_t(0), acc_t(0), acc_t(0), acc_t(0), da, dg);
      } else {
        element_grads<M>(at<acc_t>(a, i), at<acc_t>(g, i), gs[r], w[c], gw[c], S[c], x[c], da, dg);
      }
      if constexpr (WriteA) ga[i] = static_cast<scalar_t>(da);
      if constexpr (WriteG) gg[i] = static_cast<scalar_t>(dg);
    }
  }
}

// Backward of position block [p0, p1) of a channels-last sample (position_rows_grads).
template <Method M, typename scalar_t, typename acc_t>
void method_backward_positions(int64_t C, const scalar_t* a, const scalar_t* g, const acc_t* w, const acc_t* gw,
                               const acc_t* S, const acc_t* x, const acc_t* gs, int64_t p0, int64_t p1,
                               scalar_t* ga, scalar_t* gg) {
  with_outputs(ga, gg, [&](auto write_a, auto write_g) {
    const int64_t first = p0 * C;
    position_rows_grads<M, decltype(write_a)::value, decltype(write_g)::value>(
        C, p1 - p0, a + first, g + first, w, gw, S, x, gs + p0, ga ? ga + first : ga, gg ? gg + first : gg);
  });
}

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

CamForwardResult cam_forward(
    const at::Tensor& activations, const at::Tensor& gradients, bool relu,
    c10::string_view normalize, double eps, c10::string_view method_name, c10::string_view /*gpu_kernel*/) {
  const Normalize norm = normalize_named(normalize);
  const Method method = method_named(method_name);
  const CamShape shape = check_cam_inputs(activations, gradients);
  const at::Tensor a = to_layout(activations, shape.channels_last);
  const at::Tensor g = to_layout(gradients, shape.channels_last);
  auto spatial = activations.sizes().slice(2).vec();
  spatial.insert(spatial.begin(), shape.B);
  const auto acc_opts = a.options().dtype(acc_dtype(a.scalar_type()));
  at::Tensor y = at::empty(spatial, a.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor w = at::empty({shape.B, weight_columns(method, shape.C)}, acc_opts);
  at::Tensor s = at::empty({shape.B, shape.P}, acc_opts);
  at::Tensor ext = at::empty({shape.B, 2}, acc_opts);
  if (y.numel() == 0) return {y, w.zero_(), s, ext.zero_()};

  const int64_t blocks = blocks_per_sample(shape);
  // Block partial sums: of s over channels (NCHW); over positions (channels-last) of the one or
  // two per-channel sums a method's weights need (Grad-CAM++'s S for `stats`, then w).
  const bool two_sums = method == Method::XGradCam;
  const int64_t part_size = shape.channels_last ? (two_sums ? 2 : 1) * shape.C : shape.P;
  at::Tensor partials = at::empty({shape.B, blocks, part_size}, acc_opts);
  at::Tensor stats = at::empty({method == Method::GradCamPP && shape.channels_last ? shape.B * shape.C : 0}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_forward_cpu", [&] {
    with_method(method, [&](auto method_constant) {
      constexpr Method M = decltype(method_constant)::value;
      using acc_t = acc_type<scalar_t>;
      const int64_t C = shape.C, P = shape.P, CP = C * P;
      const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
      const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
      acc_t* w_ptr = w.mutable_data_ptr<acc_t>();
      acc_t* part_ptr = partials.mutable_data_ptr<acc_t>();
      acc_t* stats_ptr = stats.mutable_data_ptr<acc_t>();
      acc_t* s_ptr = s.mutable_data_ptr<acc_t>();
      acc_t* ext_ptr = ext.mutable_data_ptr<acc_t>();
      scalar_t* y_ptr = y.mutable_data_ptr<scalar_t>();
      auto part = [&](int64_t b, int64_t k) { return part_ptr + (b * blocks + k) * part_size; };
      const PerSample finish{[&](int64_t b) {
        finish_sample(P, s_ptr + b * P, relu, norm, static_cast<acc_t>(eps), ext_ptr + 2 * b, y_ptr + b * P);
      }};
      const PerSample combine_scores{
          [&](int64_t b) { combine_blocks(part(b, 0), blocks, P, acc_t(1), s_ptr + b * P); }};
      if (!shape.channels_last) {  // rows are channels: w by row sums, s by a (weighted) sum of rows
        run_stages(shape, blocks, PerBlock{[&](int64_t b, int64_t k, int64_t c0, int64_t c1) {
                     if constexpr (M == Method::GradCam) {
                       forward_channels(P, a_ptr + b * CP, g_ptr + b * CP, c0, c1, w_ptr + b * C, part(b, k));
                     } else {
                       method_forward_channels<M>(P, a_ptr + b * CP, g_ptr + b * CP, c0, c1, w_ptr + b * C,
                                                  part(b, k));
                     }
                   }},
                   combine_scores, finish);
        return;
      }
      // Rows are positions. Element-wise methods: s by row sums of the terms.
      if constexpr (is_elementwise(M)) {
        run_stages(shape, blocks, PerBlock{[&](int64_t b, int64_t, int64_t p0, int64_t p1) {
                     const scalar_t* ab = a_ptr + b * CP;
                     const scalar_t* gb = g_ptr + b * CP;
                     for (int64_t p = p0; p < p1; ++p) {
                       s_ptr[b * P + p] = sum_elements<acc_t>(C, [&](int64_t c) {
                         return elementwise_term<M>(at<acc_t>(ab, p * C + c), at<acc_t>(gb, p * C + c));
                       });
                     }
                   }},
                   finish);
        return;
      }
      // Weight-based methods: w from sums of rows (every block's before s), s by row dots.
      const PerBlock scores_by_rows{[&](int64_t b, int64_t, int64_t p0, int64_t p1) {
        rows_dot<true>(a_ptr + b * CP + p0 * C, C, w_ptr + b * C, p1 - p0, C, acc_t(1), s_ptr + b * P + p0);
      }};
      if constexpr (M == Method::GradCam) {
        run_stages(shape, blocks, PerBlock{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
                     sum_positions(C, g_ptr + b * CP, p0, p1, part(b, k));
                   }},
                   PerSample{[&](int64_t b) { combine_blocks(part(b, 0), blocks, C, acc_t(1) / P, w_ptr + b * C); }},
                   scores_by_rows, finish);
      } else if constexpr (M == Method::XGradCam) {  // w = sum_p G A / (sum_p A + 1e-7)
        run_stages(shape, blocks, PerBlock{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
                     const scalar_t* ab = a_ptr + b * CP + p0 * C;
                     const scalar_t* gb = g_ptr + b * CP + p0 * C;
                     sum_rows_by<2>(p1 - p0, C, [&](int64_t r, int64_t c) {  // sum_p G A, sum_p A
                       const acc_t av = at<acc_t>(ab, r * C + c);
                       return std::pair{at<acc_t>(gb, r * C + c) * av, av};
                     }, part(b, k));
                   }},
                   PerSample{[&](int64_t b) {
                     acc_t* sums = part(b, 0);
                     combine_blocks(sums, blocks, 2 * C, acc_t(1), sums);
                     for (int64_t c = 0; c < C; ++c) w_ptr[b * C + c] = xgradcam_weight(sums[c], sums[C + c]);
                   }},
                   scores_by_rows, finish);
      } else {  // Grad-CAM++: S = sum_p A first, then w = sum_p t(G, S)
        run_stages(shape, blocks, PerBlock{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
                     const scalar_t* ab = a_ptr + b * CP + p0 * C;
                     sum_rows_by(p1 - p0, C, [&](int64_t r, int64_t c) { return at<acc_t>(ab, r * C + c); },
                                 part(b, k));
                   }},
                   PerSample{[&](int64_t b) { combine_blocks(part(b, 0), blocks, C, acc_t(1), stats_ptr + b * C); }},
                   PerBlock{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
                     const scalar_t* gb = g_ptr + b * CP + p0 * C;
                     const acc_t* S = stats_ptr + b * C;
                     sum_rows_by(p1 - p0, C, [&](int64_t r, int64_t c) {
                       return gradcampp_term(at<acc_t>(gb, r * C + c), S[c]);
                     }, part(b, k));
                   }},
                   PerSample{[&](int64_t b) { combine_blocks(part(b, 0), blocks, C, acc_t(1), w_ptr + b * C); }},
                   scores_by_rows, finish);
      }
    });
  });
  return {y, w, s, ext};
}

namespace {

// Grad-CAM's backward: gA = w gs and the per-channel gw (docs/op.md), by the primitives above.
template <typename scalar_t, typename acc_t, typename ScoreGrad, typename Part>
void gradcam_backward(const CamShape& shape, int64_t blocks, const ScoreGrad& score_grad, const scalar_t* a_ptr,
                      const acc_t* w_ptr, const acc_t* gs_ptr, scalar_t* ga_ptr, scalar_t* gw_ptr, const Part& part) {
  const int64_t C = shape.C, P = shape.P, CP = C * P;
  if (!shape.channels_last) {
    run_stages(shape, blocks, score_grad, PerBlock{[&](int64_t b, int64_t, int64_t c0, int64_t c1) {
                 backward_channels(P, a_ptr + b * CP, w_ptr + b * C, gs_ptr + b * P, c0, c1,
                                   ga_ptr ? ga_ptr + b * CP : nullptr, gw_ptr ? gw_ptr + b * C : nullptr);
               }});
    return;
  }
  // Rows are positions: gA[p,c] = gs[p] w[c]; gw[c] = 1/P sum_p gs[p] A[p,c], summed by blocks.
  run_stages(shape, blocks, score_grad, PerBlock{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
               backward_positions(C, a_ptr + b * CP, w_ptr + b * C, gs_ptr + b * P, p0, p1,
                                  ga_ptr ? ga_ptr + b * CP : nullptr, gw_ptr ? part(b, k) : nullptr);
             }},
             PerSample{[&](int64_t b) {
               if (gw_ptr) combine_blocks(part(b, 0), blocks, C, acc_t(1) / P, gw_ptr + b * C);
             }});
}

// Every other method's backward (method_backward_channels / _positions). Channels-last weight-based
// methods first gather each channel's gw, S and x in `stats` (B, 3C): block sums of gs A and A,
// combined; for Grad-CAM++ block sums of t^2 too.
template <Method M, typename scalar_t, typename acc_t, typename ScoreGrad, typename Part>
void method_backward(const CamShape& shape, int64_t blocks, const ScoreGrad& score_grad, const scalar_t* a_ptr,
                     const scalar_t* g_ptr, const acc_t* w_ptr, const acc_t* gs_ptr, scalar_t* ga_ptr,
                     scalar_t* gg_ptr, const Part& part, acc_t* stats_ptr) {
  const int64_t C = shape.C, P = shape.P, CP = C * P;
  auto ga_of = [&](int64_t b) { return ga_ptr ? ga_ptr + b * CP : nullptr; };
  auto gg_of = [&](int64_t b) { return gg_ptr ? gg_ptr + b * CP : nullptr; };
  if (!shape.channels_last) {
    run_stages(shape, blocks, score_grad, PerBlock{[&](int64_t b, int64_t, int64_t c0, int64_t c1) {
                 method_backward_channels<M>(P, a_ptr + b * CP, g_ptr + b * CP, w_ptr + b * C, gs_ptr + b * P, c0,
                                             c1, ga_of(b), gg_of(b));
               }});
    return;
  }
  auto stat = [&](int64_t b, int64_t k) { return stats_ptr + (3 * b + k) * C; };  // gw, S, x
  const PerBlock write{[&](int64_t b, int64_t, int64_t p0, int64_t p1) {
    const acc_t* w = is_elementwise(M) ? nullptr : w_ptr + b * C;
    method_backward_positions<M>(C, a_ptr + b * CP, g_ptr + b * CP, w, stat(b, 0), stat(b, 1), stat(b, 2),
                                 gs_ptr + b * P, p0, p1, ga_of(b), gg_of(b));
  }};
  if constexpr (is_elementwise(M)) {
    run_stages(shape, blocks, score_grad, write);
    return;
  }
  const PerBlock channel_sums{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
    const scalar_t* ab = a_ptr + b * CP + p0 * C;
    const acc_t* gs = gs_ptr + b * P + p0;
    sum_rows_by<2>(p1 - p0, C, [&](int64_t r, int64_t c) {  // sum_p gs A, sum_p A
      const acc_t av = at<acc_t>(ab, r * C + c);
      return std::pair{gs[r] * av, av};
    }, part(b, k));
  }};
  const PerSample gather{[&](int64_t b) {
    combine_blocks(part(b, 0), blocks, 2 * C, acc_t(1), stat(b, 0));  // gw, then S
    for (int64_t c = 0; c < C && M == Method::XGradCam; ++c) {
      stat(b, 2)[c] = xgradcam_weight(stat(b, 0)[c], stat(b, 1)[c]);
    }
  }};
  if constexpr (M == Method::XGradCam) {
    run_stages(shape, blocks, score_grad, channel_sums, gather, write);
  } else {  // x = -gw sum_p t(G, S)^2
    run_stages(shape, blocks, score_grad, channel_sums, gather,
               PerBlock{[&](int64_t b, int64_t k, int64_t p0, int64_t p1) {
                 const scalar_t* gb = g_ptr + b * CP + p0 * C;
                 const acc_t* S = stat(b, 1);
                 sum_rows_by(p1 - p0, C, [&](int64_t r, int64_t c) {
                   const acc_t t = gradcampp_term(at<acc_t>(gb, r * C + c), S[c]);
                   return t * t;
                 }, part(b, 0) + k * C);  // one sum per channel: the blocks' C sums packed
               }},
               PerSample{[&](int64_t b) {
                 combine_blocks(part(b, 0), blocks, C, acc_t(1), stat(b, 2));
                 for (int64_t c = 0; c < C; ++c) stat(b, 2)[c] *= -stat(b, 0)[c];
               }},
               write);
  }
}

void run_backward(const CamShape& shape, Method method, const at::Tensor& a, const at::Tensor& g,
                  const at::Tensor& grad_map, const at::Tensor& weights, const at::Tensor& scores,
                  const at::Tensor& extremes, bool relu, Normalize norm, double eps, std::optional<at::Tensor>& ga,
                  std::optional<at::Tensor>& gg) {
  const at::Tensor gy = grad_map.contiguous();
  const at::Tensor w = weights.contiguous(), s = scores.contiguous(), ext = extremes.contiguous();
  at::Tensor gs = at::empty_like(s);
  const int64_t blocks = blocks_per_sample(shape);
  // Block partial sums over positions (channels-last): of Grad-CAM's gw, or of the other
  // weight-based methods' two per-channel sums; and those methods' per-channel gw, S, x.
  const bool weight_sums = shape.channels_last && method != Method::GradCam && !is_elementwise(method);
  const int64_t part_size = (weight_sums ? 2 : 1) * shape.C;
  const bool parts = shape.channels_last && ((method == Method::GradCam && gg) || weight_sums);
  at::Tensor partials = at::empty({parts ? shape.B * blocks * part_size : 0}, gs.options());
  at::Tensor stats = at::empty({weight_sums ? 3 * shape.B * shape.C : 0}, gs.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "cam_backward_cpu", [&] {
    with_method(method, [&](auto method_constant) {
      constexpr Method M = decltype(method_constant)::value;
      using acc_t = acc_type<scalar_t>;
      const int64_t P = shape.P;
      const scalar_t* gy_ptr = gy.const_data_ptr<scalar_t>();
      const acc_t* s_ptr = s.const_data_ptr<acc_t>();
      const acc_t* ext_ptr = ext.const_data_ptr<acc_t>();
      acc_t* gs_ptr = gs.mutable_data_ptr<acc_t>();
      const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
      const acc_t* w_ptr = w.const_data_ptr<acc_t>();
      scalar_t* ga_ptr = ga ? ga->mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gg_ptr = gg ? gg->mutable_data_ptr<scalar_t>() : nullptr;
      acc_t* part_ptr = partials.mutable_data_ptr<acc_t>();
      auto part = [&](int64_t b, int64_t k) { return part_ptr + (b * blocks + k) * part_size; };
      const PerSample score_grad{[&](int64_t b) {
        score_grad_sample(P, gy_ptr + b * P, s_ptr + b * P, ext_ptr + 2 * b, relu, norm, static_cast<acc_t>(eps),
                          gs_ptr + b * P);
      }};
      if constexpr (M == Method::GradCam) {
        gradcam_backward(shape, blocks, score_grad, a_ptr, w_ptr, gs_ptr, ga_ptr, gg_ptr, part);
      } else {
        method_backward<M>(shape, blocks, score_grad, a_ptr, g.const_data_ptr<scalar_t>(), w_ptr, gs_ptr, ga_ptr,
                           gg_ptr, part, stats.mutable_data_ptr<acc_t>());
      }
    });
  });
}

}  // namespace

CamBackwardResult cam_backward(
    const at::Tensor& grad_map, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& weights, const at::Tensor& scores, const at::Tensor& extremes, bool relu,
    c10::string_view normalize, double eps, c10::string_view method_name, c10::string_view /*gpu_kernel*/,
    std::array<bool, 2> output_mask) {
  const Normalize norm = normalize_named(normalize);
  const Method method = method_named(method_name);
  const CamShape shape = check_cam_inputs(activations, gradients);
  check_saved(shape, method, grad_map, weights, scores, extremes);
  const at::Tensor a = to_layout(activations, shape.channels_last);
  // Grad-CAM's backward does not read the gradients.
  const at::Tensor g = method == Method::GradCam ? a : to_layout(gradients, shape.channels_last);
  std::optional<at::Tensor> ga, gg;
  if (output_mask[0]) {
    ga = at::empty_like(a);
    advise_huge_pages(*ga);
  }
  if (output_mask[1] && method == Method::GradCam) gg = at::empty({shape.B, shape.C}, a.options());
  if (output_mask[1] && method != Method::GradCam) {
    gg = at::empty_like(a);
    advise_huge_pages(*gg);
  }
  if (a.numel() != 0 && (output_mask[0] || output_mask[1])) {
    run_backward(shape, method, a, g, grad_map, weights, scores, extremes, relu, norm, eps, ga, gg);
  }
  return {ga, gg};
}

}  // namespace BATCHCAM_CPU_CAPABILITY
}  // namespace batchcam
