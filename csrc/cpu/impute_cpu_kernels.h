// ROAD's linear imputation on CPU (batchcam::impute_linear, python/batchcam/metrics.py), compiled
// once per CPU capability as fused_cam_cpu_kernels.h is. Every removed pixel i of an image channel
// becomes the weighted mean of its neighbours j (weights w_ij: 1/6 edge, 1/12 corner; removed
// neighbours are unknowns too), the solution v of
//   deg_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j      (deg_i = sum_j w_ij in the image)
// over the removed pixels: pytorch-grad-cam's NoisyLinearImputer system, symmetric positive
// definite, solved in float64. An image's channels share its mask, so its matrix. Numbered line
// by line (along the rows or the columns, whichever is narrower), the unknowns give a band matrix.
// Two solvers; "auto" takes, per image, the one its band makes cheaper (solve_directly):
// - "direct" (a direct solve, as scipy's spsolve in pytorch-grad-cam): a band Cholesky factorisation once per
//   image, then two triangular solves for up to kGroup channels at a time;
// - "cg": conjugate gradients, one channel at a time on the zero-padded grid within the bounding
//   box of its removed pixels, until its residual is below tol times its right-hand side's.
// Images run in parallel.
#include "fused_cam_cpu.h"

namespace batchcam {
namespace BATCHCAM_CPU_CAPABILITY {
namespace {

constexpr int64_t kImputeLanes = 8;  // interleaved partial sums of a dot product (vectorised, fixed order)

// A system's grid, padded by one zero pixel on every side: pixel (y, x) is at (y + 1) * width + x + 1.
struct Grid {
  int64_t width;
  int64_t y0, y1, x0, x1;  // the bounding box of the removed pixels, in padded coordinates, inclusive

  // fn(first, n) over each box row's n elements from index `first`.
  template <typename Fn>
  void rows(const Fn& fn) const {
    for (int64_t y = y0; y <= y1; ++y) fn(y * width + x0, x1 - x0 + 1);
  }
};

// sum_j w_ij v_j over the 8 neighbours of the pixel at index k.
inline double neighbour_sum(const double* v, int64_t k, int64_t width) {
  const double edges = v[k - width] + v[k + width] + v[k - 1] + v[k + 1];
  const double corners = v[k - width - 1] + v[k - width + 1] + v[k + width - 1] + v[k + width + 1];
  return edges * (1.0 / 6) + corners * (1.0 / 12);
}

// sum_k f(k) over the box, in kImputeLanes partial sums per row, added row by row.
template <typename F>
double box_sum(const Grid& grid, const F& f) {
  double total = 0;
  grid.rows([&](int64_t first, int64_t n) {
    double lanes[kImputeLanes] = {};
    int64_t i = 0;
    for (; i + kImputeLanes <= n; i += kImputeLanes) {
      for (int64_t l = 0; l < kImputeLanes; ++l) lanes[l] += f(first + i + l);
    }
    for (int64_t l = 0; i < n; ++i, ++l) lanes[l] += f(first + i);
    for (int64_t l = 0; l < kImputeLanes; ++l) total += lanes[l];
  });
  return total;
}

// The vectors of one thread's solves: CG's on the padded grid, the direct solver's per unknown.
struct Workspace {
  std::vector<double> known, unknown, diagonal, x, r, p, ap;  // CG
  std::vector<int32_t> by_rows, by_columns, pixel;            // numberings, and each unknown's pixel
  std::vector<double> ab, b;                                  // the band factor; kGroup right-hand sides

  Workspace(int64_t H, int64_t W)
      : known((H + 2) * (W + 2)), unknown(known.size()), diagonal(known.size()), x(known.size()),
        r(known.size()), p(known.size()), ap(known.size()), by_rows(H * W), by_columns(H * W), pixel(H * W) {}
};

// CG: solves one channel's system: `image` the channel (H, W), `removed` its mask (some pixel
// removed), `degree` deg_i on the padded grid; writes the removed pixels into `out`.
template <typename scalar_t>
void solve_channel(const scalar_t* image, const bool* removed, int64_t H, int64_t W, const std::vector<double>& degree,
                   double tol, int64_t max_iterations, Workspace& ws, scalar_t* out) {
  const int64_t width = W + 2;
  Grid grid{width, H, 0, W, 0};  // an empty box, grown below
  for (auto* v : {&ws.known, &ws.unknown, &ws.x, &ws.r, &ws.p, &ws.ap}) std::fill(v->begin(), v->end(), 0.0);
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      const int64_t k = (y + 1) * width + x + 1;
      const bool gone = removed[y * W + x];
      ws.known[k] = gone ? 0.0 : static_cast<double>(image[y * W + x]);
      ws.unknown[k] = gone;
      if (gone) {
        grid.y0 = std::min(grid.y0, y + 1), grid.y1 = std::max(grid.y1, y + 1);
        grid.x0 = std::min(grid.x0, x + 1), grid.x1 = std::max(grid.x1, x + 1);
      }
    }
  }

  const double* u = ws.unknown.data();
  double *d = ws.diagonal.data(), *x = ws.x.data(), *r = ws.r.data(), *p = ws.p.data(), *ap = ws.ap.data();
  // r = p = the right-hand side sum_{j kept} w_ij x_j at the removed pixels; x = 0.
  grid.rows([&](int64_t first, int64_t n) {
    for (int64_t k = first; k < first + n; ++k) {
      d[k] = u[k] * degree[k];
      r[k] = u[k] * neighbour_sum(ws.known.data(), k, width);
      p[k] = r[k];
    }
  });
  double rr = box_sum(grid, [&](int64_t k) { return r[k] * r[k]; });
  const double target = tol * tol * rr;
  // p is zero off the removed pixels, so the operator needs no mask on its input.
  for (int64_t it = 0; it < max_iterations && rr > target; ++it) {
    const double pap = box_sum(grid, [&](int64_t k) {  // ap = A p, and p . ap
      ap[k] = d[k] * p[k] - u[k] * neighbour_sum(p, k, width);
      return p[k] * ap[k];
    });
    const double alpha = rr / pap;
    const double rr_next = box_sum(grid, [&](int64_t k) {
      x[k] += alpha * p[k];
      r[k] -= alpha * ap[k];
      return r[k] * r[k];
    });
    const double beta = rr_next / rr;
    grid.rows([&](int64_t first, int64_t n) {
      for (int64_t k = first; k < first + n; ++k) p[k] = r[k] + beta * p[k];
    });
    rr = rr_next;
  }
  for (int64_t y = grid.y0; y <= grid.y1; ++y) {
    for (int64_t xi = grid.x0; xi <= grid.x1; ++xi) {
      const int64_t k = y * width + xi, pixel = (y - 1) * W + xi - 1;
      if (removed[pixel]) out[pixel] = static_cast<scalar_t>(x[k]);
    }
  }
}

// The unknowns of one image in the order of a band matrix: number[p] of pixel p (row-major), -1
// where kept, and the band, the largest difference between the numbers of two neighbours.
struct Numbering {
  const std::vector<int32_t>* number;
  int64_t n, band;
};

// Numbers the removed pixels line by line (`lines` lines of `length` pixels, pixel = line *
// line_step + position * step) into `number`; returns the band: the largest difference between a
// pixel's number and that of the first removed of its earlier neighbours (the line before, from
// position - 1 to + 1, then position - 1 of its own line).
int64_t number_along(const bool* removed, int64_t lines, int64_t length, int64_t line_step, int64_t step,
                     std::vector<int32_t>& number) {
  int32_t next = 0;
  int64_t band = 0;
  for (int64_t a = 0; a < lines; ++a) {
    for (int64_t b = 0; b < length; ++b) {
      const int64_t p = a * line_step + b * step;
      if (!removed[p]) {
        number[p] = -1;
        continue;
      }
      const int64_t earlier[4][2] = {{a - 1, b - 1}, {a - 1, b}, {a - 1, b + 1}, {a, b - 1}};
      for (const auto& [ea, eb] : earlier) {
        if (ea >= 0 && eb >= 0 && eb < length && removed[ea * line_step + eb * step]) {
          band = std::max<int64_t>(band, next - number[ea * line_step + eb * step]);
          break;
        }
      }
      number[p] = next++;
    }
  }
  return band;
}

// Numbers an image's removed pixels along its rows or its columns, whichever gives the narrower band.
Numbering number_unknowns(const bool* removed, int64_t H, int64_t W, Workspace& ws) {
  const int64_t rows_band = number_along(removed, H, W, W, 1, ws.by_rows);
  const int64_t columns_band = number_along(removed, W, H, 1, W, ws.by_columns);
  const auto& number = rows_band <= columns_band ? ws.by_rows : ws.by_columns;
  int64_t n = 0;
  for (int64_t p = 0; p < H * W; ++p) {
    if (number[p] >= 0) ws.pixel[number[p]] = static_cast<int32_t>(p), ++n;
  }
  return {&number, n, std::min(rows_band, columns_band)};
}

// a * b + c, fused into one rounding where the CPU capability has FMA (the build turns off GCC's
// own contraction: kernels fuse only where they say so).
[[gnu::always_inline]] inline double multiply_add(double a, double b, double c) {
#if BATCHCAM_CPU_AVX2
  return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}

// Columns factored together by factor_band, whose later columns then take their outer products in
// one pass: one load and store of a later column per kPanel multiply-adds, not per one.
constexpr int64_t kPanel = 4;

// L L^T = A in place, A in LAPACK's lower band storage with kPanel - 1 rows of zero padding,
// ab[j * (band + kPanel) + d] = A[j + d][j] (d <= band), n a multiple of kPanel. Column by column
// of a panel L_jj = sqrt(A_jj) and L_ij = A_ij / L_jj below it; every later column k within the
// band then loses the panel's outer products, A_ik -= sum_{j in panel} L_ij L_kj.
void factor_band(double* ab, int64_t n, int64_t band) {
  const int64_t ld = band + kPanel;
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    for (int64_t i = 0; i < kPanel; ++i) {  // the panel itself
      double* __restrict column = ab + (j0 + i) * ld;
      column[0] = std::sqrt(column[0]);
      const double inverse = 1.0 / column[0];
      const int64_t below = std::min(band, n - 1 - (j0 + i));
      for (int64_t d = 1; d <= below; ++d) column[d] *= inverse;
      for (int64_t c = 1; c < kPanel - i && c <= below; ++c) {
        double* __restrict later = ab + (j0 + i + c) * ld;
        for (int64_t d = 0; d <= below - c; ++d) later[d] = multiply_add(-column[c], column[c + d], later[d]);
      }
    }
    // Column k's rows reach those of the panel's last column, j0 + kPanel - 1 + band; its first
    // columns are read past their band there, in the zero padding.
    const int64_t last = std::min(n - 1, j0 + kPanel - 1 + band);
    for (int64_t k = j0 + kPanel; k <= last; ++k) {
      const double* panel[kPanel];
      double l[kPanel];
      bool zero = true;
      for (int64_t i = 0; i < kPanel; ++i) {
        panel[i] = ab + (j0 + i) * ld + (k - j0 - i);
        l[i] = panel[i][0];
        zero = zero && l[i] == 0;
      }
      if (zero) continue;
      double* __restrict later = ab + k * ld;
      for (int64_t d = 0; d <= last - k; ++d) {
        double a = later[d];
        for (int64_t i = 0; i < kPanel; ++i) a = multiply_add(-l[i], panel[i][d], a);
        later[d] = a;
      }
    }
  }
}

// Channels solved together by solve_band (one pass over the factor for all of them).
constexpr int64_t kGroup = 4;

// L L^T v = b in place for G right-hand sides, b[g * n + j] (unknown j of channel g), L from
// factor_band: L y = b forwards, then L^T v = y backwards (dot products in kImputeLanes
// interleaved partial sums, a fixed order).
template <int64_t G>
void solve_band(const double* ab, int64_t n, int64_t band, double* __restrict b) {
  const int64_t ld = band + kPanel;
  for (int64_t j = 0; j < n; ++j) {
    const double* column = ab + j * ld;
    double y[G];
    for (int64_t g = 0; g < G; ++g) y[g] = b[g * n + j] /= column[0];
    const int64_t below = std::min(band, n - 1 - j);
    for (int64_t d = 1; d <= below; ++d) {
      for (int64_t g = 0; g < G; ++g) b[g * n + j + d] = multiply_add(-column[d], y[g], b[g * n + j + d]);
    }
  }
  for (int64_t j = n - 1; j >= 0; --j) {
    const double* column = ab + j * ld;
    const int64_t below = std::min(band, n - 1 - j);
    for (int64_t g = 0; g < G; ++g) {
      const double* v = b + g * n + j;
      double lanes[kImputeLanes] = {};
      int64_t d = 1;
      for (; d + kImputeLanes <= below + 1; d += kImputeLanes) {
        for (int64_t l = 0; l < kImputeLanes; ++l) lanes[l] = multiply_add(column[d + l], v[d + l], lanes[l]);
      }
      for (int64_t l = 0; d <= below; ++d, ++l) lanes[l] = multiply_add(column[d], v[d], lanes[l]);
      double sum = 0;
      for (int64_t l = 0; l < kImputeLanes; ++l) sum += lanes[l];
      b[g * n + j] = (b[g * n + j] - sum) / column[0];
    }
  }
}

void solve_band(const double* ab, int64_t n, int64_t band, int64_t channels, double* b) {
  switch (channels) {
    case 1: return solve_band<1>(ab, n, band, b);
    case 2: return solve_band<2>(ab, n, band, b);
    case 3: return solve_band<3>(ab, n, band, b);
    default: return solve_band<kGroup>(ab, n, band, b);
  }
}

// The solver "auto" picks per image. Directly, the factor's n band^2 / 2 multiply-adds are shared by
// the channels; CG's work, n times an iteration count that grows as the band, is per channel: the
// direct solve is the cheaper up to a band of about kDirectBandPerChannel per channel, and its
// factor must fit in kDirectDoubles (64 MB per thread). On ROAD's masks from 28x28 to 384x384, grey
// and RGB, "auto" is within 3% of the faster solver, or faster than both where an image's
// percentiles fall on both sides (benchmarks/tools/impute_solvers.py).
constexpr int64_t kDirectBandPerChannel = 96;
constexpr int64_t kDirectDoubles = int64_t(1) << 23;

bool solve_directly(ImputeSolver solver, const Numbering& order, int64_t C) {
  if (solver != ImputeSolver::kAuto) return solver == ImputeSolver::kDirect;
  return order.band <= kDirectBandPerChannel * std::min(C, kGroup) && order.n * (order.band + kPanel) <= kDirectDoubles;
}

// Direct: imputes the C channels of one (H, W) image, numbered by `order` (some pixel kept): the
// matrix factored once, then up to kGroup channels per pair of triangular solves; writes the removed
// pixels into `out`. `degree` deg_i on the padded grid.
template <typename scalar_t>
void solve_image(const scalar_t* image, const bool* removed, int64_t C, int64_t H, int64_t W,
                 const std::vector<double>& degree, const Numbering& order, Workspace& ws, scalar_t* out) {
  const int64_t width = W + 2, n = order.n, band = order.band;
  const std::vector<int32_t>& number = *order.number;
  const auto padded_index = [&](int64_t p) { return (p / W + 1) * width + p % W + 1; };
  // Padded to whole panels with unknowns of their own (A_jj = 1, b_j = 0): L_jj = 1, nothing else.
  const int64_t padded = (n + kPanel - 1) / kPanel * kPanel, ld = band + kPanel;
  ws.ab.assign(padded * ld, 0.0);
  for (int64_t j = n; j < padded; ++j) ws.ab[j * ld] = 1;
  // A: deg_j on the diagonal, -w_jq below it for each removed neighbour q numbered after j.
  constexpr struct { int64_t dy, dx; double w; } kNeighbours[] = {
      {-1, -1, 1.0 / 12}, {-1, 0, 1.0 / 6}, {-1, 1, 1.0 / 12}, {0, -1, 1.0 / 6},
      {0, 1, 1.0 / 6},    {1, -1, 1.0 / 12}, {1, 0, 1.0 / 6},  {1, 1, 1.0 / 12}};
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = ws.pixel[j], y = p / W, x = p % W;
    ws.ab[j * ld] = degree[padded_index(p)];
    for (const auto& [dy, dx, w] : kNeighbours) {
      if (y + dy < 0 || y + dy >= H || x + dx < 0 || x + dx >= W) continue;
      const int32_t q = number[(y + dy) * W + x + dx];
      if (q > j) ws.ab[j * ld + q - j] = -w;
    }
  }
  factor_band(ws.ab.data(), padded, band);
  ws.b.resize(n * kGroup);
  for (int64_t c0 = 0; c0 < C; c0 += kGroup) {
    const int64_t channels = std::min(kGroup, C - c0);
    // b: sum_{q kept} w_jq x_q, from the channel on the padded grid with its removed pixels zero.
    for (int64_t g = 0; g < channels; ++g) {
      const scalar_t* channel = image + (c0 + g) * H * W;
      for (int64_t p = 0; p < H * W; ++p) ws.known[padded_index(p)] = removed[p] ? 0.0 : double(channel[p]);
      for (int64_t j = 0; j < n; ++j) ws.b[g * n + j] = neighbour_sum(ws.known.data(), padded_index(ws.pixel[j]), width);
    }
    solve_band(ws.ab.data(), n, band, channels, ws.b.data());
    for (int64_t g = 0; g < channels; ++g) {
      for (int64_t j = 0; j < n; ++j) out[(c0 + g) * H * W + ws.pixel[j]] = static_cast<scalar_t>(ws.b[g * n + j]);
    }
  }
}

}  // namespace

// images (N, C, H, W) float32 or float64, removed (N, H, W) bool: checked by the CPU dispatch.
at::Tensor impute_linear(const at::Tensor& images, const at::Tensor& removed, double tol, int64_t max_iterations,
                         ImputeSolver solver) {
  const at::Tensor x = images.contiguous(), mask = removed.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), width = W + 2;
  if (x.numel() == 0) return out;
  // deg_i: the weights of the neighbours inside the image (1 inside, less on the border).
  std::vector<double> inside((H + 2) * width, 0.0), degree((H + 2) * width, 0.0);
  for (int64_t y = 1; y <= H; ++y) std::fill_n(inside.begin() + y * width + 1, W, 1.0);
  for (int64_t y = 1; y <= H; ++y) {
    for (int64_t xi = 1; xi <= W; ++xi) degree[y * width + xi] = neighbour_sum(inside.data(), y * width + xi, width);
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "impute_linear_cpu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const bool* gone = mask.const_data_ptr<bool>();
    scalar_t* filled = out.mutable_data_ptr<scalar_t>();
    // Tasks visit the images in a scattered order (task * stride mod N, the stride coprime to N):
    // each thread's contiguous share of tasks then mixes large holes and small ones, which callers
    // tend to group (ROAD: percentile by percentile).
    int64_t stride = std::max<int64_t>(1, N * 5 / 8);
    while (std::gcd(stride, N) != 1) ++stride;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Workspace ws(H, W);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task * stride % N;
        const scalar_t* image = in + i * C * H * W;
        const bool* image_removed = gone + i * H * W;
        scalar_t* image_out = filled + i * C * H * W;
        const Numbering order = number_unknowns(image_removed, H, W, ws);
        std::copy(image, image + C * H * W, image_out);
        if (order.n == 0) continue;
        if (order.n == H * W) {  // no known pixel: the matrix is singular (scipy's too); zeros
          std::fill(image_out, image_out + C * H * W, scalar_t(0));
        } else if (solve_directly(solver, order, C)) {
          solve_image(image, image_removed, C, H, W, degree, order, ws, image_out);
        } else {
          for (int64_t c = 0; c < C; ++c) {
            solve_channel(image + c * H * W, image_removed, H, W, degree, tol, max_iterations, ws, image_out + c * H * W);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace BATCHCAM_CPU_CAPABILITY
}  // namespace batchcam
