"""Training anatomy: whole heads around a brain label map, varied well beyond one template (docs/anatomy.md).

A clinical field of view holds skull, diploë, scalp muscle and fat, dura and meninges, eyes and orbital fat,
and air, besides the brain.  A network trained on a skull-stripped brain has never seen them and marks them
as lesion.  :func:`build_head` turns one brain label map (GM, WM, GM/WM partial volume, CSF) into a varied
head, draw then apply (STYLE §2):

1. **Brain deformation** (:class:`HeadDraw` ``scale``, ``rotation``, ``elastic_*``): a random affine about the
   brain centre and a smooth random displacement field, nearest-neighbour on the labels.
2. **Atrophy and ventricles** (``atrophy_mm``, ``ventricle_mm``): cortical grey matter that borders CSF turns
   into CSF over a random depth (patchy: a smooth random field decides where); the ventricles (CSF inside
   the brain, not connected to the CSF around it) grow into white matter by a random distance or shrink.
3. **Layers outside the intracranial volume**, by distance ``d`` from it, each layer's thickness a smooth
   random field over the head (asymmetric, with gaps): dura, skull (outer and inner tables) with diploë
   (marrow) where the skull is thick enough, scalp muscle (thicker over the temples), subcutaneous fat, and
   skin (counted with muscle); beyond them air.  Below the brain the skull closes over the skull base and
   a neck of muscle and fat runs to the edge of the field of view.
4. **Eyes** (vitreous) in orbital fat in front of and below the frontal lobes, when the grid reaches them.

Voxel size and geometry: the output grid has the input's voxel size and orientation (RAS assumed, as
:mod:`qmricore.sample_data` writes it), padded by ``HeadConfig.pad_mm`` so the scalp and neck fit; the
returned affine places it exactly.  Every number comes from the seeded draw, so a head is reproducible from
its :class:`HeadDraw` (written next to each shipped head).

Tissue values for the new classes are in the shipped priors (``qmricore/data/priors_3t.json``), with sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError, ParameterError
from ..serialise import JSONDataclass, JSONDraw
from ._random import numpy_rng
from .priors import TissuePriors, load_priors

__all__ = ["HEAD_CLASSES", "HeadConfig", "HeadDraw", "draw_head", "apply_head", "build_head", "ventricle_mask"]

#: Classes that :func:`build_head` adds around the brain (names of the priors' classes).
HEAD_CLASSES = ("dura", "skull", "marrow", "muscle", "fat", "eye")
#: Brain classes that make up the intracranial volume (CSF included).
BRAIN_CLASSES = ("gm", "wm", "gm_wm_pv", "csf")


@dataclass(frozen=True)
class HeadConfig(JSONDataclass):
    """Ranges of the head draw (the one place their defaults live).  Lengths in mm, angles in degrees.

    Attributes
    ----------
    scale, rotation_deg
        Per-axis scale factor range and rotation range about each axis (brain deformation).
    elastic_mm, elastic_fwhm_mm
        Largest displacement amplitude (std, per axis) and smoothness (FWHM) of the elastic field.
    atrophy_prob, atrophy_mm
        Probability of cortical atrophy and the range of its largest depth.
    ventricle_mm
        Ventricle growth (positive) or shrinkage (negative) range, drawn uniformly.
    dura_mm, skull_mm, muscle_mm, temporalis_mm, fat_mm, skin_mm
        Thickness ranges of the layers (each a smooth field between its bounds; temporalis adds to muscle over
        the temples).
    marrow_min_mm
        Skull thickness above which the middle of the skull is diploë.
    gap_prob
        Fraction of the scalp where the fat layer is missing (thin scalp over bone).
    eye_radius_mm
        Vitreous radius range; orbital fat extends 1.5 radii.
    pad_mm
        Padding added to the grid (x, y, z below, z above) so that scalp and neck fit.
    field_fwhm_mm
        Smoothness of the thickness fields.
    """

    scale: tuple[float, float] = (0.88, 1.12)
    rotation_deg: float = 8.0
    elastic_mm: float = 3.0
    elastic_fwhm_mm: float = 40.0
    atrophy_prob: float = 0.5
    atrophy_mm: tuple[float, float] = (1.0, 4.0)
    ventricle_mm: tuple[float, float] = (-2.0, 8.0)
    dura_mm: tuple[float, float] = (0.5, 2.5)
    skull_mm: tuple[float, float] = (4.0, 10.0)
    muscle_mm: tuple[float, float] = (1.0, 4.0)
    temporalis_mm: tuple[float, float] = (3.0, 12.0)
    fat_mm: tuple[float, float] = (1.5, 7.0)
    skin_mm: tuple[float, float] = (1.0, 2.5)
    marrow_min_mm: float = 5.0
    gap_prob: float = 0.15
    eye_radius_mm: tuple[float, float] = (10.5, 12.5)
    pad_mm: tuple[float, float, float, float] = (10.0, 10.0, 50.0, 10.0)
    field_fwhm_mm: float = 50.0

    def __post_init__(self) -> None:
        for name in ("scale", "atrophy_mm", "ventricle_mm", "dura_mm", "skull_mm", "muscle_mm", "temporalis_mm",
                     "fat_mm", "skin_mm", "eye_radius_mm"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ParameterError(f"head config: {name} low {lo} is above high {hi}")
        if min(self.scale) <= 0 or min(self.skull_mm) <= 0 or min(self.eye_radius_mm) <= 0:
            raise ParameterError("head config: scale, skull_mm and eye_radius_mm must be > 0")
        if not 0 <= self.atrophy_prob <= 1 or not 0 <= self.gap_prob < 1:
            raise ParameterError("head config: atrophy_prob must be in [0, 1] and gap_prob in [0, 1)")
        if min(self.pad_mm) < 0 or self.field_fwhm_mm <= 0 or self.elastic_fwhm_mm <= 0:
            raise ParameterError("head config: pad_mm must be >= 0 and the FWHMs > 0")


@dataclass(frozen=True)
class HeadDraw(JSONDraw):
    """Every random number of one head (JSON-safe through ``to_dict``/``from_dict``)."""

    scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    elastic_mm: float
    atrophy_mm: float
    ventricle_mm: float
    dura_mm: tuple[float, float]
    skull_mm: tuple[float, float]
    muscle_mm: tuple[float, float]
    temporalis_mm: float
    fat_mm: tuple[float, float]
    skin_mm: tuple[float, float]
    eye_radius_mm: float
    eye_offset_mm: tuple[float, float, float]
    field_seed: int


def _pair(rng: np.random.Generator, bounds: tuple[float, float]) -> tuple[float, float]:
    """A sub-range of ``bounds`` (low <= high): where one head's thickness field lies."""
    a, b = sorted(float(v) for v in rng.uniform(*bounds, size=2))
    return a, b


def draw_head(generator: np.random.Generator | int, config: HeadConfig | None = None) -> HeadDraw:
    """Draw one head's deformation, atrophy, ventricle change, layer thickness ranges and eyes (``generator``: a
    numpy generator or an int seed)."""
    c = config or HeadConfig()
    rng = numpy_rng(generator, "draw_head")
    atrophy = float(rng.uniform(*c.atrophy_mm)) if rng.random() < c.atrophy_prob else 0.0
    return HeadDraw(
        scale=tuple(float(v) for v in rng.uniform(*c.scale, size=3)),
        rotation_deg=tuple(float(v) for v in rng.uniform(-c.rotation_deg, c.rotation_deg, size=3)),
        elastic_mm=float(rng.uniform(0.0, c.elastic_mm)),
        atrophy_mm=atrophy,
        ventricle_mm=float(rng.uniform(*c.ventricle_mm)),
        dura_mm=_pair(rng, c.dura_mm), skull_mm=_pair(rng, c.skull_mm), muscle_mm=_pair(rng, c.muscle_mm),
        temporalis_mm=float(rng.uniform(*c.temporalis_mm)),
        fat_mm=_pair(rng, c.fat_mm), skin_mm=_pair(rng, c.skin_mm),
        eye_radius_mm=float(rng.uniform(*c.eye_radius_mm)),
        eye_offset_mm=tuple(float(v) for v in rng.normal(0.0, 3.0, size=3)),
        field_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ------------------------------------------------------------------------------------------------------------
# Helpers (numpy/scipy: heads are built once, offline, not in the training step)
# ------------------------------------------------------------------------------------------------------------

def _smooth_field(shape: tuple[int, ...], fwhm_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field scaled to [0, 1] (its own min and max)."""
    step = max(1, int(fwhm_vox // 4))  # draw coarse, smooth, then upsample: cheap and just as smooth
    coarse = rng.standard_normal(tuple(-(-s // step) + 2 for s in shape))
    coarse = ndimage.gaussian_filter(coarse, fwhm_vox / step / 2.355, mode="wrap")
    zoom = [(s + 2 * step) / c for s, c in zip(shape, coarse.shape, strict=True)]
    f = ndimage.zoom(coarse, zoom, order=1)[step:step + shape[0], step:step + shape[1], step:step + shape[2]]
    lo, hi = float(f.min()), float(f.max())
    return (f - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def _between(field: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return bounds[0] + (bounds[1] - bounds[0]) * field


def _deform(labels: np.ndarray, draw: HeadDraw, voxel: np.ndarray, config: HeadConfig,
            rng: np.random.Generator) -> np.ndarray:
    """Labels resampled (nearest) through a random affine about the brain centre and a smooth displacement."""
    shape = labels.shape
    centre = np.array(ndimage.center_of_mass(labels > 0))
    angles = np.deg2rad(draw.rotation_deg)
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        rot = rot @ r
    # output voxel -> input voxel, in mm about the centre: x_in = R^-1 S^-1 x_out
    inverse = np.linalg.inv(rot @ np.diag(draw.scale))
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    mm = (grid - centre[:, None]) * voxel[:, None]
    src = inverse @ mm
    if draw.elastic_mm > 0:
        fwhm = config.elastic_fwhm_mm / float(voxel.mean())
        for axis in range(3):
            field = ndimage.gaussian_filter(rng.standard_normal(shape), fwhm / 2.355)
            field *= draw.elastic_mm / max(float(field.std()), 1e-12)
            src[axis] += field.reshape(-1)
    src = src / voxel[:, None] + centre[:, None]
    return ndimage.map_coordinates(labels, src, order=0, mode="constant", cval=0).reshape(shape)


def ventricle_mask(labels: np.ndarray, priors: TissuePriors) -> np.ndarray:
    """CSF inside the brain: CSF components that do not touch the CSF bordering the outside of the brain.

    The CSF around the brain (subarachnoid) is connected to the intracranial volume's boundary; the lateral,
    third and fourth ventricles are not.  Components of fewer than 8 voxels are left out (sulcal fragments).
    """
    csf = labels == priors.label_of("csf")
    icv = np.isin(labels, [priors.label_of(n) for n in BRAIN_CLASSES])
    icv = ndimage.binary_fill_holes(icv)
    border = icv & ~ndimage.binary_erosion(icv, iterations=2)
    comps, n = ndimage.label(csf)
    if n == 0:
        return np.zeros_like(csf)
    touching = np.unique(comps[border & csf])
    sizes = np.bincount(comps.reshape(-1), minlength=n + 1)
    keep = np.ones(n + 1, dtype=bool)
    keep[0] = False
    keep[touching] = False
    keep &= sizes >= 8
    return keep[comps]


def _atrophy_and_ventricles(labels: np.ndarray, draw: HeadDraw, voxel: np.ndarray, priors: TissuePriors,
                            rng: np.random.Generator) -> np.ndarray:
    out = labels.copy()
    gm, wm, pv, csf = (priors.label_of(n) for n in BRAIN_CLASSES)
    fwhm = 30.0 / float(voxel.mean())
    if draw.atrophy_mm > 0:
        depth = draw.atrophy_mm * _smooth_field(labels.shape, fwhm, rng)
        outer_csf = (labels == csf) & ~ventricle_mask(labels, priors)
        dist = ndimage.distance_transform_edt(~outer_csf, sampling=voxel)
        out[(labels == gm) & (dist <= depth)] = csf
    vent = ventricle_mask(out, priors)
    if draw.ventricle_mm > 0:
        grow = ndimage.distance_transform_edt(~vent, sampling=voxel) <= draw.ventricle_mm
        out[grow & np.isin(out, [wm, pv])] = csf
    elif draw.ventricle_mm < 0:
        keep = ndimage.distance_transform_edt(vent, sampling=voxel) > -draw.ventricle_mm
        out[vent & ~keep] = wm
    return out


# ------------------------------------------------------------------------------------------------------------
# Apply
# ------------------------------------------------------------------------------------------------------------

def apply_head(labels: np.ndarray, affine: np.ndarray, draw: HeadDraw, config: HeadConfig | None = None,
               priors: TissuePriors | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Build the head of ``draw`` around a brain label map.

    Parameters
    ----------
    labels
        Hard labels (X, Y, Z) with the priors' label values: GM, WM, GM/WM PV and CSF inside the head, 0
        outside (other classes are treated as outside).  RAS-oriented (array axes x right, y anterior,
        z superior), as the shipped sample is.
    affine
        Voxel-to-world matrix (mm) of ``labels``.

    Returns
    -------
    ``(head labels (X', Y', Z') int16, affine')`` on the padded grid (same voxel size and orientation).
    """
    config = config or HeadConfig()
    priors = priors or load_priors()
    missing = [n for n in BRAIN_CLASSES + HEAD_CLASSES if n not in priors.names]
    if missing:
        raise InputError(f"the priors lack the head classes {', '.join(missing)}")
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"a head is built around a 3D label map, got shape {lab.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(0))
    brain_values = [priors.label_of(n) for n in BRAIN_CLASSES]
    lab = np.where(np.isin(lab, brain_values), lab, 0).astype(np.int16)
    if not lab.any():
        raise InputError("label map has no brain tissue (GM, WM, GM/WM PV or CSF) to build a head around")
    rng = np.random.default_rng(draw.field_seed)

    # grid padded so that scalp and neck fit
    px, py, pz_lo, pz_hi = config.pad_mm
    pad = [(int(round(px / voxel[0])),) * 2, (int(round(py / voxel[1])),) * 2,
           (int(round(pz_lo / voxel[2])), int(round(pz_hi / voxel[2])))]
    lab = np.pad(lab, pad)
    shift = np.eye(4)
    shift[:3, 3] = [-p[0] for p in pad]
    out_affine = affine @ shift
    _extend_brainstem(lab, pad[2][0], priors)

    # 1-2. brain deformation, atrophy, ventricles
    lab = _deform(lab, draw, voxel, config, rng)
    lab = _atrophy_and_ventricles(lab, draw, voxel, priors, rng)

    # 3. layers by distance from the intracranial volume
    icv = ndimage.binary_fill_holes(lab > 0)
    d = ndimage.distance_transform_edt(~icv, sampling=voxel)
    fwhm = config.field_fwhm_mm / float(voxel.mean())
    fields = {k: _smooth_field(lab.shape, fwhm, rng) for k in ("dura", "skull", "muscle", "fat", "skin", "gap")}
    t_dura = _between(fields["dura"], draw.dura_mm)
    t_skull = _between(fields["skull"], draw.skull_mm)
    t_muscle = _between(fields["muscle"], draw.muscle_mm) + draw.temporalis_mm * _temples(lab.shape, icv, voxel)
    t_fat = _between(fields["fat"], draw.fat_mm) * (fields["gap"] > config.gap_prob)
    t_skin = _between(fields["skin"], draw.skin_mm)
    edges = np.cumsum([t_dura, t_skull, t_muscle, t_fat, t_skin], axis=0)
    outside = ~icv
    layer = np.full(lab.shape, 5, dtype=np.int8)  # 5 = beyond every layer (air)
    for k in range(4, -1, -1):
        layer[outside & (d <= edges[k])] = k
    head = lab.copy()
    names = ("dura", "skull", "muscle", "fat", "muscle")  # skin counted with muscle (scalp soft tissue)
    for k, name in enumerate(names):
        head[outside & (layer == k)] = priors.label_of(name)
    # diploë: the middle of the skull where it is thick enough
    inner = t_dura + 0.3 * t_skull
    outer = t_dura + 0.7 * t_skull
    head[outside & (layer == 1) & (t_skull >= config.marrow_min_mm) & (d > inner) & (d < outer)] = \
        priors.label_of("marrow")
    _neck(head, icv, d, edges, voxel, pad[2][0], priors)

    # 4. eyes in orbital fat
    _eyes(head, icv, out_affine, draw, priors)
    return head.astype(np.int16), out_affine


def _extend_brainstem(lab: np.ndarray, n_pad: int, priors: TissuePriors) -> None:
    """Continue the brainstem (the midline part of the lowest brain slice) down through the padding as a cord."""
    if n_pad == 0:
        return
    bottom = lab[:, :, n_pad]
    comps, n = ndimage.label(bottom > 0)
    if n == 0:
        return
    cx = bottom.shape[0] / 2
    best = min(range(1, n + 1), key=lambda i: abs(np.argwhere(comps == i)[:, 0].mean() - cx))
    cord = comps == best
    lab[:, :, :n_pad] = np.where(cord[:, :, None], bottom[:, :, None], 0)


def _temples(shape: tuple[int, ...], icv: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """Weight of the temporalis muscle: lateral, from the level of the eyes to the middle of the head."""
    idx = np.argwhere(icv)
    lo, hi = idx.min(0), idx.max(0)
    centre = (lo + hi) / 2
    half = np.maximum((hi - lo) / 2, 1)
    x = (np.arange(shape[0]) - centre[0]) / half[0]
    y = (np.arange(shape[1]) - centre[1]) / half[1]
    z = (np.arange(shape[2]) - lo[2]) / max(hi[2] - lo[2], 1)
    wx = np.clip(np.abs(x) * 1.6 - 0.6, 0, 1)
    wy = np.exp(-((y - 0.1) / 0.45) ** 2)
    wz = np.exp(-((z - 0.45) / 0.2) ** 2)
    return wx[:, None, None] * wy[None, :, None] * wz[None, None, :]


def _neck(head: np.ndarray, icv: np.ndarray, d: np.ndarray, edges: np.ndarray, voxel: np.ndarray, n_pad: int,
          priors: TissuePriors) -> None:
    """Below the skull base: muscle with a fat and skin rim inside an ellipse under the brain, down to the grid edge."""
    if n_pad == 0:
        return
    idx = np.argwhere(icv[:, :, n_pad:])
    lo, hi = idx.min(0), idx.max(0)
    cx, cy = (lo[0] + hi[0]) / 2, lo[1] + 0.45 * (hi[1] - lo[1])
    rx, ry = 0.42 * (hi[0] - lo[0]), 0.38 * (hi[1] - lo[1])
    x = (np.arange(head.shape[0]) - cx)[:, None] / rx
    y = (np.arange(head.shape[1]) - cy)[None, :] / ry
    r = np.sqrt(x**2 + y**2)
    top = n_pad + int(0.15 * (hi[2] - lo[2]))  # the neck reaches up under the cerebellum
    fat_rim = 1.0 - 6.0 / (min(rx, ry) * float(voxel[:2].mean()))
    for z in range(top):
        free = (head[:, :, z] == 0) | (head[:, :, z] == priors.label_of("dura"))
        free &= ~icv[:, :, z]
        head[:, :, z][free & (r <= fat_rim)] = priors.label_of("muscle")
        head[:, :, z][free & (r > fat_rim) & (r <= 1.0)] = priors.label_of("fat")


def _eyes(head: np.ndarray, icv: np.ndarray, affine: np.ndarray, draw: HeadDraw, priors: TissuePriors) -> None:
    """Two vitreous spheres with orbital fat around them, in front of and below the frontal lobes."""
    idx = np.argwhere(icv)
    world = affine[:3, :3] @ idx.T + affine[:3, 3:4]
    front = float(world[1].max())
    zmin, zmax = float(world[2].min()), float(world[2].max())
    r = draw.eye_radius_mm
    inv = np.linalg.inv(affine)
    grid = np.indices(head.shape, dtype=np.float32).reshape(3, -1)
    mm = (affine[:3, :3] @ grid + affine[:3, 3:4]).reshape(3, *head.shape)
    for side in (-1.0, 1.0):
        centre = np.array([side * 32.0, front - 1.2 * r, zmin + 0.25 * (zmax - zmin)]) + np.array(draw.eye_offset_mm)
        vox = inv[:3, :3] @ centre + inv[:3, 3]
        if not all(0 <= v < s for v, s in zip(vox, head.shape, strict=True)):
            continue
        dist = np.sqrt(((mm - centre[:, None, None, None]) ** 2).sum(0))
        orbit = (dist <= 1.5 * r) & ~icv
        head[orbit & (dist > r)] = priors.label_of("fat")
        head[orbit & (dist <= r)] = priors.label_of("eye")


def build_head(labels: np.ndarray, affine: np.ndarray, seed: int, config: HeadConfig | None = None,
               priors: TissuePriors | None = None) -> tuple[np.ndarray, np.ndarray, HeadDraw]:
    """:func:`draw_head` with ``numpy.random.default_rng(seed)`` then :func:`apply_head`; returns the draw too."""
    draw = draw_head(np.random.default_rng(seed), config)
    head, out_affine = apply_head(labels, affine, draw, config, priors)
    return head, out_affine, draw
