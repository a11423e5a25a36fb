"""Trainer: resume, NaN stop, bad options, torch.compile coverage, CLI, two processes."""
import json
import os
import subprocess
import sys

import pytest
import torch

from batchcam.cli import main as cli_main
from batchcam.models import SimpleCNN
from batchcam.training import TrainConfig, TrainingDiverged, load_checkpoint, train

TINY = dict(train_limit=200, test_limit=50, batch_size=64, progress=False)


def weights(path):
    return load_checkpoint(os.path.join(path, "checkpoint.pt"))["model"]


@pytest.fixture
def one_thread():
    """Some of torch's multi-threaded CPU kernels (convolution backward) are not bitwise
    reproducible run to run; with one thread the whole run is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_gives_the_uninterrupted_result(tmp_path, one_thread):
    straight = train(TrainConfig(epochs=2, out=str(tmp_path / "a"), **TINY)).metrics
    train(TrainConfig(epochs=1, out=str(tmp_path / "b"), **TINY))
    resumed = train(TrainConfig(epochs=2, out=str(tmp_path / "b"), resume=True, **TINY)).metrics
    for name, value in weights(tmp_path / "a").items():
        assert torch.equal(value, weights(tmp_path / "b")[name]), name
    assert straight["test_accuracy"] == resumed["test_accuracy"]
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TrainConfig(epochs=1, out=str(tmp_path), resume=True, **TINY))


class NaNAfter(SimpleCNN):
    """Returns NaN logits from the `after`-th call on."""

    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out * float("nan") if self.calls >= self.after else out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path)
    train(TrainConfig(epochs=1, out=out, **TINY))
    good = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, batch 2.*checkpoint.pt"):
        train(TrainConfig(epochs=3, out=out, resume=True, **TINY), model=NaNAfter(after=2))
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == good
    assert not [f for f in os.listdir(out) if ".tmp" in f]


@pytest.mark.parametrize("field,value,message", [
    ("protocol", "gradcam", "protocol must be one of"),
    ("model", "vgg", "model must be one of"),
    ("distance", "cosine", "distance must be one of"),
    ("cam_grad", "third-order", "cam_grad must be one of"),
    ("backend", "numpy", "backend must be one of"),
    ("epochs", 0, "epochs must be >= 1"),
    ("lr", -1.0, "lr must be > 0"),
])
def test_bad_options(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(out=str(tmp_path), **{**TINY, field: value}))


@pytest.mark.parametrize("protocol", ["baseline", "prototype", "batchcam"])
@pytest.mark.parametrize("cam_grad", ["second-order", "detached"])
def test_compile_covers_each_cam_grad(tmp_path, protocol, cam_grad):
    """--compile trains with both --cam-grad settings (body compiled; head too when detached)
    and gives the eager run's result."""
    if protocol == "baseline" and cam_grad == "detached":
        pytest.skip("no maps in the baseline")
    torch._dynamo.reset()
    cfg = dict(epochs=1, protocol=protocol, cam_grad=cam_grad, **{**TINY, "train_limit": 100})
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **cfg)).metrics
    compiled = train(TrainConfig(out=str(tmp_path / "compiled"), compile=True, **cfg)).metrics
    assert abs(eager["history"][0]["train_loss"] - compiled["history"][0]["train_loss"]) < 1e-3
    for name, value in weights(tmp_path / "eager").items():
        torch.testing.assert_close(weights(tmp_path / "compiled")[name], value, rtol=1e-3, atol=1e-4)


def test_cli_compare_writes_the_table(tmp_path, capsys):
    out = str(tmp_path)
    code = cli_main(["compare", "--epochs", "1", "--train-limit", "200", "--test-limit", "50",
                     "--batch-size", "64", "--no-progress", "--out", out])
    assert code == 0
    table = open(os.path.join(out, "compare.md")).read()
    for protocol in ("baseline", "prototype", "batchcam"):
        assert f"| {protocol} |" in table
        assert os.path.exists(os.path.join(out, protocol, "examples.png"))
    results = json.load(open(os.path.join(out, "compare.json")))["results"]
    assert [r["protocol"] for r in results] == ["baseline", "prototype", "batchcam"]
    assert "| protocol | CAM | test accuracy |" in capsys.readouterr().out


def test_cli_compare_of_several_cam_methods(tmp_path, capsys):
    """--cam-method a,b: the baseline once, the two map-loss protocols per method, each in its folder
    and its row of the table; a resumed run must keep its method."""
    out = str(tmp_path / "cmp")
    code = cli_main(["compare", "--epochs", "1", "--train-limit", "200", "--test-limit", "50", "--batch-size", "64",
                     "--no-progress", "--cam-method", "gradcam,layercam", "--out", out])
    assert code == 0
    results = json.load(open(os.path.join(out, "compare.json")))["results"]
    assert [(r["protocol"], r["config"]["cam_method"]) for r in results] == [
        ("baseline", "gradcam"), ("prototype", "gradcam"), ("batchcam", "gradcam"),
        ("prototype", "layercam"), ("batchcam", "layercam")]
    table = open(os.path.join(out, "compare.md")).read()
    assert "| batchcam | layercam |" in table and "| baseline | - |" in table
    assert os.path.exists(os.path.join(out, "batchcam-layercam", "examples.png"))
    assert cli_main(["train", "--epochs", "2", "--train-limit", "200", "--test-limit", "50", "--batch-size", "64",
                     "--no-progress", "--protocol", "batchcam", "--cam-method", "gradcampp", "--resume",
                     "--out", os.path.join(out, "batchcam-layercam")]) == 1
    assert "was trained with cam_method 'layercam', not 'gradcampp'" in capsys.readouterr().err
    assert cli_main(["compare", "--cam-method", "gradcam,scorecam", "--out", str(tmp_path / "x")]) == 2
    assert "methods must be among" in capsys.readouterr().err


def test_cli_reports_bad_input(tmp_path, capsys):
    assert cli_main(["train", "--distance", "cosine", "--out", str(tmp_path)]) == 2
    assert "argument --distance: invalid choice: 'cosine'" in capsys.readouterr().err
    assert cli_main(["train", "--device", "tpu9", "--out", str(tmp_path)]) == 1
    assert "'tpu9' is not a device name" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_without_cuda_says_so(tmp_path, capsys):
    for argv in (["train", "--out", str(tmp_path)], ["bench"], ["explain", str(tmp_path / "checkpoint.pt")]):
        assert cli_main([*argv, "--device", "cuda:1"]) == 1
        assert "this torch has no CUDA device" in capsys.readouterr().err


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every global batch; DDP averages
    the gradients, so the weights match one process's. (The prototype protocol: the Batch-CAM
    term compares samples within a process's own share of the batch, so it differs by design.)
    SGD: its steps scale with the gradients, so the weights differ by the rounding of the two
    ways of averaging; Adam's first steps are lr * sign(gradient), and flip on any rounding
    difference in a near-zero gradient component."""
    args = ["train", "--protocol", "prototype", "--epochs", "2", "--train-limit", "200", "--test-limit", "50",
            "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "batchcam", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "batchcam", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    for name, value in weights(tmp_path / "one").items():
        torch.testing.assert_close(weights(tmp_path / "two")[name], value, rtol=1e-4, atol=1e-5)
    m1 = json.load(open(tmp_path / "one" / "metrics.json"))
    m2 = json.load(open(tmp_path / "two" / "metrics.json"))
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert abs(m1["test_accuracy"] - m2["test_accuracy"]) <= 0.02
    assert abs(m1["ssim"] - m2["ssim"]) < 1e-3


def test_amp_bf16_trains(tmp_path):
    metrics = train(TrainConfig(epochs=1, amp=True, out=str(tmp_path), **TINY)).metrics
    assert metrics["history"][0]["train_loss"] > 0 and 0 <= metrics["ssim"] <= 1


def test_cli_explain_split_and_files(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    run = str(tmp_path / "run")
    train(TrainConfig(epochs=1, out=run, **TINY))
    out = str(tmp_path / "explain")
    assert cli_main(["explain", os.path.join(run, "checkpoint.pt"), "--limit", "0", "--batch-size", "300",
                     "--overlays", "3", "--maps", os.path.join(out, "maps.npy"), "--out", out]) == 0
    maps = np.load(os.path.join(out, "maps.npy"))
    assert maps.shape == (1000, 28, 28) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert len([f for f in os.listdir(out) if f.endswith(".png") and f != "grid.png"]) == 3
    image = tmp_path / "shoe.png"
    Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype(np.uint8)).save(image)
    assert cli_main(["explain", os.path.join(run, "checkpoint.pt"), str(image), "--maps",
                     str(tmp_path / "one.pt"), "--out", str(tmp_path / "files")]) == 0
    assert torch.load(tmp_path / "one.pt", weights_only=True).shape == (1, 28, 28)
    # Another method, raw maps (Captum's form): the same positions, not scaled to [0, 1]
    assert cli_main(["explain", os.path.join(run, "checkpoint.pt"), "--limit", "4", "--method", "layercam",
                     "--normalize", "none", "--maps", str(tmp_path / "raw.pt"), "--out", str(tmp_path / "raw")]) == 0
    raw = torch.load(tmp_path / "raw.pt", weights_only=True)
    assert raw.shape == (4, 28, 28) and raw.max() > 0 and len(os.listdir(tmp_path / "raw")) == 4 + 1  # + grid.png
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert cli_main(["explain", os.path.join(run, "checkpoint.pt"), str(tmp_path / "bad.png"),
                     "--out", str(tmp_path / "bad")]) == 1
    assert "not an image" in capsys.readouterr().err
