"""Lesion segmentation and qMRI estimation with a trained model file (SPEC §9).

Pipeline, one function per stage::

    read_volume                      input image, its grid (shape, affine)
    preprocess                       orient to RAS, reslice to 1 mm, histogram normalisation, z-score
    predict_window_logits            sliding window (MONAI, Gaussian weighting) with 8-flip TTA
    resample                         logits back to the output grid (trilinear, exact inverse map)
    ensemble_logits                  mean of the modalities' logits
    softmax, argmax                  class probabilities, labels, lesion mask, lesion volume (mL)

:func:`segment` runs it for one or more modalities of a subject (each preprocessed on its own; logits
averaged before the softmax) and returns everything on the first input's exact grid;
:func:`estimate_maps` runs the same pipeline with an estimator (MPRAGE -> PD, R1, R2*, MT maps).

Devices: ``"auto"`` picks CUDA when available.  On ``torch.cuda.OutOfMemoryError`` the window batch is
halved (down to 1), then the work moves to the CPU, each step with a ``warnings.warn``.

Images are padded for the sliding window with their minimum (the background after normalisation), or with 0
when the model file says ``padding="zero"`` (MONAI's default, which imported SynthStroke models use).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InputError, ParameterError
from ..io import Volume
from ..models.model_file import LoadedModel
from ..models.networks import SegmenterConfig
from .preprocess import Grid, preprocess, resample
from .window import predict_with_fallback


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """Segmentation of one subject on the grid of its first input.

    Attributes
    ----------
    labels
        uint8 argmax label map (index into ``class_names``).
    lesion_mask
        uint8 mask, 1 where the argmax is the lesion class.
    probabilities
        float32 ``(n_classes, X, Y, Z)`` softmax of the (ensembled) logits.
    class_names
        Names of the classes, in channel order.
    lesion_ml
        Lesion volume in millilitres (voxel count times voxel volume).
    grid
        The output grid (the first input's shape and affine).
    """

    labels: np.ndarray
    lesion_mask: np.ndarray
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    lesion_ml: float
    grid: Grid

    @property
    def lesion_probability(self) -> np.ndarray:
        return self.probabilities[self.class_names.index("lesion")]


def volume_grid(volume: Volume) -> Grid:
    """The grid (shape, affine) of a volume."""
    return Grid(volume.shape, volume.affine)


def lesion_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of the non-zero voxels of ``mask`` in mL (1 mL = 1000 mm³), voxel volume from ``affine``."""
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    return float(np.count_nonzero(mask)) * voxel_mm3 / 1000.0


def predict_on_grid(
    model: LoadedModel,
    volume: Volume,
    target: Grid,
    *,
    tta: bool = True,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """Network output for ``volume`` resampled onto ``target``: ``(K, *target.shape)`` float32 on the CPU.

    Preprocesses with the model's settings, predicts on the RAS 1 mm grid, then resamples the logits
    (or, for an estimator, the maps) trilinearly onto ``target`` (normally the volume's own grid).
    """
    image, net_grid = preprocess(volume.data, volume_grid(volume), model.meta.preprocessing, path=volume.path)
    logits = predict_with_fallback(
        model.network, image, model.meta.inference, tta=tta, device=resolve_device(device), progress=progress
    )
    return resample(logits[0], net_grid, target)


def _world_box(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in grid.shape])))
    world = corners @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def check_overlap(volume: Volume, target: Grid) -> None:
    """InputError (naming the volume's file) if its field of view does not overlap ``target`` in world space."""
    low_a, high_a = _world_box(volume_grid(volume))
    low_b, high_b = _world_box(target)
    if np.any(np.minimum(high_a, high_b) <= np.maximum(low_a, low_b)):
        raise InputError("does not overlap the first input image in world space (not the same subject/space?)",
                         volume.path)


def ensemble_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the logits of several modalities (all on one grid)."""
    if not logits:
        raise ParameterError("ensemble_logits: no logits given")
    return torch.stack(list(logits)).mean(dim=0)


def _require_kind(model: LoadedModel, kind: str) -> None:
    if model.meta.kind != kind:
        raise InputError(f"is a {model.meta.kind} model; this needs a {kind} model", model.path)
    if model.meta.network.in_channels != 1:
        channels = model.meta.network.in_channels
        raise InputError(f"the network takes {channels} input channels; only 1 is supported", model.path)


def segment(
    model: LoadedModel,
    volumes: Sequence[Volume],
    *,
    tta: bool = True,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> SegmentationResult:
    """Segment lesions in one subject's images (one per modality) with a segmenter model.

    Parameters
    ----------
    model
        A loaded segmenter (:func:`qmricore.models.model_file.load_model`).
    volumes
        The subject's images; several are ensembled (logits averaged before the softmax).  They must
        overlap in world space; the output is on the first one's grid.
    tta
        Average logits over the 8 flips of x, y, z.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    progress
        Show a progress bar over the sliding windows.

    Returns
    -------
    SegmentationResult on the first volume's exact grid, with the lesion volume in mL.
    """
    _require_kind(model, "segmenter")
    if not volumes:
        raise ParameterError("segment: no input images")
    target = volume_grid(volumes[0])
    for volume in volumes[1:]:
        check_overlap(volume, target)
    logits = ensemble_logits(
        [predict_on_grid(model, v, target, tta=tta, device=device, progress=progress) for v in volumes]
    )
    probabilities = torch.softmax(logits, dim=0)
    labels = torch.argmax(logits, dim=0).numpy().astype(np.uint8)
    config = model.meta.network
    lesion_index = config.lesion_index if isinstance(config, SegmenterConfig) else len(model.meta.classes) - 1
    mask = (labels == lesion_index).astype(np.uint8)
    return SegmentationResult(
        labels=labels,
        lesion_mask=mask,
        probabilities=probabilities.numpy().astype(np.float32),
        class_names=model.meta.classes,
        lesion_ml=lesion_volume_ml(mask, target.affine),
        grid=target,
    )


def estimate_maps(
    model: LoadedModel,
    volume: Volume,
    *,
    tta: bool = True,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Estimate qMRI maps from one MPRAGE with an estimator model, on the MPRAGE's exact grid.

    Returns
    -------
    ``{"pd": percent water, "r1": 1/s, "r2s": 1/s, "mt": percent units}`` float32 arrays.
    """
    _require_kind(model, "estimator")
    maps = predict_on_grid(model, volume, volume_grid(volume), tta=tta, device=device, progress=progress)
    return {name: maps[i].numpy().astype(np.float32) for i, name in enumerate(model.meta.classes)}
