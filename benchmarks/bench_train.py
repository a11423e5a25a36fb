"""What a Batch-CAM training step costs over a cross-entropy step, and where the time goes.

Same model, batch, device and process for every row; median of `--reps` steps after warm-up
(CPU: the variants run round-robin, one step each per round).
Full steps (the trainer's own step function, protocol "batchcam", second order):
- "CE":        cross-entropy only;
- "fused":     Batch-CAM step with the fused op;
- "reference": Batch-CAM step with the plain-PyTorch map;
- "stand-in":  Batch-CAM step with the map replaced by a nearly free function of the same shapes
               and graph (the mean of one channel of A and G): the ceiling a perfect kernel reaches.
Decomposition (stand-in map, so only what surrounds the map is timed):
- "+ grad":           CE + autograd.grad of the scores (create_graph=False) + maps.mean();
- "+ second order":   the same with create_graph=True;
- "+ losses":         + upsampling and the Prototype and Batch-CAM distances (= stand-in row).

    python benchmarks/bench_train.py                      # CPU: SimpleCNN and ResNet-18, batch 256
    python benchmarks/bench_train.py --device cuda
"""
import argparse
import os
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batchcam import BatchCAM  # noqa: E402
from batchcam.losses import class_prototypes  # noqa: E402
from batchcam.models import build_model  # noqa: E402
from batchcam.training import Processes, TrainConfig, TrainStep  # noqa: E402
from common import machine, measure_interleaved, write_result  # noqa: E402


class StandInCAM(BatchCAM):
    """BatchCAM whose map costs next to nothing: same inputs, output shape and autograd graph."""

    def maps(self, activations, gradients):
        return (activations[:, 0] + gradients[:, 0]).sigmoid()


def full_step(model, prototypes, procs, protocol, backend="fused", cam_class=BatchCAM):
    config = TrainConfig(protocol=protocol, backend=backend, distance="l2")
    return TrainStep(config, model, model, prototypes, procs, cam_class=cam_class)


def partial_step(model, create_graph):
    """CE + maps (stand-in) from autograd.grad, no distances: isolates the gradient pass."""
    cam = StandInCAM(model, model.target_layer)

    def step(x, y):
        logits, maps = cam(x, y, create_graph=create_graph)
        return F.cross_entropy(logits, y) + maps.float().mean(), logits

    return step


def runnable(step, model, x, y):
    def run():
        model.zero_grad(set_to_none=True)
        loss, _ = step(x, y)
        loss.backward()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="simple-cnn,resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    device = torch.device(args.device)
    procs = Processes(device=device)
    info = machine(device)
    header = ["model", "step", "ms", "x CE step", "x stand-in step"]
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name).to(device).train()
        x = torch.rand(args.batch_size, 1, 28, 28, device=device)
        y = torch.arange(args.batch_size, device=device) % 10
        prototypes = class_prototypes(x, y, 10)
        steps = {
            "CE": full_step(model, prototypes, procs, "baseline"),
            "+ grad (stand-in map)": partial_step(model, create_graph=False),
            "+ second order": partial_step(model, create_graph=True),
            "stand-in (+ losses)": full_step(model, prototypes, procs, "batchcam", cam_class=StandInCAM),
            "fused": full_step(model, prototypes, procs, "batchcam", "fused"),
            "reference": full_step(model, prototypes, procs, "batchcam", "reference"),
        }
        runs = {k: runnable(s, model, x, y) for k, s in steps.items()}
        times = measure_interleaved(runs, device, rounds=args.reps, budget_s=1.0)
        for k, t in times.items():
            row = [name, k, f"{t * 1e3:.2f}", f"{t / times['CE']:.2f}", f"{t / times['stand-in (+ losses)']:.3f}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    table, paths = write_result("bench_train", info, header, rows, {"batch_size": args.batch_size}, args.out)
    print(f"\n{info['device']}, batch {args.batch_size}, commit {info['commit']}\n\n{table}")
    print("\nwritten: " + ", ".join(paths))


if __name__ == "__main__":
    sys.exit(main())
