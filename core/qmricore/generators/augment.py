"""Spatial and intensity augmentation for synthetic training data (SPEC §6), draw-then-apply.

Every random augmentation is split in two: ``draw_*`` samples a small frozen dataclass of parameters
(JSON-safe through ``to_dict``/``from_dict``), ``apply_*`` applies it deterministically.  Full-volume
random fields (elastic displacements, noise) are stored as the integer seed of a torch generator, so a
draw stays small and replays bit-exactly on the CPU.

Spatial augmentation (flips, rotation, scaling, shear, a smooth elastic displacement on a coarse
control-point grid, random crop with zero padding) is composed into **one** sampling grid over the crop
region and applied with a single :func:`torch.nn.functional.grid_sample`: nearest neighbour for hard
labels, trilinear for images and soft (probabilistic) label channels.  Intensity augmentation never
touches labels: multiplicative bias field (the Legendre-polynomial model of MONAI's ``RandBiasField``,
evaluated separably in torch so it runs on the image's device), Rician noise at a random SNR,
low-resolution reslicing with a random anisotropic voxel size, Gibbs ringing (MONAI ``GibbsNoise``),
gamma (MONAI ``AdjustContrast``) and a final min-max normalisation to [0, 1].

All defaults live in :class:`AugmentConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..serialise import JSONDataclass, JSONDraw
from ._random import numpy_rng

__all__ = [
    "AugmentConfig", "SpatialDraw", "IntensityDraw", "AugmentDraw",
    "draw_spatial", "draw_intensity", "draw_augment",
    "spatial_matrix", "sampling_grid", "apply_spatial", "apply_spatial_keyed", "apply_intensity", "augment",
    "bias_field", "smooth_field", "crop_shape",
]

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class AugmentConfig(JSONDataclass):
    """Distributions of the augmentation parameters (the one place their defaults live).

    Attributes
    ----------
    crop
        Output size in voxels (an int for a cube, three ints, or ``None`` for the input size).  Inputs
        smaller than the crop are zero-padded (centred); larger ones are cropped at a random offset.
    flip_axes, flip_prob
        Axes that may be flipped, each with probability ``flip_prob`` (axis 0 is left-right in RAS).
    rotation_deg
        Rotation about each axis ~ U(-rotation_deg, rotation_deg) degrees.
    scale
        Zoom per axis ~ U(1 - scale, 1 + scale).
    shear
        Each of the six shear coefficients ~ U(-shear, shear).
    elastic_prob, elastic_max_voxels, elastic_nodes
        With probability ``elastic_prob``, a displacement field whose control-point values are
        N(0, s²) voxels with s ~ U(0, elastic_max_voxels), on an ``elastic_nodes``³ grid spanning the crop,
        upsampled trilinearly.
    bias_prob, bias_degree, bias_coeff
        Multiplicative bias field ``exp(sum c_ijk P_i(x) P_j(y) P_k(z))`` (Legendre polynomials,
        i + j + k <= degree, coordinates in [-1, 1] over the crop) with c ~ U(-bias_coeff, bias_coeff).
    noise_prob, snr_range
        Rician noise whose sigma gives an SNR ~ U(snr_range) relative to the mean foreground signal.
    lowres_prob, lowres_max_factor
        Reslicing to a voxel size f_i ~ U(1, lowres_max_factor) times the input's along each axis
        (box-average down, trilinear back up).
    gibbs_prob, gibbs_alpha
        Gibbs ringing: k-space truncated outside a sphere (MONAI ``GibbsNoise``), alpha ~ U(gibbs_alpha).
    gamma_prob, gamma_log_std
        Gamma ``exp(N(0, gamma_log_std²))`` applied to the min-max normalised image.
    """

    crop: int | tuple[int, int, int] | None = 192
    flip_axes: tuple[int, ...] = (0,)
    flip_prob: float = 0.5
    rotation_deg: float = 15.0
    scale: float = 0.15
    shear: float = 0.012
    elastic_prob: float = 1.0
    elastic_max_voxels: float = 3.0
    elastic_nodes: int = 8
    bias_prob: float = 0.5
    bias_degree: int = 3
    bias_coeff: float = 0.3
    noise_prob: float = 1.0
    snr_range: tuple[float, float] = (8.0, 60.0)
    lowres_prob: float = 0.3
    lowres_max_factor: float = 4.0
    gibbs_prob: float = 0.2
    gibbs_alpha: tuple[float, float] = (0.0, 0.6)
    gamma_prob: float = 1.0
    gamma_log_std: float = 0.3

    def __post_init__(self) -> None:
        probs = {k: v for k, v in asdict(self).items() if k.endswith("_prob")}
        for key, value in probs.items():
            if not 0.0 <= value <= 1.0:
                raise ParameterError(f"augmentation: {key} must be in [0, 1], got {value}")
        for key in ("rotation_deg", "scale", "shear", "elastic_max_voxels", "bias_coeff", "gamma_log_std"):
            if getattr(self, key) < 0:
                raise ParameterError(f"augmentation: {key} must be >= 0, got {getattr(self, key)}")
        if self.scale >= 1:
            raise ParameterError(f"augmentation: scale must be < 1 (zoom 1 ± scale), got {self.scale}")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ParameterError(f"augmentation: flip_axes must be among 0, 1, 2, got {self.flip_axes}")
        if self.elastic_nodes < 2:
            raise ParameterError(f"augmentation: elastic_nodes must be >= 2, got {self.elastic_nodes}")
        if self.bias_degree < 1:
            raise ParameterError(f"augmentation: bias_degree must be >= 1, got {self.bias_degree}")
        lo, hi = self.snr_range
        if not 0 < lo <= hi:
            raise ParameterError(f"augmentation: snr_range must satisfy 0 < low <= high, got {self.snr_range}")
        if self.lowres_max_factor < 1:
            raise ParameterError(f"augmentation: lowres_max_factor must be >= 1, got {self.lowres_max_factor}")
        lo, hi = self.gibbs_alpha
        if not 0 <= lo <= hi <= 1:
            raise ParameterError(f"augmentation: gibbs_alpha must satisfy 0 <= low <= high <= 1, "
                                 f"got {self.gibbs_alpha}")
        if self.crop is not None:
            crop_shape((1, 1, 1), self.crop)  # validates



#: Largest crop side in voxels (512³ float32 is 0.5 GB per channel; beyond that is a typo, not a brain).
MAX_CROP = 512


def crop_shape(in_shape: Sequence[int], crop: int | Sequence[int] | None) -> Shape3:
    """The output shape for an input of ``in_shape`` and a crop setting (``None``: the input shape)."""
    if crop is None:
        return (int(in_shape[0]), int(in_shape[1]), int(in_shape[2]))
    c = (crop,) * 3 if isinstance(crop, (int, np.integer)) else tuple(crop)
    if len(c) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in c):
        raise ParameterError(f"crop must be a positive int or three positive ints, got {crop!r}")
    if max(c) > MAX_CROP:
        raise ParameterError(f"crop {crop!r} is larger than {MAX_CROP} voxels per side "
                             f"({int(c[0]) * int(c[1]) * int(c[2]) * 4 / 1e9:.3g} GB per float32 channel)")
    return (int(c[0]), int(c[1]), int(c[2]))


# --------------------------------------------------------------------------------------------------
# Draws
# --------------------------------------------------------------------------------------------------

def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


@dataclass(frozen=True)
class SpatialDraw(JSONDraw):
    """One spatial augmentation: output voxel ``v`` samples the input at ``p(v)`` (see :func:`spatial_matrix`).

    ``offset`` is the crop origin in input voxels (negative where the output is padded); angles in
    degrees; ``elastic_std`` in voxels (0: no elastic part) with its control-point field drawn from
    ``torch.Generator().manual_seed(elastic_seed)`` on the CPU.
    """

    in_shape: Shape3
    out_shape: Shape3
    offset: Shape3
    flips: tuple[bool, bool, bool] = (False, False, False)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shear: tuple[float, float, float, float, float, float] = (0.0,) * 6
    elastic_std: float = 0.0
    elastic_nodes: int = 8
    elastic_seed: int = 0

    @property
    def is_identity(self) -> bool:
        """True when the draw only crops/pads (no flip, rotation, zoom, shear or elastic displacement)."""
        return (not any(self.flips) and not any(self.rotation_deg) and self.scale == (1.0, 1.0, 1.0)
                and not any(self.shear) and self.elastic_std == 0)


@dataclass(frozen=True)
class IntensityDraw(JSONDraw):
    """One intensity augmentation; ``None`` fields are skipped.

    bias_coeffs: Legendre coefficients of the log bias field (degree ``bias_degree``);
    snr, noise_seed: Rician noise level and its generator seed;
    lowres_factors: voxel-size factors per axis (>= 1);
    gibbs_alpha: MONAI GibbsNoise alpha in [0, 1];
    gamma: exponent applied to the min-max normalised image.
    """

    bias_coeffs: tuple[float, ...] | None = None
    bias_degree: int = 3
    snr: float | None = None
    noise_seed: int = 0
    lowres_factors: tuple[float, float, float] | None = None
    gibbs_alpha: float | None = None
    gamma: float | None = None


@dataclass(frozen=True)
class AugmentDraw(JSONDraw):
    """A spatial and an intensity draw, saved together in a sample's sidecar."""

    spatial: SpatialDraw
    intensity: IntensityDraw = field(default_factory=IntensityDraw)


def _n_legendre(degree: int) -> int:
    return sum(1 for i in range(degree + 1) for j in range(degree + 1 - i) for _ in range(degree + 1 - i - j))


def _crop_offset(n: int, c: int, focus: tuple[int, int] | None, rng: np.random.Generator) -> int:
    """Crop origin along one axis: centred padding when ``c > n``; else uniform over the offsets that put
    the crop centre inside ``focus`` (inclusive voxel range), or over all valid offsets when none does."""
    if n < c:
        return -((c - n) // 2)
    lo, hi = 0, n - c
    if focus is not None:
        f_lo = max(lo, math.ceil(focus[0] - (c - 1) / 2))
        f_hi = min(hi, math.floor(focus[1] - (c - 1) / 2))
        if f_lo <= f_hi:
            lo, hi = f_lo, f_hi
    return int(rng.integers(lo, hi + 1))


def draw_spatial(in_shape: Sequence[int], config: AugmentConfig, generator: np.random.Generator | int,
                 focus: Sequence[Sequence[int]] | None = None) -> SpatialDraw:
    """Draw flips, affine, elastic strength and crop offset for an input of ``in_shape`` voxels.

    ``generator`` is a numpy generator or an int seed.  ``focus`` (optional ``(lower corner, upper corner)``,
    inclusive voxel indices, e.g. the bounding box of the foreground) keeps the crop centre inside that box
    where the crop size allows.
    """
    rng = numpy_rng(generator, "draw_spatial")
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = crop_shape(in_shape, config.crop)
    offset = tuple(
        _crop_offset(n, c, None if focus is None else (int(focus[0][i]), int(focus[1][i])), rng)
        for i, (n, c) in enumerate(zip(in_shape, out_shape, strict=True))
    )
    flips = tuple(bool(a in config.flip_axes and rng.random() < config.flip_prob) for a in range(3))
    rot = tuple(float(rng.uniform(-config.rotation_deg, config.rotation_deg)) for _ in range(3))
    scale = tuple(float(rng.uniform(1 - config.scale, 1 + config.scale)) for _ in range(3))
    shear = tuple(float(rng.uniform(-config.shear, config.shear)) for _ in range(6))
    elastic = rng.random() < config.elastic_prob
    elastic_std = float(rng.uniform(0, config.elastic_max_voxels)) if elastic else 0.0
    return SpatialDraw(in_shape, out_shape, offset, flips, rot, scale, shear,  # type: ignore[arg-type]
                       elastic_std, config.elastic_nodes, _seed(rng))


def draw_intensity(config: AugmentConfig, generator: np.random.Generator | int) -> IntensityDraw:
    """Draw which intensity augmentations apply and their parameters (fixed number of draws per call) from
    ``generator`` (a numpy generator or an int seed)."""
    rng = numpy_rng(generator, "draw_intensity")
    n_coeff = _n_legendre(config.bias_degree)
    use = rng.random(5) < np.array([config.bias_prob, config.noise_prob, config.lowres_prob,
                                    config.gibbs_prob, config.gamma_prob])
    coeffs = rng.uniform(-config.bias_coeff, config.bias_coeff, n_coeff)
    snr = float(rng.uniform(*config.snr_range))
    noise_seed = _seed(rng)
    factors = rng.uniform(1.0, config.lowres_max_factor, 3)
    alpha = float(rng.uniform(*config.gibbs_alpha))
    gamma = float(math.exp(rng.normal(0.0, config.gamma_log_std)))
    return IntensityDraw(
        bias_coeffs=tuple(float(c) for c in coeffs) if use[0] else None,
        bias_degree=config.bias_degree,
        snr=snr if use[1] else None,
        noise_seed=noise_seed,
        lowres_factors=tuple(float(f) for f in factors) if use[2] else None,  # type: ignore[arg-type]
        gibbs_alpha=alpha if use[3] else None,
        gamma=gamma if use[4] else None,
    )


def draw_augment(in_shape: Sequence[int], config: AugmentConfig, generator: np.random.Generator | int,
                 focus: Sequence[Sequence[int]] | None = None) -> AugmentDraw:
    """Draw a full augmentation (spatial then intensity) from ``generator`` (a numpy generator or an int seed);
    ``focus`` as in :func:`draw_spatial`."""
    rng = numpy_rng(generator, "draw_augment")
    return AugmentDraw(draw_spatial(in_shape, config, rng, focus), draw_intensity(config, rng))


# --------------------------------------------------------------------------------------------------
# Spatial apply
# --------------------------------------------------------------------------------------------------

def spatial_matrix(draw: SpatialDraw) -> np.ndarray:
    """The 4x4 voxel map (float64) of the affine part: input voxel ``p = M @ [v, 1]`` for output voxel ``v``.

    ``p = c + R·Sh·S·F·(o + v - c)`` with ``o`` the crop offset, ``c = o + (out - 1) / 2`` the crop
    centre, ``F`` the flips (mirroring about ``c``), ``S`` the zooms, ``Sh`` the shears and ``R`` the
    rotations (MONAI's ``create_rotate/create_shear/create_scale``, intrinsic x-y-z Euler angles).
    The elastic displacement is added on top of this map (in input voxels).
    """
    from monai.transforms.utils import create_rotate, create_scale, create_shear

    flip = np.diag([-1.0 if f else 1.0 for f in draw.flips] + [1.0])
    linear = (create_rotate(3, [math.radians(a) for a in draw.rotation_deg])
              @ create_shear(3, list(draw.shear)) @ create_scale(3, list(draw.scale)) @ flip)
    centre = np.asarray(draw.offset, float) + (np.asarray(draw.out_shape, float) - 1) / 2
    to_centre = np.eye(4)
    to_centre[:3, 3] = np.asarray(draw.offset, float) - centre  # v -> o + v - c
    back = np.eye(4)
    back[:3, 3] = centre
    return back @ linear @ to_centre


def _elastic_field(draw: SpatialDraw, device: torch.device) -> torch.Tensor | None:
    """Displacement (3, X, Y, Z) in input voxels over the output grid, or None."""
    if draw.elastic_std == 0:
        return None
    g = torch.Generator().manual_seed(int(draw.elastic_seed))
    k = int(draw.elastic_nodes)
    nodes = torch.randn((1, 3, k, k, k), generator=g, dtype=torch.float32) * float(draw.elastic_std)
    return F.interpolate(nodes.to(device), size=draw.out_shape, mode="trilinear", align_corners=True)[0]


def sampling_grid(draw: SpatialDraw, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``grid_sample`` grid (1, X, Y, Z, 3) of the draw: normalised input coordinates, float32.

    Built separably (no full-size coordinate matrices) and with ``align_corners=True`` conventions:
    input voxel ``p`` along an axis of ``n`` voxels maps to ``2 p / (n - 1) - 1``.
    """
    device = torch.device(device)
    m = spatial_matrix(draw)
    norm = np.array([2.0 / max(n - 1, 1) for n in draw.in_shape])
    a = m[:3, :3] * norm[:, None]                       # normalised input per output voxel
    b = m[:3, 3] * norm - 1.0
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in draw.out_shape]
    shapes = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    elastic = _elastic_field(draw, device)
    grid = torch.empty((1, *draw.out_shape, 3), dtype=torch.float32, device=device)
    for i in range(3):  # input axis i; grid_sample wants (z, y, x) = (axis 2, 1, 0) order
        comp = float(b[i]) + sum(float(a[i, j]) * axes[j].view(shapes[j]) for j in range(3))
        if elastic is not None:
            comp = comp + elastic[i] * float(norm[i])
        grid[0, ..., 2 - i] = comp
    return grid


def apply_spatial(volume: torch.Tensor, draw: SpatialDraw, *, mode: str | None = None,
                  grid: torch.Tensor | None = None) -> torch.Tensor:
    """Resample ``volume`` (X, Y, Z) or (C, X, Y, Z) onto the draw's output grid, on its device.

    ``mode`` defaults to ``"nearest"`` for integer/bool volumes (hard labels, returned with their
    dtype) and ``"bilinear"`` (trilinear) for floating ones (images, soft label channels).  Outside the
    input the result is 0.  ``grid`` may pass a precomputed :func:`sampling_grid` to share it between
    an image and its labels.
    """
    if tuple(volume.shape[-3:]) != tuple(draw.in_shape):
        raise ValueError(f"volume shape {tuple(volume.shape)} does not match the draw's input {draw.in_shape}")
    integer = not torch.is_floating_point(volume)
    mode = mode or ("nearest" if integer else "bilinear")
    if grid is None:
        grid = sampling_grid(draw, volume.device)
    x = volume.reshape(1, -1, *draw.in_shape)
    x = x.to(torch.float32) if integer or x.dtype != torch.float32 else x
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)
    out = out.reshape(*volume.shape[:-3], *draw.out_shape)
    if integer:
        return out.round_().to(volume.dtype)
    return out.to(volume.dtype)


def apply_spatial_keyed(volumes: Mapping[str, torch.Tensor], draw: SpatialDraw, *,
                        modes: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """One spatial draw applied to several volumes (MONAI's dictionary transforms): ``{key: apply_spatial(...)}``.

    The sampling grid is built once per device and shared, so an image and its labels move together exactly.
    ``modes`` overrides :func:`apply_spatial`'s default mode per key (nearest for integer volumes, trilinear
    for floating ones).
    """
    modes = dict(modes or {})
    unknown = sorted(set(modes) - set(volumes))
    if unknown:
        raise ValueError(f"modes given for keys {unknown} that are not among the volumes {sorted(volumes)}")
    grids: dict[torch.device, torch.Tensor] = {}
    out = {}
    for key, volume in volumes.items():
        if volume.device not in grids:
            grids[volume.device] = sampling_grid(draw, volume.device)
        out[key] = apply_spatial(volume, draw, mode=modes.get(key), grid=grids[volume.device])
    return out


# --------------------------------------------------------------------------------------------------
# Intensity apply
# --------------------------------------------------------------------------------------------------

def _legendre_1d(n: int, degree: int, device: torch.device) -> torch.Tensor:
    """P_0..P_degree on ``n`` points evenly spaced over [-1, 1] (Bonnet's recursion), shape (degree+1, n)."""
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64, device=device)
    p = [torch.ones_like(x), x]
    for k in range(1, degree):
        p.append(((2 * k + 1) * x * p[k] - k * p[k - 1]) / (k + 1))
    return torch.stack(p[: degree + 1])


def bias_field(shape: Sequence[int], coeffs: Sequence[float], degree: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Multiplicative field ``exp(sum_{i+j+k<=degree} c_ijk P_i(x) P_j(y) P_k(z))``, float32 of ``shape``.

    The coefficient order (i, then j, then k ascending) and the coordinates are those of MONAI
    ``RandBiasField``; the polynomial is evaluated separably (the y-z factors in float64, the last
    contraction over x in float32) on ``device``.
    """
    device = torch.device(device)
    idx = [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    if len(coeffs) != len(idx):
        raise ValueError(f"bias field of degree {degree} needs {len(idx)} coefficients, got {len(coeffs)}")
    cmat = torch.zeros((degree + 1,) * 3, dtype=torch.float64, device=device)
    for (i, j, k), c in zip(idx, coeffs, strict=True):
        cmat[i, j, k] = float(c)
    px, py, pz = (_legendre_1d(int(n), degree, device) for n in shape)
    # contract z and y on the small bases in float64, then one float32 pass over the volume
    yz = torch.einsum("ijk,jy,kz->iyz", cmat, py, pz).to(torch.float32)
    return torch.exp(torch.einsum("ix,iyz->xyz", px.to(torch.float32), yz))


def smooth_field(shape: Sequence[int], nodes: int, std: float, seed: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Smooth positive field ``exp(upsample(N(0, std²) on a nodes³ grid))``, float32 of ``shape``.

    The control points are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (so the field
    does not depend on the device) and upsampled trilinearly on ``device``.
    """
    g = torch.Generator().manual_seed(int(seed))
    coarse = torch.randn((1, 1, nodes, nodes, nodes), generator=g, dtype=torch.float32) * float(std)
    up = F.interpolate(coarse.to(device), size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)
    return torch.exp(up[0, 0])


def _lowres(image: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    shape = image.shape[-3:]
    small = tuple(max(1, int(round(n / f))) for n, f in zip(shape, factors, strict=True))
    x = F.interpolate(image.reshape(1, 1, *shape), size=small, mode="area")
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False).reshape(image.shape)


def _plain(x: Any) -> torch.Tensor:
    """A MONAI output as a plain tensor (drops MetaTensor metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _noise_sigma(image: torch.Tensor, snr: float, foreground: torch.Tensor | None) -> float:
    """Sigma for ``snr`` relative to the mean foreground signal (float64 sum: thread-count independent)."""
    mask = foreground if foreground is not None and bool(foreground.any()) else image > 0.1 * image.max()
    count = int(mask.sum())
    level = float(image.masked_fill(~mask, 0.0).sum(dtype=torch.float64)) / count if count else 0.0
    if not math.isfinite(level) or level <= 0:
        level = float(image.abs().max())
    return level / snr if level > 0 else 0.0


def apply_intensity(image: torch.Tensor, draw: IntensityDraw, *, foreground: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Apply one intensity draw to ``image`` (X, Y, Z) or (1, X, Y, Z), on its device; a new float32 tensor.

    Order: bias field -> Rician noise (SNR relative to the mean over ``foreground``, a boolean mask;
    default: voxels above 10 % of the maximum) -> low-resolution reslicing -> Gibbs ringing ->
    min-max normalisation to [0, 1] -> gamma.  Labels are never an input here.
    """
    from monai.transforms import AdjustContrast, GibbsNoise

    from ..physics import rician_noise

    x = image.to(torch.float32)
    shape = x.shape
    x = x.reshape(1, *shape[-3:])
    # bias field: smooth multiplicative inhomogeneity
    if draw.bias_coeffs is not None:
        x = x * bias_field(shape[-3:], draw.bias_coeffs, draw.bias_degree, x.device)
    # Rician noise at the drawn SNR
    if draw.snr is not None:
        fg = None if foreground is None else foreground.reshape(x.shape).to(device=x.device, dtype=torch.bool)
        sigma = _noise_sigma(x, draw.snr, fg)
        if sigma > 0:
            gen = torch.Generator(device=x.device).manual_seed(int(draw.noise_seed))
            x = rician_noise(x, sigma, gen)
    # low-resolution acquisition resliced back to the grid
    if draw.lowres_factors is not None:
        x = _lowres(x, draw.lowres_factors)
    # Gibbs ringing from k-space truncation
    if draw.gibbs_alpha is not None:
        # float64 FFT: the float32 result then does not depend on the number of CPU threads
        x = _plain(GibbsNoise(draw.gibbs_alpha)(x.double())).to(torch.float32)
    # min-max normalisation, then gamma on [0, 1]
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(x)
    if draw.gamma is not None:
        x = _plain(AdjustContrast(draw.gamma)(x)).clamp_(0.0, 1.0)
    return x.reshape(shape)


def augment(image: torch.Tensor, label: torch.Tensor, draw: AugmentDraw
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a draw to an (image, label) pair: the spatial part to both, the intensity part to the image.

    ``image`` is (X, Y, Z) or (1, X, Y, Z); ``label`` hard (X, Y, Z) integers or soft (C, X, Y, Z)
    floats whose channel 0 is the background.
    """
    moved = apply_spatial_keyed({"image": image.to(torch.float32), "label": label}, draw.spatial)
    img, lab = moved["image"], moved["label"]
    fg = (lab > 0) if not torch.is_floating_point(lab) else (lab[0] < 0.5)
    return apply_intensity(img, draw.intensity, foreground=fg), lab
