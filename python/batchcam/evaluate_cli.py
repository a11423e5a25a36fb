"""`batchcam evaluate`: faithfulness of the maps of several CAM methods and layers (batchcam.metrics)
for the same images and model as `batchcam explain` takes, one row per layer and method, written
as evaluate.md and evaluate.json."""
import json
import os
import time

from tqdm import tqdm

from .checkpoints import atomic_write_text
from .devices import resolve_device
from .explain_cli import load_subject, pick_layer
from .explanation import explain
from .metrics import average_drop_increase, deletion_curve, insertion_curve, road
from .outputs import prepare_output_dir

COLUMNS = (("deletion_auc", "deletion AUC (lower better)"), ("insertion_auc", "insertion AUC (higher better)"),
           ("average_drop", "average drop % (lower better)"), ("increase", "increase % (higher better)"),
           ("road", "ROAD combined (higher better)"))


def evaluate_maps(subject, layer, method, args, device):
    """Mean of every metric over the images, the maps of `method` at `layer` for the classes of
    --target; the perturbations are of the images in [0, 1] (removed pixels: 0)."""
    sums, count = {name: 0.0 for name, _ in COLUMNS}, 0
    for start in range(0, len(subject.images), args.batch_size):
        x = subject.images[start:start + args.batch_size].to(device)
        targets = subject.targets(args.target, start, len(x), device)
        maps, logits = explain(subject.model, layer, x, targets, method=method, output=args.output,
                               backend=args.backend, return_logits=True)
        targets = logits.argmax(1) if targets is None else targets
        common = dict(output=args.output, batch_size=args.batch_size)
        sums["deletion_auc"] += deletion_curve(subject.model, x, maps, targets, steps=args.steps, **common)[1].sum()
        sums["insertion_auc"] += insertion_curve(subject.model, x, maps, targets, steps=args.steps, **common)[1].sum()
        drop = average_drop_increase(subject.model, x, maps, targets, **common)
        sums["average_drop"] += drop["average_drop"] * len(x)
        sums["increase"] += drop["increase"] * len(x)
        sums["road"] += road(subject.model, x, maps, targets, noise=0.0, **common).sum()
        count += len(x)
    return {name: float(total) / count for name, total in sums.items()}


def run_evaluate(args):
    prepare_output_dir(args.out, overwrite=args.overwrite)
    device = resolve_device(args.device)
    layer_names = args.layer.split(",") if args.layer else [None]
    subject = load_subject(args, device, layer_names[0])
    layers = [(name or "target_layer", pick_layer(subject.model.model, name, args.model)) for name in layer_names]
    rows = []
    jobs = [(layer, method) for layer in layers for method in args.method]
    for (layer_name, layer), method in tqdm(jobs, desc="evaluate", unit="map", disable=not args.progress):
        start = time.perf_counter()
        row = {"layer": layer_name, "method": method, **evaluate_maps(subject, layer, method, args, device)}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    header = "| layer | method | " + " | ".join(title for _, title in COLUMNS) + " | seconds |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for row in rows:
        lines.append(f"| {row['layer']} | {row['method']} | " + " | ".join(
            f"{row[name]:.4f}" for name, _ in COLUMNS) + f" | {row['seconds']:.1f} |")
    table = "\n".join(lines)
    title = (f"Faithfulness of the maps: {args.model}, {len(subject.images)} images, {args.steps} steps, "
             f"target {args.target}, device {device}")
    atomic_write_text(f"# {title}\n\n{table}\n", os.path.join(args.out, "evaluate.md"))
    atomic_write_text(json.dumps({"title": title, "rows": rows}, indent=1), os.path.join(args.out, "evaluate.json"))
    print(f"\n{title}\n\n{table}\n\nwritten: {os.path.join(args.out, 'evaluate.md')}, evaluate.json")
