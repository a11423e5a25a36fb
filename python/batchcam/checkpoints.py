"""Checkpoints and run files: written atomically, read back with one-line errors.

A checkpoint is the dict `batchcam train` writes after each epoch ("model", "optimizer", "epoch",
"history", "config", "classes") plus "sha256", a digest of everything else in it: a file whose
bytes changed after it was written (a flipped bit in the weights) is refused on load, not used.
Files are written to a temporary name beside the target and renamed, so a crash or a kill never
leaves half a file. Loading uses `torch.load(weights_only=True)`: no code from the file runs.
"""
import hashlib
import os

import torch

REQUIRED_KEYS = ("model", "epoch", "config", "classes")


class CheckpointError(ValueError):
    """A file that is not a readable, intact batchcam checkpoint; the message names the file."""


def state_digest(obj) -> str:
    """sha256 over a nest of dicts, lists, tensors and plain values, in a fixed order (dict keys
    sorted): tensors by dtype, shape and bytes, everything else by repr."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for key in sorted(x, key=repr):
                h.update(repr(key).encode())
                walk(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                walk(item)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def atomic_write(path, write):
    """write(tmp) fills a temporary file beside `path`, which then replaces `path` in one rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text, path):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def save_checkpoint(state: dict, path: str) -> None:
    """Writes a checkpoint dict with its digest, atomically."""
    atomic_save({**state, "sha256": state_digest(state)}, path)


def _first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0] if text else type(error).__name__


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Reads and verifies a checkpoint written by `save_checkpoint`; raises CheckpointError naming
    `path` and the problem for anything else (missing, a directory, empty, truncated, not a
    checkpoint, a bare state_dict, changed bytes, non-finite weights)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        inside = os.path.join(path, "checkpoint.pt")
        hint = f"; did you mean {inside}?" if os.path.exists(inside) else ""
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load raises many types for foreign or damaged files
        if "Weights only load failed" in str(e):
            problem = "holds objects other than tensors and plain values"
        else:
            problem = _first_sentence(e)
        raise CheckpointError(f"{path}: not a batchcam checkpoint ({problem})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a batchcam checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        bare = state and all(isinstance(v, torch.Tensor) for v in state.values())
        what = "a bare state_dict" if bare else f"no {', '.join(repr(k) for k in missing)}"
        raise CheckpointError(f"{path}: not a batchcam checkpoint ({what}; checkpoints come from `batchcam train`)")
    stored = state.pop("sha256", None)
    if stored is None:
        raise CheckpointError(f"{path}: has no checksum (not written by this version of batchcam)")
    if stored != state_digest(state):
        raise CheckpointError(f"{path}: checksum mismatch: the file changed after it was written (damaged copy?)")
    bad = [name for name, t in state["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {bad[0]} (and {len(bad) - 1} more): a diverged run")
    return state


def load_into(target, state_dict, path, what):
    """target.load_state_dict(state_dict) (a model or an optimizer), a mismatch raised as a
    CheckpointError naming `path` and `what` the weights were meant for."""
    try:
        target.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit {what} ({' '.join(str(e).split())})") from None


def checkpoint_epochs(state: dict) -> int:
    """Epochs a checkpoint holds (its "epoch" counts from 0)."""
    return int(state["epoch"]) + 1

