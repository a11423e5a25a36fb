// The CPU dispatch of batchcam::cam_forward, batchcam::cam_backward and batchcam::impute_linear:
// the kernels of the best capability this CPU has, chosen once (see cpu_capability in
// fused_cam_cpu.h).
#include "fused_cam_cpu.h"

#include <cstdlib>

namespace batchcam {
namespace {

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool choose_avx2() {
  const char* forced = std::getenv("BATCHCAM_CPU_CAPABILITY");
  const std::string name = forced ? forced : "";
  TORCH_CHECK(name.empty() || name == "baseline" || name == "avx2",
              "BATCHCAM_CPU_CAPABILITY must be 'baseline' or 'avx2', got '", name, "'");
  TORCH_CHECK(name != "avx2" || cpu_has_avx2(),
              "BATCHCAM_CPU_CAPABILITY=avx2, but this CPU lacks AVX2, FMA or F16C");
  return name.empty() ? cpu_has_avx2() : name == "avx2";
}

bool use_avx2() {
  static const bool chosen = choose_avx2();
  return chosen;
}

CamForwardResult cam_forward_cpu(const at::Tensor& activations, const at::Tensor& gradients, bool relu,
                                 c10::string_view normalize, double eps, c10::string_view method,
                                 c10::string_view gpu_kernel) {
  auto kernel = use_avx2() ? avx2::cam_forward : baseline::cam_forward;
  return kernel(activations, gradients, relu, normalize, eps, method, gpu_kernel);
}

CamBackwardResult cam_backward_cpu(const at::Tensor& grad_map, const at::Tensor& activations,
                                   const at::Tensor& gradients, const at::Tensor& weights, const at::Tensor& scores,
                                   const at::Tensor& extremes, bool relu, c10::string_view normalize, double eps,
                                   c10::string_view method, c10::string_view gpu_kernel,
                                   std::array<bool, 2> output_mask) {
  auto kernel = use_avx2() ? avx2::cam_backward : baseline::cam_backward;
  return kernel(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method, gpu_kernel,
                output_mask);
}

at::Tensor impute_linear_cpu(const at::Tensor& images, const at::Tensor& removed, double tol,
                             int64_t max_iterations, c10::string_view solver) {
  TORCH_CHECK(images.dim() == 4, "impute_linear: images must be (N, C, H, W), got ", images.sizes());
  TORCH_CHECK(removed.dim() == 3 && removed.size(0) == images.size(0) && removed.size(1) == images.size(2) &&
                  removed.size(2) == images.size(3),
              "impute_linear: removed must be (N, H, W) = (", images.size(0), ", ", images.size(2), ", ",
              images.size(3), "), got ", removed.sizes());
  TORCH_CHECK(removed.scalar_type() == at::kBool, "impute_linear: removed must be bool, got ", removed.scalar_type());
  TORCH_CHECK(images.scalar_type() == at::kFloat || images.scalar_type() == at::kDouble,
              "impute_linear: images must be float32 or float64, got ", images.scalar_type());
  TORCH_CHECK(tol >= 0 && max_iterations >= 0, "impute_linear: tol and max_iterations must be >= 0, got ", tol,
              " and ", max_iterations);
  TORCH_CHECK(solver == "auto" || solver == "direct" || solver == "cg",
              "impute_linear: solver must be one of auto, direct, cg; got ", solver);
  const ImputeSolver which = solver == "direct" ? ImputeSolver::kDirect
                             : solver == "cg"   ? ImputeSolver::kConjugateGradients
                                                : ImputeSolver::kAuto;
  auto kernel = use_avx2() ? avx2::impute_linear : baseline::impute_linear;
  return kernel(images, removed, tol, max_iterations, which);
}

}  // namespace

std::string cpu_capability() {
  return use_avx2() ? "avx2" : "baseline";
}

TORCH_LIBRARY_IMPL(batchcam, CPU, m) {
  m.impl("cam_forward", &cam_forward_cpu);
  m.impl("cam_backward", &cam_backward_cpu);
  m.impl("impute_linear", &impute_linear_cpu);
}

}  // namespace batchcam
