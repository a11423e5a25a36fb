// The CPU kernels for any CPU: only what the compiler vectorises for the target's baseline.
#define BATCHCAM_CPU_CAPABILITY baseline
#define BATCHCAM_CPU_AVX2 0
#include "fused_cam_cpu_kernels.h"
#include "impute_cpu_kernels.h"
