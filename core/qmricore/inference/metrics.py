"""Segmentation metrics and cohort summaries (SPEC §10).

Definitions
-----------
Both masks are first resliced to the 1 mm RAS grid of the ground truth (:func:`reslice_mask_pair`:
trilinear interpolation of the 0/1 masks, then ``>= 0.5``) and, as in the seed, padded to 256³.

* **Dice** ``2|P∩T| / (|P| + |T|)``; both masks empty -> 1.
* **HD95** (mm, symmetric, surface-based): the surface of a mask is its voxels with at least one
  6-neighbour outside it (``mask & ~binary_erosion(mask)``; outside the array counts as outside).
  For every surface voxel of P the Euclidean distance (in mm, ``sampling=spacing``) to the nearest
  surface voxel of T, and vice versa; HD95 is the larger of the two directed 95th percentiles
  (MONAI's ``compute_hausdorff_distance(percentile=95)`` definition).  Both empty -> 0; exactly one
  empty -> :data:`EMPTY_HD95` = 256 mm (the side of the padded volume).

Padding with background changes neither Dice nor any surface or distance (erosion already treats the
outside of the array as background), so instead of building 256³ arrays the masks are cropped to the
bounding box of their union plus one voxel, which gives identical numbers far faster; the padding
then only fixes the 256 mm value for an empty mask.

Summaries
---------
:func:`summarise` groups a per-subject table by modality and model and reports, per metric, the median
with a Student-t 95 % confidence interval centred on it:
``scipy.stats.t.interval(0.95, n - 1, loc=median, scale=s / sqrt(n))`` (``s``: sample standard
deviation), clipped to the metric's range (Dice [0, 1], HD95 [0, 256]); undefined (NaN) for n < 2.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, stats

from ..errors import InputError

#: HD95 (mm) when exactly one of the masks is empty: the side length of the 256³ padded 1 mm volume.
EMPTY_HD95 = 256.0
#: Side length (voxels) the resliced masks are padded to (SPEC §10).
PADDED_SIZE = 256
#: Valid range of each metric, used to clip confidence intervals.
METRIC_RANGES: dict[str, tuple[float, float]] = {"dice": (0.0, 1.0), "hd95": (0.0, EMPTY_HD95)}


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two masks (non-zero = inside); 1.0 when both are empty."""
    p, t = np.asarray(prediction) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"dice: shapes differ {p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: inside voxels with a 6-neighbour outside (or at the array edge)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop_union(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus ``margin`` background voxels each side."""
    union = a | b
    coords = np.argwhere(union)
    low = coords.min(axis=0)
    high = coords.max(axis=0) + 1
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    pad = [(margin, margin)] * a.ndim
    return np.pad(a[box], pad), np.pad(b[box], pad)


def directed_surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    target_surface = surface(target)
    distance = ndimage.distance_transform_edt(~target_surface, sampling=spacing)
    return distance[surface(source)]


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Symmetric surface 95th-percentile Hausdorff distance in mm (see the module docstring).

    Parameters
    ----------
    prediction, truth
        Masks of one shape (non-zero = inside).
    spacing
        Voxel size along each axis (mm).
    """
    p, t = np.asarray(prediction) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"hd95: shapes differ {p.shape} vs {t.shape}")
    p_empty, t_empty = not p.any(), not t.any()
    if p_empty and t_empty:
        return 0.0
    if p_empty or t_empty:
        return EMPTY_HD95
    p, t = _crop_union(p, t)
    spacing = tuple(float(s) for s in spacing)
    forward = np.percentile(directed_surface_distances(p, t, spacing), 95)
    backward = np.percentile(directed_surface_distances(t, p, spacing), 95)
    return float(max(forward, backward))


def reslice_mask_pair(
    prediction: np.ndarray, prediction_affine: np.ndarray, truth: np.ndarray, truth_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both masks on the 1 mm RAS grid of ``truth`` (trilinear interpolation of 0/1, then >= 0.5)."""
    import torch

    from .preprocess import Grid, network_grid, resample

    truth_grid = Grid(truth.shape, truth_affine)
    target = network_grid(truth_grid, 1.0)
    out = []
    for mask, grid in ((prediction, Grid(prediction.shape, prediction_affine)), (truth, truth_grid)):
        data = torch.from_numpy((np.asarray(mask) != 0).astype(np.float32))[None]
        out.append(resample(data, grid, target)[0].numpy() >= 0.5)
    return out[0], out[1]


@dataclass(frozen=True)
class PairScores:
    """Scores of one prediction against its ground truth (after reslicing to 1 mm)."""

    dice: float
    hd95: float
    truth_ml: float
    prediction_ml: float


def score_pair(
    prediction: np.ndarray, prediction_affine: np.ndarray, truth: np.ndarray, truth_affine: np.ndarray
) -> PairScores:
    """Dice, HD95 (mm) and both volumes (mL) of a prediction against its truth, per the SPEC §10 protocol."""
    p, t = reslice_mask_pair(prediction, prediction_affine, truth, truth_affine)
    return PairScores(
        dice=dice(p, t),
        hd95=hd95(p, t, (1.0, 1.0, 1.0)),
        truth_ml=float(t.sum()) / 1000.0,
        prediction_ml=float(p.sum()) / 1000.0,
    )


def median_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(median, low, high)``: Student-t interval of the given confidence centred on the median.

    ``low, high = scipy.stats.t.interval(confidence, n - 1, loc=median, scale=std(ddof=1) / sqrt(n))``;
    NaN bounds for fewer than two values.
    """
    x = np.asarray([v for v in values], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    centre = float(np.median(x))
    if x.size < 2:
        return centre, math.nan, math.nan
    sem = float(x.std(ddof=1)) / math.sqrt(x.size)
    if sem == 0.0:
        return centre, centre, centre
    low, high = stats.t.interval(confidence, x.size - 1, loc=centre, scale=sem)
    return centre, float(low), float(high)


def summarise(table: Iterable[Mapping[str, Any]], metrics: Sequence[str] = ("dice", "hd95")) -> list[dict[str, Any]]:
    """Per (modality, model) medians with Student-t 95 % CIs of ``metrics``.

    Parameters
    ----------
    table
        Rows with keys ``modality``, ``model`` and the metric names (as :func:`evaluate_pairs` returns).

    Returns
    -------
    Rows ``{"modality", "model", "n", "<metric>_median", "<metric>_ci_low", "<metric>_ci_high", ...}``
    sorted by modality then model.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in table:
        groups.setdefault((str(row.get("modality", "")), str(row.get("model", ""))), []).append(row)
    summary = []
    for (modality, model), rows in sorted(groups.items()):
        out: dict[str, Any] = {"modality": modality, "model": model, "n": len(rows)}
        for name in metrics:
            centre, low, high = median_confidence_interval([float(r[name]) for r in rows])
            lo_clip, hi_clip = METRIC_RANGES.get(name, (-math.inf, math.inf))
            out[f"{name}_median"] = centre
            out[f"{name}_ci_low"] = low if math.isnan(low) else max(low, lo_clip)
            out[f"{name}_ci_high"] = high if math.isnan(high) else min(high, hi_clip)
        summary.append(out)
    return summary


def summary_markdown(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("dice", "hd95")) -> str:
    """Markdown table of :func:`summarise` rows: ``median (low-high)`` per metric, like the seed's tables."""
    header = ["modality", "model", "n"] + [f"{m} median (95% CI)" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        cells = [str(row["modality"]), str(row["model"]), str(row["n"])]
        for m in metrics:
            digits = 3 if m == "dice" else 1
            centre, low, high = row[f"{m}_median"], row[f"{m}_ci_low"], row[f"{m}_ci_high"]
            ci = "n/a" if math.isnan(low) else f"{low:.{digits}f}-{high:.{digits}f}"
            cells.append(f"{centre:.{digits}f} ({ci})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write_text(path: Path, text: str) -> Path:
    from ..io import atomic_file

    with atomic_file(path, "w", newline="") as handle:
        handle.write(text)
    return path


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of rows (columns from the first row)."""
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as CSV atomically."""
    return _atomic_write_text(Path(path), csv_text(rows))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically."""
    return _atomic_write_text(Path(path), text)


@dataclass(frozen=True)
class EvaluationPair:
    """One prediction file, its ground-truth file and its tags."""

    prediction: Path
    truth: Path
    subject: str
    modality: str = ""
    model: str = ""


def match_by_name(predictions: Sequence[Path], truths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pair each prediction with the ground truth of the same name (without ``.nii``/``.nii.gz``).

    A prediction named ``<truth name>_<suffix>`` (e.g. ``sub-01_pred.nii.gz`` for ``sub-01.nii.gz``) matches
    too; the longest such truth name wins.  Raises InputError naming a prediction without a match.
    """
    from ..io import nifti_stem

    by_stem = {nifti_stem(t): t for t in truths if nifti_stem(t) is not None}
    pairs = []
    for p in predictions:
        stem = nifti_stem(p)
        if stem is None:
            raise InputError("prediction is not a NIfTI file (.nii or .nii.gz)", p)
        if stem in by_stem:
            pairs.append((p, by_stem[stem]))
            continue
        prefixes = [s for s in by_stem if stem.startswith(s + "_") or stem.startswith(s + "-")]
        if not prefixes:
            raise InputError("no ground-truth file with a matching name", p)
        pairs.append((p, by_stem[max(prefixes, key=len)]))
    return pairs


def binary_mask(data: np.ndarray, path: object, what: str, label: int | None = None) -> np.ndarray:
    """The boolean mask a mask file means: its non-zero voxels when it is binary (values 0 and one other),
    or the voxels equal to ``label``.

    Raises
    ------
    InputError
        Non-integer values (a probability map: threshold it first), or more than one non-zero value without
        ``label`` (a label map: say which class with ``label``), or ``label`` not present anywhere.
    """
    from ..errors import InputError

    values = np.unique(data)
    if not np.array_equal(values, np.round(values)):
        sample = next(float(v) for v in values if v != round(float(v)))
        raise InputError(f"{what}: float-valued mask (e.g. {sample:.4g}); a binary mask is needed: threshold "
                         "the probabilities first", path)
    nonzero = [int(v) for v in values if v != 0]
    if label is None:
        if len(nonzero) > 1:
            shown = ", ".join(str(v) for v in nonzero[:8]) + (", ..." if len(nonzero) > 8 else "")
            raise InputError(f"{what}: not a binary mask (labels {shown}); pass --label K to score class K", path)
        return data != 0
    if label not in nonzero and nonzero:
        raise InputError(f"{what}: has no voxel of label {label} (labels {', '.join(map(str, nonzero[:8]))})",
                         path)
    return data == label


def evaluate_pairs(pairs: Iterable[EvaluationPair], label: int | None = None) -> list[dict[str, Any]]:
    """Per-pair rows ``{subject, modality, model, dice, hd95, truth_ml, prediction_ml, prediction, truth}``.

    Files are read with :func:`qmricore.io.read_volume` (clear InputError for bad files) and turned into
    masks by :func:`binary_mask`: binary masks as they are, label maps only with ``label`` (the class to
    score), float-valued masks refused.
    """
    from ..io import read_volume

    rows = []
    for pair in pairs:
        pred = read_volume(pair.prediction, what="prediction")
        truth = read_volume(pair.truth, what="ground truth")
        p = binary_mask(pred.data, pair.prediction, "prediction", label)
        t = binary_mask(truth.data, pair.truth, "ground truth", label)
        scores = score_pair(p, pred.affine, t, truth.affine)
        rows.append(
            {
                "subject": pair.subject,
                "modality": pair.modality,
                "model": pair.model,
                "dice": scores.dice,
                "hd95": scores.hd95,
                "truth_ml": scores.truth_ml,
                "prediction_ml": scores.prediction_ml,
                "prediction": str(pair.prediction),
                "truth": str(pair.truth),
            }
        )
    return rows
