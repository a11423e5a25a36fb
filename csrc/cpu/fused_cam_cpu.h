// The CPU kernels' entry points, one set per CPU capability (see fused_cam_cpu_kernels.h and
// impute_cpu_kernels.h), and
// every header they use: a capability's translation unit includes this file before it turns on
// its instruction set, so that code from headers is compiled for the baseline in every unit.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../fused_cam.h"

namespace batchcam {

// impute_linear's solver (impute_cpu_kernels.h): per image the cheaper, or always one of the two.
enum class ImputeSolver { kAuto, kDirect, kConjugateGradients };

#define BATCHCAM_DECLARE_CPU_KERNELS(capability)                                                          \
  namespace capability {                                                                                 \
  CamForwardResult cam_forward(const at::Tensor& activations, const at::Tensor& gradients, bool relu,       \
                               c10::string_view normalize, double eps, c10::string_view method,            \
                               c10::string_view gpu_kernel);                                               \
  CamBackwardResult cam_backward(const at::Tensor& grad_map, const at::Tensor& activations,                \
                                 const at::Tensor& gradients, const at::Tensor& weights,                   \
                                 const at::Tensor& scores, const at::Tensor& extremes, bool relu,          \
                                 c10::string_view normalize, double eps, c10::string_view method,          \
                                 c10::string_view gpu_kernel, std::array<bool, 2> output_mask);            \
  at::Tensor impute_linear(const at::Tensor& images, const at::Tensor& removed, double tol,                  \
                           int64_t max_iterations, ImputeSolver solver);                                     \
  }
BATCHCAM_DECLARE_CPU_KERNELS(baseline)
BATCHCAM_DECLARE_CPU_KERNELS(avx2)
#undef BATCHCAM_DECLARE_CPU_KERNELS

// The capability whose kernels the CPU dispatch runs: "avx2" where the CPU has AVX2, FMA and
// F16C, else "baseline"; $BATCHCAM_CPU_CAPABILITY ("baseline" or "avx2") overrides it.
std::string cpu_capability();

}  // namespace batchcam
