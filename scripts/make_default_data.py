"""Writes the embedded default data set: a stratified slice of Fashion-MNIST (500 training and
100 test images per class), as IDX files under python/batchcam/default_data/.

    apt-get install dataset-fashion-mnist && python scripts/make_default_data.py

Fashion-MNIST is Copyright (c) 2017 Zalando SE, released under the MIT license (NOTICE beside
the files). The slice is chosen with a fixed seed, so the script reproduces the committed files.
"""
import os

from batchcam.data import DEFAULT_DIR, FASHION_MNIST_DIR, read_idx_split, stratified_indices, write_idx

SIZES = {"train": 5000, "test": 1000}  # stratified: the same number of images of each class
NOTICE = """Fashion-MNIST slice (500 training and 100 test images per class), made by
scripts/make_default_data.py from the original files of https://github.com/zalandoresearch/fashion-mnist

The MIT License (MIT)
Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def main():
    os.makedirs(DEFAULT_DIR, exist_ok=True)
    for split, size in SIZES.items():
        images, labels = read_idx_split(FASHION_MNIST_DIR, split)
        keep = stratified_indices(labels, size, seed=0)
        prefix = "train" if split == "train" else "t10k"
        write_idx(os.path.join(DEFAULT_DIR, f"{prefix}-images-idx3-ubyte.gz"), images[keep])
        write_idx(os.path.join(DEFAULT_DIR, f"{prefix}-labels-idx1-ubyte.gz"), labels[keep])
        print(f"{split}: {len(keep)} images")
    with open(os.path.join(DEFAULT_DIR, "NOTICE"), "w") as f:
        f.write(NOTICE)


if __name__ == "__main__":
    main()
