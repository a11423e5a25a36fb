// Helpers shared by the CPU kernels and the CUDA glue: argument parsing, the input checks that
// guard raw-pointer access, and the two memory layouts the kernels read in place.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "cam_methods.h"

namespace batchcam {

// What cam_forward returns (map, weights, scores, extremes) and cam_backward (gA, gw), per schema.
using CamForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using CamBackwardResult = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>;

inline Normalize normalize_named(std::string_view name) {
  Normalize norm = Normalize::MinMax;
  TORCH_CHECK(parse_normalize(name, norm), "fused_cam: normalize must be 'minmax', 'max' or 'none', got '", name,
              "'");
  return norm;
}

inline Method method_named(std::string_view name) {
  Method method = Method::GradCam;
  TORCH_CHECK(parse_method(name, method), "fused_cam: method must be 'gradcam', 'xgradcam', 'gradcampp', "
              "'layercam', 'hirescam' or 'elementwise', got '", name, "'");
  return method;
}

// Columns of cam_forward's weights: one per channel for the weight-based methods, none for the
// element-wise ones.
inline int64_t weight_columns(Method method, int64_t C) {
  return is_elementwise(method) ? 0 : C;
}

// (B, C, *S) seen as B samples of C x P elements, P = prod(S). Channels-first: element (c, p) of
// a sample sits at c * P + p. Channels-last: at p * C + c.
struct CamShape {
  int64_t B, C, P;
  bool channels_last;
};

// True when `t` is dense with the channel dimension innermost (channels_last, channels_last_3d
// and their 3-D analogue (B, N, C) seen as (B, C, N)).
inline bool is_channels_last_dense(const at::Tensor& t) {
  return t.movedim(1, -1).is_contiguous();
}

// Returns `t` in the requested layout, copying only when it is not already in it.
inline at::Tensor to_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  if (is_channels_last_dense(t)) return t;
  return t.movedim(1, -1).contiguous().movedim(-1, 1);
}

// Checks what the kernels rely on (the Python entry point gives the friendlier errors first) and
// picks the layout: channels-last when the activations are channels-last and not also contiguous.
inline CamShape check_cam_inputs(const at::Tensor& a, const at::Tensor& g) {
  TORCH_CHECK(a.dim() >= 3, "fused_cam: activations must have shape (B, C, *S) with at least one "
              "spatial dim, got ", a.sizes());
  TORCH_CHECK(a.sizes() == g.sizes(), "fused_cam: activations ", a.sizes(),
              " and gradients ", g.sizes(), " must have the same shape");
  TORCH_CHECK(a.scalar_type() == g.scalar_type() && at::isFloatingType(a.scalar_type()),
              "fused_cam: activations and gradients must share one floating dtype, got ",
              a.scalar_type(), " and ", g.scalar_type());
  TORCH_CHECK(a.device() == g.device(), "fused_cam: activations on ", a.device(),
              " and gradients on ", g.device(), " must be on the same device");
  int64_t P = 1;
  for (int64_t d = 2; d < a.dim(); ++d) P *= a.size(d);
  return {a.size(0), a.size(1), P, reads_channels_last(a.is_contiguous(), is_channels_last_dense(a))};
}

// Scores, extremes and weights must be what cam_forward returned for these activations.
inline void check_saved(const CamShape& shape, Method method, const at::Tensor& grad_map, const at::Tensor& w,
                        const at::Tensor& s, const at::Tensor& ext) {
  TORCH_CHECK(grad_map.numel() == shape.B * shape.P, "fused_cam backward: grad_map has ",
              grad_map.numel(), " elements, expected ", shape.B * shape.P);
  TORCH_CHECK(w.numel() == shape.B * weight_columns(method, shape.C) && s.numel() == shape.B * shape.P &&
                  ext.numel() == shape.B * 2,
              "fused_cam backward: saved weights/scores/extremes do not match the activations");
}

}  // namespace batchcam
