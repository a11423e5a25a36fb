// ROAD's linear imputation on CPU (batchcam::impute_linear, python/batchcam/metrics.py), compiled
// once per CPU capability as fused_cam_cpu_kernels.h is. Every removed pixel i of an image channel
// becomes the weighted mean of its neighbours j (weights w_ij: 1/6 edge, 1/12 corner; removed
// neighbours are unknowns too), the solution v of
//   deg_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j      (deg_i = sum_j w_ij in the image)
// over the removed pixels: pytorch-grad-cam's NoisyLinearImputer system, symmetric positive
// definite. Each (image, channel) is one system, solved by conjugate gradients in float64 on the
// zero-padded grid within the bounding box of its removed pixels; systems run in parallel, each
// until its own residual is below tol times its right-hand side's.
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

// The vectors of one system's solve, allocated once per thread.
struct Workspace {
  std::vector<double> known, unknown, diagonal, x, r, p, ap;

  explicit Workspace(int64_t size)
      : known(size), unknown(size), diagonal(size), x(size), r(size), p(size), ap(size) {}
};

// Solves one system: `image` the channel (H, W), `removed` its mask, `degree` deg_i on the padded
// grid; writes the channel with its removed pixels imputed into `out`.
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
  std::copy(image, image + H * W, out);
  if (grid.y0 > grid.y1) return;  // nothing removed

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

}  // namespace

// images (N, C, H, W) float32 or float64, removed (N, H, W) bool: checked by the CPU dispatch.
at::Tensor impute_linear(const at::Tensor& images, const at::Tensor& removed, double tol, int64_t max_iterations) {
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
    // Tasks visit the systems in a scattered order (task * stride mod N C, the stride coprime to
    // N C): each thread's contiguous share of tasks then mixes large holes and small ones, which
    // callers tend to group (ROAD: percentile by percentile).
    const int64_t systems = N * C;
    int64_t stride = std::max<int64_t>(1, systems * 5 / 8);
    while (std::gcd(stride, systems) != 1) ++stride;
    at::parallel_for(0, systems, 1, [&](int64_t begin, int64_t end) {
      Workspace ws((H + 2) * width);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t system = task * stride % systems;
        solve_channel(in + system * H * W, gone + (system / C) * H * W, H, W, degree, tol, max_iterations, ws,
                      filled + system * H * W);
      }
    });
  });
  return out;
}

}  // namespace BATCHCAM_CPU_CAPABILITY
}  // namespace batchcam
