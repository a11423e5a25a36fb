"""A small RGB classifier of coloured shapes (square, disc, bar) on 64x64 images, to show
`batchcam explain` on a user's own model and image folder:

    python examples/shapes.py --out runs/shapes        # trains it (about a minute on 2 cores), writes
                                                      # runs/shapes/net.pt and 16 PNGs in images/
    python -m batchcam explain examples.shapes:net runs/shapes/images --weights runs/shapes/net.pt \
        --layer features.6 --classes examples/shapes-classes.txt --out runs/shapes/explain

`net` is the factory the import path names; the shapes are drawn at random positions, sizes and
colours on a dark, noisy background.
"""
import argparse
import os

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

CLASSES = ("square", "disc", "bar")


def net():
    """(B, 3, 64, 64) in [0, 1] -> logits of the 3 shapes; `features.6` is the last conv block."""
    features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()))
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(CLASSES))))
    return model


def draw(count, seed=0, size=64):
    """(count, size, size, 3) uint8 images, each one shape, and their (count,) labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.integers(0, 40, (count, size, size, 3), dtype=np.uint8)
    labels = np.arange(count) % len(CLASSES)
    for image, label in zip(images, labels):
        r = rng.integers(6, 12)
        cy, cx = rng.integers(r + 2, size - r - 2, 2)
        shape = [(abs(yy - cy) < r) & (abs(xx - cx) < r), (yy - cy) ** 2 + (xx - cx) ** 2 < r * r,
                 (abs(yy - cy) < r // 3 + 1) & (abs(xx - cx) < r + 4)][label]
        image[shape] = rng.integers(90, 256, 3)
    return images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/shapes", help="folder of net.pt and images/ (default: runs/shapes)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of 64 images (default: 400)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        images, labels = draw(64, seed=1000 + step)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        loss = F.cross_entropy(model(x), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = draw(16, seed=1)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy() == labels)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.out, "net.pt"))
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(os.path.join(args.out, "images", f"{i:02d}-{CLASSES[label]}.png"))
    print(f"trained {args.steps} steps, loss {loss.item():.3f}, accuracy on the 16 images {accuracy.mean():.2f}; "
          f"wrote {args.out}/net.pt and {args.out}/images/")


if __name__ == "__main__":
    main()
