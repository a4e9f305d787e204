"""qATLAS estimator training (SPEC §7): one MPRAGE in, PD/R1/R2*/MT maps out.

Sample ``k`` (a pure function of ``(loop.seed, k)``): a real map set is chosen; an MPRAGE protocol and
a field strength B0 are drawn from the ``qatlas_mprage`` ranges (:func:`qmricore.generators.qsynth.
draw_qatlas_mprage`); R1 and R2* are re-scaled from ``data.b0_ref`` to B0
(:func:`qmricore.physics.rescale_field_strength`) and the MPRAGE is simulated from them
(:func:`qmricore.physics.simulate`, Rician noise at ``data.snr``).  The image and the target maps go
through the same spatial augmentation; the image alone through the intensity one; the image is then
normalised as at inference.

The targets are the map set as measured (at ``b0_ref``): the network learns to give reference-field
maps whatever the field of the MPRAGE, so the estimated maps can feed the simulator directly.

Loss: L2 for the first ``loss.warmup_fraction`` of the steps, then L1 + L2 on the maps and on their
spatial finite differences (:func:`estimator_loss`).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets import sample_seed
from ..errors import InputError
from ..io import map_set_folders
from ..models.networks import ESTIMATOR_MAPS, build_estimator
from .config import EstimatorLossConfig, EstimatorTrainConfig
from .loop import Sampler
from .seg import fit_shape, normalise, padded_shape

#: Classes whose bounding box holds the crop centres of label-map training.
BRAIN = ("gm", "wm", "gm_wm_pv", "csf", "ventricles", "lesion")
#: Classes left out of the loss mask of label-map training: no MPRAGE tells their maps apart (air, compact bone).
UNMEASURED = ("background", "skull")
#: Loss phases: warm-up (L2 on values) and main (L1 + L2 on values and on spatial gradients).
PHASES = ("l2", "l1+l2+gradient")


def loss_phase(step: int, iterations: int, warmup_fraction: float) -> str:
    """``"l2"`` while ``step < warmup_fraction·iterations`` (0-based steps), else ``"l1+l2+gradient"``."""
    return PHASES[0] if step < warmup_fraction * iterations else PHASES[1]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def _differences(x: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Forward differences of ``x`` (B, C, X, Y, Z) along each spatial axis, with the mask of valid pairs."""
    out = []
    for axis in (2, 3, 4):
        n = x.shape[axis]
        a, b = x.narrow(axis, 1, n - 1), x.narrow(axis, 0, n - 1)
        out.append((a - b, mask.narrow(axis, 1, n - 1) * mask.narrow(axis, 0, n - 1)))
    return out


def estimator_loss(config: EstimatorLossConfig, iterations: int) -> Any:
    """The loop's loss: ``loss(maps (B, 4, ...), targets (B, 5, ...), step) -> (loss, parts)``.

    ``targets`` holds the 4 target maps (order :data:`~qmricore.models.networks.ESTIMATOR_MAPS`) and, as its
    5th channel, the mask of voxels that count (target PD > 0).  Every map is divided by its
    ``map_scales`` value.  The parts (``l1, l2, grad_l1, grad_l2, phase``) are logged whatever the phase.
    """
    scales = torch.tensor([config.map_scales[k] for k in ESTIMATOR_MAPS], dtype=torch.float32).view(1, -1, 1, 1, 1)

    def loss(maps: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        s = scales.to(maps)
        mask = targets[:, 4:5]
        error = maps / s - targets[:, :4] / s
        l2, l1 = _masked_mean(error**2, mask), _masked_mean(error.abs(), mask)
        grads = _differences(error, mask)
        g2 = sum(_masked_mean(d**2, m) for d, m in grads) / 3
        g1 = sum(_masked_mean(d.abs(), m) for d, m in grads) / 3
        phase = loss_phase(step, iterations, config.warmup_fraction)
        total = l2 if phase == PHASES[0] else l1 + l2 + config.gradient_weight * (g1 + g2)
        parts = {"l2": float(l2.detach()), "l1": float(l1.detach()), "grad_l2": float(g2.detach()),
                 "grad_l1": float(g1.detach()), "phase": float(PHASES.index(phase))}
        return total, parts

    return loss


class EstimatorSampler(Sampler):
    """Training samples: ``sample(k) -> (mprage (1, X, Y, Z), targets (5, X, Y, Z))`` (maps + mask)."""

    def __init__(self, config: EstimatorTrainConfig, device: torch.device | str = "cpu") -> None:
        from ..inference.preprocess import PreprocessConfig

        self.config = config
        self.data = config.data
        self.device = torch.device(device)
        self.preprocessing = PreprocessConfig.from_dict(config.data.preprocessing)
        self.multiple = int(np.prod(config.network.strides))

    @cached_property
    def map_sets(self) -> list[dict[str, torch.Tensor]]:
        from ..io import load_map_set

        sets = []
        for folder in map_set_folders(self.data.map_sets):
            map_set = load_map_set(folder=folder)
            missing = [k for k in ESTIMATOR_MAPS if k not in map_set.maps]
            if missing:
                raise InputError(f"the estimator needs {', '.join(ESTIMATOR_MAPS)} maps; missing {', '.join(missing)}",
                                 folder)
            sets.append({k: torch.from_numpy(v).to(self.device) for k, v in map_set.maps.items()})
        return sets

    def check_data(self) -> None:
        """Read and check every map set or label map (errors name the folder or file), before a run writes
        anything."""
        _ = self.map_sets if self.data.labels is None else self.label_maps

    @cached_property
    def label_maps(self) -> list[torch.Tensor]:
        """The label maps of ``data.labels`` (validated against the priors), for qSynth subjects."""
        from ..datasets import label_files, read_label_map

        return [torch.from_numpy(read_label_map(path, self.priors).labels).to(self.device)
                for path in label_files(self.data.labels)]

    @cached_property
    def priors(self) -> Any:
        from ..generators.priors import load_priors

        return load_priors(self.data.priors)

    @cached_property
    def _augment_config(self) -> Any:
        from ..generators.augment import AugmentConfig

        options = dict(self.data.augment)
        options.setdefault("crop", self.data.patch_size)
        options.setdefault("noise_prob", 0.0)  # noise is already in the simulation
        return AugmentConfig.from_dict(options)

    def _brain_box(self, labels: torch.Tensor) -> tuple[list[int], list[int]] | None:
        """Bounding box of the brain classes: crops are centred in it (a whole head's 48³ crops are otherwise
        mostly air, neck and scalp, and the estimator learns the brain from few voxels)."""
        values = [self.priors.label_of(n) for n in BRAIN if n in self.priors.names]
        brain = torch.isin(labels, torch.tensor(values, device=labels.device))
        idx = torch.nonzero(brain)
        if idx.numel() == 0:
            return None
        return idx.min(0).values.tolist(), idx.max(0).values.tolist()

    def _maps(self, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], Any, torch.Tensor | None]:
        """One subject's maps, the augmentation draw, and (labels only) the loss mask on the crop grid.

        With ``data.map_sets``: a map set, spatially augmented later together with its MPRAGE.  With
        ``data.labels``: the labels go onto the crop grid first (nearest), then a qSynth subject is painted on
        them, so a crop costs what a crop costs and the maps are sharp at tissue borders.  The loss mask is
        every tissue but air and compact bone (:data:`UNMEASURED`), whose R2* no MPRAGE can tell from air.
        """
        from ..generators.augment import apply_spatial, draw_augment
        from ..generators.qsynth import apply_maps, draw_maps

        if self.data.labels is None:
            maps = self.map_sets[int(rng.integers(len(self.map_sets)))]
            aug = draw_augment(tuple(maps["pd"].shape), self._augment_config, int(rng.integers(0, 2**62)))
            return maps, aug, None
        labels = self.label_maps[int(rng.integers(len(self.label_maps)))]
        aug = draw_augment(tuple(labels.shape), self._augment_config, int(rng.integers(0, 2**62)),
                           focus=self._brain_box(labels))
        background = self.priors.background_label
        cropped = apply_spatial(labels - background, aug.spatial)
        draw = draw_maps(self.priors, torch.Generator().manual_seed(int(rng.integers(0, 2**62))))
        cropped = cropped + background
        unmeasured = [self.priors.label_of(n) for n in UNMEASURED if n in self.priors.names]
        measured = ~torch.isin(cropped, torch.tensor(unmeasured, device=cropped.device))
        return apply_maps(cropped, self.priors, draw), aug, measured

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..generators.augment import apply_intensity, apply_spatial_keyed
        from ..generators.qsynth import draw_qatlas_mprage
        from ..physics import rescale_field_strength, simulate

        rng = np.random.default_rng(sample_seed(self.config.loop.seed, index))
        maps, aug, mask = self._maps(rng)
        draw, b0 = draw_qatlas_mprage(torch.Generator().manual_seed(int(rng.integers(0, 2**62))))
        r1, r2s = rescale_field_strength(maps["r1"], maps["r2s"], self.data.b0_ref, b0)
        image = simulate("mprage", {**maps, "r1": r1, "r2s": r2s}, snr=self.data.snr,
                         seed=int(rng.integers(0, 2**31 - 1)), **draw.params).to(torch.float32)
        mask = maps["pd"] > 0 if mask is None else mask
        targets = torch.stack([maps[k] for k in ESTIMATOR_MAPS] + [mask.to(maps["pd"].dtype)]).to(torch.float32)
        if self.data.labels is None:  # map sets: the spatial augmentation follows the simulation
            moved = apply_spatial_keyed({"image": image, "targets": targets}, aug.spatial)
            image, targets = moved["image"], moved["targets"]
            targets[4] = (targets[4] > 0.5).to(targets.dtype)
        image = apply_intensity(image, aug.intensity, foreground=targets[4] > 0)
        image = normalise(image, self.preprocessing)

        shape = self.data.patch_size or padded_shape(image.shape[-3:], self.multiple)
        offset = [int(rng.integers(0, max(s - w, 0) + 1)) for s, w in zip(image.shape[-3:], shape, strict=True)]
        return fit_shape(image[None], shape, offset), fit_shape(targets, shape, offset)


def train_estimator(
    config: EstimatorTrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a qATLAS estimator; returns the exported model file ``out_dir/model.pt``."""
    from .loop import resolve_device, train_with_config

    device = resolve_device(device)
    info = {"b0_ref": config.data.b0_ref}
    return train_with_config(config, out_dir, EstimatorSampler(config, device),
                             build_model=lambda: build_estimator(config.network),
                             loss=estimator_loss(config.loss, config.loop.iterations), classes=ESTIMATOR_MAPS,
                             info=info, resume=resume, device=device, progress=progress)
