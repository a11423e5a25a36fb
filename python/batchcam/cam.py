"""`BatchCAM`: CAM maps (Grad-CAM and its family) of a whole batch from one forward and one
`torch.autograd.grad`."""
import torch
from torch import nn

from .backend import validate_backend
from .capture import LayerCapture, as_channels_first, check_submodules, flatten_captured, layer_gradients
from .definitions import METHODS
from .functional import fused_cam
from .reference import channel_sum_terms
from .targets import class_scores, select_output


def check_method(method, caller: str) -> None:
    if method not in METHODS:
        raise ValueError(f"{caller}: method must be one of {METHODS}, got {method!r}")


def check_grad_mode(caller: str) -> None:
    """Maps need a gradient: refuse to run under torch.inference_mode, where none can be taken."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{caller}: cannot run under torch.inference_mode(), which disables the gradient "
                           "the maps are made of; call it outside (it records no graph it does not need)")


def channel_terms(activations, gradients, relu=True, method="gradcam"):
    """The (B, C, *S) per-channel terms whose sum over channels is the method's score (Grad-CAM's
    w_c A_c; Captum's attr_dim_summation=False), rectified elementwise if `relu`. Plain PyTorch ops
    (batchcam.reference), differentiable; a tensor of C times the map's size, so not fused."""
    terms = channel_sum_terms(activations, gradients, method).to(activations.dtype)
    return torch.relu(terms) if relu else terms


def call_model(model, inputs, forward_args=(), forward_kwargs=None):
    """model(*inputs, *forward_args, **forward_kwargs): `inputs` a tensor or a tuple of tensors (a
    model of several inputs), the extra arguments Captum's additional_forward_args."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return model(*inputs, *forward_args, **(forward_kwargs or {}))


class BatchCAM:
    """Batched CAM maps of `model` at `target_layer` (the paper's batch Grad-CAM, and its family).

    One call runs one forward of the batch, captures the target layer's output A (B, C, *S), takes
    one `torch.autograd.grad` of the summed target-class scores with respect to A, and returns the
    logits and the maps `fused_cam(A, dScore/dA)` of shape (B, *S).

    Args:
        model: the network, returning logits (B, num_classes) or what `targets` scores; called
            as `model(x)`, or `model(*x, *forward_args, **forward_kwargs)` (see `__call__`).
        target_layer: a submodule of `model`. Its output may be (B, C, *S), (B, C) (no spatial
            dims: the gradient itself is the weight, maps (B, 1)), or a tuple or list of such
            tensors (maps for each, as a tuple).
        backend: "fused" (default), "triton", "cuda" or "reference"; only the map op changes.
        relu, normalize, eps, method: as in `batchcam.fused_cam` (method: "gradcam", "xgradcam",
            "gradcampp", "layercam", "hirescam" or "elementwise").
        layer_input: explain what the layer takes as input (its positional arguments) instead of
            its output (Captum's attribute_to_layer_input); maps for each input.
        sum_channels: False returns the per-channel terms (B, C, *S) before the channel sum
            (`channel_terms`, Captum's attr_dim_summation=False), unnormalised.
        reshape: turns a layer output that is not (B, C, *S) into one, e.g. the (B, N, C) tokens
            of a vision transformer into (B, C, h, w); applied to the gradients too.
        output: picks the tensor to score from a model that returns a dict, tuple or object
            (`batchcam.targets.select_output`: a key, an index or a callable).

    A layer that does not influence the target (no gradient reaches it) gets zero maps, as in
    Captum. The model's train/eval mode is restored after each call (`train=` may set it for the
    call), no parameter `.grad` is written, no tensor is kept between calls, and the hook on
    `target_layer` is removed by `close()` or on leaving a `with` block.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module, backend: str = "fused", *,
                 relu: bool = True, normalize: str = "minmax", eps: float = 1e-7, method: str = "gradcam",
                 layer_input: bool = False, sum_channels: bool = True, reshape=None, output=None):
        check_submodules(model, [target_layer])
        check_method(method, "BatchCAM")
        self.model = model
        self.target_layer = target_layer
        self.backend = validate_backend(backend)
        self.cam_options = dict(relu=relu, normalize=normalize, eps=eps, method=method)
        self.sum_channels, self.reshape, self.output = sum_channels, reshape, output
        self._capture = LayerCapture([target_layer], layer_input=layer_input)

    def __call__(self, x, targets: torch.Tensor | None = None, *, create_graph: bool = False,
                 train: bool | None = None, forward_args=(), forward_kwargs=None):
        """Returns (output, maps) for the batch `x`: the model's (selected) output, its logits for a
        classifier, and maps (B, *S), or a tuple of them for a layer of several tensors.

        x: the batch, or a tuple of tensors for a model of several inputs.
        targets: None for the predicted classes, a (B,) tensor of class indices, or a target of
            `batchcam.targets` (SegmentationTarget, EmbeddingTarget, any callable returning (B,)).
        create_graph: True keeps the graph of the gradients, so a loss on the maps also trains
            through them (second order); False treats the channel weights as constants.
        train: None runs the model in its current mode; True/False sets it for this call.
        forward_args, forward_kwargs: more arguments of the model, after x.
        """
        if not self._capture.handles:
            raise RuntimeError("BatchCAM: used after close()")
        check_grad_mode("BatchCAM")
        was_training = self.model.training
        self._capture.start()
        try:
            if train is not None:
                self.model.train(train)
            with torch.enable_grad():
                logits = select_output(call_model(self.model, x, forward_args, forward_kwargs), self.output)
                (captured,) = self._capture.stop()
                tensors = flatten_captured([captured])
                score = class_scores(logits, targets).sum()
                # retain_graph: the logits stay differentiable for a loss beside the maps'.
                gradients = layer_gradients(score, tensors, create_graph=create_graph, retain_graph=True)
                maps = [self.maps(a, g) for a, g in zip(tensors, gradients)]
            return logits, tuple(maps) if isinstance(captured, tuple) else maps[0]
        finally:
            self._capture.outputs = None
            self.model.train(was_training)

    def maps(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """The map op: (B, C, *S) (or (B, C)) activations and gradients -> (B, *S) (or (B, 1))."""
        if self.reshape is not None:
            activations, gradients = self.reshape(activations), self.reshape(gradients)
        activations, gradients = as_channels_first(activations), as_channels_first(gradients)
        if not self.sum_channels:
            return channel_terms(activations, gradients, self.cam_options["relu"], self.cam_options["method"])
        return fused_cam(activations, gradients, backend=self.backend, **self.cam_options)
    def close(self) -> None:
        """Removes the hook from the target layer."""
        self._capture.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
