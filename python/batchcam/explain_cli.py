"""`batchcam explain`: maps (batchcam.explain) of a model for image files and folders or a data-set
split, written as overlay PNGs named by the class explained, one grid of them, and optionally all
maps in one .npy / .pt file.

The model is a checkpoint written by `batchcam train`, or any model given by an import path
`package.module:factory` (a function or class called without arguments; `--weights` loads a
state dict into it), explained at `--layer` (a module name; default: the model's
`target_layer`). Images are read as grey or RGB to suit the model, resized to `--size` and
normalised with `--mean` / `--std`; overlays show them before normalisation.
"""
import importlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoints import atomic_write, load_into
from .data import load_split
from .devices import resolve_device
from .explanation import explain, per_sample_minmax
from .figures import overlay, picture_grid
from .outputs import check_output_file, prepare_output_dir
from .training import load_trained

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(inputs):
    """Image files, in the order given, each folder replaced by its image files (sorted by name)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item) if n.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise ValueError(f"{item}: a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return paths


def load_images(paths, size, channels):
    """Image files as a (N, channels, H, W) float tensor in [0, 1], resized to `size` (H, W)."""
    out = []
    for path in paths:
        try:
            image = Image.open(path).convert("L" if channels == 1 else "RGB").resize(size[::-1], Image.BILINEAR)
        except OSError as e:
            raise ValueError(f"{path}: not an image this program can read ({e})") from e
        array = np.asarray(image, dtype=np.float32) / 255.0
        out.append(torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy()))
    return torch.stack(out)


def first_image_size(path):
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as e:
        raise ValueError(f"{path}: not an image this program can read ({e})") from e


def import_model(spec, weights, device):
    """The model of an import path `package.module:factory` (called without arguments), with the
    state dict of `weights` (a file torch.load reads with weights_only; a dict holding it under
    "state_dict" or "model" also works) when given; on `device`, in eval mode."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec}: not an import path package.module:factory")
    try:
        factory = importlib.import_module(module_name)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{spec}: cannot import it ({e})") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{spec}: returned a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            state = state[key] if isinstance(state, dict) and isinstance(state.get(key), dict) else state
        load_into(model, state, weights, spec)
    return model.to(device).eval()


def pick_layer(model, name, source):
    """The module called `name` in `model` (None: the model's `target_layer`)."""
    if name is None:
        if hasattr(model, "target_layer"):
            return model.target_layer
        raise ValueError(f"{source}: the model has no target_layer; pass --layer with a module name")
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n]
        shown = ", ".join(names[-8:])
        raise ValueError(f"--layer {name}: no such module in {source} ({len(names)} modules, the last: {shown})")
    return modules[name]


def parse_floats(text, option, count):
    """Comma-separated floats for `count` channels (one value is repeated)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} {text}: not comma-separated numbers") from None
    if len(values) not in (1, count):
        raise ValueError(f"{option} {text}: give 1 or {count} values for {count} channels")
    return torch.tensor(values * (count // len(values)) if len(values) == 1 else values).view(1, count, 1, 1)


def file_label(name):
    """A class name as part of a file name: no spaces, no path separators."""
    return "_".join(str(name).replace("/", "_").replace(os.sep, "_").split())


def save_maps(maps, path):
    def write(tmp):
        if path.endswith(".npy"):
            with open(tmp, "wb") as f:
                np.save(f, maps.numpy())
        else:
            torch.save(maps, tmp)

    atomic_write(path, write)


class Normalized(torch.nn.Module):
    """model((x - mean) / std): images stay in [0, 1] for overlays and perturbations."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


@dataclass
class Subject:
    """What explain and evaluate work on: the model (normalising its [0, 1] input), the layer
    module, class names (or None), the images in [0, 1], their labels (or None) and names."""

    model: torch.nn.Module
    layer: torch.nn.Module
    classes: list | None
    images: torch.Tensor
    labels: torch.Tensor | None
    names: list

    def class_name(self, index):
        return self.classes[index] if self.classes and index < len(self.classes) else f"class-{index}"

    def targets(self, choice, start, count, device):
        """The classes explained for images[start:start + count]: labels, a fixed index, or None
        (the prediction; also for "label" when the images have no labels)."""
        if choice == "label" and self.labels is not None:
            return self.labels[start:start + count].to(device)
        if choice not in ("label", "pred"):
            return torch.full((count,), int(choice), dtype=torch.long, device=device)
        return None


def load_subject(args, device, layer_name):
    """The Subject of the command line's model, images and options, the layer `layer_name`."""
    if os.path.isfile(args.model) or ":" not in args.model:  # a checkpoint (a missing one: named as such)
        if args.weights:
            raise ValueError(f"--weights {args.weights}: only for an import-path model; {args.model} has its weights")
        model, state = load_trained(args.model, device)
        classes = list(state["classes"])
    else:
        model, state = import_model(args.model, args.weights, device), None
        classes = None
    if args.classes:
        with open(args.classes) as f:
            classes = [line.strip() for line in f if line.strip()]
    layer = pick_layer(model, layer_name, args.model)
    channels = args.channels or (1 if state is not None else 3)
    images, labels, names = load_inputs(args, state, channels)
    mean = parse_floats(args.mean, "--mean", channels) if args.mean else torch.zeros(1, channels, 1, 1)
    std = parse_floats(args.std, "--std", channels) if args.std else torch.ones(1, channels, 1, 1)
    return Subject(Normalized(model, mean, std).to(device).eval(), layer, classes, images, labels, names)


def load_inputs(args, state, channels):
    """(images, labels or None, names) of the images to explain, images in [0, 1]."""
    if args.images:
        paths = image_paths(args.images)
        size = args.size or (first_image_size(paths[0]) if state is None else (28, 28))
        stems = [file_label(os.path.splitext(os.path.basename(p))[0]) for p in paths]
        names = [s if stems.count(s) == 1 else f"{s}-{i:05d}" for i, s in enumerate(stems)]
        return load_images(paths, size, channels), None, names
    if state is None:
        raise ValueError("explain: give image files or folders to explain with an import-path model")
    config = state["config"]
    split = load_split(args.dataset or config["dataset"], args.split, args.data_dir or config["data_dir"])
    n = len(split) if args.limit == 0 else min(args.limit, len(split))
    if n == 0:
        raise ValueError(f"explain: no images to explain in the {args.split} split")
    images = split.images[:n]
    if args.size:
        images = torch.nn.functional.interpolate(images, size=args.size, mode="bilinear", align_corners=False)
    return images, split.labels[:n], [f"{args.split}-{i:05d}" for i in range(n)]


def run_explain(args):
    # Every output is checked before any work; none may replace an input.
    inputs = [args.model, *[p for p in (args.weights, args.classes) if p], *args.images]
    if args.maps:
        check_output_file(args.maps, suffixes=(".npy", ".pt"), protected=inputs, overwrite=args.overwrite)
    if args.overlays:
        prepare_output_dir(args.out, overwrite=args.overwrite)
    device = resolve_device(args.device)
    subject = load_subject(args, device, args.layer)
    images = subject.images
    all_maps, pictures, titles = [], [], []
    for start in tqdm(range(0, len(images), args.batch_size), desc="explain", unit="batch", disable=not args.progress):
        x = images[start:start + args.batch_size]
        targets = subject.targets(args.target, start, len(x), device)
        maps, logits = explain(subject.model, subject.layer, x.to(device), targets, method=args.method,
                               normalize=args.normalize, output=args.output, backend=args.backend,
                               smooth=None if args.smooth == "none" else args.smooth, return_logits=True)
        if logits.dim() == 3:  # one per augmented copy: the prediction of their mean
            logits = logits.mean(0)
        maps = maps.cpu()
        all_maps.append(maps)
        preds = logits.argmax(1).tolist()
        explained = preds if targets is None else targets.tolist()
        shown = maps if args.normalize == "minmax" else per_sample_minmax(maps, 1e-7)  # overlays: [0, 1]
        keep = max(0, min(len(x), args.overlays - len(titles)))
        batch_pictures = overlay(x[:keep], shown[:keep], args.colormap, args.alpha)
        for i, picture in enumerate(batch_pictures):
            name, pred = subject.class_name(explained[i]), subject.class_name(preds[i])
            label = file_label(name) + ("" if explained[i] == preds[i] else f"-pred-{file_label(pred)}")
            path = os.path.join(args.out, f"{subject.names[start + i]}-{label}.png")
            Image.fromarray(picture.permute(1, 2, 0).numpy()).save(path)
            titles.append(name if explained[i] == preds[i] else f"{name} ({pred})")
        pictures.append(batch_pictures)
    if titles:
        picture_grid(torch.cat(pictures), os.path.join(args.out, "grid.png"), titles=titles, colormap=args.colormap)
    if args.maps:
        save_maps(torch.cat(all_maps), args.maps)
    print(f"explained {len(images)} images: {len(titles)} overlays and grid.png in {args.out}"
          + (f", maps in {args.maps}" if args.maps else ""))
