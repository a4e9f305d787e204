"""One synthetic training sample from a label map: the generator pipeline (SPEC §6), draw-then-apply.

Stages (``mode="qsynth"``, the physics generator)::

    labels (+ lesion: a given mask pasted, or a synthetic one with probability lesion_prob)
      -> spatial augmentation straight onto the crop grid (flips, affine, elastic, crop; labels nearest)
      -> qSynth maps (PD, R1, R2*, MT) painted on the transformed labels
      -> a training sequence (SPEC §5) simulated with qmricore.physics.simulate on the labels' device
      -> receive field (smooth random multiplicative field)
      -> intensity augmentation: bias field, Rician noise at a random SNR, low-resolution reslicing,
         Gibbs ringing, min-max normalisation to [0, 1], gamma

``mode="synth"`` (the SynthSeg-style baseline) replaces maps + sequence + receive field by a GMM
(:mod:`.gmm`); everything else is the same.

The spatial stage comes first so that geometry is resampled once, on the crop region only, and the
image is generated from exactly the labels that are returned (labels follow every geometric
transform by construction; intensity stages never touch labels).

Every random number is drawn first into a :class:`SampleDraw` (JSON-safe: ``Sample.params``) and
then applied, so :func:`regenerate` rebuilds a sample from its sidecar bit-exactly on the CPU.
Independent seed streams (``numpy.random.SeedSequence(seed).spawn``) feed the lesion, map, sequence,
receive-field, GMM and augmentation draws, so changing one stage's settings leaves the others' draws alone.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ParameterError
from ..serialise import JSONDataclass, JSONDraw, from_plain
from .augment import (
    AugmentConfig,
    AugmentDraw,
    apply_intensity,
    apply_spatial,
    crop_shape,
    draw_augment,
    sampling_grid,
    smooth_field,
)
from .gmm import GMMConfig, GMMDraw, apply_gmm, draw_gmm
from .lesions import LesionConfig, LesionDraw, draw_lesion, paste_lesion, render_lesion
from .priors import TissuePriors, load_priors
from .qsynth import (
    TRAINING_SEQUENCES,
    MapDraw,
    QSynthConfig,
    SequenceDraw,
    apply_maps,
    class_weights,
    draw_clinical_sequence,
    draw_maps,
    draw_sequence,
)

__all__ = ["PipelineConfig", "ReceiveDraw", "SampleDraw", "Sample", "MODES", "FORMAT",
           "draw_sample", "apply_sample", "generate", "generate_batch", "regenerate", "crop_affine",
           "with_voxel_size"]

MODES = ("qsynth", "synth")
FORMAT = "qmricore-synth/1"
Tensor = torch.Tensor


@dataclass(frozen=True)
class PipelineConfig(JSONDataclass):
    """Settings of the whole generator (each default lives in its stage's config or here).

    Attributes
    ----------
    mode
        ``"qsynth"`` (physics) or ``"synth"`` (GMM baseline).
    sequences
        Sequences the qSynth stage may draw (``None``: :func:`~.qsynth.draw_sequence`'s default).
    clinical_prob, clinical_jitter
        Probability that the qSynth stage's acquisition is a jittered shipped clinical preset of the drawn
        sequence (:func:`~.qsynth.draw_clinical_sequence`, jitter in decades) instead of a SPEC §5 draw.
    lesion_prob
        Probability of synthesising a lesion when no lesion mask is given.
    lesion_focus_prob
        Probability that a sample with a lesion places its crop over the lesion, the lesion anywhere in the
        crop (otherwise the crop centre lies anywhere in the foreground).  Small crops of a whole head
        rarely hold a lesion; training a segmenter on crops needs this, as MONAI's
        ``RandCropByPosNegLabeld`` does with its positive fraction.
    receive_max_std, receive_nodes
        Receive field ``exp(N(0, s²) on a receive_nodes³ grid, upsampled)``, s ~ U(0, receive_max_std).
    priors
        Priors JSON file (``None``: the shipped 3 T priors).
    augment, gmm, qsynth, lesion
        The stages' own configs.
    """

    mode: str = "qsynth"
    sequences: tuple[str, ...] | None = None
    clinical_prob: float = 0.0
    clinical_jitter: float = 0.05
    lesion_prob: float = 0.0
    lesion_focus_prob: float = 0.0
    receive_max_std: float = 0.3
    receive_nodes: int = 4
    priors: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    qsynth: QSynthConfig = field(default_factory=QSynthConfig)
    lesion: LesionConfig = field(default_factory=LesionConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParameterError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.clinical_jitter < 0:
            raise ParameterError(f"clinical_jitter must be >= 0 decades, got {self.clinical_jitter}")
        for name in ("lesion_prob", "lesion_focus_prob", "clinical_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ParameterError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.receive_max_std < 0 or self.receive_nodes < 2:
            raise ParameterError("receive_max_std must be >= 0 and receive_nodes >= 2")


def with_voxel_size(config: PipelineConfig, voxel_size: tuple[float, ...]) -> PipelineConfig:
    """The config with the label map's voxel size (mm) set where a stage needs it (lesion volumes in mL)."""
    size = tuple(float(v) for v in voxel_size[:3])
    return dataclasses.replace(config, lesion=dataclasses.replace(config.lesion, voxel_size=size))


@dataclass(frozen=True)
class ReceiveDraw(JSONDraw):
    """Receive (coil sensitivity) field: log-field std, control points per axis, and its generator seed."""

    std: float
    nodes: int
    seed: int


@dataclass(frozen=True)
class SampleDraw(JSONDraw):
    """Every random number of one sample (``lesion_source``: ``"none"``, ``"given"`` or ``"synth"``)."""

    mode: str
    seed: int
    input_shape: tuple[int, ...]
    augment: AugmentDraw
    lesion_source: str = "none"
    lesion: LesionDraw | None = None
    maps: MapDraw | None = None
    sequence: SequenceDraw | None = None
    receive: ReceiveDraw | None = None
    gmm: GMMDraw | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SampleDraw:
        """:func:`~qmricore.serialise.from_plain` on the draw's own keys: a sidecar (``Sample.params``) holds them
        next to ``format``, ``config``, ``priors`` and whatever its writer adds (``write_sample``'s ``extra``).
        The stage draws' errors are theirs; a bad entry of this level, or an infeasible sequence, says
        "not a synthetic-sample sidecar"."""
        if not isinstance(d, Mapping):
            raise InputError(f"not a synthetic-sample sidecar (a {type(d).__name__}, not a JSON object)")
        own = {k: v for k, v in d.items() if k in _SAMPLE_DRAW_KEYS}
        try:
            return from_plain(cls, own, error=lambda problem: InputError(f"not a synthetic-sample sidecar ({problem})"))
        except InputError:
            raise
        except (TypeError, ValueError) as error:
            raise InputError(f"not a synthetic-sample sidecar ({error})") from None


_SAMPLE_DRAW_KEYS = frozenset(f.name for f in dataclasses.fields(SampleDraw))


@dataclass(frozen=True, eq=False)
class Sample:
    """A generated sample: ``image`` (1, X, Y, Z) float32 in [0, 1]; ``label`` (X, Y, Z) int64 class
    labels (the priors' label values, lesion included) or soft (C, X, Y, Z) probabilities; ``params``
    the JSON-safe sidecar (format, config, priors and every draw)."""

    image: Tensor
    label: Tensor
    params: dict[str, Any]


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------

def _streams(seed: int) -> dict[str, np.random.Generator]:
    names = ("lesion", "maps", "sequence", "receive", "gmm", "augment")
    children = np.random.SeedSequence(int(seed)).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children, strict=True)}


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from a numpy stream (draws of scalars: device-independent)."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


@dataclass(frozen=True, eq=False)
class _Checked:
    """Labels already validated by :func:`_as_labels` (so :func:`generate` checks them once, not twice)."""

    tensor: Tensor


def _as_labels(labels: Any, priors: TissuePriors) -> Tensor:
    """Validated labels as a tensor: hard int64 (X, Y, Z) label values, or soft float32 (C, X, Y, Z)."""
    if isinstance(labels, _Checked):
        return labels.tensor
    kind, _ = class_weights(labels, priors)  # raises InputError: empty, unknown labels, bad soft maps
    t = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if kind == "hard":
        return t.round().long() if t.is_floating_point() else t.long()
    return t.to(torch.float32)


def _foreground(labels: Tensor, priors: TissuePriors) -> Tensor:
    if torch.is_floating_point(labels):
        return labels[priors.index("background")] < 0.5 if "background" in priors.names else labels.sum(0) > 0
    return labels != priors.background_label


def _focus(labels: Tensor, priors: TissuePriors) -> tuple[list[int], list[int]] | None:
    fg = _foreground(labels, priors)
    idx = [torch.nonzero(fg.any(dim=tuple(a for a in range(3) if a != d))).view(-1) for d in range(3)]
    if any(i.numel() == 0 for i in idx):
        return None
    return [int(i[0]) for i in idx], [int(i[-1]) for i in idx]


def _lesion_focus(mask: Any | None, draw: LesionDraw | None, crop: Sequence[int]
                  ) -> tuple[list[int], list[int]] | None:
    """Where a lesion-focused crop may be centred: the bounding box of a given mask, or of a synthetic lesion's
    ellipsoid centres, widened by ``crop // 2 - 2`` voxels per side (at least one), so that the lesion's
    centre falls anywhere in the crop but its border zone.  Centring crops exactly on lesions would teach a
    network that lesions sit in the middle of its window (it then paints the middle of every window)."""
    if draw is not None:
        box = np.asarray(draw.centres)
        lo, hi = box.min(0), box.max(0)
    else:
        nonzero = np.argwhere(np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask) > 0)
        if len(nonzero) == 0:
            return None
        lo, hi = nonzero.min(0)[-3:], nonzero.max(0)[-3:]
    margin = [max(1, c // 2 - 2) for c in crop]
    return ([int(np.floor(v)) - m for v, m in zip(lo, margin, strict=True)],
            [int(np.ceil(v)) + m for v, m in zip(hi, margin, strict=True)])


def _priors_for(config: PipelineConfig, priors: TissuePriors | None) -> TissuePriors:
    return priors if priors is not None else load_priors(config.priors)


def _lesion_label(priors: TissuePriors) -> int:
    return priors.label_of("lesion")  # (InputError naming the classes when the priors lack it)


def _with_lesion(labels: Tensor, draw: SampleDraw, config: PipelineConfig, priors: TissuePriors,
                 lesion: Any | None) -> Tensor:
    if draw.lesion_source == "given":
        if lesion is None:
            raise InputError("this sample had a given lesion mask pasted; pass the same mask to regenerate it")
        return paste_lesion(labels, torch.as_tensor(np.asarray(lesion) if not isinstance(lesion, Tensor) else lesion),
                            _lesion_label(priors), priors)
    if draw.lesion_source == "synth" and draw.lesion is not None:
        prob = render_lesion(labels, draw.lesion, config.lesion, priors)
        return paste_lesion(labels, prob, _lesion_label(priors), priors)
    return labels


def _spatial(labels: Tensor, draw: AugmentDraw, priors: TissuePriors) -> Tensor:
    """Labels onto the crop grid: nearest for hard labels (padding = background), trilinear for soft ones
    (padding added to the background channel so the channels still sum to one)."""
    grid = sampling_grid(draw.spatial, labels.device)
    if torch.is_floating_point(labels):
        out = apply_spatial(labels, draw.spatial, grid=grid)
        if "background" in priors.names:
            bg = priors.index("background")
            out[bg] = out[bg] + (1.0 - out.sum(0)).clamp_min(0.0)
        return out
    background = priors.background_label
    if background == 0:
        return apply_spatial(labels, draw.spatial, grid=grid)
    return apply_spatial(labels - background, draw.spatial, grid=grid) + background


# ------------------------------------------------------------------------------------------------------------
# Draw, apply
# ------------------------------------------------------------------------------------------------------------

def draw_sample(labels: Any, config: PipelineConfig | None = None, seed: int = 0, *, lesion: Any | None = None,
                priors: TissuePriors | None = None) -> SampleDraw:
    """Draw every random number of one sample for this label map (hard or soft, see :func:`generate`)."""
    config = config or PipelineConfig()
    seed = _check_seed(seed)
    priors = _priors_for(config, priors)
    lab = _as_labels(labels, priors).cpu()  # draws never depend on the device
    rng = _streams(seed)
    # lesion: a given mask, or a synthetic one with probability lesion_prob
    lesion_source, lesion_draw = "none", None
    if lesion is not None:
        lesion_source = "given"
    elif rng["lesion"].random() < config.lesion_prob:
        try:
            lesion_draw = draw_lesion(lab, _torch_generator(rng["lesion"]), config.lesion, priors)
            lesion_source = "synth"
        except InputError:  # no lesion territory in this label map: a healthy sample
            lesion_draw = None
    # spatial + intensity augmentation (the crop centre stays in the lesion's or the foreground's bounding box)
    focus = None
    if lesion_source != "none" and config.lesion_focus_prob > 0 and rng["lesion"].random() < config.lesion_focus_prob:
        focus = _lesion_focus(lesion, lesion_draw, crop_shape(lab.shape[-3:], config.augment.crop))
    augment = draw_augment(lab.shape[-3:], config.augment, rng["augment"], focus=focus or _focus(lab, priors))
    maps = sequence = receive = gmm = None
    if config.mode == "qsynth":
        # qSynth subject, training sequence and receive field
        maps = draw_maps(priors, _torch_generator(rng["maps"]), config.qsynth)
        seq_gen = _torch_generator(rng["sequence"])
        names = TRAINING_SEQUENCES if config.sequences is None else config.sequences
        clinical = config.clinical_prob > 0 and float(torch.rand(1, generator=seq_gen)) < config.clinical_prob
        sequence = draw_clinical_sequence(seq_gen, names, config.clinical_jitter) if clinical \
            else draw_sequence(seq_gen, names)  # (with clinical_prob 0 the stream is the one every sidecar has)
        r = rng["receive"]
        receive = ReceiveDraw(float(r.uniform(0.0, config.receive_max_std)), config.receive_nodes,
                              int(r.integers(0, 2**31 - 1)))
    else:
        # GMM means/stds per label value
        gmm = draw_gmm(max(priors.labels) + 1, rng["gmm"], config.gmm)
    return SampleDraw(config.mode, seed, tuple(lab.shape), augment, lesion_source, lesion_draw, maps, sequence,
                      receive, gmm)


def apply_sample(labels: Any, draw: SampleDraw, config: PipelineConfig | None = None, *,
                 lesion: Any | None = None, priors: TissuePriors | None = None,
                 device: torch.device | str | None = None) -> Sample:
    """Build the sample of a :class:`SampleDraw` (deterministic; bit-exact on the CPU)."""
    from ..physics import simulate

    config = config or PipelineConfig(mode=draw.mode)
    priors = _priors_for(config, priors)
    lab = _as_labels(labels, priors)
    if tuple(lab.shape) != tuple(draw.input_shape):
        raise InputError(f"label map has shape {tuple(lab.shape)} but the draw was made for {draw.input_shape}")
    if device is not None:
        lab = lab.to(device)
    # lesion pasted on the input grid
    lab = _with_lesion(lab, draw, config, priors, None if lesion is None else torch.as_tensor(np.asarray(
        lesion.cpu() if isinstance(lesion, Tensor) else lesion)).to(lab.device))
    # spatial augmentation + crop: labels resampled once onto the output grid
    out_labels = _spatial(lab, draw.augment, priors)
    foreground = _foreground(out_labels, priors)
    if not bool(foreground.any()):
        raise InputError("the augmented crop holds no foreground label; use a larger crop or check the label map")
    if draw.mode == "qsynth":
        if draw.maps is None or draw.sequence is None or draw.receive is None:
            raise InputError("qsynth sample draw lacks its maps, sequence or receive-field draw")
        # qSynth maps painted on the transformed labels
        maps = apply_maps(out_labels, priors, draw.maps, config.qsynth)
        # physics: the drawn sequence, simulated where the labels live
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no R2 map.*")
            image = simulate(draw.sequence.sequence, maps, device=out_labels.device, **draw.sequence.params)
        image = image.abs()  # MP2RAGE UNI may be negative; magnitude images otherwise
        # receive field: smooth multiplicative coil sensitivity
        image = image * smooth_field(image.shape, draw.receive.nodes, draw.receive.std, draw.receive.seed,
                                     image.device)
    elif draw.mode == "synth":
        if draw.gmm is None:
            raise InputError("synth sample draw lacks its GMM draw")
        gmm = draw.gmm
        if torch.is_floating_point(out_labels):  # soft channels are in the priors' class order
            gmm = dataclasses.replace(gmm, means=tuple(gmm.means[v] for v in priors.labels),
                                      stds=tuple(gmm.stds[v] for v in priors.labels))
        # GMM intensities per label, blurred
        image = apply_gmm(out_labels, gmm)
    else:
        raise InputError(f"unknown mode {draw.mode!r} in the sample draw")
    # intensity augmentation (bias, noise, low resolution, Gibbs, normalisation, gamma): image only
    image = apply_intensity(image, draw.augment.intensity, foreground=foreground)
    params = {"format": FORMAT, **draw.to_dict(), "config": config.to_dict(), "priors": priors.to_dict()}
    return Sample(image.reshape(1, *image.shape[-3:]), out_labels, params)


def generate(labels: Any, config: PipelineConfig | None = None, seed: int = 0, device: torch.device | str | None = None,
             *, lesion: Any | None = None, priors: TissuePriors | None = None) -> Sample:
    """Generate one training sample from a label map.

    Parameters
    ----------
    labels
        Hard labels (X, Y, Z) with the priors' label values (integers; integral floats accepted, e.g.
        read from NIfTI) or soft class probabilities (C, X, Y, Z) in the priors' class order; numpy or torch.
    config
        :class:`PipelineConfig` (mode, stage configs, priors file).
    seed
        Integer seed: the same labels, config and seed give the same sample (bit-exact on the CPU).
    device
        Where to compute (``"cuda"`` for the GPU); default: where ``labels`` lives.
    lesion
        Optional lesion mask or probability (X, Y, Z) on the labels' grid, pasted as the lesion class.
    priors
        Priors object overriding ``config.priors``.

    Raises
    ------
    InputError
        Empty label map, unknown label values, a lesion on another grid.
    """
    config = config or PipelineConfig()
    priors = _priors_for(config, priors)
    checked = _Checked(_as_labels(labels, priors))
    draw = draw_sample(checked, config, seed, lesion=lesion, priors=priors)
    return _apply_or_cpu(checked, draw, config, lesion, priors, device)


def _apply_or_cpu(labels: Any, draw: SampleDraw, config: PipelineConfig, lesion: Any | None,
                  priors: TissuePriors | None, device: torch.device | str | None) -> Sample:
    """:func:`apply_sample`, falling back to the CPU with a warning when the GPU runs out of memory
    (the draws do not depend on the device, so the sample is the same up to floating-point rounding)."""
    try:
        return apply_sample(labels, draw, config, lesion=lesion, priors=priors, device=device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        warnings.warn("GPU out of memory while generating a sample; generating it on the CPU instead", stacklevel=3)
        cpu = labels.tensor.cpu() if isinstance(labels, _Checked) else labels
        sample = apply_sample(cpu, draw, config, lesion=lesion, priors=priors, device="cpu")
        return sample


def generate_batch(labels: Any, config: PipelineConfig | None = None, seeds: Sequence[int] = (0,),
                   device: torch.device | str | None = None, *, priors: TissuePriors | None = None
                   ) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Samples of one label map for several seeds, stacked: images (B, 1, X, Y, Z), labels (B, X, Y, Z)
    (or (B, C, X, Y, Z) soft) and the B sidecars.  Each item equals ``generate(labels, config, seed)``."""
    config = config or PipelineConfig()
    priors = _priors_for(config, priors)
    checked = _Checked(_as_labels(labels, priors))
    samples = [generate(checked, config, s, device, priors=priors) for s in seeds]
    if not samples:
        raise ParameterError("generate_batch needs at least one seed")
    images = torch.stack([s.image.to(samples[0].image.device) for s in samples])
    labels_out = torch.stack([s.label.to(samples[0].label.device) for s in samples])
    return images, labels_out, [s.params for s in samples]


def regenerate(labels: Any, params: Mapping[str, Any], *, lesion: Any | None = None,
               device: torch.device | str | None = None) -> Sample:
    """Rebuild a sample from its sidecar ``params`` (bit-exact on the CPU); pass the same given lesion mask."""
    if params.get("format") != FORMAT:
        raise InputError(f"not a synthetic-sample sidecar (format {params.get('format')!r}, expected {FORMAT!r})")
    config = PipelineConfig.from_dict(params["config"])
    priors = TissuePriors.from_dict(params["priors"]) if params.get("priors") else None
    return _apply_or_cpu(labels, SampleDraw.from_dict(params), config, lesion, priors, device)


def crop_affine(affine: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Voxel-to-world matrix of a sample's output grid: the input's ``affine`` moved to the crop origin.

    Output voxel ``v`` sits where input voxel ``offset + v`` was (before the random deformation, which
    is part of the augmentation, not of the geometry).
    """
    offset = np.asarray(params["augment"]["spatial"]["offset"], dtype=np.float64)
    shift = np.eye(4)
    shift[:3, 3] = offset
    return np.asarray(affine, dtype=np.float64) @ shift


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)
