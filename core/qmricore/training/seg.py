"""Lesion segmentation training (SPEC §8): real images, qSynth, Synth, qATLAS, and mixes with real data.

Every training sample ``k`` is a pure function of ``(loop.seed, k)``:

``real``
    an image/label pair (chosen at random), spatially and intensity augmented (:mod:`qmricore.generators.augment`);
``qsynth``
    a label map → qMRI maps from the tissue priors → an image simulated with a random sequence of
    ``data.sequences`` (SPEC §5 ranges) → augmentation (:func:`qmricore.generators.pipeline.generate`);
``synth``
    a label map → a Gaussian-mixture image with random class means (the SynthSeg-style baseline);
``qatlas``
    a real map set (or maps estimated from an MPRAGE by a qATLAS estimator) → an image simulated with
    a random sequence → augmentation; its labels come with the map set.

With ``real_fraction = f`` a synthetic mode replaces each sample by a real pair with probability ``f``.
Images are then normalised exactly as at inference (:class:`qmricore.inference.preprocess.PreprocessConfig`:
percentile clipping to [0, 1], then z-score) and cropped or zero-padded to ``data.patch_size``.

Labels (0 background, 1 GM, 2 WM, 3 GM/WM PV, 4 CSF, 5 non-brain, 6 lesion) become training classes:
``binary`` → lesion (6) vs the rest; ``tissue`` → background (0, 5), GM, WM, PV, CSF, lesion.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import sample_seed
from ..errors import InputError, ParameterError
from ..generators.priors import load_priors
from ..io import label_file, map_set_folders, nifti_files, paired_files
from ..models.networks import CLASS_SETS, build_segmenter
from .config import SegTrainConfig
from .loop import Sampler

RETRIES = 5  # synthetic draws tried per sample before giving up


def _class_maps() -> dict[str, dict[int, int]]:
    """Label value → class index per class set: each class of the set found by name in the priors' class table
    (the one place label values live); unlisted labels (background, non-brain and head tissues) map to 0."""
    priors = load_priors()
    maps = {name: {priors.label_of(c): i for i, c in enumerate(names) if i > 0} for name, names in CLASS_SETS.items()}
    for name, names in CLASS_SETS.items():  # ventricles are CSF to a segmenter (a label for qmricore.ldm)
        if "csf" in names and "ventricles" in priors.names:
            maps[name][priors.label_of("ventricles")] = names.index("csf")
    return maps


CLASS_MAPS: dict[str, dict[int, int]] = _class_maps()
LESION_LABEL = load_priors().label_of("lesion")
#: Label values of the brain tissue a lesion is compared with (its surroundings).
BRAIN_LABELS = torch.tensor([load_priors().label_of(c) for c in ("gm", "wm", "gm_wm_pv", "csf")])


def check_label_values(values: np.ndarray, classes: str, path: object) -> None:
    """Refuse a training label map whose values cannot mean classes: non-integer or negative values, or a 0/1
    lesion mask for a class set other than 'binary'.  The error names the file."""
    if not np.array_equal(values, np.round(values)):
        raise InputError("label map: has non-integer values (a label map or 0/1 lesion mask is needed)", path)
    if values.size and values.min() < 0:
        raise InputError(f"label map: has negative values (min {values.min():g})", path)
    if values.size and values.max() <= 1 and classes != "binary":
        raise InputError(f"label map: is a 0/1 lesion mask, which can only train the 'binary' class set, not "
                         f"{classes!r}", path)


def to_classes(label: torch.Tensor, classes: str, *, mask: bool = False) -> torch.Tensor:
    """Integer class map for ``classes`` from a label map (``mask=True``: a 0/1 lesion mask)."""
    label = label.round().long() if torch.is_floating_point(label) else label.long()
    if mask:
        if classes != "binary":
            raise ParameterError("a 0/1 lesion mask can only train the 'binary' class set")
        return (label > 0).long()
    table = torch.zeros(max(LESION_LABEL, *CLASS_MAPS[classes], int(label.max())) + 1, dtype=torch.long)
    for value, index in CLASS_MAPS[classes].items():
        table[value] = index
    return table[label.clamp(min=0)]


def normalise(image: torch.Tensor, preprocessing: Any) -> torch.Tensor:
    """Intensity normalisation exactly as at inference (:func:`qmricore.inference.preprocess.normalise_intensity`)."""
    from ..inference.preprocess import normalise_intensity

    array = normalise_intensity(image.detach().to("cpu", torch.float32).numpy(), preprocessing)
    return torch.from_numpy(array).to(image.device)


def fit_shape(x: torch.Tensor, shape: Sequence[int], offset: Sequence[int]) -> torch.Tensor:
    """Crop ``x`` (..., X, Y, Z) at ``offset`` to ``shape``, zero-padding (centred) where it is smaller."""
    pads, slices = [], []
    for size, want, off in zip(x.shape[-3:], shape, offset, strict=True):
        if size >= want:
            slices.append(slice(off, off + want))
            pads.append((0, 0))
        else:
            slices.append(slice(0, size))
            before = (want - size) // 2
            pads.append((before, want - size - before))
    x = x[(..., *slices)]
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat) if any(flat) else x


def padded_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """``shape`` rounded up to a multiple of ``multiple`` voxels per axis."""
    return tuple(int(math.ceil(s / multiple) * multiple) for s in shape)


class SegSampler(Sampler):
    """Training samples for a :class:`SegTrainConfig`: ``sample(k) -> (image (1, X, Y, Z), classes (1, X, Y, Z))``.

    Label maps, real pairs and map sets are read once, on first use, and kept in memory.
    """

    def __init__(self, config: SegTrainConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.data = config.data
        self.classes = config.network.classes
        self.device = torch.device(device)
        self.preprocessing = preprocessing_of(config)
        self.multiple = int(np.prod(config.network.strides))

    # -- sources, loaded lazily ---------------------------------------------------------------------
    @cached_property
    def real_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        from ..io import read_volume

        pairs = []
        for image_path, label_path in paired_files(self.data.real_images, self.data.real_labels):
            image = read_volume(image_path, what="image")
            label = read_volume(label_path, what="label map")
            if image.shape != label.shape:
                raise InputError(f"label map shape {label.shape} differs from its image {image.shape}", label_path)
            values = np.unique(label.data)
            check_label_values(values, self.classes, label_path)
            pairs.append((torch.from_numpy(image.data), torch.from_numpy(np.rint(label.data).astype(np.int64)),
                          bool(values.max() <= 1)))
        return pairs

    def check_data(self) -> None:
        """Read and check every data source the config uses (errors name the file), before a run writes anything."""
        if self.data.mode == "real" or self.data.real_fraction > 0:
            _ = self.real_pairs
        if self.data.mode in ("qsynth", "synth"):
            _ = self.label_maps
        elif self.data.mode == "qatlas":
            _ = self.map_sets

    @cached_property
    def label_maps(self) -> list[tuple[torch.Tensor, tuple[float, ...]]]:
        """``(labels, voxel size in mm)`` of each label map (``data.labels``: one file or a folder)."""
        from ..io import read_volume

        root = Path(self.data.labels)
        maps = []
        for path in [root] if root.is_file() else nifti_files(root, "labels"):
            volume = read_volume(path, what="label map")
            if not (volume.data > 0).any():
                raise InputError("label map is empty (all zero)", path)
            check_label_values(np.unique(volume.data), "tissue", path)
            if any(abs(z - self.preprocessing.spacing) > 1e-3 for z in volume.zooms):
                warnings.warn(f"{path}: voxel size {volume.zooms} mm differs from preprocessing.spacing "
                              f"{self.preprocessing.spacing} mm, which inference will reslice to", stacklevel=1)
            maps.append((torch.from_numpy(np.rint(volume.data).astype(np.int64)), volume.zooms))
        return maps

    @cached_property
    def map_sets(self) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        return load_qatlas_sets(self.data, self.device)

    @cached_property
    def _pipeline(self) -> Any:
        return pipeline_config(self.config)

    # -- one sample ---------------------------------------------------------------------------------
    def source(self, index: int) -> tuple[str, int, np.random.Generator]:
        """Where sample ``index`` comes from (``"real"`` or the synthetic mode), its seed and its generator."""
        rng = np.random.default_rng(sample_seed(self.config.loop.seed, index))
        use_real = self.data.mode == "real" or (self.data.real_fraction > 0 and rng.random() < self.data.real_fraction)
        return ("real" if use_real else self.data.mode), int(rng.integers(0, 2**62)), rng

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        kind, seed, rng = self.source(index)
        if kind == "real":
            image, classes = self._real(seed)
        elif kind == "qatlas":
            image, classes = self._qatlas(seed)
        else:
            image, classes = self._synthetic(seed)
        image = normalise(image, self.preprocessing)
        return self._fit(image.reshape(1, *image.shape[-3:]), classes.reshape(1, *classes.shape[-3:]), rng)

    def _fit(self, image: torch.Tensor, classes: torch.Tensor, rng: np.random.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self.data.patch_size or padded_shape(image.shape[-3:], self.multiple)
        offset = [int(rng.integers(0, max(s - w, 0) + 1)) for s, w in zip(image.shape[-3:], shape, strict=True)]
        return fit_shape(image, shape, offset), fit_shape(classes, shape, offset)

    def _augment(self, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..generators.augment import AugmentConfig, augment, draw_augment

        options = dict(self.data.generator.get("augment", {}))
        options.setdefault("crop", self.data.patch_size)
        draw = draw_augment(tuple(image.shape[-3:]), AugmentConfig.from_dict(options), seed)
        return augment(image, label, draw)

    def _real(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self.real_pairs
        image, label, is_mask = pairs[seed % len(pairs)]
        image, label = self._augment(image.to(self.device), label.to(self.device), seed // len(pairs))
        return image, to_classes(label, self.classes, mask=is_mask)

    def _synthetic(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..generators.pipeline import generate, with_voxel_size

        maps = self.label_maps
        labels, zooms = maps[seed % len(maps)]
        config = with_voxel_size(self._pipeline, zooms)
        for attempt in range(RETRIES):  # the next seed, deterministically, for a draw that cropped away every label
            try:                          # or (data.min_lesion_contrast) rendered its lesion too faint
                sample = generate(labels.to(self.device), config, seed // len(maps) + attempt, device=self.device)
            except InputError:
                if attempt + 1 == RETRIES:
                    raise
                continue
            if attempt + 1 == RETRIES or self._lesion_visible(sample.image, sample.label):
                return sample.image, to_classes(sample.label, self.classes)
        raise AssertionError("unreachable")  # pragma: no cover

    def _lesion_visible(self, image: torch.Tensor, label: torch.Tensor) -> bool:
        """False when the sample has a lesion fainter than ``data.min_lesion_contrast`` (True without a lesion)."""
        if self.data.min_lesion_contrast <= 0 or label.dim() != 3:  # (soft labels: no hard lesion to judge)
            return True
        from ..generators.lesions import lesion_contrast

        label = label.round().long()
        lesion = label == LESION_LABEL
        if not bool(lesion.any()):
            return True
        contrast = lesion_contrast(image, lesion, torch.isin(label, BRAIN_LABELS.to(label.device)))
        return contrast is None or contrast >= self.data.min_lesion_contrast

    def _qatlas(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..physics import simulate

        sets = self.map_sets
        maps, labels = sets[seed % len(sets)]
        sequence, params = draw_sequence_parameters(self.data.sequences, seed)
        image = simulate(sequence, maps, **params)
        image, labels = self._augment(image, labels, seed // 3 + 1)
        return image, to_classes(labels, self.classes)


def preprocessing_of(config: SegTrainConfig) -> Any:
    """The :class:`~qmricore.inference.preprocess.PreprocessConfig` the model is trained (and used) with."""
    from ..inference.preprocess import PreprocessConfig

    return PreprocessConfig.from_dict(config.data.preprocessing)


def pipeline_config(config: SegTrainConfig) -> Any:
    """Synthesis-pipeline configuration for the ``qsynth``/``synth`` modes of ``config``."""
    from ..generators import pipeline

    options = dict(config.data.generator)
    options["mode"] = config.data.mode
    options.setdefault("sequences", list(config.data.sequences))
    augment = dict(options.get("augment", {}))
    augment.setdefault("crop", list(config.data.patch_size) if config.data.patch_size else None)
    options["augment"] = augment
    return pipeline.PipelineConfig.from_dict(options)


def draw_sequence_parameters(sequences: Sequence[str], seed: int) -> tuple[str, dict[str, float]]:
    """A sequence drawn uniformly from ``sequences`` and random feasible parameters (SPEC §5 ranges)."""
    from ..generators.qsynth import draw_sequence

    draw = draw_sequence(torch.Generator().manual_seed(seed), tuple(sequences))
    return draw.sequence, dict(draw.params)


def load_qatlas_sets(data: Any, device: torch.device) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Map sets and their labels for the ``qatlas`` mode.

    With ``data.estimator`` and ``data.mprage``: every MPRAGE in the folder is turned into maps by the
    estimator model (and its label map of the same name is read from ``data.labels``); otherwise
    every sub-folder of ``data.map_sets`` is a map set with a ``labels.nii(.gz)`` file.
    """
    from ..io import load_map_set, read_volume

    sets = []
    if data.estimator and data.mprage:
        from ..inference.predict import estimate_maps  # qATLAS inference (MPRAGE -> maps)
        from ..models.model_file import load_model

        model = load_model(data.estimator, device=device)
        if not data.labels:
            raise ParameterError("data: qatlas with an estimator needs a 'labels' folder paired with 'mprage'")
        for image_path, label_path in paired_files(data.mprage, data.labels):
            maps = estimate_maps(model, read_volume(image_path, what="MPRAGE"), device=device)
            label = read_volume(label_path, what="label map")
            sets.append(({k: torch.as_tensor(np.asarray(v), device=device) for k, v in maps.items()},
                         torch.from_numpy(np.rint(label.data).astype(np.int64)).to(device)))
        return sets
    for folder in map_set_folders(data.map_sets):
        label_path = label_file(folder)
        map_set = load_map_set(folder=folder)
        label = read_volume(label_path, what="label map")
        if label.shape != map_set.reference.shape:
            raise InputError(f"label map shape {label.shape} differs from the maps {map_set.reference.shape}",
                             label_path)
        sets.append(({k: torch.from_numpy(v).to(device) for k, v in map_set.maps.items()},
                     torch.from_numpy(np.rint(label.data).astype(np.int64)).to(device)))
    return sets


def seg_loss(config: SegTrainConfig) -> Any:
    """Dice + CE loss function for the loop: ``loss(logits, classes, step) -> (loss, parts)``.

    With ``loss.lesion_weight == 1`` this is ``monai.losses.DiceCELoss`` (mean Dice over the classes, plain
    CE); otherwise the lesion (last) class is weighted in both terms (:class:`~.config.SegLossConfig`).
    """
    from monai.losses import DiceLoss

    cfg = config.loss
    n_classes = len(config.network.class_names)
    dice_loss = DiceLoss(to_onehot_y=True, softmax=True, include_background=cfg.include_background,
                         smooth_nr=cfg.smooth, smooth_dr=cfg.smooth, reduction="none")
    class_weight = torch.ones(n_classes)
    class_weight[-1] = cfg.lesion_weight
    dice_weight = class_weight if cfg.include_background else class_weight[1:]

    def loss(logits: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        per_class = dice_loss(logits, targets).reshape(logits.shape[0], -1)  # (B, classes scored)
        w = dice_weight.to(per_class)
        dice = (per_class * w).sum(1).mean() / w.sum()
        ce = torch.nn.functional.cross_entropy(logits, targets[:, 0].long(), weight=class_weight.to(logits))
        value = cfg.dice_weight * dice + cfg.ce_weight * ce
        return value, {"dice_loss": float(dice.detach()), "ce_loss": float(ce.detach())}

    return loss


def training_info(config: SegTrainConfig) -> dict[str, Any]:
    """What the exported model file records about a segmentation run beyond task, iterations, seed and config."""
    return {"mode": config.data.mode, "real_fraction": config.data.real_fraction,
            "sequences": list(config.data.sequences)}


def train_segmentation(
    config: SegTrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a lesion segmentation network; returns the exported model file ``out_dir/model.pt``.

    The output folder receives ``config.json``, ``train_log.jsonl``, ``checkpoint.pt`` and ``model.pt``.
    """
    from .loop import resolve_device, train_with_config

    device = resolve_device(device)
    return train_with_config(config, out_dir, SegSampler(config, device),
                             build_model=lambda: build_segmenter(config.network), loss=seg_loss(config),
                             classes=config.network.class_names, info=training_info(config),
                             resume=resume, device=device, progress=progress)

