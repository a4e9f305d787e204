"""Mask- and image-generator training (SPEC §14, seed 002; docs/ldm.md): two stages each, through the shared loop.

One run trains one stage (``loss.stage``), so each stage has its own output folder, checkpoint, log and model file,
and resumes on its own:

``autoencoder``
    ``LDMMasks.autoencoder`` learns to reconstruct one-hot label maps: cross-entropy + ``dice_weight`` · soft Dice
    + ``kl_weight`` · KL.  The UNet and the condition MLP are frozen (untrained) in this stage's model file.
``diffusion``
    The autoencoder of ``data.autoencoder`` (the first stage's ``model.pt``) is loaded and frozen; the latent scale
    factor is set to ``1 / std`` of the latents of :data:`CALIBRATION` fixed samples; the UNet and the condition
    MLP learn to predict the noise (MSE), each sample conditioned on its measured ventricle volume, or on the null
    condition with probability ``loss.null_prob``.

Sample ``k`` (a pure function of ``(loop.seed, k)``) is :meth:`qmricore.ldm.labels.MaskSet.sample`; the noise,
timestep and null draws of the diffusion stage come from torch's generator, which the loop seeds and checkpoints.

The image generator (:mod:`qmricore.ldm.images`, ``task = "ldm_images"``) trains the same two stages on the same
label maps, each rendered as a qSynth image of ``network.preset`` with a new subject (maps seeded from the
sample's seed) and normalised (:func:`~qmricore.ldm.images.normalise_image`): the autoencoder with L1 + KL, then the
SPADE UNet on its frozen latents, conditioned on the label map.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..ldm.labels import LDM_CLASSES, MaskSet
from ..ldm.models import LDMMasks, build_ldm_masks, latent_scale
from .config import LDMMasksTrainConfig
from .loop import Sampler

#: Samples that set the latent scale factor (indices far above any run's steps, so not training samples).
CALIBRATION = range(10**9, 10**9 + 8)


class MaskSampler(Sampler):
    """Training samples: ``batch(indices) -> (one-hot (B, C, X, Y, Z) float32, classes (B, X, Y, Z) int64)``."""

    def __init__(self, config: LDMMasksTrainConfig) -> None:
        from ..inference.preprocess import PreprocessConfig

        self.config = config
        self.preprocessing = PreprocessConfig(normalisation="none", spacing=config.network.spacing_mm)

    @cached_property
    def mask_set(self) -> MaskSet:
        from ..datasets import label_files

        network = self.config.network
        return MaskSet(label_files(self.config.data.labels), self.config.data.mask_set, network.shape,
                       network.spacing_mm)

    def check_data(self) -> None:
        """Read every label map and derive its ventricles (errors name the file) before a run writes anything."""
        _ = self.mask_set.anatomies

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        classes, _ = self.mask_set.sample(index, self.config.loop.seed)
        target = torch.from_numpy(classes).long()
        onehot = torch.nn.functional.one_hot(target, len(LDM_CLASSES)).permute(3, 0, 1, 2).float()
        return onehot, target


def autoencoder_loss(kl_weight: float, dice_weight: float) -> Any:
    """Loss of the autoencoder stage on the packed outputs of :class:`~qmricore.ldm.models.LDMMasks`."""

    def loss(outputs: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = outputs[:, :-1].reshape(len(targets), len(LDM_CLASSES), *targets.shape[1:])
        kl = outputs[:, -1].mean()
        ce = torch.nn.functional.cross_entropy(logits, targets)
        prob = logits.softmax(1)
        onehot = torch.nn.functional.one_hot(targets, len(LDM_CLASSES)).permute(0, 4, 1, 2, 3).to(prob)
        dims = (0, 2, 3, 4)
        dice = 1 - ((2 * (prob * onehot).sum(dims) + 1e-5) / (prob.sum(dims) + onehot.sum(dims) + 1e-5)).mean()
        total = ce + dice_weight * dice + kl_weight * kl
        return total, {"ce": float(ce.detach()), "dice": float(dice.detach()), "kl": float(kl.detach())}

    return loss


def diffusion_loss(outputs: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE between the predicted noise (first half of the channels) and the true noise (second half)."""
    half = outputs.shape[1] // 2
    mse = torch.nn.functional.mse_loss(outputs[:, :half], outputs[:, half:])
    return mse, {"mse": float(mse.detach())}


def load_autoencoder(path: str | os.PathLike[str], model: torch.nn.Module, kind: str = "ldm_masks") -> None:
    """Copy the autoencoder weights of the ``kind`` model file ``path`` into ``model`` (they must fit)."""
    from ..models.model_file import load_model

    source = load_model(path)
    if source.meta.kind != kind:
        what = "a mask generator" if kind == "ldm_masks" else "an image generator"
        raise InputError(f"data.autoencoder: a model of kind {source.meta.kind!r}, not {what} ({kind!r})", path)
    try:
        model.autoencoder.load_state_dict(source.network.autoencoder.state_dict(), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:160]
        raise InputError(f"data.autoencoder: its autoencoder differs from the config's ({first})", path) from error


def stage_model(config: Any, build: Callable[[Any], torch.nn.Module], sampler: Sampler, kind: str,
                calibration_images: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.nn.Module]:
    """The loop's ``build_model`` for ``config.loss.stage``.  For the diffusion stage the first stage's
    autoencoder (``data.autoencoder``, a ``kind`` model) is read and checked now, before anything is written, and
    the latent scale is set from the :data:`CALIBRATION` samples (``calibration_images`` picks the images from a
    batch's inputs); every build then loads both and freezes what the stage does not train."""
    from .loop import seed_everything

    stage = config.loss.stage
    prepared: dict[str, Any] = {}
    if stage == "diffusion":
        seed_everything(config.loop.seed)
        probe = build(config.network)
        load_autoencoder(config.data.autoencoder, probe, kind=kind)
        sampler.check_data()
        images = calibration_images(sampler.batch(list(CALIBRATION))[0])
        prepared = {"autoencoder": probe.autoencoder.state_dict(), "scale": latent_scale(probe, images)}

    def build_model() -> torch.nn.Module:
        model = build(config.network)
        if prepared:
            model.autoencoder.load_state_dict(prepared["autoencoder"])
            model.scale_factor.fill_(prepared["scale"])
        model.freeze_for(stage)
        return model

    return build_model


def train_ldm_masks(
    config: LDMMasksTrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) one stage of the mask generator; returns ``out_dir/model.pt``."""
    from .loop import resolve_device, train_with_config

    device = resolve_device(device)
    stage = config.loss.stage
    sampler = MaskSampler(config)

    def build(network: Any) -> LDMMasks:
        model = build_ldm_masks(network)
        model.null_prob = config.loss.null_prob
        return model

    build_model = stage_model(config, build, sampler, "ldm_masks", lambda images: images)
    loss = autoencoder_loss(config.loss.kl_weight, config.loss.dice_weight) if stage == "autoencoder" \
        else diffusion_loss
    info = {"stage": stage, "autoencoder": config.data.autoencoder}
    return train_with_config(config, out_dir, sampler, build_model=build_model, loss=loss, classes=LDM_CLASSES,
                             info=info, resume=resume, device=device, progress=progress)


class ImageSampler(MaskSampler):
    """Training samples of the image generator: ``batch(indices) -> ([image, one-hot] (B, 1 + C, X, Y, Z), image
    (B, 1, X, Y, Z))``."""

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..datasets import sample_seed
        from ..ldm.images import normalise_image
        from ..ldm.labels import to_labels
        from ..ldm.sample import render

        onehot, classes = super().sample(index)
        labels = to_labels(classes.numpy(), self.mask_set.priors)
        image, _ = render(labels, self.config.network.preset, sample_seed(self.config.loop.seed, index) % 2**31,
                          self.mask_set.priors)
        image = torch.from_numpy(normalise_image(image, classes.numpy() > 0))[None]
        return torch.cat([image, onehot]), image


def image_autoencoder_loss(kl_weight: float) -> Any:
    """L1 of the reconstruction + ``kl_weight`` · KL on the packed outputs of
    :class:`~qmricore.ldm.images.LDMImages`."""

    def loss(outputs: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        recon = outputs[:, :-1].reshape(targets.shape)
        kl = outputs[:, -1].mean()
        l1 = (recon - targets).abs().mean()
        return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}

    return loss


def train_ldm_images(
    config: Any,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) one stage of the image generator; returns ``out_dir/model.pt``."""
    from ..ldm.images import build_ldm_images
    from .loop import resolve_device, train_with_config

    device = resolve_device(device)
    stage = config.loss.stage
    sampler = ImageSampler(config)
    build_model = stage_model(config, build_ldm_images, sampler, "ldm_images", lambda inputs: inputs[:, :1])
    loss = image_autoencoder_loss(config.loss.kl_weight) if stage == "autoencoder" else diffusion_loss
    info = {"stage": stage, "autoencoder": config.data.autoencoder, "preset": config.network.preset}
    return train_with_config(config, out_dir, sampler, build_model=build_model, loss=loss, classes=("image",),
                             info=info, resume=resume, device=device, progress=progress)
