// The CUDA implementation of cam_forward and cam_backward: the C++/CUDA kernels (checks, layout,
// allocation, device guard, stream and launch check around the launchers of fused_cam_kernels.cu,
// which know nothing of torch), or the Triton ones through the Python-registered ops
// triton_cam_forward / triton_cam_backward when the call names gpu_kernel "triton".
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>

#include "../fused_cam.h"
#include "fused_cam_kernels.h"

namespace batchcam {
namespace {

cuda::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cuda::DType::Float16;
    case at::kBFloat16: return cuda::DType::BFloat16;
    case at::kFloat: return cuda::DType::Float32;
    case at::kDouble: return cuda::DType::Float64;
    default: TORCH_CHECK(false, "fused_cam: unsupported dtype ", t);
  }
}

cuda::CamOptions kernel_options(bool relu, c10::string_view normalize, double eps, c10::string_view method) {
  return {relu, normalize_named(normalize), eps, method_named(method)};
}

cuda::CamProblem kernel_problem(const CamShape& shape, const at::Tensor& a) {
  TORCH_CHECK(shape.C * shape.P < (int64_t(1) << 31), "fused_cam (cuda): one sample has ",
              shape.C * shape.P, " elements; the CUDA kernel supports fewer than 2^31 per sample");
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.device().index()));
  return cuda::make_problem(shape.B, shape.C, shape.P, shape.channels_last, sms);
}

#define BATCHCAM_CHECK_LAUNCH(call)                                                     \
  do {                                                                                  \
    const cudaError_t err = (call);                                                     \
    TORCH_CHECK(err == cudaSuccess, "fused_cam (cuda): kernel launch failed: ",         \
                cudaGetErrorString(err));                                               \
  } while (0)

CamForwardResult cuda_cam_forward(
    const at::Tensor& activations, const at::Tensor& gradients, bool relu,
    c10::string_view normalize, double eps, c10::string_view method) {
  const cuda::CamOptions options = kernel_options(relu, normalize, eps, method);
  const CamShape shape = check_cam_inputs(activations, gradients);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor a = to_layout(activations, shape.channels_last);
  const at::Tensor g = to_layout(gradients, shape.channels_last);
  auto map_shape = activations.sizes().slice(2).vec();
  map_shape.insert(map_shape.begin(), shape.B);
  const auto acc = a.options().dtype(a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor y = at::empty(map_shape, a.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor w = at::empty({shape.B, weight_columns(options.method, shape.C)}, acc);
  at::Tensor s = at::empty({shape.B, shape.P}, acc);
  at::Tensor ext = at::empty({shape.B, 2}, acc);
  // No channels (C = 0): the scores are empty sums, so the map is zeros, as on CPU.
  if (a.numel() == 0) return {y.zero_(), w.zero_(), s.zero_(), ext.zero_()};
  const cuda::CamProblem problem = kernel_problem(shape, a);
  at::Tensor s_part = at::empty({shape.B, problem.splits, shape.P}, acc);
  BATCHCAM_CHECK_LAUNCH(cuda::launch_cam_forward(
      kernel_dtype(a.scalar_type()), a.const_data_ptr(), g.const_data_ptr(), y.mutable_data_ptr(),
      w.mutable_data_ptr(), s.mutable_data_ptr(), ext.mutable_data_ptr(), s_part.mutable_data_ptr(),
      problem, options, c10::cuda::getCurrentCUDAStream()));
  return {y, w, s, ext};
}

CamBackwardResult cuda_cam_backward(
    const at::Tensor& grad_map, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& weights, const at::Tensor& scores, const at::Tensor& extremes, bool relu,
    c10::string_view normalize, double eps, c10::string_view method, std::array<bool, 2> output_mask) {
  const cuda::CamOptions options = kernel_options(relu, normalize, eps, method);
  const bool gradcam = options.method == Method::GradCam;
  const CamShape shape = check_cam_inputs(activations, gradients);
  check_saved(shape, options.method, grad_map, weights, scores, extremes);
  const c10::cuda::CUDAGuard guard(activations.device());
  const at::Tensor a = to_layout(activations, shape.channels_last);
  // Grad-CAM's backward does not read the gradients.
  const at::Tensor g = gradcam ? a : to_layout(gradients, shape.channels_last);
  std::optional<at::Tensor> ga, gg;
  if (output_mask[0]) ga = at::empty_like(a);
  if (output_mask[1]) gg = gradcam ? at::empty({shape.B, shape.C}, a.options()) : at::empty_like(a);
  if (a.numel() == 0 || !(output_mask[0] || output_mask[1])) return {ga, gg};
  const cuda::CamProblem problem = kernel_problem(shape, a);
  const at::Tensor gy = grad_map.contiguous(), w = weights.contiguous();
  const at::Tensor s = scores.contiguous(), ext = extremes.contiguous();
  at::Tensor gs = at::empty_like(s);
  // Each channel's gw, S and x (the weight-based methods but Grad-CAM).
  const bool stats_needed = !gradcam && !is_elementwise(options.method);
  at::Tensor stats = at::empty({stats_needed ? shape.B * 3 * shape.C : 0}, s.options());
  BATCHCAM_CHECK_LAUNCH(cuda::launch_cam_backward(
      kernel_dtype(a.scalar_type()), gy.const_data_ptr(), a.const_data_ptr(), g.const_data_ptr(),
      w.const_data_ptr(), s.const_data_ptr(), ext.const_data_ptr(), gs.mutable_data_ptr(),
      stats.mutable_data_ptr(), ga ? ga->mutable_data_ptr() : nullptr, gg ? gg->mutable_data_ptr() : nullptr,
      problem, options, c10::cuda::getCurrentCUDAStream()));
  return {ga, gg};
}

void check_gpu_kernel(c10::string_view gpu_kernel) {
  TORCH_CHECK(gpu_kernel == "cuda" || gpu_kernel == "triton",
              "fused_cam: gpu_kernel must be 'cuda' or 'triton', got '", gpu_kernel, "'");
}

CamForwardResult cam_forward_cuda(const at::Tensor& activations, const at::Tensor& gradients, bool relu,
                                  c10::string_view normalize, double eps, c10::string_view method,
                                  c10::string_view gpu_kernel) {
  check_gpu_kernel(gpu_kernel);
  if (gpu_kernel == "cuda") return cuda_cam_forward(activations, gradients, relu, normalize, eps, method);
  static const auto triton = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("batchcam::triton_cam_forward", "")
                                 .typed<CamForwardResult(const at::Tensor&, const at::Tensor&, bool,
                                                         c10::string_view, double, c10::string_view)>();
  return triton.call(activations, gradients, relu, normalize, eps, method);
}

CamBackwardResult cam_backward_cuda(const at::Tensor& grad_map, const at::Tensor& activations,
                                    const at::Tensor& gradients, const at::Tensor& weights, const at::Tensor& scores,
                                    const at::Tensor& extremes, bool relu, c10::string_view normalize, double eps,
                                    c10::string_view method, c10::string_view gpu_kernel,
                                    std::array<bool, 2> output_mask) {
  check_gpu_kernel(gpu_kernel);
  if (gpu_kernel == "cuda") {
    return cuda_cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps,
                             method, output_mask);
  }
  static const auto triton =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("batchcam::triton_cam_backward", "")
          .typed<CamBackwardResult(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, bool, c10::string_view, double,
                                   c10::string_view, std::array<bool, 2>)>();
  return triton.call(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method,
                     output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(batchcam, CUDA, m) {
  m.impl("cam_forward", &cam_forward_cuda);
  m.impl("cam_backward", &cam_backward_cuda);
}

}  // namespace batchcam
