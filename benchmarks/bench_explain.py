"""Explaining a batch: batchcam against the tools people use, on the same work.

Same model, batch, device, target layer and target classes for every implementation, for each
CAM method (--method; default all of gradcam, xgradcam, gradcampp, layercam, hirescam,
elementwise):
- batchcam (fused and reference backends): `batchcam.explain`, one forward and one backward;
  for Grad-CAM also with `size="layer"`, maps left at the layer's size as TorchCAM returns them;
- pytorch-grad-cam's class of the method (maps finished in NumPy on the host);
- TorchCAM's class of the method, where it has one (GradCAM, XGradCAM, GradCAMpp, LayerCAM);
- for Grad-CAM: a per-sample loop (one forward and one backward per image, the paper's
  "Algorithm 2") and Captum `LayerGradCam` (+ `LayerAttribution.interpolate`).
Every implementation's maps are brought to the same form (bilinear to the input size, min-max per
sample) and compared with batchcam's before anything is timed: pytorch-grad-cam's, Captum's and
batchcam's own must agree (TOLERANCE); TorchCAM's difference is reported, not required (its
Grad-CAM++ weights are sum_p relu(G) G^2, benchmarks/tools/torchcam_gradcampp.py). Then the median
time per batch (CPU: all implementations round-robin, one call each per round) is printed with its
ratio to a plain forward (no grad) of the batch and to batchcam.

The anchors are benchmark-only: run this in an environment that has them, e.g.
    python -m venv /opt/bcbench && /opt/bcbench/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        grad-cam captum torchcam && BATCHCAM_SKIP_CUDA_BUILD=1 /opt/bcbench/bin/pip install \
        --no-build-isolation .
    /opt/bcbench/bin/python benchmarks/bench_explain.py [--device cuda] [--repeats 3]
"""
import argparse
import contextlib
import os
import statistics
import sys

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batchcam  # noqa: E402
from batchcam.definitions import METHODS  # noqa: E402
from batchcam.explanation import per_sample_minmax  # noqa: E402
from batchcam.models import build_model  # noqa: E402
from common import machine, measure_interleaved, write_result  # noqa: E402

# Max |difference| of maps in [0, 1]. Each tool adds its own eps (about 1e-7) to a normaliser at
# layer resolution; on these untrained models the raw maps span only about 1e-3, so the maps agree
# to about 1e-4, not to float32 rounding.
TOLERANCE = 1e-3
# The anchors' class of each method: pytorch-grad-cam (pytorch_grad_cam), TorchCAM (torchcam.methods).
GRAD_CAM_CLASSES = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "gradcampp": "GradCAMPlusPlus",
                    "layercam": "LayerCAM", "hirescam": "HiResCAM", "elementwise": "GradCAMElementWise"}
TORCHCAM_CLASSES = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "gradcampp": "GradCAMpp", "layercam": "LayerCAM"}
# Implementations whose maps are compared and reported, but not required to agree.
REPORTED_ONLY = ("torchcam",)


def to_input_size(maps, size):
    """(B, h, w) -> (B, H, W): bilinear (half-pixel centres, as cv2.resize), then min-max."""
    maps = torch.as_tensor(maps).float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    return per_sample_minmax(maps, 1e-7)


def per_sample_loop(model, layer, x, targets):
    """One forward and backward per image, the map composed of plain torch ops."""
    feats = {}
    handle = layer.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    maps = []
    try:
        for i in range(len(x)):
            logits = model(x[i:i + 1])
            (g,) = torch.autograd.grad(logits[0, targets[i]], feats["a"])
            a = feats["a"].detach()
            maps.append(torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))[0])
    finally:
        handle.remove()
    return torch.stack(maps)


def methods(model, layer, x, targets, method):
    """({name: function returning maps of any resolution or normalisation} for every implementation
    of `method` whose package imports, {anchor: import error} for the anchors that do not)."""
    size = x.shape[2:]
    missing = {}
    found = {
        "batchcam fused": lambda: batchcam.explain(model, layer, x, targets, method=method, backend="fused"),
        "batchcam reference": lambda: batchcam.explain(model, layer, x, targets, method=method, backend="reference"),
    }
    if method == "gradcam":
        found["batchcam fused, layer size"] = lambda: batchcam.explain(model, layer, x, targets, backend="fused",
                                                                       size="layer")
        found["per-sample loop"] = lambda: per_sample_loop(model, layer, x, targets)
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam_class = getattr(pytorch_grad_cam, GRAD_CAM_CLASSES[method])
        classes = [ClassifierOutputTarget(int(t)) for t in targets]

        def grad_cam_maps():
            # Its hooks copy the layer's output to the host on every forward of the model: they
            # live only for its own call, or every other method would pay for them too.
            with cam_class(model=model, target_layers=[layer]) as grad_cam:
                return grad_cam(input_tensor=x, targets=classes)

        found["pytorch-grad-cam"] = grad_cam_maps
    except ImportError as error:
        missing["pytorch-grad-cam"] = str(error)
    if method == "gradcam":
        try:
            from captum.attr import LayerAttribution, LayerGradCam

            captum_cam = LayerGradCam(model, layer)
            found["captum"] = lambda: LayerAttribution.interpolate(
                captum_cam.attribute(x, target=targets, relu_attributions=True), tuple(size), "bilinear")[:, 0]
        except ImportError as error:
            missing["captum"] = str(error)
    if method in TORCHCAM_CLASSES:
        try:
            import torchcam.methods

            torchcam_class = getattr(torchcam.methods, TORCHCAM_CLASSES[method])

            def torchcam_maps():
                with torchcam_class(model, target_layer=layer) as extractor:
                    scores = model(x)
                    return extractor(class_idx=targets.tolist(), scores=scores)[0]

            found["torchcam"] = torchcam_maps
        except ImportError as error:
            missing["torchcam"] = str(error)
    return found, missing


@contextlib.contextmanager
def full_precision_convolutions():
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def check_agreement(label, candidates, x):
    """{method: max |map difference| to batchcam fused}, after the same resize and scaling; raises
    AssertionError past TOLERANCE."""
    agreement = {}
    # Agreement in full float32: cuDNN's TF32 convolutions (on by default) round differently for a
    # batch of 1 than for the whole batch, which alone moves the per-sample loop's maps by ~1e-3.
    with full_precision_convolutions():
        reference = to_input_size(candidates["batchcam fused"]().cpu(), x.shape[2:])
        for name, fn in candidates.items():
            out = fn()
            maps = to_input_size(out.detach().cpu() if torch.is_tensor(out) else np.asarray(out), x.shape[2:])
            agreement[name] = float((maps - reference).abs().max())
            if not agreement[name] <= TOLERANCE and name not in REPORTED_ONLY:
                raise AssertionError(f"{label}: {name} disagrees with batchcam by {agreement[name]:.2e} > {TOLERANCE}")
    return agreement


def bench_model(label, model, layer, x, device, budget, rounds, repeats, method):
    """Table rows: median time of each implementation of `method` over `repeats` timings (all
    round-robin in each), its ratios to a plain forward and to batchcam fused, and with repeats > 1
    the range of the ratio to a forward over the repeats; and the anchors that failed to import."""
    model.eval()
    with torch.no_grad():
        targets = model(x).argmax(1)
    candidates, missing = methods(model, layer, x, targets, method)
    agreement = check_agreement(f"{label}, {method}", candidates, x)

    def plain_forward():
        with torch.no_grad():
            return model(x)

    timings = [measure_interleaved({"forward": plain_forward, **candidates}, device, rounds=rounds, budget_s=budget)
               for _ in range(repeats)]
    times = {name: statistics.median(t[name] for t in timings) for name in timings[0]}
    forward = times.pop("forward")
    spread = [""] if repeats > 1 else []
    rows = [[label, method, "plain forward (no maps)", f"{forward * 1e3:.2f}", "1.00", "-", "-", *spread]]
    for name, t in times.items():
        row = [label, method, name, f"{t * 1e3:.2f}", f"{t / forward:.2f}", f"{t / times['batchcam fused']:.2f}",
               f"{agreement[name]:.1e}"]
        if repeats > 1:
            ratios = [r[name] / r["forward"] for r in timings]
            row.append(f"{min(ratios):.2f}-{max(ratios):.2f}")
        rows.append(row)
    for row in rows:
        print(" | ".join(row), flush=True)
    return rows, missing


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=0.5, help="GPU: seconds of runs per measurement")
    parser.add_argument("--rounds", type=int, default=15, help="CPU: round-robin rounds (median taken)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each model this many times; the table gives medians and the range "
                             "of each method's time over a forward's")
    parser.add_argument("--method", default="all", choices=[*METHODS, "all"],
                        help="the CAM method, or every method in turn (default: all)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    cam_methods = list(METHODS) if args.method == "all" else [args.method]
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = machine(device)
    header = ["model, batch", "method", "implementation", "ms / batch", "x forward", "x batchcam fused",
              "max |map diff|"]
    header += ["x forward range"] if args.repeats > 1 else []
    rows, failures, missing_anchors = [], [], {}
    setups = [("simple-cnn 28x28, 256", build_model("simple-cnn"), 256, 28),
              ("resnet18 28x28, 64", build_model("resnet18"), 64, 28)]
    if device.type == "cuda":
        import torchvision

        setups.append(("torchvision resnet50 224x224, 64", torchvision.models.resnet50(), 64, 224))
    for label, model, batch, side in setups:
        model = model.to(device)
        channels = 3 if "torchvision" in label else 1
        x = torch.rand(batch, channels, side, side, device=device)
        layer = model.layer4 if "torchvision" in label else model.target_layer
        for method in cam_methods:
            try:
                model_rows, missing = bench_model(label, model, layer, x, device, args.budget, args.rounds,
                                                  args.repeats, method)
                rows += model_rows
                missing_anchors.update(missing)
            except AssertionError as disagreement:  # reported, and the other models and methods still run
                failures.append(str(disagreement))
                print(f"FAILED {disagreement}", flush=True)
    if missing_anchors:  # the run still times batchcam, the per-sample loop and the forward
        print("anchors not timed (import failed): " + "; ".join(f"{k}: {v}" for k, v in missing_anchors.items()))
    table, paths = write_result("bench_explain", info, header, rows,
                                {"tolerance": TOLERANCE, "failures": failures, "missing_anchors": missing_anchors},
                                args.out)
    print(f"\n{info['device']}, torch {info['torch']}, commit {info['commit']}\n\n{table}")
    print("\nwritten: " + ", ".join(paths))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
