"""The device a command runs on: `--device` as given, or CUDA when there is one."""
import torch


def resolve_device(name: str | None) -> torch.device:
    """None: "cuda" if available, else "cpu". Raises a ValueError for a device this torch cannot use."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not a device name torch knows ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this torch has no CUDA device to run on")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
