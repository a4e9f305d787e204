"""Receive field and Rician noise (SPEC §4): applied after the signal equation, never in place."""

from __future__ import annotations

import torch

from ..errors import InputError, ParameterError

Tensor = torch.Tensor


def noise_sigma(signal: Tensor, snr: float, reference: Tensor | None = None) -> float:
    """Noise standard deviation that gives ``snr`` relative to a reference tissue.

    Parameters
    ----------
    signal
        Noise-free magnitude image.
    snr
        Target signal-to-noise ratio (mean reference signal / sigma), > 0.
    reference
        Boolean mask of the reference tissue (for example white matter).  Without one, the reference
        is every voxel whose signal is above 10 % of the image maximum (the head, not the air).
    """
    if not snr > 0:
        raise ParameterError(f"snr must be > 0, got {snr}")
    if reference is None:
        reference = signal > 0.1 * signal.max()
    if reference.shape != signal.shape:
        raise InputError(f"reference mask shape {tuple(reference.shape)} differs from the image {tuple(signal.shape)}")
    level = signal[reference.to(device=signal.device, dtype=torch.bool)].mean()
    if not torch.isfinite(level) or level <= 0:
        raise ParameterError("the reference tissue has no signal; cannot set the noise level from an SNR")
    return float(level) / snr


def rician_noise(signal: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Magnitude of the signal plus complex Gaussian noise: ``sqrt((S + n1)² + n2²)``, ``n ~ N(0, sigma²)``.

    The noise is drawn on ``signal.device`` from ``generator`` (seeded by the caller for reproducibility).
    """
    n1 = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    n2 = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    return torch.hypot(signal + n1 * sigma, n2 * sigma)
