"""compare --seeds: the statistics over seeds (against scipy), the tables' verdicts, the layout,
and a comparison interrupted at any point continued by --resume without repeating finished runs."""
import json
import os
import shutil

import numpy as np
import pytest

from batchcam.cli import main as cli_main
from batchcam.study import study_tables, summarize, t_quantile_975

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 5, 29, 30, 31, 45, 100, 1000])
def test_t_quantile_matches_scipy(df):
    assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-6)


def fake_run(protocol, seed, accuracy, ssim, cam="gradcam"):
    return {"protocol": protocol, "test_accuracy": accuracy, "l1": 1 - ssim, "l2": (1 - ssim) / 2, "ssim": ssim,
            "config": {"seed": seed, "cam_method": cam}}


def test_summary_is_the_paired_t_interval():
    rng = np.random.default_rng(0)
    base_acc, base_ssim = rng.uniform(0.8, 0.9, 4), rng.uniform(0.1, 0.2, 4)
    acc, ssim = base_acc + rng.normal(-0.005, 0.004, 4), base_ssim + rng.normal(0.15, 0.02, 4)
    runs = [fake_run("baseline", s, base_acc[s], base_ssim[s]) for s in range(4)]
    runs += [fake_run("batchcam", s, acc[s], ssim[s], cam="layercam") for s in range(4)]
    base, row = summarize(runs)
    assert (base["protocol"], base["cam"], row["cam"]) == ("baseline", "-", "layercam")
    assert base["diff"] == {} and row["seeds"] == [0, 1, 2, 3]
    assert row["mean"]["test_accuracy"] == pytest.approx(acc.mean())
    assert row["std"]["ssim"] == pytest.approx(np.std(ssim, ddof=1))
    for metric, ours, theirs in (("test_accuracy", acc, base_acc), ("ssim", ssim, base_ssim)):
        d = ours - theirs
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert row["diff"][metric]["mean"] == pytest.approx(d.mean())
        assert (row["diff"][metric]["low"], row["diff"][metric]["high"]) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize("shift, within", [(-0.002, "yes"), (-0.03, "no"), (-0.01, "undetermined")])
def test_verdicts_follow_the_whole_interval(shift, within):
    """Accuracy within 1 point only when the whole interval is above -1 point; SSIM raised only
    when the whole interval is above 0."""
    noise = np.array([-0.001, 0.0, 0.001])
    runs = [fake_run("baseline", s, 0.85, 0.2) for s in range(3)]
    runs += [fake_run("prototype", s, 0.85 + shift + noise[s], 0.3 + noise[s]) for s in range(3)]
    table = study_tables(summarize(runs))
    assert table.splitlines()[-1].endswith(f"| {within} | yes |")


def test_one_seed_has_no_interval():
    table = study_tables(summarize([fake_run("baseline", 0, 0.8, 0.2), fake_run("batchcam", 0, 0.8, 0.3)]))
    assert table.splitlines()[-1] == "| batchcam | gradcam | - | - | - | - | - | - |"


TINY = ["--epochs", "1", "--train-limit", "200", "--test-limit", "50", "--batch-size", "64", "--no-progress"]


def test_compare_seeds_layout_and_resume(tmp_path, capsys):
    out = str(tmp_path / "study")
    assert cli_main(["compare", *TINY, "--seeds", "3,1", "--out", out]) == 0
    for seed in (3, 1):
        for run in ("baseline", "prototype", "batchcam"):
            assert os.path.exists(os.path.join(out, f"seed-{seed}", run, "metrics.json"))
        assert "| batchcam | gradcam |" in open(os.path.join(out, f"seed-{seed}", "compare.md")).read()
    first = json.load(open(os.path.join(out, "compare.json")))
    assert first["seeds"] == [3, 1] and [r["seeds"] for r in first["summary"]] == [[1, 3]] * 3
    assert os.path.getsize(os.path.join(out, "compare.png")) > 0
    assert "| protocol | CAM | Δ accuracy (points) [95% CI] |" in capsys.readouterr().out

    # Interrupted: one run lost its metrics (killed while evaluating), one never started.
    finished = os.path.join(out, "seed-3", "baseline", "checkpoint.pt")
    stamp = os.stat(finished).st_mtime_ns
    os.remove(os.path.join(out, "seed-1", "prototype", "metrics.json"))
    shutil.rmtree(os.path.join(out, "seed-1", "batchcam"))
    assert cli_main(["compare", *TINY, "--seeds", "3,1", "--out", out]) == 1
    assert "pass --resume to continue" in capsys.readouterr().err
    assert cli_main(["compare", *TINY, "--seeds", "3,1", "--out", out, "--resume"]) == 0
    assert os.stat(finished).st_mtime_ns == stamp  # a finished run is read back, not trained again
    again = json.load(open(os.path.join(out, "compare.json")))
    assert len(again["results"]) == 6
    assert os.path.exists(os.path.join(out, "seed-1", "batchcam", "metrics.json"))
    assert [r["protocol"] for r in again["results"]] == [r["protocol"] for r in first["results"]]

    assert cli_main(["compare", *TINY, "--seeds", "3,1", "--lr", "0.01", "--out", out, "--resume"]) == 1
    assert "was started with lr 0.001, not 0.01" in capsys.readouterr().err
    assert cli_main(["compare", *TINY, "--seeds", "1,3", "--out", out, "--resume"]) == 1
    assert "was started with seeds [3, 1], not [1, 3]" in capsys.readouterr().err
    assert cli_main(["compare", *TINY, "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "no comparison in" in capsys.readouterr().err
    assert cli_main(["compare", "--seeds", "0,x", "--out", out]) == 2
    assert "seeds: 'x' is not an integer" in capsys.readouterr().err
