"""`batchcam compare`: the protocols of one comparison (the baseline once, the map-loss protocols
once per CAM method), for one seed or several, trained one after the other, each run in its own
folder; then the tables.

Layout: `<out>/<run>/` for one seed, `<out>/seed-<S>/<run>/` for several (each seed folder with
its own compare.md / compare.json and maps.png, every run's maps of the same test images side by
side, and `<out>/compare.md`, `compare.json`, `compare.png`: mean,
standard deviation and baseline-paired 95% intervals over the seeds, `batchcam.study`).
`<out>/compare-plan.json` holds the options; `resume=True` continues an interrupted comparison
under the same options: a run with its metrics.json (written last) is finished and read back, a
run with a checkpoint continues from its last epoch, the others start.
"""
import dataclasses
import json
import os

from .checkpoints import atomic_write_text
from .devices import resolve_device
from .figures import example_grid, protocols_figure
from .outputs import prepare_output_dir
from .study import run_key, study_figure, study_tables, summarize
from .training import PROTOCOLS, load_data, load_trained, train

PLAN_FILE = "compare-plan.json"
# Options that differ between the runs of one comparison, or do not change its results.
_PER_RUN = ("protocol", "cam_method", "seed", "out", "resume", "overwrite", "progress")


def compare_table(results):
    """Markdown table of the protocols' metrics, side by side (the CAM method of each run's map
    losses; the metrics' maps are Grad-CAM's for the baseline)."""
    header = "| protocol | CAM | test accuracy | L1 | L2 | SSIM | s / epoch | forward ms | forward + maps ms |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat = r["latency_ms"]
        protocol, cam = run_key(r)
        lines.append(f"| {protocol} | {cam} | {100 * r['test_accuracy']:.2f}% | {r['l1']:.4f} | {r['l2']:.4f} | "
                     f"{r['ssim']:.4f} | {r['train_seconds_per_epoch']:.1f} | {lat['forward']:.1f} | "
                     f"{lat['forward_with_maps']:.1f} |")
    return "\n".join(lines)


def write_run_files(result, out):
    """The files of a finished run beside its checkpoint: examples.png, then metrics.json (the
    mark of a finished run)."""
    config = result.metrics["config"]
    example_grid(result.model, result.test_data, result.prototypes, config["backend"],
                 os.path.join(out, "examples.png"), method=config["cam_method"])
    atomic_write_text(json.dumps(result.metrics, indent=1), os.path.join(out, "metrics.json"))


def run_training(config):
    """train(config), then its files written by the process that writes them."""
    result = train(config)
    if result.writes_files:
        write_run_files(result, config.out)
    return result


def compare_runs(methods):
    """(protocol, cam_method, folder name) of every run of a comparison: the baseline once, the
    other protocols once per method (a folder per protocol, suffixed by the method but Grad-CAM's)."""
    runs = [("baseline", methods[0], "baseline")]
    for method in methods:
        for protocol in PROTOCOLS[1:]:
            runs.append((protocol, method, protocol if method == "gradcam" else f"{protocol}-{method}"))
    return runs


def start_comparison(out, plan, *, resume, overwrite):
    """Checks `out` before any work and records the plan; with `resume`, the plan must be the one
    the comparison in `out` was started with."""
    path = os.path.join(out, PLAN_FILE)
    if not resume:
        prepare_output_dir(out, overwrite=overwrite, resumable=PLAN_FILE)
        atomic_write_text(json.dumps(plan, indent=1), path)
        return
    try:
        with open(path) as f:
            started = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"resume: no comparison in {out} ({PLAN_FILE} missing)") from None
    except ValueError as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    flat_plan, flat_started = {**plan["config"], **plan}, {**started.get("config", {}), **started}
    for key in sorted((set(flat_plan) | set(flat_started)) - {"config"}):
        if flat_started.get(key) != flat_plan.get(key):
            raise ValueError(f"{path}: was started with {key} {flat_started.get(key)!r}, not {flat_plan.get(key)!r}; "
                             "resume with the same options")


def finished_or_trained(config):
    """The metrics of the run in config.out: read back if it finished (with config.resume), else
    trained, continuing from its checkpoint when it has one. None in processes that write nothing."""
    metrics_path = os.path.join(config.out, "metrics.json")
    if config.resume:
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                return json.load(f)
        if not os.path.exists(os.path.join(config.out, "checkpoint.pt")):
            # Interrupted before its first checkpoint: whatever the folder holds is not a run.
            config = dataclasses.replace(config, resume=False, overwrite=True)
    result = run_training(config)
    return result.metrics if result.writes_files else None


def write_maps_figure(folder, config, runs):
    """maps.png in `folder`: one test image per class, its map under each run (checkpoints read back)."""
    device = resolve_device(config.device)
    models = [(name, load_trained(os.path.join(folder, name, "checkpoint.pt"), device)[0], config.backend, method)
              for _, method, name in runs]
    _, test = load_data(config)
    protocols_figure(models, test, os.path.join(folder, "maps.png"))


def _write_tables(folder, config, title, table, results, **extra):
    atomic_write_text(f"# {title}\n\n{table}\n\nconfig: `{json.dumps(config)}`\n", os.path.join(folder, "compare.md"))
    atomic_write_text(json.dumps({"config": config, **extra, "results": results}, indent=1),
                      os.path.join(folder, "compare.json"))


def run_compare(config, methods, seeds, *, out):
    """Trains (or resumes, config.resume) every run of the comparison; writes and returns the
    tables' text (None in processes that write nothing)."""
    config.validate()
    plan_config = {k: v for k, v in dataclasses.asdict(config).items() if k not in _PER_RUN}
    start_comparison(out, {"config": plan_config, "seeds": seeds, "cam_methods": methods},
                     resume=config.resume, overwrite=config.overwrite)
    title = (f"Batch-CAM protocols: {config.model} on {config.dataset}, {config.epochs} epochs, "
             f"batch {config.batch_size}")
    every, text, runs = [], [], compare_runs(methods)
    for seed in seeds:
        folder = out if len(seeds) == 1 else os.path.join(out, f"seed-{seed}")
        results = [finished_or_trained(dataclasses.replace(config, protocol=protocol, cam_method=method, seed=seed,
                                                           out=os.path.join(folder, name)))
                   for protocol, method, name in runs]
        if results[0] is None:
            return None
        write_maps_figure(folder, dataclasses.replace(config, seed=seed), runs)
        seed_title = f"{title}, seed {seed}, device {results[0]['device']}"
        table = compare_table(results)
        _write_tables(folder, plan_config, seed_title, table, results)
        every += results
        text.append(f"{seed_title}\n\n{table}")
    if len(seeds) > 1:
        rows = summarize(every)
        tables = study_tables(rows)
        seeds_title = f"{title}, seeds {', '.join(map(str, seeds))}, device {every[0]['device']}"
        _write_tables(out, plan_config, seeds_title, tables, every, seeds=seeds, summary=rows)
        study_figure(rows, os.path.join(out, "compare.png"), title=seeds_title)
        text.append(f"{seeds_title}\n\n{tables}")
    written = os.path.join(out, "compare.md") + ", compare.json" + (", compare.png" if len(seeds) > 1 else ", maps.png")
    return "\n\n".join(text) + f"\n\nwritten: {written}"
