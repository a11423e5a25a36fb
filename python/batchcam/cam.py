"""`BatchCAM`: Grad-CAM maps of a whole batch from one forward and one `torch.autograd.grad`."""
import torch
from torch import nn

from .backend import _validate
from .functional import fused_cam


class BatchCAM:
    """Batched Grad-CAM of `model` at `target_layer` (the paper's batch Grad-CAM).

    One call runs one forward of the batch, captures the target layer's output A (B, C, *S), takes
    one `torch.autograd.grad` of the summed target-class scores with respect to A, and returns the
    logits and the maps `fused_cam(A, dScore/dA)` of shape (B, *S).

    Args:
        model: the network; called as `model(x)` and returning logits (B, num_classes).
        target_layer: a submodule of `model` whose output is (B, C, *S).
        backend: "fused" (default), "triton", "cuda" or "reference"; only the map op changes.
        relu, normalize, eps: as in `batchcam.fused_cam`.

    The model's train/eval mode is restored after each call (`train=` may set it for the call),
    no parameter `.grad` is written, no tensor is kept between calls, and the hook on
    `target_layer` is removed by `close()` or on leaving a `with` block.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module, backend: str = "fused", *,
                 relu: bool = True, normalize: str = "minmax", eps: float = 1e-7):
        if not any(m is target_layer for m in model.modules()):
            raise ValueError("BatchCAM: target_layer is not a submodule of model")
        self.model = model
        self.target_layer = target_layer
        self.backend = _validate(backend)
        self.cam_options = dict(relu=relu, normalize=normalize, eps=eps)
        self._captured = None  # the target layer's output, only while a call is running
        self._hook = target_layer.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        if self._captured is None:
            return None
        if not isinstance(output, torch.Tensor) or output.dim() < 3:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"BatchCAM: the target layer must output a (B, C, *S) tensor, got {shape}")
        if not output.requires_grad:  # frozen model: still differentiate the scores w.r.t. A
            output = output.detach().requires_grad_(True)
        self._captured.append(output)
        return output

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None, *,
                 create_graph: bool = False, train: bool | None = None):
        """Returns (logits, maps) for the batch `x`.

        targets: None for the predicted classes, or a (B,) tensor of class indices.
        create_graph: True keeps the graph of the gradients, so a loss on the maps also trains
            through them (second order); False treats the channel weights as constants.
        train: None runs the model in its current mode; True/False sets it for this call.
        """
        if self._hook is None:
            raise RuntimeError("BatchCAM: used after close()")
        was_training = self.model.training
        self._captured = []
        try:
            if train is not None:
                self.model.train(train)
            with torch.enable_grad():
                logits = self.model(x)
                if len(self._captured) != 1:
                    raise RuntimeError(
                        f"BatchCAM: the target layer ran {len(self._captured)} times in one "
                        "forward; choose a layer that runs exactly once"
                    )
                activations = self._captured[0]
                targets = self._targets(logits, targets)
                score = logits.gather(1, targets[:, None]).sum()
                # retain_graph: the logits stay differentiable for a loss beside the maps'.
                (gradients,) = torch.autograd.grad(
                    score, activations, create_graph=create_graph, retain_graph=True
                )
                maps = self.maps(activations, gradients)
            return logits, maps
        finally:
            self._captured = None
            self.model.train(was_training)

    def maps(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """The map op: (B, C, *S) activations and gradients -> (B, *S)."""
        return fused_cam(activations, gradients, backend=self.backend, **self.cam_options)

    @staticmethod
    def _targets(logits, targets):
        if logits.dim() != 2:
            raise ValueError(f"BatchCAM: the model must return logits (B, classes), got {tuple(logits.shape)}")
        if targets is None:
            return logits.argmax(dim=1)
        targets = torch.as_tensor(targets, device=logits.device)
        if targets.shape != logits.shape[:1] or targets.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"BatchCAM: targets must be a ({logits.shape[0]},) integer tensor, got "
                f"{tuple(targets.shape)} {targets.dtype}"
            )
        if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
            raise ValueError(f"BatchCAM: targets must lie in [0, {logits.shape[1]}), got {targets.tolist()}")
        return targets.long()

    def close(self) -> None:
        """Removes the hook from the target layer."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
