"""Synthetic lesion shapes and pasting lesions into healthy label maps (SPEC §6).

A synthetic lesion is a union of 1-4 randomly oriented ellipsoids around a centre placed in brain
tissue (mostly white matter, some grey matter) of one hemisphere, with a boundary roughened by smooth
noise and a soft (logistic) edge.  Its total volume is drawn log-uniformly between ~0.5 and ~100 mL
and converted to voxels with the voxel size.  The lesion is confined to the allowed tissue classes.

Draw, then apply: :func:`draw_lesion` returns a :class:`LesionDraw` (JSON-safe), :func:`render_lesion`
turns it into a soft probability map, :func:`synth_lesion` does both.  :func:`paste_lesion` writes a
lesion (synthetic or a given mask) into hard or soft label maps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ParameterError
from ..serialise import JSONDataclass, JSONDraw, from_plain
from ._random import torch_generator
from ._texture import smooth_noise
from .priors import TissuePriors, load_priors
from .qsynth import _as_tensor, class_weights

Tensor = torch.Tensor


@dataclass(frozen=True)
class LesionConfig(JSONDataclass):
    """Options of synthetic lesions (the one place their defaults live).

    Attributes
    ----------
    volume_ml
        Total lesion volume drawn log-uniformly in this range (mL = 1000 mm³).
    blobs
        Number of ellipsoids, drawn uniformly in this inclusive range.
    aspect
        Per-axis radius factor range (normalised so the ellipsoid keeps its volume).
    spread
        Extra ellipsoids are centred within ``spread`` × the lesion radius of the first.
    edge_mm
        Width (logistic scale) of the soft edge in mm, drawn uniformly.
    roughness
        Boundary noise amplitude as a fraction of the lesion radius, drawn uniformly.
    roughness_fwhm
        FWHM of the boundary noise as a fraction of the lesion radius.
    territory
        ``(class name, weight)``: where the lesion centre is placed.
    allowed
        Classes the lesion may cover (probability 0 elsewhere).
    lr_axis
        Array axis that runs left-right (0 for RAS/LAS-oriented volumes); one hemisphere is chosen.
    voxel_size
        Voxel size in mm (x, y, z).
    """

    volume_ml: tuple[float, float] = (0.5, 100.0)
    blobs: tuple[int, int] = (1, 4)
    aspect: tuple[float, float] = (0.6, 1.6)
    spread: float = 0.7
    edge_mm: tuple[float, float] = (0.5, 1.5)
    roughness: tuple[float, float] = (0.0, 0.3)
    roughness_fwhm: float = 0.5
    territory: tuple[tuple[str, float], ...] = (("wm", 0.6), ("gm", 0.25), ("gm_wm_pv", 0.15))
    allowed: tuple[str, ...] = ("wm", "gm", "gm_wm_pv")
    lr_axis: int = 0
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not (0 < self.volume_ml[0] <= self.volume_ml[1]):
            raise ParameterError(f"volume_ml must satisfy 0 < low <= high, got {self.volume_ml}")
        if not (1 <= self.blobs[0] <= self.blobs[1]):
            raise ParameterError(f"blobs must satisfy 1 <= low <= high, got {self.blobs}")
        if not (0 < self.aspect[0] <= self.aspect[1]):
            raise ParameterError(f"aspect must satisfy 0 < low <= high, got {self.aspect}")
        if not (0 < self.edge_mm[0] <= self.edge_mm[1]):
            raise ParameterError(f"edge_mm must satisfy 0 < low <= high, got {self.edge_mm}")
        if any(v <= 0 for v in self.voxel_size) or len(self.voxel_size) != 3:
            raise ParameterError(f"voxel_size must be three positive mm values, got {self.voxel_size}")
        if self.lr_axis not in (0, 1, 2):
            raise ParameterError(f"lr_axis must be 0, 1 or 2, got {self.lr_axis}")


DEFAULT_LESION_CONFIG = LesionConfig()


@dataclass(frozen=True)
class LesionDraw(JSONDraw):
    """The random numbers of one synthetic lesion (voxel coordinates of the label map's grid).

    Attributes
    ----------
    volume_ml
        Target volume (mL) before clipping to the allowed tissue.
    hemisphere
        0: low side of ``lr_axis``, 1: high side.
    centres, radii
        Per ellipsoid: centre (voxels) and semi-axes (voxels, along the rotated axes).
    rotations
        Per ellipsoid: row-major 3×3 rotation (rows are the ellipsoid axes).
    edge
        Logistic edge width (voxels).
    roughness
        Boundary noise amplitude (voxels).
    noise_fwhm
        Boundary noise FWHM (voxels).
    noise_seed
        Seed of the boundary noise.
    """

    volume_ml: float
    hemisphere: int
    centres: tuple[tuple[float, float, float], ...]
    radii: tuple[tuple[float, float, float], ...]
    rotations: tuple[tuple[float, ...], ...]
    edge: float
    roughness: float
    noise_fwhm: float
    noise_seed: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LesionDraw:
        """:func:`~qmricore.serialise.from_plain`, then the checks a hand-edited sidecar needs (the three lists
        of one length, 9 numbers per rotation, radii and edge > 0), which the field types cannot say."""
        draw = from_plain(cls, data, error=lambda problem: InputError(f"not a lesion draw ({problem})"))
        centres, radii, rotations = draw.centres, draw.radii, draw.rotations
        if not (len(centres) == len(radii) == len(rotations)) or not centres:
            raise InputError("lesion draw: centres, radii and rotations must have the same non-zero length")
        if any(len(r) != 9 for r in rotations):  # (three per centre and radius: the field types)
            raise InputError("lesion draw: rotations need 9 numbers each")
        if any(v <= 0 for r in radii for v in r) or draw.edge <= 0:
            raise InputError("lesion draw: radii and edge must be > 0")
        return draw


def _classes(labels: Any, priors: TissuePriors) -> tuple[Tensor, Tensor]:
    """Validated labels as ``(class index per voxel, weights)``: weights are the index itself for hard labels
    and the (C,X,Y,Z) probabilities for soft ones (the index is then their argmax)."""
    kind, weights = class_weights(labels, priors)
    if kind == "hard":
        return weights, weights
    return weights.argmax(0), weights


def _allowed_mask(kind_weights: Tensor, index: Tensor, priors: TissuePriors, allowed: tuple[str, ...]) -> Tensor:
    ids = [priors.index(n) for n in allowed if n in priors.names]
    if kind_weights.dim() == 4:
        return kind_weights[ids].sum(0).clamp_(0.0, 1.0) if ids else torch.zeros_like(kind_weights[0])
    mask = torch.zeros_like(index, dtype=torch.float32)
    for i in ids:
        mask = mask + (index == i).float()
    return mask


def _uniform(generator: torch.Generator, n: int = 1) -> list[float]:
    return torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device).tolist()


def draw_lesion(labels: Any, generator: torch.Generator | int, config: LesionConfig | None = None,
                priors: TissuePriors | None = None) -> LesionDraw:
    """Draw a lesion's position, size and shape for a healthy label map (hard or soft, see :func:`class_weights`).

    The centre is a random voxel of a territory class (chosen by ``config.territory`` weights among
    the classes present) in a randomly chosen hemisphere.  Raises InputError when the label map has
    none of the territory classes.  ``generator``: a torch generator, or an int seed for a CPU one.
    """
    config = config or DEFAULT_LESION_CONFIG
    priors = priors or load_priors()
    generator = torch_generator(generator, "draw_lesion")
    index, _ = _classes(labels, priors)
    shape = index.shape
    ax = config.lr_axis
    coords_along = torch.arange(shape[ax], device=index.device, dtype=torch.float64)
    names = [n for n, _ in config.territory if n in priors.names]
    brain = torch.zeros(shape, dtype=torch.bool, device=index.device)
    for n in names:
        brain |= index == priors.index(n)
    if not bool(brain.any()):
        raise InputError(f"label map has none of the lesion territory classes ({', '.join(names)}) "
                         "to place a lesion in")
    per_slice = brain.sum(dim=tuple(d for d in range(3) if d != ax)).double()
    midline = float((per_slice * coords_along).sum() / per_slice.sum())
    u = _uniform(generator, 6)
    hemisphere = int(u[0] < 0.5)
    side = coords_along >= midline if hemisphere else coords_along < midline
    side_mask = side.view(*[-1 if d == ax else 1 for d in range(3)])
    # territory class: weighted choice among the classes present on that side (else the other side)
    candidates = []
    for n, w in config.territory:
        if n not in priors.names:
            continue
        mask = (index == priors.index(n)) & side_mask
        if bool(mask.any()):
            candidates.append((w, mask))
    if not candidates:
        side_mask = ~side_mask
        candidates = [(w, (index == priors.index(n)) & side_mask) for n, w in config.territory if n in priors.names]
        candidates = [(w, m) for w, m in candidates if bool(m.any())]
        hemisphere = 1 - hemisphere
    total = sum(w for w, _ in candidates)
    pick, acc = u[1] * total, 0.0
    mask = candidates[-1][1]
    for w, m in candidates:
        acc += w
        if pick < acc:
            mask = m
            break
    voxels = torch.nonzero(mask)
    k = min(int(u[2] * voxels.shape[0]), voxels.shape[0] - 1)
    centre = voxels[k].double().cpu()

    lo, hi = config.volume_ml
    volume = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[3])
    n_range = config.blobs[1] - config.blobs[0]
    n_blobs = config.blobs[0] + min(int(u[4] * (n_range + 1)), n_range)
    vox = torch.tensor(config.voxel_size, dtype=torch.float64)
    mean_vox = float(vox.prod() ** (1.0 / 3.0))
    r_lesion = (3.0 * volume * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # mm
    shares = torch.tensor(_uniform(generator, n_blobs), dtype=torch.float64) * 0.7 + 0.3
    shares = shares / shares.sum()
    centres, radii, rotations = [], [], []
    for i in range(n_blobs):
        r_blob = r_lesion * float(shares[i]) ** (1.0 / 3.0)
        a = torch.tensor(_uniform(generator, 3), dtype=torch.float64)
        a = config.aspect[0] + (config.aspect[1] - config.aspect[0]) * a
        a = a / a.prod() ** (1.0 / 3.0)
        g = torch.randn((3, 3), generator=generator, dtype=torch.float64, device=generator.device).cpu()
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r)).view(1, 3)
        if torch.det(q) < 0:
            q[:, 0] = -q[:, 0]
        if i == 0:
            c = centre.clone()
        else:
            d = torch.randn(3, generator=generator, dtype=torch.float64, device=generator.device).cpu()
            d = d / d.norm().clamp_min(1e-12)
            c = centre + d * _uniform(generator)[0] * config.spread * r_lesion / vox
        centres.append(tuple(c.tolist()))
        radii.append(tuple((r_blob * a / mean_vox).tolist()))  # rotated axes: isotropic voxel units
        rotations.append(tuple(q.T.reshape(-1).tolist()))
    edge = (config.edge_mm[0] + (config.edge_mm[1] - config.edge_mm[0]) * u[5]) / mean_vox
    rough_u = _uniform(generator)[0]
    roughness = (config.roughness[0] + (config.roughness[1] - config.roughness[0]) * rough_u) * r_lesion / mean_vox
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
    return LesionDraw(volume, hemisphere, tuple(centres), tuple(radii), tuple(rotations), edge, roughness,
                      max(config.roughness_fwhm * r_lesion / mean_vox, 1.0), seed)


def render_lesion(labels: Any, draw: LesionDraw, config: LesionConfig | None = None,
                  priors: TissuePriors | None = None) -> Tensor:
    """Soft lesion probability (float32, X×Y×Z in [0, 1]) of a :class:`LesionDraw` on this label map's grid.

    The ellipsoids' union is a level function ``f = max_i (1 - d_i) r_i`` (about the signed distance
    to the surface, voxels), roughened by smooth noise, passed through a logistic of width ``edge`` and
    multiplied by the probability of the allowed tissue classes.
    """
    config = config or DEFAULT_LESION_CONFIG
    priors = priors or load_priors()
    index, weights = _classes(labels, priors)
    allowed = _allowed_mask(weights, index, priors, config.allowed)
    shape = index.shape
    dev = index.device
    vox = torch.tensor(config.voxel_size, dtype=torch.float64)
    mean_vox = float(vox.prod() ** (1.0 / 3.0))
    scale = (mean_vox / vox).tolist()  # isotropic voxel units -> array voxels per axis
    margin = draw.roughness * 3.0 + draw.edge * 8.0 + 2.0
    lo, hi = [], []
    for d in range(3):
        ext = [c[d] - (max(r) + margin) * scale[d] for c, r in zip(draw.centres, draw.radii, strict=True)]
        ext2 = [c[d] + (max(r) + margin) * scale[d] for c, r in zip(draw.centres, draw.radii, strict=True)]
        lo.append(max(0, int(math.floor(min(ext)))))
        hi.append(min(shape[d], int(math.ceil(max(ext2))) + 1))
    out = torch.zeros(shape, dtype=torch.float32, device=dev)
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return out
    box = tuple(h - low for low, h in zip(lo, hi, strict=True))
    axes = [(torch.arange(lo[d], hi[d], device=dev, dtype=torch.float32)) for d in range(3)]
    level = torch.full(box, -float("inf"), device=dev)
    for c, r, rot in zip(draw.centres, draw.radii, draw.rotations, strict=True):
        # physical (isotropic-voxel) offsets from the centre along x, y, z
        off = [((axes[d] - c[d]) / scale[d]).view(*[-1 if a == d else 1 for a in range(3)]) for d in range(3)]
        rsum = torch.zeros(box, device=dev)
        for i in range(3):
            proj = off[0] * rot[3 * i] + off[1] * rot[3 * i + 1] + off[2] * rot[3 * i + 2]
            rsum = rsum + (proj / r[i]).square()
        rbar = (r[0] * r[1] * r[2]) ** (1.0 / 3.0)
        level = torch.maximum(level, (1.0 - rsum.sqrt()) * rbar)
    if draw.roughness > 0:
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(draw.noise_seed))
        level = level + draw.roughness * smooth_noise(box, [draw.noise_fwhm], gen)[0]
    prob = torch.sigmoid(level / draw.edge)
    region = tuple(slice(low, h) for low, h in zip(lo, hi, strict=True))
    out[region] = prob * allowed[region]
    return out


def synth_lesion(labels: Any, generator: torch.Generator | int, config: LesionConfig | None = None,
                 priors: TissuePriors | None = None) -> Tensor:
    """Soft probability map (float32, X×Y×Z) of one synthetic lesion: :func:`draw_lesion` + :func:`render_lesion`."""
    draw = draw_lesion(labels, generator, config, priors)
    return render_lesion(labels, draw, config, priors)


def paste_lesion(labels: Any, lesion: Any, lesion_label: int | None = None, priors: TissuePriors | None = None) -> Any:
    """Write a lesion into a label map (a new array; the input is not modified).

    Parameters
    ----------
    labels
        Hard labels (X,Y,Z) or soft probabilities (C,X,Y,Z); numpy or torch (the same kind is returned).
    lesion
        Lesion probability (X,Y,Z) in [0, 1], or a binary mask.
    lesion_label
        Label value of the lesion class (default: the priors' ``lesion`` class); for soft labels its channel
        is the position of this label in ``priors.labels``.

    Hard labels become ``lesion_label`` where ``lesion > 0.5``.  Soft labels are scaled by ``1 - p``
    and ``p`` is added to the lesion channel, so they still sum to one.
    """
    if lesion_label is None:
        priors = priors or load_priors()
        lesion_label = priors.label_of("lesion")
    is_numpy = not isinstance(labels, Tensor)
    lab = _as_tensor(labels, None)
    les = _as_tensor(lesion, lab.device).float()
    if tuple(les.shape) != tuple(lab.shape[-3:]) or les.dim() != 3:
        raise InputError(f"lesion map has shape {tuple(les.shape)} but the label map's grid is {tuple(lab.shape[-3:])}")
    if not bool(torch.isfinite(les).all()) or float(les.min()) < 0 or float(les.max()) > 1:
        raise InputError("lesion map must hold probabilities in [0, 1]")
    if lab.dim() == 3:
        out = lab.clone()
        out[les > 0.5] = lesion_label
    elif lab.dim() == 4:
        priors = priors or load_priors()
        if lesion_label not in priors.labels:
            raise ParameterError(f"lesion label {lesion_label} is not one of the priors' labels {list(priors.labels)}")
        ch = priors.labels.index(lesion_label)
        if ch >= lab.shape[0]:
            raise InputError(f"soft label map has {lab.shape[0]} channels; the lesion channel is {ch}")
        out = lab * (1.0 - les).to(lab.dtype)
        out[ch] = out[ch] + les.to(lab.dtype)
    else:
        raise InputError(f"label map must be 3D (X,Y,Z) or 4D (C,X,Y,Z), got shape {tuple(lab.shape)}")
    return out.cpu().numpy() if is_numpy and isinstance(labels, np.ndarray) else out


def lesion_contrast(image: Tensor, lesion: Tensor, brain: Tensor, shell_voxels: int = 3) -> float | None:
    """How visible a lesion is in an image: ``|mean(lesion) − mean(shell)| / std(shell)``.

    The shell is the brain within ``shell_voxels`` voxels of the lesion (outside it): the tissue a reader
    compares the lesion with.  A lesion 1 shell-spread away from its surroundings is faint but visible; below
    ~0.5 it is lost in the texture, partial volume and noise of the surrounding brain.  Returns ``None`` when
    the lesion or its shell has fewer than 10 voxels (nothing to judge).

    Parameters
    ----------
    image
        (X, Y, Z) or (1, X, Y, Z) intensities.
    lesion, brain
        Boolean masks of the image's spatial shape.
    """
    import torch.nn.functional as F

    image = image.reshape(lesion.shape).float()
    width = 2 * int(shell_voxels) + 1
    near = F.max_pool3d(lesion[None, None].float(), width, stride=1, padding=int(shell_voxels))[0, 0] > 0
    shell = near & ~lesion & brain
    if int(lesion.sum()) < 10 or int(shell.sum()) < 10:
        return None
    around = image[shell]
    spread = float(around.std())
    return abs(float(image[lesion].mean()) - float(around.mean())) / max(spread, 1e-12)
