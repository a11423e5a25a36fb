"""Compiles every Triton kernel of batchcam_kernels to GPU machine code (cubin) for a given
architecture, without a GPU: the compile path Triton's interpreter never exercises. Run by
tests/test_triton_sources.py in a process without TRITON_INTERPRET.

    python tests/compile_triton_for_gpu.py 90
"""
import itertools
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from batchcam_kernels import fused_cam as kernels

DTYPES = {"fp32": tl.float32, "bf16": tl.float32, "fp16": tl.float32, "fp64": tl.float64}  # data: accumulation
# Grad-CAM for every dtype, tile and variant; every other method (a constexpr of the same kernels)
# in float32, for every tile with its usual variant (no wide offsets; stages as launched).
SAMPLE = {"C": "i32", "P": "i32", "stride_b": "i64", "stride_c": "i32", "stride_p": "i32", "channels_per_split": "i32"}
# (BLOCK_C, BLOCK_P, ONE_P_TILE): contiguous short rows, contiguous long rows, channels-last
TILES = [(64, 64, True), (4, 1024, False), (256, 32, False)]
VARIANTS = [(False, 1), (True, 1), (False, 3)]  # (WIDE, STAGES)


def compile_kernel(fn, signature, constants, target, num_warps):
    signature = {**signature, **{name: "constexpr" for name in constants}}
    constexprs = {(fn.arg_names.index(name),): value for name, value in constants.items()}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=target, options={"num_warps": num_warps})


def main(capability):
    target = GPUTarget("cuda", capability, 32)
    count = 0
    for dtype, acc in DTYPES.items():
        acc_name = "fp64" if acc == tl.float64 else "fp32"
        data, accum = "*" + dtype, "*" + acc_name
        for (block_c, block_p, one_tile), (wide, stages) in itertools.product(TILES, VARIANTS):
            usual = not wide and stages == (3 if (block_c, block_p) == (256, 32) else 1)
            methods = kernels.METHOD_CODES.values() if dtype == "fp32" and usual else [kernels.METHOD_CODES["gradcam"]]
            for method in methods:
                tile = {"BLOCK_C": block_c, "BLOCK_P": block_p, "ACC": acc, "WIDE": wide, "ONE_P_TILE": one_tile,
                        "STAGES": stages, "RELU": True, "NORMALIZE": kernels.NORMALIZE_CODES["minmax"],
                        "METHOD": method}
                for finish in (False, True):
                    compile_kernel(kernels._forward_partial_kernel,
                                   {"A": data, "G": data, "W": accum, "S_PART": accum, "EXT": accum, "Y": data,
                                    **SAMPLE, "eps": "fp32"}, {**tile, "FINISH": finish}, target, 8)
                for write_ga, write_gg in ((True, True), (True, False), (False, True)):
                    compile_kernel(kernels._backward_kernel,
                                   {"A": data, "G": data, "W": accum, "GY": data, "S": accum, "EXT": accum,
                                    "GS": accum, "GA": data, "GG": data, **SAMPLE, "eps": "fp32"},
                                   {"WRITE_GA": write_ga, "WRITE_GG": write_gg, **tile}, target, 8)
                count += 5
        for relu, normalize in itertools.product((True, False), kernels.NORMALIZE_CODES.values()):
            options = {"RELU": relu, "NORMALIZE": normalize, "BLOCK_P": 1024, "ACC": acc}
            compile_kernel(kernels._forward_finish_kernel,
                           {"S_PART": accum, "S": accum, "EXT": accum, "Y": data, "SPLITS": "i32", "P": "i32",
                            "eps": "fp32"}, options, target, 4)
            compile_kernel(kernels._score_grad_kernel,
                           {"GY": data, "S": accum, "EXT": accum, "GS": accum, "P": "i32", "eps": "fp32"},
                           options, target, 4)
            count += 2
    print(f"compiled {count} kernels for sm_{capability}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
