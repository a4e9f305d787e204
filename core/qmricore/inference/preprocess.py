"""Image preprocessing for the networks (SPEC §9): RAS 1 mm grid, intensity normalisation, exact way back.

Geometry
--------
A :class:`Grid` is a shape and a 4x4 voxel-to-world affine (mm, RAS world as in NIfTI).
:func:`network_grid` gives the grid a network sees for an input grid:

1. *orient to RAS*: the input axes are permuted and flipped to the closest RAS order
   (``nibabel.orientations.io_orientation``; no interpolation, an oblique rotation is kept, as MONAI's
   ``Orientation`` does);
2. *reslice to 1 mm*: along those axes the voxel size becomes ``spacing`` (mm) and the number of voxels
   ``max(1, round(n·v/spacing))`` so that the field of view stays the same; the new grid is centred on
   the centre of the input's field of view.

:func:`resample` moves channels from one grid to another through world coordinates with trilinear
interpolation (``torch.nn.functional.grid_sample``, ``align_corners=True`` in voxel-centre convention,
edge values repeated outside): the same function takes the image to the network grid and the logits
back to the input grid, so the way back is the exact inverse map of the way there.  When the two
grids are the same (a 1 mm RAS input) it returns the data unchanged.

Intensities
-----------
:func:`normalise_intensity` applies :class:`PreprocessConfig`: a robust histogram
normalisation (clip to the 0.5 and 99.5 percentiles of the image, then scale linearly to [0, 1]) or MONAI's
``HistogramNormalize`` (histogram equalisation onto 0-255, 256 bins: SynthStroke's), and a z-score (mean 0,
standard deviation 1 over the whole image, or over voxels above the lower percentile).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ParameterError
from ..serialise import ModelSettings

#: Intensity normalisations and grid anchors of :class:`PreprocessConfig`.
NORMALISATIONS = ("percentile", "histogram", "none")
GRID_ANCHORS = ("centred", "first-voxel")


@dataclass(frozen=True)
class PreprocessConfig(ModelSettings):
    """Image preprocessing before the network (SPEC §9); training must use the same.

    Parameters
    ----------
    spacing
        Isotropic voxel size (mm) the image is resliced to.
    orientation
        Axis codes the image is reoriented to (only ``"RAS"`` is supported).
    normalisation
        ``"percentile"``: clip intensities to the ``percentiles`` (in percent) of the image, then scale
        linearly to [0, 1] (a robust histogram normalisation); ``"histogram"``: MONAI's
        ``HistogramNormalize`` (histogram equalisation with ``histogram_bins`` bins onto
        ``histogram_range``; SynthStroke's preprocessing); ``"none"``: leave intensities as they are.
    percentiles
        Lower and upper percentile (percent) for ``"percentile"``.
    zscore
        ``"whole"``: subtract the mean and divide by the standard deviation over the whole image;
        ``"foreground"``: the same statistics over voxels above the lower percentile (the background
        becomes a constant below the foreground); ``"none"``: skip.
    grid
        Where the resliced grid sits: ``"centred"`` (the input's field of view, centred; ``n·v/spacing``
        voxels per axis) or ``"first-voxel"`` (MONAI ``Spacing``'s convention: the first voxel centre is
        kept and an axis gets ``round((n-1)·v/spacing) + 1`` voxels), see
        :func:`network_grid`.
    histogram_bins, histogram_range
        Bins and output range (min, max) of ``"histogram"``.
    """

    spacing: float = 1.0
    orientation: str = "RAS"
    normalisation: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    zscore: str = "whole"
    grid: str = "centred"
    histogram_bins: int = 256
    histogram_range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        object.__setattr__(self, "histogram_range", tuple(float(p) for p in self.histogram_range))
        if not self.spacing > 0:
            raise ParameterError(f"PreprocessConfig: spacing must be > 0 mm, got {self.spacing}")
        if self.orientation != "RAS":
            raise ParameterError(f"PreprocessConfig: orientation must be 'RAS', got {self.orientation!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ParameterError(
                f"PreprocessConfig: normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}"
            )
        if self.grid not in GRID_ANCHORS:
            raise ParameterError(f"PreprocessConfig: grid must be one of {GRID_ANCHORS}, got {self.grid!r}")
        low_h, high_h = self.histogram_range if len(self.histogram_range) == 2 else (1.0, 0.0)
        if self.histogram_bins < 2 or not low_h < high_h:
            raise ParameterError("PreprocessConfig: need histogram_bins >= 2 and histogram_range (min, max) with "
                                 f"min < max, got {self.histogram_bins}, {self.histogram_range}")
        low, high = self.percentiles if len(self.percentiles) == 2 else (1.0, 0.0)
        if not 0.0 <= low < high <= 100.0:
            raise ParameterError(
                f"PreprocessConfig: percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )
        if self.zscore not in ("whole", "foreground", "none"):
            raise ParameterError(
                f"PreprocessConfig: zscore must be 'whole', 'foreground' or 'none', got {self.zscore!r}"
            )


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: ``shape`` (3 sizes) and ``affine`` (4x4 voxel-to-world matrix, mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def same_as(self, other: Grid, tol: float = 1e-6) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=tol, rtol=0))


def network_grid(grid: Grid, spacing: float = 1.0, anchor: str = "centred") -> Grid:
    """The RAS-ordered grid with isotropic ``spacing`` (mm) covering the field of view of ``grid``.

    ``anchor="centred"``: ``round(n·v/spacing)`` voxels per axis, centred on the input's field of view.
    ``anchor="first-voxel"``: MONAI ``Spacing``'s grid (``compute_shape_offset``): the first voxel centre of
    the RAS-ordered input is kept and an axis gets ``round((n-1)·v/spacing) + 1`` voxels, so a pipeline of
    MONAI ``Orientation("RAS")`` + ``Spacing`` and this one sample the same points.
    """
    ornt = nib.orientations.io_orientation(grid.affine)
    canonical = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    shape_c = np.array(grid.shape)[ornt[:, 0].astype(int)]
    zooms = np.sqrt((canonical[:3, :3] ** 2).sum(axis=0))
    directions = canonical[:3, :3] / zooms
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    if anchor == "first-voxel":
        new_shape = np.maximum(1, np.round((shape_c - 1) * zooms / spacing) + 1).astype(int)
        affine[:3, 3] = canonical[:3, 3]
    elif anchor == "centred":
        new_shape = np.maximum(1, np.round(shape_c * zooms / spacing)).astype(int)
        centre = canonical[:3, :3] @ ((shape_c - 1) / 2.0) + canonical[:3, 3]
        affine[:3, 3] = centre - affine[:3, :3] @ ((new_shape - 1) / 2.0)
    else:
        raise ValueError(f"network_grid: anchor must be 'centred' or 'first-voxel', got {anchor!r}")
    return Grid(tuple(int(s) for s in new_shape), affine)


#: Destination voxels resampled per slab (bounds the memory of the sampling grid to ~100 MB).
_SLAB_VOXELS = 1 << 22


def _sampling_grid(src: Grid, dst: Grid, rows: range, device: torch.device) -> torch.Tensor:
    """``grid_sample`` grid (1, len(rows), Y, Z, 3) of normalised source coordinates for destination voxels
    ``dst[rows, :, :]``."""
    mapping = torch.as_tensor(np.linalg.inv(src.affine) @ dst.affine, dtype=torch.float64, device=device)
    shape = (len(rows), dst.shape[1], dst.shape[2])
    i = torch.arange(rows.start, rows.stop, dtype=torch.float64, device=device).view(-1, 1, 1)
    j = torch.arange(dst.shape[1], dtype=torch.float64, device=device).view(1, -1, 1)
    k = torch.arange(dst.shape[2], dtype=torch.float64, device=device).view(1, 1, -1)
    normalised = []
    for a in range(3):
        coord = mapping[a, 0] * i + mapping[a, 1] * j + mapping[a, 2] * k + mapping[a, 3]
        size = src.shape[a]
        normalised.append(coord * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(coord))
    # grid_sample wants (x, y, z) = (last, middle, first) input dimension
    grid = torch.stack([c.expand(shape).to(torch.float32) for c in normalised[::-1]], dim=-1)
    return grid.unsqueeze(0)


def resample(data: torch.Tensor, src: Grid, dst: Grid, *, mode: str = "bilinear") -> torch.Tensor:
    """Resample channels ``data`` (C, *src.shape) onto ``dst`` through world coordinates.

    Parameters
    ----------
    data
        Float tensor of shape ``(C, X, Y, Z)`` on ``src``.
    src, dst
        Source and destination grids.
    mode
        ``"bilinear"`` (trilinear for volumes) or ``"nearest"``.

    Returns
    -------
    Tensor ``(C, *dst.shape)`` on the device of ``data``; ``data`` itself when the grids are the same.
    """
    if tuple(data.shape[1:]) != src.shape:
        raise ValueError(f"resample: data shape {tuple(data.shape[1:])} does not match the source grid {src.shape}")
    if src.same_as(dst):
        return data
    source = data.unsqueeze(0).float()
    step = max(1, _SLAB_VOXELS // max(1, dst.shape[1] * dst.shape[2]))
    slabs = []
    for start in range(0, dst.shape[0], step):
        grid = _sampling_grid(src, dst, range(start, min(start + step, dst.shape[0])), data.device)
        slabs.append(F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=True))
    return torch.cat(slabs, dim=2).squeeze(0)


def normalise_intensity(image: np.ndarray, config: PreprocessConfig, *, path: object | None = None) -> np.ndarray:
    """Histogram normalisation then z-score, as ``config`` says; returns a new float32 array.

    Raises
    ------
    InputError
        The image has (almost) constant intensity, so it cannot be normalised (names ``path``).
    """
    x = np.array(image, dtype=np.float32, copy=True)
    floor = float(x.min())
    if config.normalisation == "percentile":
        low, high = (float(v) for v in np.percentile(x, config.percentiles))
        if not high > low:
            raise InputError("image intensities are constant between the normalisation percentiles", path)
        x = (np.clip(x, low, high) - low) / (high - low)
        floor = 0.0
    elif config.normalisation == "histogram":
        if not float(x.max()) > floor:
            raise InputError("image intensities are constant; cannot histogram-normalise", path)
        x = _histogram_normalise(x, config.histogram_bins, config.histogram_range)
        floor = config.histogram_range[0]
    if config.zscore != "none":
        values = x[x > floor] if config.zscore == "foreground" else x
        if values.size < 2:
            raise InputError("image has no foreground voxels to normalise", path)
        mean, std = float(values.mean()), float(values.std())
        if not std > 0:
            raise InputError("image intensities are constant; cannot z-score", path)
        x = (x - mean) / std
    return x.astype(np.float32, copy=False)


def _histogram_normalise(image: np.ndarray, bins: int, value_range: tuple[float, float]) -> np.ndarray:
    """MONAI's ``HistogramNormalize(num_bins=bins, min=value_range[0], max=value_range[1])`` (its own code)."""
    from monai.transforms import HistogramNormalize

    low, high = value_range
    out = HistogramNormalize(num_bins=bins, min=low, max=high, dtype=np.float32)(image)
    return np.asarray(out.cpu().numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)


def preprocess(data: np.ndarray, grid: Grid, config: PreprocessConfig, *, path: object | None = None) -> tuple[
    torch.Tensor, Grid
]:
    """Image on its grid -> normalised image ``(1, 1, X, Y, Z)`` on the network grid, and that grid."""
    target = network_grid(grid, config.spacing, config.grid)
    image = torch.as_tensor(np.asarray(data, dtype=np.float32)).unsqueeze(0)
    resliced = resample(image, grid, target)[0].numpy()
    normalised = normalise_intensity(resliced, config, path=path)
    return torch.from_numpy(normalised)[None, None], target
