"""SynthSeg-style baseline generator (SPEC §6): a label-conditioned Gaussian mixture, no physics.

Each class ``c`` of a label map gets a random mean ``mu_c ~ U(mean_range)`` and standard deviation
``sigma_c ~ U(std_range)`` (SynthSeg's defaults: U(0, 255) and U(0, 35)); every voxel of class ``c`` is
drawn from ``N(mu_c, sigma_c²)`` and the image is blurred with a Gaussian of random width (partial
volume at the acquisition resolution).  Soft labels (C, X, Y, Z) mix per voxel: mean ``sum p_c mu_c``
and variance ``sum p_c sigma_c²``.

>>> draw = draw_gmm(7, np.random.default_rng(0))
>>> image = apply_gmm(labels, draw)          # float32, on the labels' device
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ParameterError
from ..serialise import JSONDataclass, JSONDraw
from ._random import numpy_rng

__all__ = ["GMMConfig", "GMMDraw", "draw_gmm", "apply_gmm", "gaussian_blur"]


@dataclass(frozen=True)
class GMMConfig(JSONDataclass):
    """Priors of the GMM baseline (the one place their defaults live).

    Attributes
    ----------
    mean_range
        Class means ~ U(low, high) (arbitrary intensity units).
    std_range
        Class standard deviations ~ U(low, high).
    blur_sigma_range
        Gaussian blur sigma ~ U(low, high) in voxels (0: no blur).
    """

    mean_range: tuple[float, float] = (0.0, 255.0)
    std_range: tuple[float, float] = (0.0, 35.0)
    blur_sigma_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for key in ("mean_range", "std_range", "blur_sigma_range"):
            lo, hi = getattr(self, key)
            if not lo <= hi:
                raise ParameterError(f"gmm: {key} must satisfy low <= high, got {(lo, hi)}")
        for key in ("std_range", "blur_sigma_range"):
            if getattr(self, key)[0] < 0:
                raise ParameterError(f"gmm: {key} must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class GMMDraw(JSONDraw):
    """One GMM draw: per-class ``means`` and ``stds`` (index = label value), blur sigma in voxels and
    the seed of the torch generator that draws the voxel noise (on the labels' device)."""

    means: tuple[float, ...]
    stds: tuple[float, ...]
    blur_sigma: float
    seed: int


def draw_gmm(n_classes: int, generator: np.random.Generator | int, config: GMMConfig | None = None) -> GMMDraw:
    """Draw means, standard deviations and blur for ``n_classes`` labels (0 .. n_classes - 1) from ``generator``
    (a numpy generator or an int seed)."""
    config = config or GMMConfig()
    if n_classes < 1:
        raise ParameterError(f"gmm: n_classes must be >= 1, got {n_classes}")
    rng = numpy_rng(generator, "draw_gmm")
    means = rng.uniform(*config.mean_range, n_classes)
    stds = rng.uniform(*config.std_range, n_classes)
    blur = float(rng.uniform(*config.blur_sigma_range))
    return GMMDraw(tuple(float(m) for m in means), tuple(float(s) for s in stds), blur,
                   int(rng.integers(0, 2**31 - 1)))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 3D image, sigma in voxels (MONAI ``GaussianFilter``, sampled kernel, 3 sigma)."""
    if sigma <= 0:
        return image
    from monai.networks.layers import GaussianFilter

    blur = GaussianFilter(spatial_dims=3, sigma=float(sigma), truncated=3.0, approx="sampled").to(image.device)
    with torch.no_grad():
        return blur(image.reshape(1, 1, *image.shape[-3:])).reshape(image.shape)


def apply_gmm(labels: torch.Tensor, draw: GMMDraw) -> torch.Tensor:
    """The GMM image of ``labels`` (hard (X, Y, Z) integers or soft (C, X, Y, Z) floats), float32, same device.

    Raises ``ParameterError`` when a label value (or a channel) has no class in the draw.
    """
    device = labels.device
    means = torch.tensor(draw.means, dtype=torch.float32, device=device)
    stds = torch.tensor(draw.stds, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(int(draw.seed))
    if torch.is_floating_point(labels):
        if labels.dim() != 4 or labels.shape[0] > len(draw.means):
            raise ParameterError(f"gmm: soft labels must be (C, X, Y, Z) with C <= {len(draw.means)}, "
                                 f"got shape {tuple(labels.shape)}")
        c = labels.shape[0]
        mean = torch.einsum("c,cxyz->xyz", means[:c], labels)
        std = torch.einsum("c,cxyz->xyz", stds[:c] ** 2, labels).clamp_min(0).sqrt()
    else:
        if labels.dim() != 3:
            raise ParameterError(f"gmm: hard labels must be (X, Y, Z), got shape {tuple(labels.shape)}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(draw.means):
            raise ParameterError(f"gmm: label values must be in 0..{len(draw.means) - 1}, found {lo}..{hi}")
        idx = labels.long()
        mean, std = means[idx], stds[idx]
    noise = torch.randn(mean.shape, generator=gen, dtype=torch.float32, device=device)
    return gaussian_blur(mean + std * noise, draw.blur_sigma)
