"""Runs the command-line mistakes and accidents a user can make, each as its own process, and
writes docs/reliability.md: what each one does, its exit code and the last line it printed.

    python scripts/reliability_table.py          (about a minute)

tests/test_reliability.py asserts the same behaviour; this page shows a reader what it looks like.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from batchcam.data import write_idx

TINY = ["--train-limit", "100", "--test-limit", "50", "--batch-size", "50", "--no-progress"]


def batchcam(*argv, interrupt_when=None):
    """(exit code, last line of stderr) of `python -m batchcam argv`; SIGINT once
    `interrupt_when()` holds, if given."""
    proc = subprocess.Popen([sys.executable, "-m", "batchcam", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if interrupt_when is not None:
        while not interrupt_when() and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    lines = err.strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def idx_set(folder, n_train, n_test, classes):
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), np.arange(n) % classes)
    return folder


def cases(tmp):
    run = os.path.join(tmp, "run")
    ckpt = os.path.join(run, "checkpoint.pt")
    assert batchcam("train", "--epochs", "2", *TINY, "--out", run)[0] == 0
    good = open(ckpt, "rb").read()
    files = {"truncated.pt": good[: len(good) // 2], "random.pt": np.random.default_rng(0).bytes(4096)}
    state = torch.load(ckpt, weights_only=True)
    torch.save(state["model"], os.path.join(tmp, "state_dict.pt"))
    flipped = bytearray(good)
    at = flipped.find(state["model"]["body.0.0.weight"].numpy().tobytes()[:32])
    flipped[at + 5] ^= 0x10
    files["flipped.pt"] = bytes(flipped)
    for name, data in files.items():
        open(os.path.join(tmp, name), "wb").write(data)
    open(os.path.join(tmp, "a-file"), "w").write("x")
    p = lambda name: os.path.join(tmp, name)  # noqa: E731
    no_train = idx_set(p("no-train"), 0, 20, 10)
    letters = idx_set(p("letters"), 104, 52, 26)
    return [
        ("train into a finished run", "refused, run untouched", ("train", *TINY, "--out", run)),
        ("compare into a folder with a run", "refused", ("compare", *TINY, "--out", run)),
        ("explain --maps over its checkpoint", "refused, even with --overwrite",
         ("explain", ckpt, "--maps", ckpt, "--overwrite", "--out", p("e1"))),
        ("explain --maps maps.csv", "refused", ("explain", ckpt, "--maps", p("maps.csv"), "--out", p("e2"))),
        ("--lr 1e6 --optimizer sgd", "stops, keeps the last finite checkpoint",
         ("train", "--epochs", "3", "--lr", "1e6", "--optimizer", "sgd", *TINY, "--out", p("diverged"))),
        ("--out in a read-only folder", "refused before any work", ("train", *TINY, "--out", "/sys/run")),
        ("--out is a file", "refused before any work", ("train", *TINY, "--out", p("a-file"))),
        ("truncated checkpoint", "one line", ("explain", p("truncated.pt"), "--out", p("e3"))),
        ("random bytes as checkpoint", "one line", ("explain", p("random.pt"), "--out", p("e4"))),
        ("metrics.json as checkpoint", "one line", ("explain", os.path.join(run, "metrics.json"), "--out", p("e5"))),
        ("a folder as checkpoint", "one line, hint", ("explain", run, "--out", p("e6"))),
        ("a bare state_dict", "one line", ("explain", p("state_dict.pt"), "--out", p("e7"))),
        ("flipped bytes in the weights", "checksum mismatch", ("explain", p("flipped.pt"), "--out", p("e8"))),
        ("--resume with another model", "refused", ("train", "--resume", "--model", "resnet18", *TINY, "--out", run)),
        ("--resume with fewer epochs than done", "refused",
         ("train", "--resume", "--epochs", "1", *TINY, "--out", run)),
        ("0 training images", "one line", ("train", "--data-dir", no_train, "--out", p("r0"))),
        ("explain --limit -1", "usage error", ("explain", ckpt, "--limit", "-1")),
        ("explain --batch-size 0", "usage error", ("explain", ckpt, "--batch-size", "0")),
        ("--train-limit 5 (10 classes)", "one line", ("train", "--train-limit", "5", "--out", p("r5"))),
        ("--seed -1", "usage error", ("train", "--seed", "-1")),
        ("26 classes in --data-dir", "trains", ("train", "--data-dir", letters, "--epochs", "1", "--no-progress",
                                                "--out", p("letters-run"))),
        ("Ctrl-C during training", "one line, finished epochs kept",
         ("train", "--epochs", "50", *TINY, "--out", p("interrupted"))),
    ]


PAGE = """# Reliability

What the command line does with the mistakes and accidents a user can make: each case below was
run as its own process by `python scripts/reliability_table.py`, which wrote this page
(`tests/test_reliability.py` asserts the same behaviour, and more, on every test run).

- Nothing is overwritten unasked: a folder that holds files is refused unless `--resume`
  (continue the run in it) or `--overwrite` (replace it) is given; no output may replace an input.
- Output folders are checked before any work.
- Every error a user can cause ends in one line, `batchcam <command>: error: <what and where>`,
  with exit code 2 for a bad command line and 1 for a failure while running; `--debug` shows the
  traceback instead.
- Checkpoints carry a checksum of their contents, verified on load; a run stops before it saves
  weights that are not finite.

| case | expected | exit | last line printed |
|---|---|---|---|
"""


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, expected, argv in cases(tmp):
            ckpt = os.path.join(argv[-1], "checkpoint.pt")
            interrupt = (lambda: os.path.exists(ckpt)) if case.startswith("Ctrl-C") else None
            code, line = batchcam(*argv, interrupt_when=interrupt)
            line = line.replace(tmp, "…").replace("|", "\\|") if line else "(nothing on stderr)"
            rows.append(f"| {case} | {expected} | {code} | `{line}` |")
            print(rows[-1], flush=True)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "reliability.md")
    with open(path, "w") as f:
        f.write(PAGE + "\n".join(rows) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
