"""Statistics of a comparison run with several seeds: mean and standard deviation of each
protocol's metrics, and its paired difference to the baseline of the same seed with a 95%
Student-t interval over the seeds; as Markdown tables and one figure (accuracy against SSIM).

A difference is "within 1 point" (accuracy) or "raised" (SSIM) only when its whole interval says
so; an interval that straddles the bound reads "undetermined".
"""
import math

import numpy as np
from PIL import Image, ImageDraw

METRICS = ("test_accuracy", "l1", "l2", "ssim")
_LABELS = {"test_accuracy": "test accuracy", "l1": "L1", "l2": "L2", "ssim": "SSIM"}
# Two-sided 95% quantiles of Student's t, t(0.975; df), df = 1..30.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t_quantile_975(df: int) -> float:
    """t(0.975; df): the table above for df <= 30, beyond it the Cornish-Fisher expansion around
    the normal quantile to the third order in 1/df (error below 2e-6 there)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 seeds (df >= 1), got df {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963985
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def run_key(result):
    """(protocol, CAM) of a run's metrics: the baseline has no CAM in its loss."""
    cam = result["config"].get("cam_method", "gradcam") if result["protocol"] != "baseline" else "-"
    return result["protocol"], cam


def summarize(results):
    """Rows, one per (protocol, CAM) in order of first appearance, from the metrics of every run
    of every seed (each carries its config with its seed). Each row: "protocol", "cam", "seeds",
    per metric "mean" and "std" (sample, ddof 1; 0 for one seed), and per metric "diff": the
    baseline-paired difference's "mean", "low", "high" (None without a baseline or two seeds)."""
    by_key = {}
    for r in results:
        by_key.setdefault(run_key(r), {})[r["config"]["seed"]] = r
    baseline = by_key.get(("baseline", "-"), {})
    rows = []
    for (protocol, cam), runs in by_key.items():
        seeds = sorted(runs)
        row = {"protocol": protocol, "cam": cam, "seeds": seeds, "mean": {}, "std": {}, "diff": {}}
        for m in METRICS:
            values = np.array([runs[s][m] for s in seeds], dtype=np.float64)
            row["mean"][m] = float(values.mean())
            row["std"][m] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            paired = [s for s in seeds if s in baseline]
            if protocol != "baseline" and len(paired) > 1:
                d = np.array([runs[s][m] - baseline[s][m] for s in paired], dtype=np.float64)
                half = t_quantile_975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                row["diff"][m] = {"mean": float(d.mean()), "low": float(d.mean() - half),
                                  "high": float(d.mean() + half), "seeds": len(d)}
        rows.append(row)
    return rows


def _verdict(diff, bound):
    """'yes' / 'no' / 'undetermined': the interval [low, high] wholly above `bound`, wholly below, or across."""
    if diff is None:
        return "-"
    return "yes" if diff["low"] > bound else "no" if diff["high"] < bound else "undetermined"


def _scaled(metric):
    return 100.0 if metric == "test_accuracy" else 1.0


def study_tables(rows):
    """Markdown: mean ± std per protocol, then the paired differences to the baseline with their
    95% intervals and what they say about the paper's two claims."""
    lines = ["| protocol | CAM | seeds | test accuracy (%) | L1 | L2 | SSIM |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row['mean'][m] * _scaled(m):.{2 if m == 'test_accuracy' else 4}f} ± "
                 f"{row['std'][m] * _scaled(m):.{2 if m == 'test_accuracy' else 4}f}" for m in METRICS]
        lines.append(f"| {row['protocol']} | {row['cam']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "| protocol | CAM | Δ accuracy (points) [95% CI] | Δ L1 | Δ L2 | Δ SSIM | accuracy within 1 point "
              "| SSIM raised |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["protocol"] == "baseline":
            continue
        cells = []
        for m in METRICS:
            d = row["diff"].get(m)
            digits = 2 if m == "test_accuracy" else 4
            k = _scaled(m)
            cells.append("-" if d is None else
                         f"{d['mean'] * k:+.{digits}f} [{d['low'] * k:+.{digits}f}, {d['high'] * k:+.{digits}f}]")
        within = _verdict(row["diff"].get("test_accuracy"), -0.01)
        raised = _verdict(row["diff"].get("ssim"), 0.0)
        lines.append(f"| {row['protocol']} | {row['cam']} | " + " | ".join(cells) + f" | {within} | {raised} |")
    return "\n".join(lines)


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ticks(low, high, count=5):
    """About `count` round tick values covering [low, high]."""
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    return [t * step for t in range(math.ceil(low / step), math.floor(high / step) + 1)]


def study_figure(rows, path, title=""):
    """PNG: one point per protocol at its mean (SSIM, test accuracy), bars of ± one standard
    deviation over the seeds in both directions, a legend naming protocol and CAM."""
    width, height, left, right, top, bottom = 760, 520, 80, 230, 40, 60
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    xs = [(r["mean"]["ssim"], r["std"]["ssim"]) for r in rows]
    ys = [(100 * r["mean"]["test_accuracy"], 100 * r["std"]["test_accuracy"]) for r in rows]

    def span(pairs):
        low, high = min(m - s for m, s in pairs), max(m + s for m, s in pairs)
        pad = max(high - low, 1e-3) * 0.15
        return low - pad, high + pad

    (x0, x1), (y0, y1) = span(xs), span(ys)
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x, y):
        return left + (x - x0) / (x1 - x0) * plot_w, top + (y1 - y) / (y1 - y0) * plot_h

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for t in _ticks(x0, x1):
        x, _ = px(t, y0)
        draw.line([x, top + plot_h, x, top + plot_h + 5], fill="black")
        draw.text((x - 14, top + plot_h + 8), f"{t:.3g}", fill="black")
    for t in _ticks(y0, y1):
        _, y = px(x0, t)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((left - 50, y - 6), f"{t:.4g}", fill="black")
    draw.text((left + plot_w // 2 - 80, height - 25), "SSIM to the class prototypes", fill="black")
    draw.text((8, top - 16), "test accuracy (%)", fill="black")
    draw.text((8, 6), title[:110], fill="black")
    draw.text((left + plot_w + 15, top + plot_h - 14), "bars: ± 1 std over seeds", fill="black")
    for i, (row, (mx, sx), (my, sy)) in enumerate(zip(rows, xs, ys)):
        colour = _COLOURS[i % len(_COLOURS)]
        cx, cy = px(mx, my)
        (ax, _), (bx, _) = px(mx - sx, my), px(mx + sx, my)
        (_, ay), (_, by) = px(mx, my - sy), px(mx, my + sy)
        draw.line([ax, cy, bx, cy], fill=colour, width=2)
        draw.line([cx, ay, cx, by], fill=colour, width=2)
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour)
        ly = top + 10 + 20 * i
        draw.ellipse([left + plot_w + 15, ly, left + plot_w + 25, ly + 10], fill=colour)
        name = row["protocol"] if row["cam"] == "-" else f"{row['protocol']} ({row['cam']})"
        draw.text((left + plot_w + 32, ly - 1), f"{name}, {len(row['seeds'])} seeds", fill="black")
    canvas.save(path)
    return path
