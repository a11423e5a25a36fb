// The op's definitions, one home for every C++ and CUDA source: free of torch headers, so that
// the CUDA kernels (compiled by nvcc alone) include it too. Python mirrors them in
// python/batchcam/definitions.py, and the Triton kernels take the same normalisation codes.
#pragma once

#include <string_view>
#include <type_traits>

// Functions the CUDA kernels call too: __host__ __device__ under nvcc.
#ifdef __CUDACC__
#define BATCHCAM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BATCHCAM_HOST_DEVICE inline
#endif

namespace batchcam {

// How each sample's rectified map r is normalised: (r - min) / (max - min + eps), r / (max + eps)
// or r itself. The codes are the kernels' compile-time constants.
enum class Normalize : int { MinMax = 0, Max = 1, None = 2 };

// The normalisation called `name`; false for an unknown name.
constexpr bool parse_normalize(std::string_view name, Normalize& out) {
  if (name == "minmax") out = Normalize::MinMax;
  else if (name == "max") out = Normalize::Max;
  else if (name == "none") out = Normalize::None;
  else return false;
  return true;
}

// Which CAM the op computes (docs/op.md has the formulas). The weight-based methods sum channels
// weighted by per-channel weights w[c] computed from one channel's row of A and G; the
// element-wise ones sum a function of A and G at each position.
enum class Method : int { GradCam = 0, XGradCam = 1, GradCamPP = 2, LayerCam = 3, HiResCam = 4, ElementWise = 5 };

// The method called `name`; false for an unknown name.
constexpr bool parse_method(std::string_view name, Method& out) {
  if (name == "gradcam") out = Method::GradCam;
  else if (name == "xgradcam") out = Method::XGradCam;
  else if (name == "gradcampp") out = Method::GradCamPP;
  else if (name == "layercam") out = Method::LayerCam;
  else if (name == "hirescam") out = Method::HiResCam;
  else if (name == "elementwise") out = Method::ElementWise;
  else return false;
  return true;
}

BATCHCAM_HOST_DEVICE constexpr bool is_elementwise(Method m) {
  return m == Method::LayerCam || m == Method::HiResCam || m == Method::ElementWise;
}

// fn(std::integral_constant<Method, m>{}): a run-time method as a compile-time one, so that each
// kernel family takes the method as a template parameter.
template <typename Fn>
decltype(auto) with_method(Method m, Fn&& fn) {
  switch (m) {
    case Method::XGradCam: return fn(std::integral_constant<Method, Method::XGradCam>{});
    case Method::GradCamPP: return fn(std::integral_constant<Method, Method::GradCamPP>{});
    case Method::LayerCam: return fn(std::integral_constant<Method, Method::LayerCam>{});
    case Method::HiResCam: return fn(std::integral_constant<Method, Method::HiResCam>{});
    case Method::ElementWise: return fn(std::integral_constant<Method, Method::ElementWise>{});
    default: return fn(std::integral_constant<Method, Method::GradCam>{});
  }
}

// The type arithmetic runs in: float for every data type but double.
template <typename scalar_t>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename Accumulate<scalar_t>::type;

// Which layout a (B, C, *S) tensor is read in: channels-last when its channel dimension is the
// innermost one of a dense layout and it is not also contiguous (a tensor with P = 1 or C = 1
// can be both), else contiguous (copied first when it is neither).
constexpr bool reads_channels_last(bool contiguous, bool channels_last_dense) {
  return !contiguous && channels_last_dense;
}

}  // namespace batchcam
