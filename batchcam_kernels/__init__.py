"""Triton kernels of batchcam: plain functions over tensors (no torch.library here)."""
