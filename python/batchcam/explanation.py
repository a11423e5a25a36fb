"""`batchcam.explain`: CAM maps (Grad-CAM and its family) of a whole batch at inference, on the
model's device.

One forward with hooks on every target layer, one `torch.autograd.grad` of the summed target
scores with respect to all their outputs, one fused map per layer, then (as pytorch-grad-cam
does) each map upsampled bilinearly to the requested size, the layers combined, and every
sample's result scaled to [0, 1]:

    map_l = fused_cam(A_l, dScore/dA_l, method)         ReLU, min-max per sample, at layer size
    out   = minmax(combine_l(up(map_l)))               combine: mean (pytorch-grad-cam) or max

Because min-max scaling is affine and bilinear interpolation is a convex combination, one layer
gives exactly minmax(up(relu(sum_c w_c A_c))): the map every tool computes, once normalised and
resized the same way.
"""
import torch
from torch import nn

from .backend import get_backend
from .cam import call_model, channel_terms, check_grad_mode, check_method
from .targets import class_scores, select_output
from .capture import LayerCapture, as_channels_first, check_submodules, flatten_captured, layer_gradients
from .functional import fused_cam, upsample_maps
from .smoothing import augmented_batch, default_augmentations, mean_of_copies

COMBINE = ("mean", "max")


def _as_layers(target_layers):
    layers = [target_layers] if isinstance(target_layers, nn.Module) else list(target_layers)
    if not layers:
        raise ValueError("explain: give at least one target layer")
    return layers


def per_sample_minmax(maps, eps):
    """Each sample of (B, *S) maps scaled to [0, 1]: (m - min) / (max - min + eps)."""
    lo, hi = torch.aminmax(maps.flatten(1), dim=1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps - lo.view(shape)) / (hi - lo + eps).view(shape)


NORMALIZE = ("minmax", "none")


def explain(model: nn.Module, target_layers, images, targets=None, *, size="input", combine: str = "mean",
            reshape=None, relu: bool = True, normalize: str = "minmax", eps: float = 1e-7, method: str = "gradcam",
            layer_input: bool = False, sum_channels: bool = True, forward_args=(), forward_kwargs=None,
            output=None, smooth: str | None = None, augmentations=None, backend: str | None = None,
            return_logits: bool = False):
    """CAM maps for a batch, as a (B, *size) tensor on the images' device (float32, or float64 for
    float64 models): in [0, 1] by default, raw with normalize="none".

    Args:
        model: returns logits (B, classes) for `images`, or what `targets` scores (a
            segmentation (B, K, H, W), an embedding (B, D); `output=` picks it from a dict, a tuple
            or an object).
        target_layers: a module or a list of modules of `model`, each run once per forward. A
            layer may output (B, C, *S), (B, C) (no spatial dims: maps (B, 1), size="layer"), or
            a tuple or list of tensors (one target layer only: a tuple of maps, one per tensor).
        images: the batch, on the model's device; a tuple of tensors for a model of several
            inputs (called as model(*images, *forward_args, **forward_kwargs)).
        targets: None (predicted classes), a (B,) tensor of class indices, a target of
            `batchcam.targets` (`SegmentationTarget(classes, masks)`, `EmbeddingTarget(reference)`),
            any callable on the batched output returning (B,) scores, or B callables on one
            sample's output (pytorch-grad-cam's target objects).
        size: "input" (the images' spatial size), "layer" (each map at its layer's size: one
            target layer only), or a tuple of ints.
        combine: "mean" or "max" over the target layers.
        reshape: turns a layer output that is not (B, C, *S) into one, e.g. the (B, N, C)
            tokens of a vision transformer into (B, C, h, w); applied to the gradients too.
        relu, eps, method, backend: as in `batchcam.fused_cam` (method: "gradcam", "xgradcam",
            "gradcampp", "layercam", "hirescam" or "elementwise").
        normalize: "minmax" (each layer's map scaled to [0, 1] at its size, as pytorch-grad-cam
            does, and the result again) or "none" (the raw map: Captum's LayerGradCam).
        layer_input: explain what the layers take as input (their positional arguments) instead of
            their outputs (Captum's attribute_to_layer_input).
        sum_channels: False returns the per-channel terms (B, C, *S) before the channel sum
            (Captum's attr_dim_summation=False): one layer, size="layer", normalize="none".
        forward_args, forward_kwargs: more arguments of the model, after the images.
        output: the model's output to score: a key, an index or a callable
            (`batchcam.targets.select_output`), for models that return dicts, tuples or objects.
        smooth: None, or "tta": test-time augmentation, the mean of the maps of augmented copies
            of the images, each mapped back (pytorch-grad-cam's aug_smooth), all copies in one
            forward and one backward; size "input" only. Targets: indices or B callables are
            repeated for the copies; the prediction is each copy's own.
        augmentations: the copies of smooth="tta", (augment, map back) pairs of
            `batchcam.smoothing` (default: pytorch-grad-cam's flips x brightness 0.9, 1, 1.1).
        return_logits: also return the (detached) scored output of the forward: (maps, logits);
            with smooth="tta", the logits of every copy, (copies, B, classes).

    A layer that does not influence the target (no gradient reaches it) gets zero maps, as in
    Captum. The model's mode, its parameters (values and `.grad`), its buffers (BatchNorm
    statistics of a model in train mode) and its hooks are left as they were.

    Captum's `LayerGradCam(model, layer).attribute(x, target=t)` is
    `explain(model, layer, x, t, relu=False, normalize="none", size="layer")` (maps (B, *S)
    rather than (B, 1, *S)).
    """
    layers = _as_layers(target_layers)
    check_submodules(model, layers)
    check_grad_mode("explain")
    check_method(method, "explain")
    if combine not in COMBINE:
        raise ValueError(f"explain: combine must be one of {COMBINE}, got {combine!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"explain: normalize must be one of {NORMALIZE}, got {normalize!r}")
    if not (size in ("input", "layer") or (isinstance(size, (tuple, list, torch.Size)) and size
                                           and all(isinstance(n, int) and n > 0 for n in size))):
        raise ValueError(f"explain: size must be 'input', 'layer' or a tuple of positive ints, got {size!r}")
    if size == "layer" and len(layers) > 1:
        raise ValueError("explain: size='layer' needs a single target layer")
    if not sum_channels and (size != "layer" or normalize != "none"):
        raise ValueError("explain: sum_channels=False gives per-channel terms at the layer's size, unnormalised: "
                         "pass size='layer' and normalize='none'")
    if smooth is not None:
        return _smoothed(model, layers, images, targets, smooth, augmentations, return_logits,
                         dict(size=size, combine=combine, reshape=reshape, relu=relu, normalize=normalize, eps=eps,
                              method=method, layer_input=layer_input, sum_channels=sum_channels,
                              forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                              backend=backend))
    first_input = images[0] if isinstance(images, tuple) else images
    # The forward records no graph below the first target layer (nothing there needs a gradient):
    # it starts under no_grad and the capture hook turns grad mode on.
    capture = LayerCapture(layers, grad_from_capture=True, layer_input=layer_input)
    buffers = [b.detach().clone() for b in model.buffers()]  # a train-mode forward updates some
    capture.start()
    try:
        with torch.no_grad():
            logits = select_output(call_model(model, images, forward_args, forward_kwargs), output)
        captured = capture.stop()
        tensors = flatten_captured(captured)
        with torch.enable_grad():
            score = class_scores(logits, targets).sum()
            grads = layer_gradients(score, tensors)
    finally:
        capture.remove()
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
    several = any(isinstance(value, tuple) for value in captured)
    if several and len(layers) > 1:
        raise ValueError("explain: a target layer of several tensors (a tuple) needs to be the only target layer")
    backend = backend or get_backend()
    out_size = first_input.shape[2:] if size == "input" else None if size == "layer" else tuple(size)
    maps = []
    for a, g in zip(tensors, grads):
        a, g = a.detach(), g.detach()
        if reshape is not None:
            a, g = reshape(a), reshape(g)
        a, g = as_channels_first(a), as_channels_first(g)
        if not sum_channels:
            maps.append(channel_terms(a, g, relu, method))
            continue
        m = fused_cam(a, g, relu=relu, normalize=normalize, eps=eps, method=method, backend=backend)
        m = m.to(torch.promote_types(m.dtype, torch.float32))  # half-precision maps: float32
        if out_size is not None and m.dim() - 1 != len(out_size):
            raise ValueError(
                f"explain: a layer output of shape {tuple(a.shape)} read as (B, C, *S) gives maps of "
                f"{m.dim() - 1} spatial dims, but size has {len(out_size)}; for token outputs (B, N, C) "
                "pass reshape= to turn them into (B, C, h, w), for (B, C) outputs size='layer'"
            )
        if out_size is not None and tuple(m.shape[1:]) != tuple(out_size):
            m = upsample_maps(m, out_size)
        maps.append(m)

    def finish(m):
        return per_sample_minmax(m, eps) if normalize == "minmax" and sum_channels else m

    if several:
        result = tuple(finish(m) for m in maps)
    else:
        combined = maps[0]  # one layer: its map, no kernels spent on a mean or max of one
        if len(maps) > 1:
            stacked = torch.stack(maps)
            combined = stacked.mean(0) if combine == "mean" else stacked.amax(0)
        result = finish(combined)
    return (result, logits.detach()) if return_logits else result


def _smoothed(model, layers, images, targets, smooth, augmentations, return_logits, options):
    """explain(smooth="tta"): one explain of every augmented copy, maps mapped back and averaged."""
    if smooth != "tta":
        raise ValueError(f"explain: smooth must be None or 'tta', got {smooth!r}")
    if isinstance(images, tuple) or options["size"] != "input" or not options["sum_channels"]:
        raise ValueError("explain: smooth='tta' takes one image tensor, size='input' and summed channels")
    augmentations = augmentations or default_augmentations()
    batch, repeated = augmented_batch(images, targets, augmentations)
    maps, logits = explain(model, layers, batch, repeated, return_logits=True, **options)
    if isinstance(maps, tuple):
        raise ValueError("explain: smooth='tta' needs a target layer of one tensor")
    maps = mean_of_copies(maps, augmentations)
    return (maps, logits.view(len(augmentations), len(images), *logits.shape[1:])) if return_logits else maps
