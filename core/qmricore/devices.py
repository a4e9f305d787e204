"""Where computation runs: the one place ``--device auto|cpu|cuda[:N]`` becomes a ``torch.device``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_CHOICES", "resolve_device"]

#: What a user picks from (command-line ``--device`` choices, the QMRISegment panel); ``cuda:N`` is accepted too
#: where a command takes free text.  Importing this module stays light (torch loads in :func:`resolve_device`).
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else as given.

    Raises :class:`~qmricore.errors.ParameterError` for CUDA without a CUDA device and for unknown names.
    """
    import torch

    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"device {name!r} requested but no CUDA device is available (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ParameterError(f"unknown device {name!r} (expected auto, cpu or cuda)") from error
