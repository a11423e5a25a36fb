// Launchers of the CUDA kernels of fused_cam: plain pointers, sizes and a stream, no torch
// headers, so that this interface and fused_cam_kernels.cu compile with nvcc alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../cam_definitions.h"

namespace batchcam::cuda {

enum class DType { Float16, BFloat16, Float32, Float64 };

// B samples of C x P elements. Contiguous: element (c, p) of a sample at c * P + p;
// channels-last: at p * C + c. Samples are C * P elements apart. The channel reduction of each
// sample is split across `splits` blocks of `channels_per_split` channels.
struct CamProblem {
  int64_t B, C, P;
  bool channels_last;
  int64_t splits, channels_per_split;
};

struct CamOptions {
  bool relu;
  Normalize normalize;
  double eps;
  Method method;
};

// Number of channel splits per sample for `sm_count` multiprocessors: enough blocks for
// kBlocksPerSm per SM, each split keeping at least kMinChannelsPerSplit channels.
CamProblem make_problem(int64_t B, int64_t C, int64_t P, bool channels_last, int sm_count);

// Forward. Inputs a, g (dtype); outputs y (B, P) in dtype; w (B, C; not written by the element-wise
// methods), s (B, P), ext (B, 2) and the workspace s_part (B, splits, P) in the accumulation type
// (double for Float64, else float).
cudaError_t launch_cam_forward(DType dtype, const void* a, const void* g, void* y, void* w, void* s,
                               void* ext, void* s_part, const CamProblem& problem,
                               const CamOptions& options, cudaStream_t stream);

// Backward. gy (B, P) in dtype; a, g (g is not read by Grad-CAM), w, s, ext as saved by the
// forward; workspaces gs (B, P) and, for xgradcam and gradcampp, stats (B, 3, C) in the accumulation
// type. Writes ga (same layout as a) and gg where not null: Grad-CAM's per channel (B, C, dtype),
// every other method's in the layout of a.
cudaError_t launch_cam_backward(DType dtype, const void* gy, const void* a, const void* g, const void* w,
                                const void* s, const void* ext, void* gs, void* stats, void* ga, void* gg,
                                const CamProblem& problem, const CamOptions& options, cudaStream_t stream);

}  // namespace batchcam::cuda
