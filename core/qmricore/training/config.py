"""Training configurations: one frozen dataclass per concern, saved to and loaded from plain JSON.

Every training default lives here and nowhere else (SPEC §7, §8): the CLI, the trainers and the
checkpoint read them from these classes.

A config file is a JSON object::

    {"task": "seg",
     "network":   {...SegmenterConfig fields...},
     "data":      {...SegDataConfig fields...},
     "loss":      {...SegLossConfig fields...},
     "optimizer": {...OptimizerConfig fields...},
     "loop":      {...LoopConfig fields...}}

``"task": "estimator"`` uses :class:`~qmricore.models.networks.EstimatorConfig`, :class:`EstimatorDataConfig`
and :class:`EstimatorLossConfig` instead; ``"task": "mwf"`` :class:`~qmricore.models.networks.MWFNetConfig`,
:class:`MWFDataConfig` and :class:`MWFLossConfig`; ``"task": "ldm_masks"`` (:mod:`qmricore.ldm`)
:class:`~qmricore.ldm.models.LDMMasksConfig`, :class:`LDMMasksDataConfig` and :class:`LDMMasksLossConfig`;
``"task": "ldm_images"`` :class:`~qmricore.ldm.images.LDMImagesConfig`, :class:`LDMMasksDataConfig` and
:class:`LDMImagesLossConfig`.
Missing keys take the defaults below; unknown keys are an error (a typo must not silently fall back to a default).
Relative paths in ``data`` are resolved against the folder of the config file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, ParameterError
from ..generators.qsynth import TRAINING_SEQUENCES
from ..ldm.images import LDMImagesConfig
from ..ldm.models import STAGES, LDMMasksConfig
from ..models.networks import EstimatorConfig, MWFNetConfig, SegmenterConfig

TASKS = ("seg", "estimator", "mwf", "ldm_masks", "ldm_images")
SEG_MODES = ("real", "qsynth", "synth", "qatlas")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a polynomial learning-rate decay ``lr_i = lr·(1 − i/N)^poly_power`` (SPEC §7, §8).

    Parameters
    ----------
    lr
        Initial learning rate η.
    betas
        AdamW moment coefficients.
    weight_decay
        Decoupled weight decay.
    poly_power
        Exponent of the polynomial decay (0 keeps the learning rate constant).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not (self.lr > 0 and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ParameterError(f"optimizer: need lr > 0 and two betas in [0, 1), got {self.lr}, {self.betas}")
        if self.weight_decay < 0 or self.poly_power < 0:
            raise ParameterError("optimizer: weight_decay and poly_power must be >= 0")


@dataclass(frozen=True)
class LoopConfig:
    """The generic training loop (:mod:`qmricore.training.loop`).

    Parameters
    ----------
    iterations
        Total optimiser steps N (the poly schedule runs over N).
    batch_size
        Samples per step and per process (SPEC: 1).
    checkpoint_every
        Write ``checkpoint.pt`` every this many steps (and after the last one).
    log_every
        Append a line to ``train_log.jsonl`` every this many steps (and after the last one).
    seed
        Seeds the network initialisation, dropout and every training sample (sample ``k`` is drawn
        from ``(seed, k)`` alone, so runs are reproducible and resumable).
    deterministic
        Ask PyTorch for deterministic algorithms (bit-exact resume on GPU needs it; CPU is already).
    init
        A model file (``qmricore`` format) whose weights start the run instead of a random initialisation
        (fine-tuning, nnU-Net's ``-pretrained_weights``); its network must be the config's.  A relative path is
        relative to the config file.  Ignored on resume (the checkpoint holds the weights).
    """

    iterations: int = 10000
    batch_size: int = 1
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    init: str | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ParameterError("loop: iterations, batch_size, checkpoint_every and log_every must be >= 1")


@dataclass(frozen=True)
class SegLossConfig:
    """Dice + cross-entropy (``monai.losses.DiceCELoss`` on softmax outputs, one-hot targets).

    ``include_background=False`` computes the Dice term on the foreground classes only (the lesion
    for the binary class set), which keeps small lesions from being swamped by background.
    ``lesion_weight`` weighs the lesion class (always the last) in both terms: the weighted mean of the
    per-class Dice losses, and the class weight of the cross-entropy.  With the tissue class set the lesion
    is one class in five and its few voxels barely move either term: a tissue network trained with weight 1
    for 4 250 iterations segmented GM, WM and CSF but gave lesion voxels a probability below 0.01.
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = False
    smooth: float = 1e-5
    lesion_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight <= 0:
            raise ParameterError("seg loss: weights must be >= 0 and not both 0")
        if not self.lesion_weight > 0:
            raise ParameterError(f"seg loss: lesion_weight must be > 0, got {self.lesion_weight}")


@dataclass(frozen=True)
class EstimatorLossConfig:
    """qATLAS estimator loss (SPEC §7).

    L2 on the maps for the first ``warmup_fraction`` of the iterations, then L1 + L2 on the maps and
    on their spatial finite differences (weight ``gradient_weight``).  Each map is divided by its
    ``map_scales`` value first so PD (p.u.), R1, R2* (1/s) and MT (p.u.) weigh alike; voxels where
    the target PD is 0 (outside the head) are left out.
    """

    warmup_fraction: float = 0.1
    gradient_weight: float = 1.0
    map_scales: dict[str, float] = field(default_factory=lambda: {"pd": 100.0, "r1": 1.0, "r2s": 30.0, "mt": 2.0})

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_fraction <= 1.0 or self.gradient_weight < 0:
            raise ParameterError("estimator loss: need 0 <= warmup_fraction <= 1 and gradient_weight >= 0")
        if set(self.map_scales) != {"pd", "r1", "r2s", "mt"} or any(v <= 0 for v in self.map_scales.values()):
            raise ParameterError(f"estimator loss: map_scales needs positive pd, r1, r2s, mt; got {self.map_scales}")


@dataclass(frozen=True)
class SegDataConfig:
    """Where segmentation training samples come from.

    Parameters
    ----------
    mode
        ``"real"`` (image/label NIfTI pairs), ``"qsynth"`` (label maps → qMRI maps → simulated images),
        ``"synth"`` (label maps → GMM images, the SynthSeg-style baseline) or ``"qatlas"`` (map sets,
        estimated from MPRAGE by a qATLAS estimator when ``estimator`` is given, → simulated images).
    labels
        A label map, or a folder of label maps (``*.nii``/``*.nii.gz``), for ``qsynth``/``synth``; labels
        0 background, 1 GM, 2 WM, 3 GM/WM PV, 4 CSF, 5 non-brain, 6 lesion.
    real_images, real_labels
        Folders of real images and their label maps, paired by file name.  A real label map with
        labels above 1 uses the convention above; one with only 0/1 is a lesion mask.
    real_fraction
        Probability that a sample of a synthetic mode is a real pair instead (mixing with real data).
    map_sets
        For ``qatlas``: a folder of map-set folders, or one map-set folder (each read with
        :func:`qmricore.io.load_map_set`; its label map is ``labels.nii(.gz)`` or ``*_labels.nii(.gz)``).
    estimator, mprage
        ``qatlas`` with an estimator: a qATLAS model file and a folder of MPRAGE images with label
        maps in ``labels`` (paired by file name); the maps are estimated once at start.
    sequences
        Sequences drawn (uniformly) for simulated images (``qsynth``, ``qatlas``); SPEC §5 ranges.
    generator
        Extra options passed to the synthesis pipeline configuration (see
        :mod:`qmricore.generators.pipeline`).
    min_lesion_contrast
        ``qsynth``/``synth``: a sample whose lesion is fainter than this
        (:func:`qmricore.generators.lesions.lesion_contrast`, in spreads of the surrounding brain) is drawn
        again with the next seed (up to :data:`qmricore.training.seg.RETRIES` draws).  A lesion the drawn
        sequence renders isointense teaches the network to hedge, not to find lesions: with 0 (off), 40 % of
        the lesions in 64³ training crops had a contrast below 0.5.  Crops without a lesion are kept as they are.
    patch_size
        Every sample is cropped (random position) or zero-padded to this size (voxels); ``None``
        keeps the volume and pads it to a multiple of the network's total stride.
    preprocessing
        :class:`~qmricore.inference.preprocess.PreprocessConfig` fields (``spacing`` in mm: the voxel size of the
        training data, which inference reslices to; intensity normalisation); stored in the model.
    """

    mode: str = "qsynth"
    labels: str | None = None
    real_images: str | None = None
    real_labels: str | None = None
    real_fraction: float = 0.0
    map_sets: str | None = None
    estimator: str | None = None
    mprage: str | None = None
    sequences: tuple[str, ...] = TRAINING_SEQUENCES
    generator: dict[str, Any] = field(default_factory=dict)
    min_lesion_contrast: float = 0.0
    patch_size: tuple[int, int, int] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", tuple(self.sequences))
        if not self.min_lesion_contrast >= 0:
            raise ParameterError(f"data: min_lesion_contrast must be >= 0, got {self.min_lesion_contrast}")
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
            if len(self.patch_size) != 3 or min(self.patch_size) < 1:
                raise ParameterError(f"data: patch_size must be 3 positive integers, got {self.patch_size}")
        if self.mode not in SEG_MODES:
            raise ParameterError(f"data: mode must be one of {', '.join(SEG_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.real_fraction <= 1.0:
            raise ParameterError(f"data: real_fraction must be in [0, 1], got {self.real_fraction}")
        needs_real = self.mode == "real" or self.real_fraction > 0
        if needs_real and not (self.real_images and self.real_labels):
            raise ParameterError("data: mode 'real' and real_fraction > 0 need real_images and real_labels folders")
        if self.mode in ("qsynth", "synth") and not self.labels:
            raise ParameterError(f"data: mode {self.mode!r} needs a 'labels' folder of label maps")
        if self.mode == "qatlas" and not (self.map_sets or (self.estimator and self.mprage)):
            raise ParameterError("data: mode 'qatlas' needs 'map_sets', or 'estimator' and 'mprage' folders")


@dataclass(frozen=True)
class EstimatorDataConfig:
    """Training data of the qATLAS estimator (SPEC §7).

    Parameters
    ----------
    map_sets
        Folder of map-set folders, or one map-set folder (each read by :func:`qmricore.io.load_map_set`;
        PD, R1, R2* and MT are needed).
    labels
        Instead of ``map_sets``: a label map or a folder of them (e.g. the whole heads of
        ``Resources/TrainingAnatomy``); each sample paints a new qSynth subject on the (augmented, cropped)
        labels with the shipped priors (or ``priors``), so the maps vary without end.
    priors
        Priors JSON for ``labels`` (``None``: the shipped 3 T priors).
    b0_ref
        Field strength (tesla) the maps were measured at; each sample re-scales them to a B0 drawn
        from the ``qatlas_mprage`` ranges before simulating the MPRAGE.
    snr
        Signal-to-noise ratio of the simulated MPRAGE (``None``: no noise).
    patch_size, preprocessing
        As for :class:`SegDataConfig`.
    augment
        :class:`~qmricore.generators.augment.AugmentConfig` fields for the spatial/intensity augmentation.
    """

    map_sets: str | None = None
    labels: str | None = None
    priors: str | None = None
    b0_ref: float = 3.0
    snr: float | None = 30.0
    patch_size: tuple[int, int, int] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.patch_size is not None:
            object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if bool(self.map_sets) == bool(self.labels):
            raise ParameterError("data: the estimator needs either a 'map_sets' folder of map-set folders or "
                                 "a 'labels' folder of label maps (qSynth subjects), not both")
        if self.b0_ref <= 0 or (self.snr is not None and self.snr <= 0):
            raise ParameterError("data: b0_ref and snr must be > 0")


@dataclass(frozen=True)
class SegTrainConfig:
    """Everything a segmentation training run needs (``task = "seg"``)."""

    network: SegmenterConfig = field(default_factory=SegmenterConfig)
    data: SegDataConfig = field(default_factory=lambda: SegDataConfig(labels="labels"))
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    task: str = "seg"

    def __post_init__(self) -> None:
        check_patch(self.data.patch_size, self.network.strides)


@dataclass(frozen=True)
class EstimatorTrainConfig:
    """Everything a qATLAS estimator training run needs (``task = "estimator"``)."""

    network: EstimatorConfig = field(default_factory=EstimatorConfig)
    data: EstimatorDataConfig = field(default_factory=lambda: EstimatorDataConfig(map_sets="map_sets"))
    loss: EstimatorLossConfig = field(default_factory=EstimatorLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    task: str = "estimator"

    def __post_init__(self) -> None:
        check_patch(self.data.patch_size, self.network.strides)


@dataclass(frozen=True)
class MWFDataConfig:
    """Training data of the CNN MWF estimator.

    Parameters
    ----------
    labels
        A label map or a folder of label maps (the class table of ``data/priors_3t.json``), e.g.
        ``Resources/TrainingAnatomy``.
    snr_range
        SNR drawn log-uniformly in this range (first echo of white matter over the noise sigma).
    patch_size
        Block cut from the label map per sample (voxels).
    """

    labels: str | None = None
    snr_range: tuple[float, float] = (15.0, 300.0)
    patch_size: tuple[int, int, int] = (24, 24, 24)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "snr_range", tuple(float(s) for s in self.snr_range))
        if not self.labels:
            raise ParameterError("data: the MWF estimator needs a 'labels' label map or folder of label maps")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ParameterError(f"data: patch_size must be 3 positive integers, got {list(self.patch_size)}")
        lo, hi = self.snr_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ParameterError(f"data: snr_range must satisfy 0 < low <= high, got {[lo, hi]}")


@dataclass(frozen=True)
class MWFLossConfig:
    """L1 on the MWF over brain voxels (no options yet; a section so configs of every task read alike)."""


@dataclass(frozen=True)
class MWFTrainConfig:
    """Everything a CNN MWF estimator training run needs (``task = "mwf"``)."""

    network: MWFNetConfig = field(default_factory=MWFNetConfig)
    data: MWFDataConfig = field(default_factory=lambda: MWFDataConfig(labels="labels"))
    loss: MWFLossConfig = field(default_factory=MWFLossConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(iterations=3000, batch_size=4))
    task: str = "mwf"

    def __post_init__(self) -> None:
        check_patch(self.data.patch_size, self.network.strides)


@dataclass(frozen=True)
class LDMMasksDataConfig:
    """Training data of the mask generator (:mod:`qmricore.ldm.labels`: ventricles derived, volumes varied).

    Parameters
    ----------
    labels
        A label map or a folder of them with isotropic voxels (e.g. ``Resources/TrainingAnatomy``).
    ventricle_ml_range
        Target ventricle volume (mL) of a sample, drawn log-uniformly (the condition is the volume measured after
        the deformation, on the working grid).
    scale, rotation_deg
        Random affine per sample: per-axis scale range and rotation range (degrees).
    autoencoder
        Stage ``diffusion``: the ``ldm_masks`` model file of the autoencoder stage, whose frozen encoder makes the
        latents (its autoencoder must fit the config's network).
    """

    labels: str | None = None
    ventricle_ml_range: tuple[float, float] = (8.0, 150.0)
    scale: tuple[float, float] = (0.92, 1.08)
    rotation_deg: float = 6.0
    autoencoder: str | None = None

    def __post_init__(self) -> None:
        for name in ("ventricle_ml_range", "scale"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not self.labels:
            raise ParameterError("data: the mask generator needs a 'labels' label map or folder of label maps")
        self.mask_set  # noqa: B018 (checks the ranges)

    @property
    def mask_set(self) -> Any:
        from ..ldm.labels import MaskSetConfig

        return MaskSetConfig(ventricle_ml_range=self.ventricle_ml_range, scale=self.scale,
                             rotation_deg=self.rotation_deg)

    @property
    def patch_size(self) -> None:
        """A generator has no training patch (whole working grids)."""
        return None


@dataclass(frozen=True)
class LDMMasksLossConfig:
    """What a mask-generator run trains, and its loss.

    Parameters
    ----------
    stage
        ``"autoencoder"``: cross-entropy + soft Dice of the reconstruction + ``kl_weight`` · KL;
        ``"diffusion"``: MSE of the predicted noise on frozen-autoencoder latents.
    kl_weight
        Weight of the KL term (per latent voxel summed, per sample averaged).
    dice_weight
        Weight of the soft Dice term (the ventricles are a few percent of the grid; cross-entropy alone lets them go).
    null_prob
        Probability that a diffusion step trains a sample with the null condition (classifier-free guidance).
    """

    stage: str = "autoencoder"
    kl_weight: float = 1e-6
    dice_weight: float = 1.0
    null_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ParameterError(f"loss: stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.kl_weight < 0 or self.dice_weight < 0 or not 0 <= self.null_prob < 1:
            raise ParameterError("loss: need kl_weight >= 0, dice_weight >= 0 and 0 <= null_prob < 1")


@dataclass(frozen=True)
class LDMMasksTrainConfig:
    """Everything a mask-generator training run needs (``task = "ldm_masks"``): one stage per run."""

    network: LDMMasksConfig = field(default_factory=LDMMasksConfig)
    data: LDMMasksDataConfig = field(default_factory=lambda: LDMMasksDataConfig(labels="labels"))
    loss: LDMMasksLossConfig = field(default_factory=LDMMasksLossConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4, poly_power=0.0))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(iterations=2000, batch_size=2, checkpoint_every=250))
    task: str = "ldm_masks"

    def __post_init__(self) -> None:
        if self.loss.stage == "diffusion" and not self.data.autoencoder:
            raise ParameterError("data: stage 'diffusion' needs 'autoencoder', the model file of the autoencoder stage")


@dataclass(frozen=True)
class LDMImagesLossConfig:
    """What an image-generator run trains: ``"autoencoder"`` (L1 + ``kl_weight`` · KL) or ``"diffusion"`` (MSE of
    the noise on frozen-autoencoder latents, every step conditioned on the label map)."""

    stage: str = "autoencoder"
    kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ParameterError(f"loss: stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.kl_weight < 0:
            raise ParameterError("loss: kl_weight must be >= 0")


@dataclass(frozen=True)
class LDMImagesTrainConfig:
    """Everything an image-generator training run needs (``task = "ldm_images"``): one stage per run.  The data are
    the mask generator's training label maps (:class:`LDMMasksDataConfig`; ``autoencoder`` is then this generator's
    first stage), each rendered with a new qSynth subject and ``network.preset``."""

    network: LDMImagesConfig = field(default_factory=LDMImagesConfig)
    data: LDMMasksDataConfig = field(default_factory=lambda: LDMMasksDataConfig(labels="labels"))
    loss: LDMImagesLossConfig = field(default_factory=LDMImagesLossConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4, poly_power=0.0))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(iterations=2000, batch_size=2, checkpoint_every=250))
    task: str = "ldm_images"

    def __post_init__(self) -> None:
        if self.loss.stage == "diffusion" and not self.data.autoencoder:
            raise ParameterError("data: stage 'diffusion' needs 'autoencoder', the model file of the autoencoder stage")


def check_patch(patch: tuple[int, ...] | None, strides: Any) -> None:
    """A training patch must be a multiple of the network's total stride on every axis (else the U-Net's
    output does not match its target)."""
    if patch is None:
        return
    multiple = 1
    for stride in strides:
        multiple *= int(stride)
    if any(p % multiple for p in patch):
        example = [max(multiple, p // multiple * multiple) for p in patch]
        raise ParameterError(f"data: patch_size {list(patch)} must be a multiple of the network's total stride "
                             f"{multiple} on every axis (e.g. {example})")


TrainConfig = SegTrainConfig | EstimatorTrainConfig | MWFTrainConfig | LDMMasksTrainConfig | LDMImagesTrainConfig

_SECTIONS = {
    "seg": {"network": SegmenterConfig, "data": SegDataConfig, "loss": SegLossConfig},
    "estimator": {"network": EstimatorConfig, "data": EstimatorDataConfig, "loss": EstimatorLossConfig},
    "mwf": {"network": MWFNetConfig, "data": MWFDataConfig, "loss": MWFLossConfig},
    "ldm_masks": {"network": LDMMasksConfig, "data": LDMMasksDataConfig, "loss": LDMMasksLossConfig},
    "ldm_images": {"network": LDMImagesConfig, "data": LDMMasksDataConfig, "loss": LDMImagesLossConfig},
}
_TRAIN_CONFIGS = {"seg": SegTrainConfig, "estimator": EstimatorTrainConfig, "mwf": MWFTrainConfig,
                  "ldm_masks": LDMMasksTrainConfig, "ldm_images": LDMImagesTrainConfig}
#: Path-valued keys per section, resolved against the config file's folder.
_PATH_KEYS = {"data": ("labels", "real_images", "real_labels", "map_sets", "estimator", "mprage", "priors",
                       "autoencoder"),
              "loop": ("init",)}


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ParameterError(f"{where}: must be a JSON object")
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ParameterError(f"{where}: unknown keys {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def config_from_dict(data: Mapping[str, Any], base: str | os.PathLike[str] | None = None) -> TrainConfig:
    """Build a training config from its JSON form; relative data paths are resolved against ``base``."""
    task = data.get("task", "seg")
    if task not in TASKS:
        raise ParameterError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    unknown = sorted(set(data) - {"task", "network", "data", "loss", "optimizer", "loop"})
    if unknown:
        raise ParameterError(f"unknown top-level keys {unknown}")
    sections = dict(_SECTIONS[task], optimizer=OptimizerConfig, loop=LoopConfig)
    values: dict[str, Any] = {}
    for name, cls in sections.items():
        if name not in data:
            continue
        raw = dict(data[name]) if isinstance(data[name], Mapping) else data[name]
        if base is not None and isinstance(raw, dict):
            for key in _PATH_KEYS.get(name, ()):
                if isinstance(raw.get(key), str):
                    raw[key] = str(Path(base) / os.path.expanduser(raw[key]))
        values[name] = _section(cls, raw, name)
    if "data" not in values:
        raise ParameterError("a training config needs a 'data' section")
    return _TRAIN_CONFIGS[task](**values)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready form of a training config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a training config JSON file (see the module docstring); bad files raise ``InputError``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("config file not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not a readable JSON config ({error})", path) from None
    if not isinstance(data, Mapping):
        raise InputError("a training config must be a JSON object", path)
    try:
        return config_from_dict(data, base=path.resolve().parent)
    except (ParameterError, TypeError) as error:
        raise InputError(str(error), path) from None


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as indented JSON, atomically (temporary file, then rename)."""
    from ..io import atomic_file

    with atomic_file(path, "w") as handle:
        handle.write(json.dumps(config_to_dict(config), indent=2) + "\n")
    return Path(path)


def with_overrides(config: TrainConfig, **loop: Any) -> TrainConfig:
    """A copy of ``config`` with some :class:`LoopConfig` fields replaced (``None`` values are ignored)."""
    changes = {k: v for k, v in loop.items() if v is not None}
    return dataclasses.replace(config, loop=dataclasses.replace(config.loop, **changes)) if changes else config


def poly_factor(iteration: int, total: int, power: float) -> float:
    """Polynomial decay factor ``(1 − i/N)^power`` (clamped at 0 for i ≥ N)."""
    return max(0.0, 1.0 - iteration / total) ** power
