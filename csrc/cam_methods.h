// The per-element formulas of the CAM methods (docs/op.md), one home for the CPU and CUDA kernels:
// free of torch headers, and __host__ __device__ under nvcc. batchcam_kernels/fused_cam.py mirrors
// them for Triton, batchcam/reference.py writes them in plain PyTorch.
//
// Per sample, A and G of shape (C, P), S[c] = sum_p A[c,p]:
//   weight-based  s[p] = sum_c w[c] A[c,p]  with  gradcam:   w[c] = 1/P sum_p G[c,p]
//                                                 xgradcam:  w[c] = sum_p G A / (S[c] + 1e-7)
//                                                 gradcampp: w[c] = sum_p t(G[c,p], S[c])
//   element-wise  s[p] = sum_c h(A[c,p], G[c,p])  with  layercam: relu(G) A, hirescam: G A,
//                                                      elementwise: relu(G A)
// where t(g, S) = relu(g) g^2 / (2 g^2 + S g^3 + 1e-6) (zero where g = 0). The constants are
// pytorch-grad-cam's (xgrad_cam.py, grad_cam_plusplus.py).
#pragma once

#include "cam_definitions.h"

namespace batchcam {

constexpr double kXGradCamEps = 1e-7;
constexpr double kGradCamPPEps = 1e-6;

// Every function below is a select of arithmetic, no branch, so that loops over them vectorise.

// relu that keeps NaN, as torch.relu does.
template <typename T>
BATCHCAM_HOST_DEVICE T positive_part(T v) {
  return v <= 0 ? T(0) : v;
}

// h(a, g) of an element-wise method.
template <Method M, typename T>
BATCHCAM_HOST_DEVICE T elementwise_term(T a, T g) {
  if constexpr (M == Method::LayerCam) return positive_part(g) * a;
  else if constexpr (M == Method::HiResCam) return g * a;
  else return positive_part(g * a);
}

// dh/da and dh/dg of an element-wise method (relu's derivative is 0 at 0, as torch's).
template <Method M, typename T>
BATCHCAM_HOST_DEVICE void elementwise_partials(T a, T g, T& da, T& dg) {
  if constexpr (M == Method::LayerCam) {
    da = positive_part(g);
    dg = g > 0 ? a : T(0);
  } else if constexpr (M == Method::HiResCam) {
    da = g;
    dg = a;
  } else {
    const bool on = g * a > 0;
    da = on ? g : T(0);
    dg = on ? a : T(0);
  }
}

// XGrad-CAM's weight sum_p G A / (S + 1e-7) from its numerator sum_p G A and S = sum_p A; in the
// backward the same quotient of gw = sum_p gs A gives x (fused_cam_cpu_kernels.h).
template <typename T>
BATCHCAM_HOST_DEVICE T xgradcam_weight(T num, T S) {
  return num / (S + T(kXGradCamEps));
}

// Grad-CAM++'s t(g, S) = g^3 / D, D = 2 g^2 + S g^3 + 1e-6, for g > 0 (NaN for NaN, else 0).
template <typename T>
BATCHCAM_HOST_DEVICE T gradcampp_term(T g, T S) {
  const T g2 = g * g;
  const T t = g * (g2 / (T(2) * g2 + S * g2 * g + T(kGradCamPPEps)));  // relu(g) alpha, as the reference
  return g <= 0 ? T(0) : t;
}

// dt/dg = (3 g^2 D - g^3 (4 g + 3 S g^2)) / D^2 = g^2 (2 g^2 + 3e-6) / D^2, the S terms cancelled
// (exactly, not in rounding) where g > 0, else 0; and dt/dS = -t^2.
template <typename T>
BATCHCAM_HOST_DEVICE T gradcampp_term_grad(T g, T S) {
  const T g2 = g * g;
  const T d = T(2) * g2 + S * g2 * g + T(kGradCamPPEps);
  const T dt = g2 * (T(2) * g2 + T(3 * kGradCamPPEps)) / (d * d);
  return g <= 0 ? T(0) : dt;
}

}  // namespace batchcam
