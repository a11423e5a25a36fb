"""Nothing lost, nothing silent: runs and inputs are never overwritten unasked, bad input and
interruptions end in one line naming the problem, divergence keeps the last good checkpoint."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from batchcam import explain
from batchcam.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from batchcam.cli import main as cli_main
from batchcam.data import write_idx
from batchcam.models import ResNet18, SimpleCNN
from batchcam.training import TrainConfig, TrainingDiverged, train

TINY = dict(train_limit=100, test_limit=50, batch_size=50, progress=False)
TINY_ARGS = ["--train-limit", "100", "--test-limit", "50", "--batch-size", "50", "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run: its folder and the bytes of each of its files."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli_main(["train", "--epochs", "1", *TINY_ARGS, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "examples.png", "metrics.json"]
    return out, snapshot(out)


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def run_cli(argv, capsys):
    """(exit code, stderr) of `batchcam argv`; stderr must be one line when the code is not 0."""
    code = cli_main(argv)
    err = capsys.readouterr().err
    if code:
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"batchcam {argv[0]}: error: "), err
        assert "Traceback" not in err, err
    return code, err


# --- 1, 2: finished runs, checkpoints and inputs are not overwritten ---------------------------


def test_train_refuses_a_finished_run(finished_run, capsys):
    out, files = finished_run
    code, err = run_cli(["train", "--epochs", "1", *TINY_ARGS, "--out", str(out)], capsys)
    assert code == 1 and f"{out}: not empty" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == files


def test_train_overwrite_replaces_the_run(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(epochs=2, out=str(out), **TINY))
    metrics = train(TrainConfig(epochs=1, out=str(out), overwrite=True, **TINY)).metrics
    assert metrics["epochs"] == 1 and load_checkpoint(str(out / "checkpoint.pt"))["epoch"] == 0


def test_compare_refuses_a_finished_comparison(tmp_path, capsys):
    (tmp_path / "compare.md").write_text("a finished table")
    code, err = run_cli(["compare", "--epochs", "1", *TINY_ARGS, "--out", str(tmp_path)], capsys)
    assert code == 1 and "not empty" in err and "--overwrite" in err
    assert (tmp_path / "compare.md").read_text() == "a finished table"


def test_explain_never_writes_over_its_checkpoint(finished_run, capsys, tmp_path):
    out, files = finished_run
    ckpt = str(out / "checkpoint.pt")
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(["explain", ckpt, "--maps", ckpt, "--out", str(tmp_path / "e"), *extra], capsys)
        assert code == 1, err
    assert "is an input of this command" in err
    assert snapshot(out) == files


def test_explain_refuses_existing_maps_and_other_suffixes(finished_run, capsys, tmp_path):
    out, _ = finished_run
    ckpt = str(out / "checkpoint.pt")
    maps = tmp_path / "maps.npy"
    maps.write_bytes(b"earlier maps")
    code, err = run_cli(["explain", ckpt, "--maps", str(maps), "--out", str(tmp_path / "e")], capsys)
    assert code == 1 and "exists; pass --overwrite" in err and maps.read_bytes() == b"earlier maps"
    code, err = run_cli(["explain", ckpt, "--maps", str(tmp_path / "maps.csv"), "--out", str(tmp_path / "e")], capsys)
    assert code == 1 and "must end in .npy or .pt" in err
    code, _ = run_cli(["explain", ckpt, "--maps", str(maps), "--overwrite", "--limit", "3",
                       "--out", str(tmp_path / "e")], capsys)
    assert code == 0 and np.load(maps).shape == (3, 28, 28)


def test_explain_refuses_a_non_empty_out(finished_run, capsys, tmp_path):
    out, files = finished_run
    code, err = run_cli(["explain", str(out / "checkpoint.pt"), "--out", str(out)], capsys)
    assert code == 1 and "not empty" in err
    assert snapshot(out) == files


# --- 3: divergence ------------------------------------------------------------------------------


class InfAfterLastStep(SimpleCNN):
    """Finite logits throughout, but a weight set to inf during the `at`-th forward: the loss of
    that step is finite and the weights after it are not."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        if self.calls == self.at:
            with torch.no_grad():
                self.head[2].bias[0] = float("inf")
        return out


def test_non_finite_weights_are_never_saved(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(epochs=1, out=str(out), **TINY))
    good = (out / "checkpoint.pt").read_bytes()
    # Epoch 2's last step (2 batches of 50 per epoch): its loss is finite, its weights are not.
    with pytest.raises(TrainingDiverged, match=r"head.2.bias became non-finite in epoch 2.*checkpoint.pt \(epoch 1\)"):
        train(TrainConfig(epochs=3, out=str(out), resume=True, **TINY), model=InfAfterLastStep(at=2))
    assert (out / "checkpoint.pt").read_bytes() == good


def test_divergence_from_a_huge_learning_rate(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["train", "--epochs", "3", "--lr", "1e6", "--optimizer", "sgd", *TINY_ARGS,
                         "--out", str(out)], capsys)
    assert code == 1 and "training stopped; the last good checkpoint is" in err
    if (out / "checkpoint.pt").exists():  # whatever was kept loads, with finite weights
        load_checkpoint(str(out / "checkpoint.pt"))


# --- 4: output paths checked before any work ----------------------------------------------------


def read_only_dir(tmp_path):
    """A directory this process cannot create files in: a mode-555 folder, or, for root (who
    ignores mode bits), /sys where it is mounted read-only."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    for candidate in (str(folder), "/sys"):
        try:
            open(os.path.join(candidate, "batchcam-probe"), "w").close()
        except OSError:
            return candidate
        os.remove(os.path.join(candidate, "batchcam-probe"))
    pytest.skip("no read-only directory here")


def test_unwritable_outputs_are_named_before_any_work(tmp_path, capsys, monkeypatch):
    import batchcam.training as training

    monkeypatch.setattr(training, "load_data", lambda config: pytest.fail("data loaded before the out check"))
    locked = read_only_dir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    for out in (locked, os.path.join(locked, "run"), tmp_path / "a-file", tmp_path / "a-file" / "run"):
        code, err = run_cli(["train", *TINY_ARGS, "--out", str(out)], capsys)
        assert code == 1 and f"error: {out}: " in err, err


# --- 5: one-line errors -------------------------------------------------------------------------


def damaged_checkpoints(folder, finished):
    good = (finished / "checkpoint.pt").read_bytes()
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    cases = {"truncated.pt": good[: len(good) // 2], "empty.pt": b"",
             "random.pt": np.random.default_rng(0).bytes(4096),
             "metrics.json": (finished / "metrics.json").read_bytes(),
             "examples.png": (finished / "examples.png").read_bytes()}
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    torch.save(state["model"], folder / "state_dict.pt")
    (folder / "a-dir").mkdir()
    return [folder / n for n in (*cases, "state_dict.pt", "a-dir")]


def test_damaged_checkpoints_give_one_line(finished_run, capsys, tmp_path):
    out, _ = finished_run
    for path in damaged_checkpoints(tmp_path, out):
        with pytest.raises(CheckpointError, match=str(path)) as info:
            load_checkpoint(str(path))
        assert "weights_only=False" not in str(info.value)
        code, err = run_cli(["explain", str(path), "--out", str(tmp_path / "e")], capsys)
        assert code == 1 and str(path) in err, err
        resume_dir = tmp_path / f"resume-{path.name}"
        resume_dir.mkdir()
        (resume_dir / "checkpoint.pt").symlink_to(path)
        code, err = run_cli(["train", "--resume", *TINY_ARGS, "--out", str(resume_dir)], capsys)
        assert code == 1 and "checkpoint.pt" in err, err


def test_resume_with_other_settings(finished_run, capsys, tmp_path):
    out, _ = finished_run
    for option, value in (("--model", "resnet18"), ("--optimizer", "sgd")):
        copy = tmp_path / option.strip("-")
        copy.mkdir()
        (copy / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())
        code, err = run_cli(["train", "--resume", option, value, *TINY_ARGS, "--out", str(copy)], capsys)
        assert code == 1 and f"was trained with {option[2:]}" in err, err


def test_resume_with_missing_keys(finished_run, capsys, tmp_path):
    out, _ = finished_run
    state = load_checkpoint(str(out / "checkpoint.pt"))
    del state["model"]["head.2.bias"]
    save_checkpoint(state, str(tmp_path / "checkpoint.pt"))
    code, err = run_cli(["train", "--resume", *TINY_ARGS, "--out", str(tmp_path)], capsys)
    assert code == 1 and "does not fit" in err and "head.2.bias" in err, err


def test_resume_with_fewer_epochs_than_done(tmp_path, capsys):
    train(TrainConfig(epochs=2, out=str(tmp_path / "run"), **TINY))
    code, err = run_cli(["train", "--resume", "--epochs", "1", *TINY_ARGS, "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "holds 2 epochs, more than the 1 asked for" in err


def idx_set(folder, n_train, n_test, classes=10):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(str(folder / f"{prefix}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(str(folder / f"{prefix}-labels-idx1-ubyte.gz"), np.arange(n) % classes)
    return folder


@pytest.mark.parametrize("n_train,n_test,split", [(0, 20, "train"), (40, 0, "test")])
def test_no_images(tmp_path, capsys, n_train, n_test, split):
    data = idx_set(tmp_path / "data", n_train, n_test)
    code, err = run_cli(["train", "--data-dir", str(data), "--no-progress", "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and f"the {split} split holds no images" in err and str(data) in err


@pytest.mark.parametrize("argv,message", [
    (["--limit", "-1"], "--limit: must be >= 0"),
    (["--batch-size", "-3"], "--batch-size: must be >= 1"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--overlays", "x"], "--overlays: 'x' is not an integer"),
])
def test_explain_bad_numbers_are_usage_errors(argv, message, capsys):
    code, err = run_cli(["explain", "checkpoint.pt", *argv], capsys)
    assert code == 2 and message in err


@pytest.mark.parametrize("argv,message", [
    (["--seed", "-1"], "--seed: must be >= 0"),
    (["--train-limit", "0"], "--train-limit: must be >= 1"),
    (["--distance", "cosine"], "--distance: invalid choice"),
])
def test_train_bad_options_are_usage_errors(argv, message, capsys):
    code, err = run_cli(["train", *argv], capsys)
    assert code == 2 and message in err


def test_train_limit_is_exact(tmp_path, capsys):
    from batchcam.training import load_data

    code, err = run_cli(["train", "--train-limit", "5", "--out", str(tmp_path / "a")], capsys)
    assert code == 1 and "train_limit 5 is below the 10 classes" in err
    train_data, test_data = load_data(TrainConfig(train_limit=25, test_limit=13))
    assert (len(train_data), len(test_data)) == (25, 13)
    assert sorted(torch.bincount(train_data.labels).tolist()) == [2] * 5 + [3] * 5


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(CheckpointError):
        cli_main(["explain", str(tmp_path / "missing.pt"), "--debug"])


def test_sigint_ends_in_one_line(tmp_path):
    # Epochs enough that no run finishes before the signal, however loaded the machine; SIGINT's
    # default action restored in the child (pytest-xdist's workers ignore it, and an ignored
    # SIGINT is inherited: Python then installs no KeyboardInterrupt handler).
    proc = subprocess.Popen([sys.executable, "-m", "batchcam", "train", "--epochs", "100000", *TINY_ARGS,
                             "--out", str(tmp_path / "run")], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith("batchcam train: error: interrupted"), err
    assert "Traceback" not in err
    load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))


# --- 6: any number of classes -------------------------------------------------------------------


def test_26_classes(tmp_path, capsys):
    data = idx_set(tmp_path / "letters", 104, 52, classes=26)
    out = tmp_path / "run"
    code, err = run_cli(["train", "--data-dir", str(data), "--epochs", "1", "--batch-size", "52", "--no-progress",
                         "--out", str(out)], capsys)
    assert code == 0, err
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert len(state["classes"]) == 26 and state["model"]["head.2.bias"].shape == (26,)
    code, err = run_cli(["explain", str(out / "checkpoint.pt"), "--limit", "30", "--maps", str(tmp_path / "m.pt"),
                         "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "m.pt", weights_only=True).shape == (30, 28, 28)


# --- 9, 10, 11: the library leaves models as they were and names what is wrong ------------------


def test_train_with_a_given_model_leaves_no_hooks(tmp_path):
    model = SimpleCNN()
    for i in range(2):
        train(TrainConfig(epochs=1, out=str(tmp_path / str(i)), **TINY), model=model)
    assert not [m for m in model.modules() if m._forward_hooks]


def test_explain_changes_no_buffer_of_a_train_mode_model():
    model = ResNet18().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, model.target_layer, torch.rand(4, 1, 28, 28))
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_messages_name_the_problem():
    from batchcam import BatchCAM, fused_cam

    a = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match="eps must be a number, got str '0.1'"):
        fused_cam(a, a, eps="0.1")
    with pytest.raises(TypeError, match="eps must be a number"):
        fused_cam(a, a, eps="0.1", backend="reference")
    model = SimpleCNN()
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="size must be 'input', 'layer' or a tuple of positive ints, got 'big'"):
        explain(model, model.target_layer, x, size="big")
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"explain: cannot run under torch.inference_mode\(\)"):
            explain(model, model.target_layer, x)
        with BatchCAM(model, model.target_layer) as cam, pytest.raises(RuntimeError, match="BatchCAM: cannot run"):
            cam(x)


def test_reference_on_empty_positions():
    a = torch.randn(2, 3, 0)
    assert torch.equal(torch.ops.batchcam.fused_cam(a, a), torch.empty(2, 0))
    from batchcam import fused_cam

    assert fused_cam(a, a, backend="reference").shape == (2, 0)


# --- 12: checksums ------------------------------------------------------------------------------


def test_flipped_bytes_in_the_weights_are_refused(finished_run, tmp_path):
    out, _ = finished_run
    raw = bytearray((out / "checkpoint.pt").read_bytes())
    weight = torch.load(out / "checkpoint.pt", weights_only=True)["model"]["body.0.0.weight"]
    at = raw.find(weight.numpy().tobytes()[:32])
    assert at > 0
    raw[at + 5] ^= 0x10
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(str(tmp_path / "flipped.pt"))


# --- kills at random points, then --resume ------------------------------------------------------


def test_sigkill_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    """10 runs killed at random points (before, during and after checkpoint writes), each then
    resumed (or, killed before its first checkpoint, started again): the weights equal those of a
    run never interrupted. One thread: CPU convolution backward is otherwise not reproducible."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "batchcam", "train", "--epochs", "5", *TINY_ARGS, "--test-limit", "10"]
    straight = subprocess.run([*args, "--out", str(tmp_path / "straight")], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))["model"]
    rng = random.Random(0)
    for i in range(10):
        out = tmp_path / f"killed-{i}"
        proc = subprocess.Popen([*args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 5.0))  # the whole run takes about 5 s, 2.5 of them starting up
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = ["--resume"] if (out / "checkpoint.pt").exists() else ["--overwrite"]
        done = subprocess.run([*args, *again, "--out", str(out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        got = load_checkpoint(str(out / "checkpoint.pt"))["model"]
        assert all(torch.equal(got[k], v) for k, v in expected.items()), f"run {i} differs after resume"
        assert json.loads((out / "metrics.json").read_text())["epochs"] == 5
