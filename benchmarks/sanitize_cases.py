"""The op's GPU kernels on a few small cases, forward and backward, for compute-sanitizer:

    compute-sanitizer --error-exitcode 1 python benchmarks/sanitize_cases.py      (gpu_check.sh)

P = 49 (rows not 16-byte aligned), C = 0 (nothing to read), data pointers off 16-byte alignment,
channels-last, half precision; each through both GPU kernels, each map compared with the reference.
`--device cpu` runs the same cases on the CPU kernels (a check of the script itself).
"""
import argparse
import sys

import torch

import batchcam

CASES = [  # (shape, dtype, channels_last, offset in elements of the data pointer)
    ((3, 5, 7, 7), torch.float32, False, 0),
    ((2, 0, 7, 7), torch.float32, False, 0),
    ((2, 6, 7, 7), torch.float32, False, 1),
    ((2, 6, 5, 3), torch.bfloat16, True, 0),
    ((1, 33, 14, 14), torch.float16, False, 3),
]


def inputs(shape, dtype, channels_last, offset, device):
    """Random A and G of `shape` whose storage starts `offset` elements into an allocation."""
    made = []
    for _ in range(2):
        flat = torch.randn(offset + torch.Size(shape).numel(), device=device, dtype=torch.float32).to(dtype)
        t = flat[offset:].view(shape)
        if channels_last:
            t = t.movedim(1, -1).contiguous().movedim(-1, 1)
        made.append(t.requires_grad_())
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    backends = ["triton"] + (["cuda"] if batchcam.backend.cuda_kernels_built() else [])
    for shape, dtype, channels_last, offset in CASES:
        for backend in backends if args.device != "cpu" else ["fused"]:
            a, g = inputs(shape, dtype, channels_last, offset, args.device)
            y = batchcam.fused_cam(a, g, backend=backend)
            ga, gg = torch.autograd.grad(y.float().sum(), (a, g))
            expected = batchcam.fused_cam(a.detach().double(), g.detach().double(), backend="reference")
            torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)
            assert ga.shape == a.shape and gg.shape == g.shape
            print(f"{backend:6s} {str(shape):18s} {str(dtype):15s} channels_last={channels_last} offset={offset}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
