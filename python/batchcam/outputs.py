"""Output paths checked before any work: nothing finished is overwritten without being asked to,
and a path that cannot be written is named at once, not after an epoch."""
import os
import tempfile


class OutputError(ValueError):
    """An output path that would overwrite something, or cannot be written; names the path."""


def prepare_output_dir(path: str, *, resume: bool = False, overwrite: bool = False,
                       resumable: str | None = None) -> str:
    """Makes sure `path` is a directory this process can write, creating it if needed.

    A directory that already holds files is refused unless `resume` (continue the run in it) or
    `overwrite` (replace what it holds) is given; where it holds the file named `resumable` (a
    checkpoint, a comparison's plan), the refusal mentions --resume.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not (resume or overwrite):
        names = sorted(os.listdir(path))
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        advice = ("pass --resume to continue the run in it or --overwrite to replace it"
                  if resumable in names else "pass --overwrite to write into it anyway")
        raise OutputError(f"{path}: not empty ({shown}); {advice}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # the probe: can a file be created here?
            pass
    except OSError as e:
        raise OutputError(f"{path}: cannot write there ({e.strerror or e})") from None
    return path


def check_output_file(path: str, *, suffixes: tuple, protected=(), overwrite: bool = False) -> str:
    """Checks a single output file: one of `suffixes`, not one of the `protected` inputs (never,
    whatever `overwrite` says), not an existing file unless `overwrite`, in a writable folder."""
    if not path.endswith(suffixes):
        raise OutputError(f"{path}: must end in {' or '.join(suffixes)}")
    for other in protected:
        if os.path.exists(other) and os.path.exists(path) and os.path.samefile(path, other):
            raise OutputError(f"{path}: is an input of this command ({other}); choose another file")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory")
    if os.path.exists(path) and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    prepare_output_dir(os.path.dirname(os.path.abspath(path)), overwrite=True)
    return path
