"""Hooks that capture what target layers output (or take as input) for one call at a time
(BatchCAM, explain)."""
import functools

import torch
from torch import nn


class LayerCapture:
    """Hooks on `layers` that record their outputs (or, with `layer_input`, their positional inputs),
    only between `start()` and `stop()`.

    A layer's output may be a tensor or a tuple or list of tensors (each is captured); its inputs
    are its positional arguments (a tensor for a layer of one input, else a tuple). A tensor that
    does not require grad (a frozen model, or no_grad around the call) is replaced by a leaf that
    does, so that the scores can still be differentiated with respect to it. With
    `grad_from_capture`, grad mode is switched on when a target layer runs: a forward started
    under no_grad then records a graph only from the first target layer on (the caller's no_grad
    context restores the mode when it exits).
    """

    def __init__(self, layers: list[nn.Module], grad_from_capture: bool = False, layer_input: bool = False):
        self.outputs = None
        self.grad_from_capture = grad_from_capture
        if layer_input:
            self.handles = [layer.register_forward_pre_hook(functools.partial(self._pre_hook, i))
                            for i, layer in enumerate(layers)]
        else:
            self.handles = [layer.register_forward_hook(functools.partial(self._hook, i))
                            for i, layer in enumerate(layers)]

    def _capture(self, index, module, value, what):
        tensors = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise ValueError(f"target layer {type(module).__name__} must {what} a tensor or a tuple of tensors, "
                             f"got {type(value).__name__}")
        if self.grad_from_capture:
            torch.set_grad_enabled(True)
        tensors = tuple(t if t.requires_grad else t.detach().requires_grad_(True) for t in tensors)
        self.outputs[index].append(tensors if isinstance(value, (tuple, list)) else tensors[0])
        return type(value)(tensors) if isinstance(value, (tuple, list)) else tensors[0]

    def _hook(self, index, module, inputs, output):
        if self.outputs is None:
            return None
        return self._capture(index, module, output, "output")

    def _pre_hook(self, index, module, inputs):
        if self.outputs is None:
            return None
        inputs = self._capture(index, module, inputs, "take as input")
        if len(inputs) == 1:  # a layer of one input: its tensor, as a layer of one output
            self.outputs[index][-1] = inputs[0]
        return inputs

    def start(self):
        self.outputs = [[] for _ in self.handles]

    def stop(self):
        """Returns what each layer gave (a tensor, or a tuple of tensors) and forgets it; raises
        unless each ran once."""
        outputs, self.outputs = self.outputs, None
        for i, found in enumerate(outputs):
            if len(found) != 1:
                raise RuntimeError(f"target layer {i} ran {len(found)} times in one forward; "
                                   "choose layers that run exactly once")
        return [found[0] for found in outputs]

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles, self.outputs = [], None


def flatten_captured(captured):
    """The tensors of captured values (tensors or tuples of tensors), in order."""
    return [t for value in captured for t in (value if isinstance(value, tuple) else (value,))]


def layer_gradients(score, tensors, create_graph=False, retain_graph=None):
    """d score / d tensor for each tensor, zeros for a tensor the score does not depend on (a layer
    that does not influence the target, as Captum returns)."""
    grads = torch.autograd.grad(score, tensors, create_graph=create_graph, retain_graph=retain_graph,
                                allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


def as_channels_first(t):
    """A (B, C) tensor, as a layer with no spatial dims outputs, seen as (B, C, 1): its gradient
    then is its own weight, as Captum treats such layers; (B, C, *S) tensors unchanged."""
    if t.dim() < 2:
        raise ValueError(f"a target layer's tensor must be (B, C) or (B, C, *S), got shape {tuple(t.shape)}")
    return t.unsqueeze(-1) if t.dim() == 2 else t


def check_submodules(model: nn.Module, layers) -> None:
    for layer in layers:
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"target layer {type(layer).__name__} is not a submodule of the model")
