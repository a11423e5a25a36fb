"""`python -m batchcam` / `batchcam`: train, compare, explain, evaluate, bench.

Every failure a user can cause ends in one line, `batchcam <command>: error: <what and where>`,
with exit code 2 for a bad command line and 1 for a failure while running (`--debug`: the
traceback instead).

    batchcam train --protocol batchcam --model simple-cnn --epochs 5 --out runs/bc
    batchcam compare --model simple-cnn --epochs 5 --out runs/compare
    batchcam compare --dataset mnist --epochs 10 --seeds 0,1,2 --out runs/mnist   # --resume continues it
    batchcam explain runs/bc/checkpoint.pt --split test --limit 16 --out runs/bc/explain
    batchcam explain mypkg.models:resnet --weights w.pt --layer layer4 photos/ --size 224 --out runs/photos
    batchcam evaluate runs/bc/checkpoint.pt --limit 256 --method gradcam,layercam --out runs/bc/evaluate
    batchcam bench --shape 64,512,7,7 --shape 16,256,56,56
    torchrun --nproc_per_node=2 -m batchcam train ...   # DistributedDataParallel
"""
import argparse
import dataclasses
import json
import sys

from .backend import BACKENDS
from .compare import run_compare, run_training
from .data import DATASETS
from .definitions import METHODS
from .figures import COLORMAPS
from .training import CONFIG_CHOICES, TrainConfig

_FIELD_HELP = {
    "model": "simple-cnn | resnet18 | convnext-v2-tiny",
    "dataset": "default (embedded slice) | fashion-mnist | mnist",
    "data_dir": "a folder with the four MNIST-format IDX files (overrides --dataset's lookup)",
    "protocol": "baseline | prototype | batchcam",
    "batch_size": "global batch size (split across processes)",
    "optimizer": "adam | sgd",
    "distance": "l1 | l2 | ssim, for the map losses",
    "cam_grad": "second-order (train through the gradients) | detached",
    "cam_method": "the CAM of the map losses: " + " | ".join(METHODS),
    "backend": "fused | triton | cuda | reference",
    "amp": "bfloat16 autocast",
    "compile": "torch.compile the model body (and the head with --cam-grad detached)",
    "train_limit": "train on a stratified slice of this many images",
    "test_limit": "evaluate on a stratified slice of this many images",
    "device": "cpu | cuda | cuda:N (default: cuda if available)",
    "out": "output folder: checkpoint.pt, metrics.json, examples.png",
    "resume": "continue from <out>/checkpoint.pt",
    "overwrite": "replace the run an existing --out holds",
    "seed": "seed of initialisation, data order and slices (>= 0)",
}
_FIELD_CHOICES = {**CONFIG_CHOICES, "dataset": DATASETS, "backend": BACKENDS}


def positive_int(text):
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1)


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text, least):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


_FIELD_TYPES = {"epochs": positive_int, "batch_size": positive_int, "train_limit": positive_int,
                "test_limit": positive_int, "seed": non_negative_int}


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
            parser.add_argument(flag, type=_FIELD_TYPES.get(field.name, kind), default=field.default,
                                choices=_FIELD_CHOICES.get(field.name), help=help_text)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _config(args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)


def cmd_train(args):
    result = run_training(_config(args))
    if result.writes_files:
        print(json.dumps({k: v for k, v in result.metrics.items() if k not in ("history", "config")}, indent=1))


def cam_methods(text):
    """argparse type: comma-separated CAM methods, e.g. gradcam,layercam."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(f"methods must be among {', '.join(METHODS)}, got {text!r}")
    return list(dict.fromkeys(methods))


def seed_list(text):
    """argparse type: comma-separated seeds (integers >= 0), e.g. 0,1,2."""
    try:
        seeds = [non_negative_int(t.strip()) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"seeds: {e}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"seeds must be integers >= 0 separated by commas, got {text!r}")
    return list(dict.fromkeys(seeds))


def image_size(text):
    """argparse type: H,W (or one number for a square), positive."""
    try:
        size = tuple(positive_int(t) for t in text.split(","))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"size: {e}") from None
    if len(size) not in (1, 2):
        raise argparse.ArgumentTypeError(f"size must be H,W or one number, got {text!r}")
    return size * (3 - len(size)) if len(size) == 1 else size


def explained_class(text):
    """argparse type: label, pred or a class index >= 0."""
    return text if text in ("label", "pred") else str(_bounded_int(text, 0))


def output_selector(text):
    """argparse type: an index (an integer) or a key."""
    try:
        return int(text)
    except ValueError:
        return text


def cmd_compare(args):
    config = _config(args, resume=args.resume, cam_method=args.cam_method[0])
    text = run_compare(config, args.cam_method, args.seeds or [args.seed], out=args.out)
    if text is not None:
        print("\n" + text)


def cmd_explain(args):
    from .explain_cli import run_explain

    run_explain(args)


def cmd_evaluate(args):
    from .evaluate_cli import run_evaluate

    run_evaluate(args)


def cmd_bench(args):
    from .bench_cli import run_bench

    run_bench(args)


def _add_subject_arguments(p, out, several_layers=False):
    """The model, images and their reading, shared by explain and evaluate."""
    p.add_argument("model", help="checkpoint.pt written by train, or an import path package.module:factory "
                                 "returning a torch.nn.Module (see --weights)")
    p.add_argument("images", nargs="*", help="image files or folders of them (PNG, JPEG, ...; grey or RGB); "
                                             "default: a data-set split (checkpoints only)")
    p.add_argument("--weights", default=None, help="state-dict file loaded into an import-path model (default: none)")
    p.add_argument("--layer", default=None, help=("comma-separated module names" if several_layers else "module name")
                   + " of the target layer, as in model.named_modules() (default: the model's target_layer)")
    p.add_argument("--output", default=None, type=output_selector,
                   help="key or index of the logits for a model returning a dict or tuple (default: the output)")
    p.add_argument("--size", type=image_size, default=None,
                   help="H,W the images are resized to (default: 28,28 for checkpoints, else the first image's)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="read images as grey (1) or RGB (3) (default: 1 for checkpoints, 3 for import paths)")
    p.add_argument("--mean", default=None, help="per-channel mean subtracted after scaling to [0, 1], e.g. "
                                                 "0.485,0.456,0.406 (default: none)")
    p.add_argument("--std", default=None, help="per-channel divisor after the mean, e.g. 0.229,0.224,0.225 "
                                                "(default: none)")
    p.add_argument("--classes", default=None, help="text file of class names, one per line (default: the "
                                                    "checkpoint's, else class-N)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="data set of the split (default: the checkpoint's)")
    p.add_argument("--data-dir", default=None, help="a folder with MNIST-format IDX files (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="data-set split (default: test)")
    p.add_argument("--limit", type=non_negative_int, default=16,
                   help="the first N images of the split, 0 for all (default: 16)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward (default: 256)")
    p.add_argument("--target", default="label", type=explained_class,
                   help="class explained: label (a split's labels; the prediction for image files), pred, or a "
                        "class index; file names carry the class explained and, when it differs, the prediction "
                        "(default: label)")
    p.add_argument("--backend", default="fused", choices=BACKENDS, help="(default: fused)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (and over --maps)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="batchcam", parents=[common], description="Batch-CAM: train and explain "
                                     "CNNs with batched Grad-CAM maps.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", parents=[common], help="train one protocol")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("compare", parents=[common], help="train the three protocols and compare them")
    _add_config_arguments(p, skip=("protocol", "resume", "cam_method"))
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma-separated seeds, e.g. 0,1,2: every run once per seed, then mean, standard deviation "
                        "and 95%% intervals of the differences to the baseline (default: --seed alone)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted compare in --out with the same options: finished runs are kept, "
                        "the others continue from their last checkpoint")
    p.add_argument("--cam-method", type=cam_methods, default=["gradcam"],
                   help="comma-separated CAM methods of the map losses, each run with the prototype and batchcam "
                        f"protocols: {', '.join(METHODS)} (default: gradcam)")
    p.set_defaults(func=cmd_compare, out="runs/compare")
    p = sub.add_parser("explain", parents=[common], help="map overlays (PNG) and maps (.npy/.pt) of a model for "
                       "images or a data-set split")
    _add_subject_arguments(p, out="runs/explain")
    p.add_argument("--maps", default=None, help="also write every map to this .npy or .pt file (default: none)")
    p.add_argument("--overlays", type=non_negative_int, default=32,
                   help="write at most this many overlay PNGs, and grid.png of them (default: 32)")
    p.add_argument("--colormap", default="jet", choices=COLORMAPS, help="(default: jet)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the map over the image (default: 0.5)")
    p.add_argument("--method", default="gradcam", choices=METHODS, help="the CAM method (default: gradcam)")
    p.add_argument("--smooth", default="none", choices=["none", "tta"],
                   help="tta: the mean map of flipped and brightened copies, in one batch (default: none)")
    p.add_argument("--normalize", default="minmax", choices=["minmax", "none"],
                   help="maps of --maps scaled to [0, 1] per sample, or raw (Captum's); overlays are always "
                        "scaled (default: minmax)")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("evaluate", parents=[common], help="faithfulness metrics (deletion, insertion, average drop, "
                       "ROAD) of CAM methods and layers, one table")
    _add_subject_arguments(p, out="runs/evaluate", several_layers=True)
    p.add_argument("--method", type=cam_methods, default=list(METHODS),
                   help=f"comma-separated CAM methods (default: all: {','.join(METHODS)})")
    p.add_argument("--steps", type=positive_int, default=16, help="deletion / insertion steps (default: 16)")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("bench", parents=[common], help="time the fused op against the reference on given shapes")
    p.add_argument("--shape", action="append", help="B,C,H,W (any spatial dims; repeatable; default 64,512,7,7)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--channels-last", action="store_true", help="inputs in channels-last memory format")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--backend", default="fused", choices=[b for b in BACKENDS if b != "reference"],
                   help="the fused op's backend to time against the reference (GPU kernel on CUDA)")
    p.add_argument("--method", default="gradcam", choices=[*METHODS, "all"],
                   help="the CAM method, or all of them one after the other (default: gradcam)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of runs per measurement")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    """Runs a command; returns its exit code (0, 1 for a failure while running, 2 for a bad
    command line), printing one line per error (the traceback with --debug)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its message (or --help)
        return e.code
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\nbatchcam {args.command}: error: interrupted; the files written so far are "
              "whole (a training run continues from its last epoch with --resume)", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"batchcam {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0
