"""The torch device of a run, checked before any work starts."""

from __future__ import annotations

from perfnet.errors import PerfnetInputError


def resolve_device(name: str | None, option: str = "--device") -> str | None:
    """``name`` as a torch device string (None: the default, CUDA when present), or a one-line
    error when torch does not know it or this machine does not have it."""
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise PerfnetInputError(option, f"unknown device {name!r} (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PerfnetInputError(option, f"{name}: no CUDA GPU is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PerfnetInputError(
                option, f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise PerfnetInputError(option, f"{name}: Apple MPS is not available on this machine")
    elif device.type != "cpu":
        raise PerfnetInputError(option, f"{name}: perfnet runs on cpu, cuda or mps, not {device.type}")
    return str(device)
