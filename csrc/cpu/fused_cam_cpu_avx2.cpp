// The CPU kernels with AVX2, FMA and F16C, run only where the CPU has them (fused_cam_cpu.cpp).
// The instruction set is turned on for this unit's own code only, after every header (included
// by fused_cam_cpu.h first) has been compiled for the baseline: inline functions of headers are
// shared across units, and one compiled here for AVX2 could be picked for the baseline kernels.
#include "fused_cam_cpu.h"

#define BATCHCAM_CPU_CAPABILITY avx2
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#define BATCHCAM_CPU_AVX2 1
#else
#define BATCHCAM_CPU_AVX2 0
#endif
#include "fused_cam_cpu_kernels.h"
#include "impute_cpu_kernels.h"
