"""Forward hooks that capture layer outputs for one call at a time (BatchCAM, explain)."""
import functools

import torch
from torch import nn


class LayerCapture:
    """Hooks on `layers` that record their outputs, only between `start()` and `stop()`.

    An output that does not require grad (a frozen model, or no_grad around the call) is replaced
    by a leaf that does, so that the scores can still be differentiated with respect to it.
    With `grad_from_capture`, grad mode is switched on when a target layer runs: a forward started
    under no_grad then records a graph only from the first target layer on (the caller's no_grad
    context restores the mode when it exits).
    """

    def __init__(self, layers: list[nn.Module], grad_from_capture: bool = False):
        self.outputs = None
        self.grad_from_capture = grad_from_capture
        self.handles = [layer.register_forward_hook(functools.partial(self._hook, i)) for i, layer in enumerate(layers)]

    def _hook(self, index, module, inputs, output):
        if self.outputs is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"target layer {type(module).__name__} must output a tensor, got {type(output).__name__}")
        if self.grad_from_capture:
            torch.set_grad_enabled(True)
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        self.outputs[index].append(output)
        return output

    def start(self):
        self.outputs = [[] for _ in self.handles]

    def stop(self):
        """Returns the one output of each layer and forgets them; raises unless each ran once."""
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


def check_submodules(model: nn.Module, layers) -> None:
    for layer in layers:
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"target layer {type(layer).__name__} is not a submodule of the model")
