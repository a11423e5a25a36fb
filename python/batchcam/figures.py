"""Pictures: map overlays (`batchcam.overlay`, on the images' device), grids of them with titles
and a colour bar, and the per-run grid (input, overlay, reconstruction, prototype)."""
import numpy as np
import torch
from PIL import Image, ImageDraw

from .cam import BatchCAM
from .functional import upsample_maps
from .losses import reconstruct

# matplotlib's segment data: per channel, (position, value) stops, linear in between
_SEGMENTS = {
    "jet": (((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
            ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
            ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0))),
    "hot": (((0, 0.0416), (0.365079, 1), (1, 1)),
            ((0, 0), (0.365079, 0), (0.746032, 1), (1, 1)),
            ((0, 0), (0.746032, 0), (1, 1))),
    "gray": (((0, 0), (1, 1)),) * 3,
}
COLORMAPS = tuple(_SEGMENTS)


def colormap_table(name: str) -> torch.Tensor:
    """(256, 3) uint8 colours of a colour map: "jet", "hot" or "gray" (matplotlib's)."""
    if name not in _SEGMENTS:
        raise ValueError(f"colormap must be one of {COLORMAPS}, got {name!r}")
    positions = np.linspace(0, 1, 256)
    channels = [np.interp(positions, *zip(*stops)) for stops in _SEGMENTS[name]]
    return torch.from_numpy(np.rint(np.stack(channels, 1) * 255).astype(np.uint8))


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 1 | 3, H, W) float in [0, 1] from float in [0, 1] or uint8, (B, H, W) grey included."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"overlay: images must be (B, 1 or 3, H, W) or (B, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    return images.float().clamp(0, 1)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images as `overlay` takes them -> (B, 3, H, W) uint8 (grey repeated)."""
    return (_as_float_images(images).expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)


def overlay(images: torch.Tensor, maps: torch.Tensor, colormap: str = "jet", alpha: float = 0.5) -> torch.Tensor:
    """Maps blended over their images: (B, 3, H, W) uint8 on the images' device.

    images: (B, 3, H, W) RGB or (B, 1, H, W) / (B, H, W) grey, float in [0, 1] or uint8.
    maps: (B, h, w) in [0, 1] (explain's default), resized bilinearly to (H, W) when they differ;
        NaN counts as 0. Each pixel is (1 - alpha) * image + alpha * colormap(map).
    """
    x = _as_float_images(images)
    if maps.dim() != 3 or len(maps) != len(x):
        raise ValueError(f"overlay: maps must be ({len(x)}, h, w) for {len(x)} images, got {tuple(maps.shape)}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    maps = maps.float().to(x.device)
    if maps.shape[1:] != x.shape[2:]:
        maps = upsample_maps(maps, x.shape[2:])
    index = (torch.nan_to_num(maps).clamp(0, 1) * 255).round().long()
    colours = colormap_table(colormap).to(x.device)[index].permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
    blended = (1 - alpha) * x.expand(-1, 3, -1, -1) + alpha * colours
    return (blended * 255).round().clamp(0, 255).to(torch.uint8)


def _image(rgb: torch.Tensor, scale: int) -> Image.Image:
    """(3, H, W) uint8 tensor -> PIL image, enlarged `scale` times (nearest)."""
    picture = Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy())
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def _colour_bar(canvas, left, top, height, colormap):
    """A vertical bar of the colour map from 0 (bottom) to 1 (top), with its two ends labelled."""
    table = colormap_table(colormap).numpy()[::-1]
    bar = Image.fromarray(np.repeat(table[:, None, :], 12, axis=1)).resize((12, height), Image.BILINEAR)
    canvas.paste(bar, (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((left + 16, top - 2), "1", fill="black")
    draw.text((left + 16, top + height - 10), "0", fill="black")


def overlay_grid(images, maps, path, titles=None, columns: int = 8, scale: int | None = None,
                 colormap: str = "jet", alpha: float = 0.5):
    """Writes a PNG grid of overlays (`overlay(images, maps)`), a title above each (e.g. the class
    explained) and a colour bar; small images are enlarged to about 112 pixels. Returns `path`."""
    return picture_grid(overlay(images, maps, colormap, alpha), path, titles, columns, scale, colormap)


def picture_grid(pictures, path, titles=None, columns: int = 8, scale: int | None = None, colormap: str = "jet"):
    """overlay_grid of overlays already made: (N, 3, H, W) uint8 pictures, the colour bar's map."""
    if titles is not None and len(titles) != len(pictures):
        raise ValueError(f"overlay_grid: {len(titles)} titles for {len(pictures)} images")
    height, width = pictures.shape[2:]
    scale = scale or max(1, 112 // max(height, width))
    tile_w, tile_h, title_h = width * scale, height * scale, 14 if titles is not None else 0
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    canvas = Image.new("RGB", (columns * (tile_w + 4) + 40, rows * (tile_h + title_h + 4) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for i, picture in enumerate(pictures):
        left, top = (i % columns) * (tile_w + 4), 4 + (i // columns) * (tile_h + title_h + 4)
        if titles is not None:
            draw.text((left + 1, top), str(titles[i])[: max(4, tile_w // 6)], fill="black")
        canvas.paste(_image(picture, scale), (left, top + title_h))
    _colour_bar(canvas, columns * (tile_w + 4) + 4, 4 + title_h, min(tile_h * rows, 200), colormap)
    canvas.save(path)
    return path


def run_maps(model, target_layer, x, y, backend, method):
    """Maps of model at target_layer for the classes y, the model's mode left as it was."""
    was_training = model.training
    model.eval()
    with BatchCAM(model, target_layer, backend=backend, method=method) as cam:
        _, maps = cam(x, y)
    model.train(was_training)
    return maps.detach().float()


def class_examples(data, per_class):
    """Indices of the first `per_class` samples of every class of a split."""
    return torch.cat([torch.nonzero(data.labels == c)[:per_class, 0] for c in range(len(data.classes))])


def example_grid(model, data, prototypes, backend, path, per_class=2, scale=3, method="gradcam"):
    """Writes a PNG: for `per_class` test samples of every class, one row of input, map overlay,
    reconstruction up(cam) * x, and the class prototype. Maps are for the true class."""
    picks = class_examples(data, per_class)
    device = prototypes.device
    x, y = data.images[picks].to(device), data.labels[picks].to(device)
    maps = run_maps(model, model.target_layer, x, y, backend, method)
    tiles = [as_rgb(x), overlay(x, maps), as_rgb(reconstruct(maps, x).detach()), as_rgb(prototypes[y])]
    return _rows_figure(tiles, [data.classes[int(c)] for c in y], ("input", "map", "reconstruction", "prototype"),
                        path, scale)


def _rows_figure(columns, row_labels, column_titles, path, scale):
    """PNG: one row per sample, one column per list of (B, 3, H, W) uint8 pictures, titled."""
    height, width = columns[0].shape[2:]
    h, w = height * scale, width * scale
    label_w, header_h = 90, 16
    canvas = Image.new("RGB", (label_w + w * len(columns), header_h + h * len(row_labels)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(column_titles):
        draw.text((label_w + j * w + 2, 2), title[: max(4, w // 6)], fill="black")
    for i, label in enumerate(row_labels):
        top = header_h + i * h
        draw.text((2, top + h // 2 - 5), label[:14], fill="black")
        for j, pictures in enumerate(columns):
            canvas.paste(_image(pictures[i], scale), (label_w + j * w, top))
    canvas.save(path)
    return path


def protocols_figure(runs, data, path, per_class=1, scale=3):
    """Writes a PNG comparing runs on the same test images: a row per image (one per class), the
    input, then each run's map overlay for the true class. `runs`: (title, model, backend,
    method), the models on one device."""
    picks = class_examples(data, per_class)
    device = next(runs[0][1].parameters()).device
    x, y = data.images[picks].to(device), data.labels[picks].to(device)
    columns = [as_rgb(x)]
    columns += [overlay(x, run_maps(model, model.target_layer, x, y, backend, method))
                for _, model, backend, method in runs]
    return _rows_figure(columns, [data.classes[int(c)] for c in y], ["input", *[r[0] for r in runs]], path, scale)
