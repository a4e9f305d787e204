"""Label maps with ventricles, and the mask generator's training set (docs/ldm.md).

Ventricles
    No atlas with ventricle labels ships offline here: nilearn's wheel holds the MNI ICBM152 2009a T1 and GM/WM
    probability maps only (no CSF, no ventricles).  The ventricles are therefore derived from the anatomy's CSF
    (:func:`ventricle_mask`): the CSF eroded by one voxel, its components that neither touch the border of the
    intracranial volume nor lie off its centre, grown back inside the CSF.  ``anatomy.ventricle_mask`` (no
    erosion) finds well under 1 mL on the shipped heads: at 2 mm their lateral ventricles touch the outer CSF
    through one-voxel channels.  Limits: a method, not an atlas; a ventricle part thinner than 3 voxels
    (6 mm at 2 mm: the fourth ventricle, temporal horns, the third ventricle of a young brain) is lost or kept
    only where it meets a thick part; a thick deep CSF pocket near the centre (a cavum) would count.  On the
    20 shipped heads it gives 15-90 mL (their own ventricle change is part of them).

Training set (draw, then apply: :class:`MaskDraw`, :func:`draw_mask`, :class:`MaskSet.apply`)
    Sample ``k`` picks an anatomy (``k mod count``), draws a target ventricle volume log-uniformly in
    ``ventricle_ml_range`` and moves the ventricle border to reach it: the white matter (and GM/WM partial
    volume) nearest the ventricles turns into ventricle (enlargement, as ``anatomy.py``'s ``ventricle_mm``
    dilation, ordered by distance so any volume is reachable, not only whole-voxel shells), or the ventricle
    voxels nearest its border turn into white matter (shrinking).  Then a random affine (scale, rotation) about
    the brain centre, resampled (nearest) on a grid ``factor`` times finer than the working grid, and a mode
    downsampling (the most frequent class of each ``factor³`` block) to the working grid of the model.  The
    condition a sample trains with is the ventricle volume measured on that final grid, so it is exact for what
    the network sees, whatever the deformation did to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError, ParameterError
from ..serialise import JSONDraw

#: The mask generator's classes, in channel order.  Head tissues map to background, a lesion to white matter.
LDM_CLASSES: tuple[str, ...] = ("background", "gm", "wm", "gm_wm_pv", "csf", "ventricles")
VENTRICLES = LDM_CLASSES.index("ventricles")
_AS = {"lesion": "wm"}  # classes of the priors that the LDM counts as another
ICV_CLASSES = ("gm", "wm", "gm_wm_pv", "csf", "ventricles", "lesion")


def ventricle_mask(labels: np.ndarray, priors: Any, erode: int = 1, central: float = 0.7) -> np.ndarray:
    """Ventricular CSF of a label map (priors' label values): the deep, central, thick parts of the CSF.

    1. The CSF is eroded by ``erode`` voxels: the thin CSF of sulci and the narrow channels through which the
       ventricles meet the outer CSF in a template (foramina, choroid fissure, partial volume) vanish.
    2. Components of what is left that touch the border of the intracranial volume (2 voxels deep), that have
       fewer than 8 voxels, or whose centre lies outside the central ``central`` fraction of the intracranial
       volume's bounding box on some axis are dropped: cisterns and the deep Sylvian CSF go with them.
    3. The kept cores are grown back by ``erode`` voxels inside the CSF (geodesic dilation).  This opening loses
       the corners of a digital ball: 6 % of two 9-voxel-wide ventricles in the tests.
    Voxels already labelled ``ventricles`` are kept.
    """
    csf = np.isin(labels, [priors.label_of("csf"), priors.label_of("ventricles")])
    icv = ndimage.binary_fill_holes(np.isin(labels, [priors.label_of(n) for n in ICV_CLASSES]))
    if not icv.any():
        return np.zeros(labels.shape, dtype=bool)
    border = icv & ~ndimage.binary_erosion(icv, iterations=2)
    core = ndimage.binary_erosion(csf, iterations=erode) if erode else csf
    comps, n = ndimage.label(core)
    keep = np.ones(n + 1, dtype=bool)
    keep[0] = False
    keep[np.unique(comps[border])] = False
    keep &= np.bincount(comps.reshape(-1), minlength=n + 1) >= 8
    where = np.argwhere(icv)
    lo, hi = where.min(0), where.max(0)
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1)
    for k in np.flatnonzero(keep):
        centre = np.array(ndimage.center_of_mass(comps == k))
        keep[k] = bool(np.all(np.abs(centre - mid) <= central * half))
    vent = keep[comps]
    if erode:
        vent = ndimage.binary_dilation(vent, iterations=erode, mask=csf)
    return vent | (labels == priors.label_of("ventricles"))


def with_ventricles(labels: np.ndarray, priors: Any) -> np.ndarray:
    """A copy of ``labels`` (priors' label values) whose ventricular CSF (:func:`ventricle_mask`) is relabelled
    ``ventricles``."""
    out = np.array(labels, copy=True)
    out[ventricle_mask(out, priors)] = priors.label_of("ventricles")
    return out


def to_classes(labels: np.ndarray, priors: Any) -> np.ndarray:
    """Priors' label values → LDM class indices (int64); labels outside :data:`LDM_CLASSES` become background."""
    lut = np.zeros(max(priors.labels) + 1, dtype=np.int64)
    for name, value in zip(priors.names, priors.labels, strict=True):
        name = _AS.get(name, name)
        if name in LDM_CLASSES:
            lut[value] = LDM_CLASSES.index(name)
    return lut[np.asarray(labels, dtype=np.int64)]


def to_labels(classes: np.ndarray, priors: Any) -> np.ndarray:
    """LDM class indices → the priors' label values (int16)."""
    values = np.array([priors.label_of(n) for n in LDM_CLASSES], dtype=np.int16)
    return values[np.asarray(classes, dtype=np.int64)]


def class_table(priors: Any) -> dict[str, int]:
    """``{class name: label value}`` of the LDM classes (what a sample's sidecar lists)."""
    return {n: int(priors.label_of(n)) for n in LDM_CLASSES}


def ventricle_ml(classes: np.ndarray, affine: np.ndarray) -> float:
    """Ventricle volume (mL) of an LDM class map: its voxel count times the voxel volume of ``affine``."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    return float(np.count_nonzero(np.asarray(classes) == VENTRICLES)) * voxel_mm3 / 1000.0


def grid_affine(shape: tuple[int, ...], spacing_mm: float) -> np.ndarray:
    """RAS affine of a working grid: isotropic ``spacing_mm`` voxels, the grid centred on the origin."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -(np.array(shape, dtype=np.float64) - 1) / 2 * spacing_mm
    return affine


@dataclass(frozen=True)
class MaskSetConfig:
    """Ranges of the training-set draw (read from :class:`qmricore.training.config.LDMMasksDataConfig`).

    Attributes
    ----------
    ventricle_ml_range
        Target ventricle volume (mL) drawn log-uniformly in this range (normal ~10-40 mL, enlarged well above).
    scale, rotation_deg
        Per-axis scale factor range and rotation range (degrees, about each axis) of the random affine.
    """

    ventricle_ml_range: tuple[float, float] = (8.0, 150.0)
    scale: tuple[float, float] = (0.92, 1.08)
    rotation_deg: float = 6.0

    def __post_init__(self) -> None:
        lo, hi = self.ventricle_ml_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ParameterError(f"data: ventricle_ml_range must satisfy 0 < low <= high, got {[lo, hi]}")
        if not 0 < self.scale[0] <= self.scale[1] or not 0 <= self.rotation_deg <= 45:
            raise ParameterError("data: need 0 < scale low <= high and 0 <= rotation_deg <= 45")


@dataclass(frozen=True)
class MaskDraw(JSONDraw):
    """Every random number of one training label map (JSON-safe)."""

    anatomy: int
    ventricle_ml: float
    scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]


def draw_mask(rng: np.random.Generator, n_anatomies: int, index: int, config: MaskSetConfig) -> MaskDraw:
    """Draw sample ``index``'s target ventricle volume and deformation (anatomy ``index mod n_anatomies``)."""
    lo, hi = config.ventricle_ml_range
    return MaskDraw(anatomy=index % n_anatomies,
                    ventricle_ml=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                    scale=tuple(float(s) for s in rng.uniform(*config.scale, size=3)),
                    rotation_deg=tuple(float(a) for a in rng.uniform(-config.rotation_deg, config.rotation_deg, 3)))


@dataclass(frozen=True, eq=False)
class _Anatomy:
    """One anatomy prepared once: LDM classes cropped to the brain, and the orders in which voxels change."""

    classes: np.ndarray  # (X, Y, Z) int64 LDM classes
    voxel_mm: float
    grow: np.ndarray  # flat indices of WM/PV voxels, nearest the ventricles first
    shrink: np.ndarray  # flat indices of ventricle voxels, nearest their border first

    @property
    def voxel_ml(self) -> float:
        return self.voxel_mm ** 3 / 1000.0


def prepare_anatomy(labels: np.ndarray, affine: np.ndarray, priors: Any, what: object = "label map") -> _Anatomy:
    """Ventricles derived, classes mapped, cropped to the brain (2-voxel margin), change orders computed."""
    voxel = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    if not np.allclose(voxel, voxel[0], rtol=1e-3):
        raise InputError(f"the mask generator needs isotropic voxels, got {np.round(voxel, 3).tolist()} mm", what)
    classes = to_classes(with_ventricles(labels, priors), priors)
    inside = np.argwhere(classes > 0)
    if not len(inside):
        raise InputError("label map has no brain tissue", what)
    lo, hi = np.maximum(inside.min(0) - 2, 0), inside.max(0) + 3
    classes = np.ascontiguousarray(classes[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    vent = classes == VENTRICLES
    if not vent.any():
        raise InputError("no ventricles found (no CSF component inside the brain that does not touch its border)",
                         what)
    growable = np.isin(classes, [LDM_CLASSES.index("wm"), LDM_CLASSES.index("gm_wm_pv")])
    outside = ndimage.distance_transform_edt(~vent).reshape(-1)
    inside_d = ndimage.distance_transform_edt(vent).reshape(-1)
    grow = np.flatnonzero(growable)
    shrink = np.flatnonzero(vent)
    return _Anatomy(classes=classes, voxel_mm=float(voxel[0]), grow=grow[np.argsort(outside[grow], kind="stable")],
                    shrink=shrink[np.argsort(inside_d[shrink], kind="stable")])


def change_ventricles(anatomy: _Anatomy, target_ml: float) -> np.ndarray:
    """The anatomy's classes with the ventricles grown into white matter or shrunk to reach ``target_ml``."""
    out = anatomy.classes.copy().reshape(-1)
    delta = int(round(target_ml / anatomy.voxel_ml)) - len(anatomy.shrink)
    if delta > 0:
        out[anatomy.grow[:delta]] = VENTRICLES
    elif delta < 0:
        out[anatomy.shrink[:min(-delta, len(anatomy.shrink))]] = LDM_CLASSES.index("wm")
    return out.reshape(anatomy.classes.shape)


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    rot = np.eye(3)
    for axis, a in enumerate(np.deg2rad(angles_deg)):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        rot = rot @ r
    return rot


def mode_downsample(classes: np.ndarray, factor: int, n_classes: int = len(LDM_CLASSES)) -> np.ndarray:
    """Most frequent class of each ``factor³`` block (ties: the lower class index); shape divisible by factor."""
    if factor == 1:
        return classes
    shape = tuple(s // factor for s in classes.shape)
    blocks = classes.reshape(shape[0], factor, shape[1], factor, shape[2], factor)
    counts = np.stack([(blocks == c).sum(axis=(1, 3, 5)) for c in range(n_classes)])
    return counts.argmax(0)


def apply_mask(anatomy: _Anatomy, draw: MaskDraw, shape: tuple[int, int, int], spacing_mm: float) -> np.ndarray:
    """One training class map on the working grid (``shape`` voxels of ``spacing_mm``)."""
    factor = max(1, int(round(spacing_mm / anatomy.voxel_mm)))
    fine = np.array(shape) * factor
    fine_mm = spacing_mm / factor
    classes = change_ventricles(anatomy, draw.ventricle_ml)
    centre = np.array(ndimage.center_of_mass(classes > 0))
    # output voxel o (fine grid, mm about its centre) -> input voxel: x_in = centre + (R S)^-1 o·fine_mm / voxel_mm
    inverse = np.linalg.inv(_rotation(draw.rotation_deg) @ np.diag(draw.scale)) * (fine_mm / anatomy.voxel_mm)
    offset = centre - inverse @ ((fine - 1) / 2)
    warped = ndimage.affine_transform(classes, inverse, offset=offset, output_shape=tuple(int(f) for f in fine),
                                      order=0, mode="constant", cval=0)
    return mode_downsample(warped, factor)


class MaskSet:
    """The training set: ``sample(k, seed) -> (classes (X, Y, Z) int64, draw)``, a pure function of (seed, k)."""

    def __init__(self, files: list[Any], config: MaskSetConfig, shape: tuple[int, int, int], spacing_mm: float,
                 priors: Any | None = None) -> None:
        from ..generators.priors import load_priors

        self.files, self.config, self.shape, self.spacing_mm = list(files), config, tuple(shape), float(spacing_mm)
        self.priors = priors or load_priors()

    @cached_property
    def anatomies(self) -> list[_Anatomy]:
        from ..datasets import read_label_map

        out = []
        for path in self.files:
            label_map = read_label_map(path, self.priors)
            out.append(prepare_anatomy(label_map.labels, label_map.volume.affine, self.priors, path))
        return out

    def sample(self, index: int, seed: int) -> tuple[np.ndarray, MaskDraw]:
        from ..datasets import sample_seed

        rng = np.random.default_rng(sample_seed(seed, index))
        draw = draw_mask(rng, len(self.files), index, self.config)
        return apply_mask(self.anatomies[draw.anatomy], draw, self.shape, self.spacing_mm), draw
