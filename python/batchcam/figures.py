"""Pictures: map overlays and the per-run grid (input, overlay, reconstruction, prototype)."""
import numpy as np
import torch
from PIL import Image, ImageDraw

from .cam import BatchCAM
from .functional import upsample_maps
from .losses import reconstruct

# "jet"-like colour map: value -> (r, g, b), piecewise linear through these stops
_STOPS = np.array([0.0, 0.35, 0.5, 0.65, 1.0])
_COLOURS = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 128], [255, 255, 0], [200, 0, 0]], dtype=np.float64)


def colourise(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    v = np.clip(np.nan_to_num(values), 0, 1)
    rgb = [np.interp(v, _STOPS, _COLOURS[:, k]) for k in range(3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A grey image (H, W) in [0, 1] with its map (H, W) in [0, 1] blended on top: (H, W, 3) uint8."""
    grey = np.repeat((np.clip(image, 0, 1) * 255)[..., None], 3, axis=-1)
    return ((1 - alpha) * grey + alpha * colourise(cam)).astype(np.uint8)


def _tile(rgb_or_grey: np.ndarray, scale: int) -> Image.Image:
    if rgb_or_grey.ndim == 2:
        rgb_or_grey = (np.clip(rgb_or_grey, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(rgb_or_grey).resize((rgb_or_grey.shape[1] * scale, rgb_or_grey.shape[0] * scale),
                                               Image.NEAREST)


def example_grid(model, data, prototypes, backend, path, per_class=2, scale=3, method="gradcam"):
    """Writes a PNG: for `per_class` test samples of every class, one row of input, map overlay,
    reconstruction up(cam) * x, and the class prototype. Maps are for the true class."""
    picks = torch.cat([torch.nonzero(data.labels == c)[:per_class, 0] for c in range(len(data.classes))])
    device = prototypes.device
    x, y = data.images[picks].to(device), data.labels[picks].to(device)
    was_training = model.training
    model.eval()
    with BatchCAM(model, model.target_layer, backend=backend, method=method) as cam:
        _, maps = cam(x, y)
    model.train(was_training)
    maps = maps.detach().float()
    up = upsample_maps(maps, x.shape[2:]).cpu().numpy()
    recon = reconstruct(maps, x).detach().cpu().numpy()[:, 0]
    images, protos = x.cpu().numpy()[:, 0], prototypes[y].cpu().numpy()[:, 0]
    columns = ("input", "map", "reconstruction", "prototype")
    h, w = images.shape[1] * scale, images.shape[2] * scale
    label_w, header_h = 90, 16
    canvas = Image.new("RGB", (label_w + w * len(columns), header_h + h * len(picks)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(columns):
        draw.text((label_w + j * w + 2, 2), title, fill="black")
    for i in range(len(picks)):
        top = header_h + i * h
        draw.text((2, top + h // 2 - 5), data.classes[int(y[i])][:14], fill="black")
        tiles = (images[i], overlay(images[i], up[i]), recon[i], protos[i])
        for j, tile in enumerate(tiles):
            canvas.paste(_tile(tile, scale), (label_w + j * w, top))
    canvas.save(path)
    return path
