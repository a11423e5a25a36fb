"""`python -m batchcam` / `batchcam`: train, compare, explain, bench.

    batchcam train --protocol batchcam --model simple-cnn --epochs 5 --out runs/bc
    batchcam compare --model simple-cnn --epochs 5 --out runs/compare
    batchcam explain runs/bc/checkpoint.pt --split test --limit 16 --out runs/bc/explain
    batchcam bench --shape 64,512,7,7 --shape 16,256,56,56
    torchrun --nproc_per_node=2 -m batchcam train ...   # DistributedDataParallel
"""
import argparse
import dataclasses
import json
import os
import sys

from .backend import BACKENDS
from .training import PROTOCOLS, TrainConfig, TrainingDiverged, atomic_write_text, train

_FIELD_HELP = {
    "model": "simple-cnn | resnet18 | convnext-v2-tiny",
    "dataset": "default (embedded slice) | fashion-mnist | mnist",
    "data_dir": "a folder with the four MNIST-format IDX files (overrides --dataset's lookup)",
    "protocol": "baseline | prototype | batchcam",
    "batch_size": "global batch size (split across processes)",
    "optimizer": "adam | sgd",
    "distance": "l1 | l2 | ssim, for the map losses",
    "cam_grad": "second-order (train through the gradients) | detached",
    "backend": "fused | triton | cuda | reference",
    "amp": "bfloat16 autocast",
    "compile": "torch.compile the model body (and the head with --cam-grad detached)",
    "train_limit": "train on a stratified slice of this many images",
    "test_limit": "evaluate on a stratified slice of this many images",
    "device": "cpu | cuda | cuda:N (default: cuda if available)",
    "out": "output folder: checkpoint.pt, metrics.json, examples.png",
    "resume": "continue from <out>/checkpoint.pt",
}


def _arg_type(annotation):
    for base in (bool, int, float):
        if annotation is base or annotation == (base | None):
            return base
    return str


def _add_config_arguments(parser, skip=()):
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip or field.name == "progress":
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = _FIELD_HELP.get(field.name, "") + f" (default: {field.default})"
        kind = _arg_type(field.type)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=help_text)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _config(args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)


def compare_table(results):
    """Markdown table of the protocols' metrics, side by side."""
    header = "| protocol | test accuracy | L1 | L2 | SSIM | s / epoch | forward ms | forward + maps ms |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat = r["latency_ms"]
        lines.append(f"| {r['protocol']} | {100 * r['test_accuracy']:.2f}% | {r['l1']:.4f} | {r['l2']:.4f} | "
                     f"{r['ssim']:.4f} | {r['train_seconds_per_epoch']:.1f} | {lat['forward']:.1f} | "
                     f"{lat['forward_with_maps']:.1f} |")
    return "\n".join(lines)


def cmd_train(args):
    metrics = train(_config(args))
    if "RANK" not in os.environ or os.environ["RANK"] == "0":
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "config")}, indent=1))


def cmd_compare(args):
    results = []
    for protocol in PROTOCOLS:
        results.append(train(_config(args, protocol=protocol, out=os.path.join(args.out, protocol))))
    if "RANK" in os.environ and os.environ["RANK"] != "0":
        return
    table = compare_table(results)
    config = {k: v for k, v in results[0]["config"].items() if k not in ("protocol", "out", "resume", "progress")}
    title = (f"Batch-CAM protocols: {config['model']} on {config['dataset']}, {config['epochs']} epochs, "
             f"batch {config['batch_size']}, device {results[0]['device']}")
    atomic_write_text(f"# {title}\n\n{table}\n\nconfig: `{json.dumps(config)}`\n", os.path.join(args.out, "compare.md"))
    atomic_write_text(json.dumps({"config": config, "results": results}, indent=1),
                      os.path.join(args.out, "compare.json"))
    print(f"\n{title}\n\n{table}\n\nwritten: {os.path.join(args.out, 'compare.md')}, compare.json")


def cmd_explain(args):
    from .explain_cli import run_explain

    run_explain(args)


def cmd_bench(args):
    from .bench_cli import run_bench

    run_bench(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="batchcam", description="Batch-CAM: train and explain CNNs with "
                                     "batched Grad-CAM maps.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one protocol")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("compare", help="train the three protocols and compare them")
    _add_config_arguments(p, skip=("protocol", "resume"))
    p.set_defaults(func=cmd_compare, out="runs/compare")
    p = sub.add_parser("explain", help="map overlays (PNG) and maps (.npy/.pt) from a checkpoint")
    p.add_argument("checkpoint", help="checkpoint.pt written by train")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG...); default: a data-set split")
    p.add_argument("--dataset", default=None, help="data set of the split (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=16, help="explain the first N images of the split (0: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--target", default="label", choices=["label", "prediction"],
                   help="class explained for a data-set split (files always use the prediction)")
    p.add_argument("--maps", default=None, help="also write every map to this .npy or .pt file")
    p.add_argument("--overlays", type=int, default=32, help="write at most this many overlay PNGs")
    p.add_argument("--backend", default="fused")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/explain")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("bench", help="time the fused op against the reference on given shapes")
    p.add_argument("--shape", action="append", help="B,C,H,W (any spatial dims; repeatable; default 64,512,7,7)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--channels-last", action="store_true", help="inputs in channels-last memory format")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--backend", default="fused", choices=[b for b in BACKENDS if b != "reference"],
                   help="the fused op's backend to time against the reference (GPU kernel on CUDA)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of runs per measurement")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (TrainingDiverged, ValueError, FileNotFoundError) as e:
        print(f"batchcam {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0
