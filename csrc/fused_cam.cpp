// Schemas of the batchcam ops: the one place they are defined (kernels live in csrc/cpu and
// csrc/cuda, autograd in fused_cam_autograd.cpp, fake kernels and the public composite in
// python/batchcam/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/fused_cam_cpu.h"

extern "C" {
// An empty module: importing batchcam._C only runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(batchcam, m) {
  // Public op: batched CAM maps of activations A and their gradients G, both (B, C, *S), by
  // `method` (gradcam, xgradcam, gradcampp, layercam, hirescam, elementwise; cam_methods.h).
  m.def(
      "fused_cam(Tensor activations, Tensor gradients, bool relu=True, "
      "str normalize=\"minmax\", float eps=1e-7, str method=\"gradcam\") -> Tensor");
  // Forward kernel: the map y (B, *S) plus what the backward needs: channel weights w (B, C) of
  // the weight-based methods ((B, 0) for the element-wise ones), pre-ReLU scores s (B, P) and the
  // extremes (min, max) of the rectified map (B, 2), all in the accumulation dtype. `gpu_kernel`
  // ("triton" or "cuda") picks the CUDA implementation; CPU tensors always run the C++ kernel.
  m.def(
      "cam_forward(Tensor activations, Tensor gradients, bool relu, str normalize, float eps, "
      "str method, str gpu_kernel) -> (Tensor map, Tensor weights, Tensor scores, Tensor extremes)");
  // Backward kernel, each output only where output_mask says so: grad_activations (B, C, *S) and
  // grad_gradients. Grad-CAM's grad_gradients is constant over the spatial positions and so
  // returned as its (B, C) values (the caller broadcasts it to (B, C, *S), as autograd's mean
  // backward does; `gradients` is not read); every other method's is (B, C, *S), in the layout
  // of grad_activations.
  m.def(
      "cam_backward(Tensor grad_map, Tensor activations, Tensor gradients, Tensor weights, "
      "Tensor scores, Tensor extremes, bool relu, str normalize, float eps, str method, "
      "str gpu_kernel, bool[2] output_mask) -> (Tensor?, Tensor?)");
  // The Triton kernels (CUDA key, registered from Python: batchcam/ops.py), which the CUDA
  // implementation of cam_forward / cam_backward calls when gpu_kernel == "triton". Where the
  // extension is built with CUDA, that implementation is C++ (cuda/fused_cam_cuda.cpp) and runs
  // the C++/CUDA kernels itself for gpu_kernel == "cuda": no Python below the op's call.
  m.def(
      "triton_cam_forward(Tensor activations, Tensor gradients, bool relu, str normalize, "
      "float eps, str method) -> (Tensor map, Tensor weights, Tensor scores, Tensor extremes)");
  m.def(
      "triton_cam_backward(Tensor grad_map, Tensor activations, Tensor gradients, Tensor weights, "
      "Tensor scores, Tensor extremes, bool relu, str normalize, float eps, str method, "
      "bool[2] output_mask) -> (Tensor?, Tensor?)");
  // ROAD's linear imputation (python/batchcam/metrics.py, linear_impute): images (N, C, H, W) with
  // the pixels where removed (N, H, W) is True replaced by the weighted mean of their neighbours,
  // in float64; solver "direct" (a band Cholesky factorisation per image), "cg" (conjugate gradients
  // per channel to a relative residual tol) or "auto" (per image, the cheaper of the two). CPU only
  // (cpu/impute_cpu_kernels.h); other devices solve in Python.
  m.def("impute_linear(Tensor images, Tensor removed, float tol, int max_iterations, str solver=\"auto\") -> Tensor");
  // Which CPU kernels run: "avx2" or "baseline" (chosen at run time, see cpu/fused_cam_cpu.h).
  m.def("cpu_capability() -> str", &batchcam::cpu_capability);
}
