// The op's definitions, one home for every C++ and CUDA source: free of torch headers, so that
// the CUDA kernels (compiled by nvcc alone) include it too. Python mirrors them in
// python/batchcam/definitions.py, and the Triton kernels take the same normalisation codes.
#pragma once

#include <string_view>

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
