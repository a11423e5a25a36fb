"""Faithfulness metrics: batchcam.metrics against pytorch-grad-cam's and a per-sample loop, on the
same model, images, maps and target classes (batch 64).

- confidence change (score of image * map minus score of image; softmax probability):
  pytorch-grad-cam's CamMultImageConfidenceChange, and average drop / increase from it;
- ROAD combined (9 percentiles, MoRF and LeRF): pytorch-grad-cam's ROADCombined, its imputer's
  noise set to 0 so that both are deterministic (a per-image scipy sparse solve there, one
  batched conjugate-gradient solve here);
- deletion and insertion AUC (16 steps): a straightforward per-sample loop (one image and one
  step per forward), as pytorch-grad-cam has none.
The values are compared first (max |difference| per metric, goal 1e-5), then timed round-robin;
besides the ratio of the medians, the quartiles of the rounds' own ratios (each round times both
on the same machine state) say how far the machine's noise reaches.

Run it where pytorch-grad-cam is installed (see bench_explain.py), e.g.
    /opt/bcbench/bin/python benchmarks/bench_metrics.py --rounds 3
    /opt/bcbench/bin/python benchmarks/bench_metrics.py --metric "confidence change" --rounds 40
"""
import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batchcam  # noqa: E402
from batchcam import metrics  # noqa: E402
from batchcam.models import build_model  # noqa: E402
from common import machine, measure_interleaved, write_result  # noqa: E402

GOAL = 1e-5
STEPS = 16
METRICS = ("confidence change", "ROAD combined", "deletion AUC", "insertion AUC")


def cases(batch):
    """(name, model, images, target layer) of the benchmark: SimpleCNN on 28x28 grey images and
    torchvision's ResNet-18 on 64x64 RGB ones (random weights, fixed seeds)."""
    import torchvision

    torch.manual_seed(0)
    simple = build_model("simple-cnn", 10).eval()
    yield "simple-cnn 28x28", simple, torch.rand(batch, 1, 28, 28), simple.target_layer
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    yield "resnet18 64x64", resnet, torch.rand(batch, 3, 64, 64), resnet.layer3


@torch.no_grad()
def loop_curve(model, images, maps, targets, insertion):
    """Deletion or insertion AUC, one image and one step per forward."""
    aucs = []
    for b in range(len(images)):
        order = np.argsort(-maps[b].flatten().numpy(), kind="stable")
        scores = []
        for k in range(STEPS + 1):
            chosen = np.zeros(order.size, dtype=bool)
            chosen[order[:int(round(k / STEPS * order.size))]] = True
            chosen = torch.from_numpy(chosen).view(maps.shape[1:])
            zero = torch.zeros_like(images[b])
            x = torch.where(chosen, images[b], zero) if insertion else torch.where(chosen, zero, images[b])
            scores.append(model(x[None]).softmax(1)[0, targets[b]].item())
        aucs.append(np.trapezoid(scores, dx=1 / STEPS))
    return np.array(aucs)


def anchors(model, images, maps, targets):
    """pytorch-grad-cam's metrics as callables returning (B,) arrays."""
    from pytorch_grad_cam.metrics import road as road_module
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    class Noiseless(road_module.NoisyLinearImputer):  # what ROAD's classes construct, without noise
        def __init__(self, noise=0.0, **kwargs):
            super().__init__(noise=0.0, **kwargs)

    road_module.NoisyLinearImputer = Noiseless
    wanted = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    cams = maps.numpy()
    return {
        "confidence change": lambda: CamMultImageConfidenceChange()(images, cams, wanted, model),
        "ROAD combined": lambda: road_module.ROADCombined()(images, cams, wanted, model),
    }


def ours(model, images, maps, targets):
    return {
        "confidence change": lambda: metrics.confidence_change(model, images, maps, targets).numpy(),
        "ROAD combined": lambda: metrics.road(model, images, maps, targets, noise=0.0).numpy(),
        "deletion AUC": lambda: metrics.deletion_curve(model, images, maps, targets, steps=STEPS)[1].numpy(),
        "insertion AUC": lambda: metrics.insertion_curve(model, images, maps, targets, steps=STEPS)[1].numpy(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds")
    parser.add_argument("--metric", action="append", choices=METRICS,
                        help="time this metric only (repeatable; default: every metric)")
    parser.add_argument("--out", default=None, help="also write the result record here")
    args = parser.parse_args()
    header = ["case", "metric", "other", "max |diff|", "batchcam ms", "other ms", "other / batchcam",
              "rounds' other / batchcam, quartiles"]
    rows, failures = [], []
    for name, model, images, layer in cases(args.batch):
        maps, logits = batchcam.explain(model, layer, images, return_logits=True)
        targets = logits.argmax(1)
        mine = ours(model, images, maps, targets)
        others = {metric: ("pytorch-grad-cam", fn) for metric, fn in anchors(model, images, maps, targets).items()}
        others["deletion AUC"] = ("per-sample loop", lambda: loop_curve(model, images, maps, targets, False))
        others["insertion AUC"] = ("per-sample loop", lambda: loop_curve(model, images, maps, targets, True))
        for metric, fn in mine.items():
            if args.metric and metric not in args.metric:
                continue
            other, other_fn = others[metric]
            diff = float(np.abs(fn() - np.asarray(other_fn(), dtype=np.float64)).max())
            if not diff <= GOAL:
                failures.append(f"{name} {metric}: {diff:.2e}")
            samples = {}
            times = measure_interleaved({"ours": fn, "other": other_fn}, "cpu", rounds=args.rounds, warmup=1,
                                        samples=samples)
            ratios = [o / m for o, m in zip(samples["other"], samples["ours"])]
            low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            rows.append([name, metric, other, f"{diff:.1e}", f"{times['ours'] * 1e3:.1f}",
                         f"{times['other'] * 1e3:.1f}", f"{times['other'] / times['ours']:.2f}",
                         f"{low:.2f}-{high:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    table, paths = write_result("bench_metrics", machine(torch.device("cpu")), header, rows,
                                {"batch": args.batch, "steps": STEPS, "goal": GOAL, "failures": failures,
                                 "rounds": args.rounds, "metrics": args.metric or list(METRICS)},
                                out_dir=args.out)
    print(f"\n{table}\n\nwritten: {', '.join(paths)}")
    if failures:
        print("values differ beyond the goal: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
