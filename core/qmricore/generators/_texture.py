"""Smooth Gaussian random fields by Fourier synthesis (used by qSynth texture and lesion shapes).

A field with Gaussian smoothing of full width at half maximum ``fwhm`` voxels is white Gaussian
noise convolved with a Gaussian kernel, i.e. complex white noise in the frequency domain multiplied
by the kernel's transfer function ``H(k) = exp(-2 pi^2 s^2 |k|^2)`` (``s = fwhm / sqrt(8 ln 2)``),
transformed back axis by axis (complex FFTs along X and Y, a real one along Z).  Frequencies where
``H`` is negligible (below :data:`TRUNCATE`) are never drawn, so wide kernels cost less than narrow
ones.  Boundaries are periodic (the texture wraps around), which is harmless for texture.  Runs on
the generator's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Transfer-function values below this are treated as zero (frequencies not drawn): 1 % in amplitude,
#: 0.01 % in power, so the field's variance is unchanged to ~1e-4 (and it is re-normalised anyway).
TRUNCATE = 1e-2
FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))


def _kept(freqs: torch.Tensor, sigma: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Indices of the frequencies to draw (``None`` = all) and the 1-D transfer function there."""
    h = torch.exp(freqs.square() * (-2.0 * math.pi**2 * sigma * sigma))
    keep = h > TRUNCATE
    if bool(keep.all()):
        return None, h
    idx = torch.nonzero(keep).view(-1)
    return idx, h[idx]


def _scatter(values: torch.Tensor, index: torch.Tensor | None, size: int, dim: int) -> torch.Tensor:
    """Place the drawn frequencies at their positions along ``dim`` of a zero spectrum of length ``size``."""
    if index is None:
        return values
    shape = list(values.shape)
    shape[dim] = size
    full = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return full.index_copy_(dim, index, values)


def smooth_noise(
    shape: Sequence[int],
    fwhm: Sequence[float],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Independent smooth Gaussian fields, each standardised to mean 0 and std 1 over the volume.

    Parameters
    ----------
    shape
        Spatial shape (X, Y, Z) in voxels.
    fwhm
        One Gaussian FWHM per field, in voxels (> 0; 0 gives white noise).
    generator
        Seeded torch generator; fields are computed on its device.

    Returns
    -------
    Tensor of shape ``(len(fwhm), X, Y, Z)``.

    Notes
    -----
    The inverse transform is done one axis at a time (complex along X and Y, real along Z) on only the
    drawn frequencies: cheaper than ``irfftn`` on the whole zero-padded spectrum.
    """
    device = generator.device
    nx, ny, nz = (int(n) for n in shape)
    fx, fy = torch.fft.fftfreq(nx, device=device), torch.fft.fftfreq(ny, device=device)
    fz = torch.fft.rfftfreq(nz, device=device)
    out = torch.empty((len(fwhm), nx, ny, nz), dtype=dtype, device=device)
    for i, width in enumerate(fwhm):
        sigma = float(width) / FWHM_PER_SIGMA
        (ix, hx), (iy, hy), (_, hz) = _kept(fx, sigma), _kept(fy, sigma), _kept(fz, sigma)
        h = hx.view(-1, 1, 1) * hy.view(1, -1, 1) * hz.view(1, 1, -1)  # iz is a prefix: rfft order
        noise = torch.randn((*h.shape, 2), generator=generator, dtype=dtype, device=device)
        spec = torch.view_as_complex(noise) * h.to(dtype)
        spec[0, 0, 0] = 0  # zero mean (frequency 0 is always drawn, first)
        field = torch.fft.ifft(_scatter(spec, ix, nx, 0), dim=0)
        field = torch.fft.ifft(_scatter(field, iy, ny, 1), dim=1)
        field = torch.fft.irfft(field, n=nz, dim=2)
        std = field.std()
        out[i] = field * (1.0 / std) if std > 0 else field
    return out
