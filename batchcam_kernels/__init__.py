"""Triton kernels of batchcam: plain functions over tensors (no torch.library here)."""
from .fused_cam import cam_backward, cam_forward, launch_config

__all__ = ["cam_backward", "cam_forward", "launch_config"]
