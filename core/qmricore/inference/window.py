"""Sliding-window prediction (SPEC §9): Gaussian-weighted windows, 8-flip TTA, out-of-memory fallback.

:class:`WindowConfig` holds the settings a model file stores; :func:`sliding_window_logits` runs MONAI's
``sliding_window_inference`` with them and :func:`predict_with_fallback` retries with a smaller window batch,
then on the CPU, when the GPU runs out of memory.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ParameterError, QMRIError
from ..serialise import ModelSettings

#: What the sliding window pads the image with beyond its edges (:class:`WindowConfig`).
PADDINGS = ("minimum", "zero")

#: Spatial dimensions flipped by test-time augmentation: every subset of (x, y, z) of a (B, C, X, Y, Z) tensor.
FLIP_DIMS: tuple[tuple[int, ...], ...] = tuple(
    dims for r in range(4) for dims in itertools.combinations((2, 3, 4), r)
)

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class WindowConfig(ModelSettings):
    """Sliding-window inference settings (SPEC §9).

    Parameters
    ----------
    patch
        Window size in voxels (at the preprocessing spacing); SPEC default 192³.
    overlap
        Fraction of overlap between neighbouring windows (0 <= overlap < 1).
    sigma_scale
        Gaussian weighting: standard deviation as a fraction of the window size.
    sw_batch_size
        Windows per forward pass (halved on GPU out-of-memory).
    padding
        Value the image is padded with where a window reaches past it: ``"minimum"`` (the image's
        minimum, i.e. its background) or ``"zero"`` (0, MONAI ``SlidingWindowInferer``'s default, which
        SynthStroke uses; after a z-score that is the mean intensity).
    """

    patch: tuple[int, int, int] = (192, 192, 192)
    overlap: float = 0.5
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    padding: str = "minimum"

    def __post_init__(self) -> None:
        patch = (self.patch,) * 3 if isinstance(self.patch, int) else tuple(int(p) for p in self.patch)
        object.__setattr__(self, "patch", patch)
        if len(patch) != 3 or min(patch) < 1:
            raise ParameterError(f"WindowConfig: patch must be three positive sizes, got {self.patch}")
        if not 0.0 <= self.overlap < 1.0 or not self.sigma_scale > 0 or self.sw_batch_size < 1:
            raise ParameterError("WindowConfig: need 0 <= overlap < 1, sigma_scale > 0, sw_batch_size >= 1")
        if self.padding not in PADDINGS:
            raise ParameterError(f"WindowConfig: padding must be one of {PADDINGS}, got {self.padding!r}")


def flip_tta(predictor: Predictor, flips: Sequence[tuple[int, ...]] = FLIP_DIMS) -> Predictor:
    """Predictor returning the mean over ``flips`` of ``flip(predictor(flip(x)))`` (8 flips of x, y, z)."""

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in flips:
            y = predictor(torch.flip(x, dims) if dims else x)
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
        return total / len(flips)

    return averaged


def sliding_window_logits(
    network: Predictor,
    image: torch.Tensor,
    window: WindowConfig,
    *,
    tta: bool,
    sw_batch_size: int,
    progress: bool = False,
) -> torch.Tensor:
    """Sliding-window prediction ``(1, K, X, Y, Z)`` of ``image`` ``(1, C, X, Y, Z)`` on its device.

    Windows of ``window.patch`` voxels overlap by ``window.overlap`` and are blended with a Gaussian of
    standard deviation ``window.sigma_scale`` times the window size (the image is padded with
    ``window.padding``: its minimum or 0); with ``tta`` each window's
    prediction is the mean over the 8 flips of x, y, z.  ``progress`` shows a tqdm bar over the windows.
    """
    from monai.inferers import sliding_window_inference

    predictor = flip_tta(network) if tta else network
    with torch.inference_mode():
        return sliding_window_inference(
            image,
            roi_size=window.patch,
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=window.overlap,
            mode="gaussian",
            sigma_scale=window.sigma_scale,
            padding_mode="constant",
            cval=0.0 if window.padding == "zero" else float(image.min()),
            progress=progress,
        )


def _fallback_attempts(device: torch.device, sw_batch_size: int) -> list[tuple[torch.device, int]]:
    """(device, window batch) to try in order: halving the batch down to 1, then the CPU with 1."""
    attempts = [(device, sw_batch_size)]
    while attempts[-1][1] > 1:
        attempts.append((device, attempts[-1][1] // 2))
    return [*attempts, (torch.device("cpu"), 1)]


def predict_with_fallback(
    network: nn.Module,
    image: torch.Tensor,
    window: WindowConfig,
    *,
    tta: bool,
    device: torch.device | str,
    progress: bool = False,
) -> torch.Tensor:
    """:func:`sliding_window_logits` on ``device``, falling back on out-of-memory; result on the CPU.

    On ``torch.cuda.OutOfMemoryError`` the window batch size is halved until 1, then the network and
    image move to the CPU; each fallback issues a ``RuntimeWarning``.  ``network`` ends on the device
    that succeeded.

    Raises
    ------
    QMRIError
        Still out of memory on the CPU with one window at a time.
    """
    attempts = _fallback_attempts(torch.device(device), window.sw_batch_size)
    for number, (where, batch) in enumerate(attempts):
        try:
            network.to(where)
            logits = sliding_window_logits(
                network, image.to(where), window, tta=tta, sw_batch_size=batch, progress=progress
            )
            return logits.float().cpu()
        except torch.cuda.OutOfMemoryError as error:
            if where.type == "cuda":
                torch.cuda.empty_cache()
            if number + 1 == len(attempts):
                raise QMRIError("out of memory even on the CPU with one window at a time") from error
            if number + 2 < len(attempts):
                message = f"retrying with sw_batch_size={attempts[number + 1][1]}"
            else:
                message = "falling back to the CPU"
            warnings.warn(f"out of memory on {where} with sw_batch_size={batch}; {message}", RuntimeWarning,
                          stacklevel=2)
    raise AssertionError("unreachable")  # pragma: no cover
