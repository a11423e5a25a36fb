// Autograd of batchcam::cam_forward, for every device: the forward saves the activations (and the
// gradients, for every method but Grad-CAM) and the small intermediates (weights, scores,
// extremes), the backward calls batchcam::cam_backward for the inputs that need a gradient and,
// for Grad-CAM, broadcasts the gradient of the gradients, constant over the spatial positions,
// from its (B, C) values. Written in C++ so that a training step pays no
// Python overhead for it. Differentiating the backward (double backward) raises.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>

#include "cam_definitions.h"

namespace batchcam {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> call_cam_backward(
    const at::Tensor& grad_map, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& weights, const at::Tensor& scores, const at::Tensor& extremes, bool relu,
    c10::string_view normalize, double eps, c10::string_view method, c10::string_view gpu_kernel,
    std::array<bool, 2> output_mask);

bool is_gradcam(c10::string_view method) {
  return method == "gradcam";
}

// The backward as an op of its own in the graph only so that differentiating it fails loudly.
// Returns the requested gradients only: gA if grad_a, then gw if grad_g.
class CamBackward : public torch::autograd::Function<CamBackward> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad_map, const at::Tensor& activations,
                               const at::Tensor& gradients, const at::Tensor& weights,
                               const at::Tensor& scores, const at::Tensor& extremes, bool relu,
                               const std::string& normalize, double eps, const std::string& method,
                               const std::string& gpu_kernel, bool grad_a, bool grad_g) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [ga, gw] = call_cam_backward(grad_map, activations, gradients, weights, scores, extremes, relu,
                                      normalize, eps, method, gpu_kernel, {grad_a, grad_g});
    variable_list out;
    if (ga) out.push_back(*ga);
    if (gw) out.push_back(*gw);
    return out;
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "batchcam.fused_cam does not support double backward (differentiating its "
                "backward). Training through Grad-CAM maps needs only first-order gradients of "
                "fused_cam: use create_graph=True on the model's gradients, not on fused_cam's backward.");
  }
};

class CamForward : public torch::autograd::Function<CamForward> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& activations,
                               const at::Tensor& gradients, bool relu, const std::string& normalize,
                               double eps, const std::string& method, const std::string& gpu_kernel) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("batchcam::cam_forward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, bool, c10::string_view, double,
                             c10::string_view, c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, w, s, ext] = op.call(activations, gradients, relu, normalize, eps, method, gpu_kernel);
    // Grad-CAM's backward does not read the gradients: they are not kept alive for it.
    ctx->save_for_backward({activations, is_gradcam(method) ? at::Tensor() : gradients, w, s, ext});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["method"] = method;
    ctx->saved_data["gpu_kernel"] = gpu_kernel;
    ctx->mark_non_differentiable({w, s, ext});
    ctx->set_materialize_grads(false);  // w, s, ext get no gradient: no zero tensors for them
    return {y, w, s, ext};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool grad_a = ctx->needs_input_grad(0), grad_g = ctx->needs_input_grad(1);
    variable_list result(7);
    if (!grads[0].defined() || !(grad_a || grad_g)) return result;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& activations = saved[0];
    const std::string& method = ctx->saved_data["method"].toStringRef();
    auto outputs = CamBackward::apply(
        grads[0], activations, saved[1].defined() ? saved[1] : activations, saved[2], saved[3], saved[4],
        ctx->saved_data["relu"].toBool(), ctx->saved_data["normalize"].toStringRef(),
        ctx->saved_data["eps"].toDouble(), method, ctx->saved_data["gpu_kernel"].toStringRef(), grad_a, grad_g);
    if (grad_a) result[0] = outputs[0];
    if (grad_g && !is_gradcam(method)) result[1] = outputs.back();
    if (grad_g && is_gradcam(method)) {  // gG[b, c, p] = gw[b, c]: a broadcast view, never written out
      std::vector<int64_t> channels(activations.dim(), 1);
      channels[0] = activations.size(0);
      channels[1] = activations.size(1);
      result[1] = outputs.back().view(channels).expand(activations.sizes());
    }
    return result;
  }
};

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> call_cam_backward(
    const at::Tensor& grad_map, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& weights, const at::Tensor& scores, const at::Tensor& extremes, bool relu,
    c10::string_view normalize, double eps, c10::string_view method, c10::string_view gpu_kernel,
    std::array<bool, 2> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("batchcam::cam_backward", "")
                       .typed<std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, bool, c10::string_view, double,
                           c10::string_view, c10::string_view, std::array<bool, 2>)>();
  return op.call(grad_map, activations, gradients, weights, scores, extremes, relu, normalize, eps, method,
                 gpu_kernel, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cam_forward_autograd(
    const at::Tensor& activations, const at::Tensor& gradients, bool relu,
    c10::string_view normalize, double eps, c10::string_view method, c10::string_view gpu_kernel) {
  auto out = CamForward::apply(activations, gradients, relu, std::string(normalize), eps, std::string(method),
                               std::string(gpu_kernel));
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> cam_backward_autograd(
    const at::Tensor& grad_map, const at::Tensor& activations, const at::Tensor& gradients,
    const at::Tensor& weights, const at::Tensor& scores, const at::Tensor& extremes, bool relu,
    c10::string_view normalize, double eps, c10::string_view method, c10::string_view gpu_kernel,
    std::array<bool, 2> output_mask) {
  auto out = CamBackward::apply(grad_map, activations, gradients, weights, scores, extremes, relu,
                                std::string(normalize), eps, std::string(method), std::string(gpu_kernel),
                                output_mask[0], output_mask[1]);
  std::optional<at::Tensor> ga, gw;
  if (output_mask[0]) ga = out.front();
  if (output_mask[1]) gw = out.back();
  return {ga, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(batchcam, Autograd, m) {
  m.impl("cam_forward", &cam_forward_autograd);
  m.impl("cam_backward", &cam_backward_autograd);
}

}  // namespace batchcam
