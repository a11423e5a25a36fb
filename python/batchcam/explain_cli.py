"""`batchcam explain`: maps (batchcam.explain) of a trained checkpoint for image files or a data-set split, written
as overlay PNGs and, optionally, all maps in one .npy / .pt file."""
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoints import atomic_write, load_checkpoint, load_into
from .data import load_split
from .devices import resolve_device
from .explanation import explain, per_sample_minmax
from .figures import overlay
from .models import build_model
from .outputs import check_output_file, prepare_output_dir


def load_images(paths, size=(28, 28)):
    """Image files as a (N, 1, H, W) float tensor in [0, 1] (grey, resized)."""
    out = []
    for path in paths:
        try:
            image = Image.open(path).convert("L").resize(size[::-1], Image.BILINEAR)
        except OSError as e:
            raise ValueError(f"{path}: not an image this program can read ({e})") from e
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
    return torch.stack(out).unsqueeze(1)


def load_model(path, device):
    """The model of a checkpoint, in eval mode, and the checkpoint itself."""
    state = load_checkpoint(path)
    model = build_model(state["config"]["model"], len(state["classes"])).to(device)
    load_into(model, state["model"], path, state["config"]["model"])
    return model.eval(), state


def save_maps(maps, path):
    def write(tmp):
        if path.endswith(".npy"):
            with open(tmp, "wb") as f:
                np.save(f, maps.numpy())
        else:
            torch.save(maps, tmp)

    atomic_write(path, write)


def run_explain(args):
    # Every output is checked before any work; none may replace an input.
    if args.maps:
        check_output_file(args.maps, suffixes=(".npy", ".pt"), protected=[args.checkpoint, *args.images],
                          overwrite=args.overwrite)
    if args.overlays:
        prepare_output_dir(args.out, overwrite=args.overwrite)
    device = resolve_device(args.device)
    model, state = load_model(args.checkpoint, device)
    config = state["config"]
    if args.images:
        images, labels, names = load_images(args.images), None, [os.path.basename(p) for p in args.images]
    else:
        split = load_split(args.dataset or config["dataset"], args.split, args.data_dir or config["data_dir"])
        n = len(split) if args.limit == 0 else min(args.limit, len(split))
        images, labels = split.images[:n], split.labels[:n]
        names = [f"{args.split}-{i:05d}" for i in range(n)]
    if len(images) == 0:
        raise ValueError(f"explain: no images to explain in the {args.split} split")
    use_labels = labels is not None and args.target == "label"
    all_maps, written = [], 0
    for start in tqdm(range(0, len(images), args.batch_size), desc="explain", unit="batch"):
        x = images[start:start + args.batch_size].to(device)
        y = labels[start:start + args.batch_size].to(device) if use_labels else None
        maps, logits = explain(model, model.target_layer, x, y, method=args.method, normalize=args.normalize,
                               backend=args.backend, return_logits=True)
        maps, preds = maps.cpu(), logits.argmax(1).tolist()
        all_maps.append(maps)
        maps = maps if args.normalize == "minmax" else per_sample_minmax(maps, 1e-7)  # overlays: [0, 1]
        for i in range(len(x)):
            if written >= args.overlays:
                break
            name = f"{names[start + i]}-{state['classes'][preds[i]].replace('/', '_')}.png"
            Image.fromarray(overlay(x[i, 0].cpu().numpy(), maps[i].numpy())).resize((112, 112), Image.NEAREST).save(
                os.path.join(args.out, name))
            written += 1
    if args.maps:
        save_maps(torch.cat(all_maps), args.maps)
    print(f"explained {len(images)} images: {written} overlays in {args.out}"
          + (f", maps in {args.maps}" if args.maps else ""))
