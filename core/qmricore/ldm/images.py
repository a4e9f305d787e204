"""The image generator (issue 13 item 3): a SPADE autoencoder and a SPADE latent diffusion UNet, both conditioned
on a label map (model kind ``ldm_images``; docs/ldm.md).

:class:`LDMImages` holds

``autoencoder``
    ``monai.networks.nets.SPADEAutoencoderKL``: an image (1 channel) to a latent and back; its decoder's
    normalisation layers are modulated by the one-hot label map (SPADE), so the latent need not hold the anatomy.
``unet``
    ``monai.networks.nets.SPADEDiffusionModelUNet``: noise prediction on latents, every normalisation modulated by
    the label map (interpolated to each level's grid).
``scale_factor``
    As for the mask generator: latents times it have unit variance (computed when the diffusion stage starts).

One model serves one contrast: ``preset`` names the qSynth preset its training images were rendered with (a
qSynth subject per sample, :func:`qmricore.ldm.sample.render`), each image divided by the 99.5th percentile of its
brain voxels (so the generated images are relative intensities, brain ~0-1).  No adversarial or perceptual loss
(MONAI's tutorials add both): L1 + KL for the autoencoder, MSE of the noise for the UNet.

``forward(x)`` takes ``x = [image, one-hot labels]`` on the channel axis (one tensor, as the shared loop passes
it) and returns, by stage, the reconstruction flattened with the KL appended, or the predicted and true noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError
from .models import STAGES, LatentGeneratorConfig, make_scheduler

#: Percentile (of the brain voxels) an image is divided by.
NORM_PERCENTILE = 99.5


@dataclass(frozen=True)
class LDMImagesConfig(LatentGeneratorConfig):
    """Image generator: :class:`~qmricore.ldm.models.LatentGeneratorConfig` (sizes of both SPADE networks, the
    working grid, the noise schedule; no condition token: the label map is the condition) and the contrast.

    Parameters
    ----------
    preset
        qSynth preset (:func:`qmricore.protocols.preset`) the training images are rendered with.
    spade_channels
        Intermediate channels of the SPADE blocks.
    """

    preset: str = "MPRAGE ADNI-like"
    spade_channels: int = 32

    def __post_init__(self) -> None:
        from ..protocols import preset

        super().__post_init__()
        preset(self.preset)  # an unknown preset: ParameterError naming the choices
        if self.spade_channels < 1:
            raise ParameterError("LDMImagesConfig: spade_channels must be >= 1")

    @property
    def map_names(self) -> tuple[str, ...]:
        return ("image",)


class LDMImages(nn.Module):
    """:class:`LDMImagesConfig`'s image generator (see the module docstring)."""

    def __init__(self, config: LDMImagesConfig) -> None:
        from monai.networks.nets import SPADEAutoencoderKL, SPADEDiffusionModelUNet

        super().__init__()
        self.config = config
        n = len(config.classes)
        self.autoencoder = SPADEAutoencoderKL(
            spatial_dims=3, label_nc=n, in_channels=1, out_channels=1, channels=config.ae_channels,
            num_res_blocks=config.ae_res_blocks, attention_levels=(False,) * len(config.ae_channels),
            latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
            spade_intermediate_channels=config.spade_channels)
        self.unet = SPADEDiffusionModelUNet(
            spatial_dims=3, in_channels=config.latent_channels, out_channels=config.latent_channels, label_nc=n,
            channels=config.unet_channels, attention_levels=config.unet_attention,
            num_res_blocks=config.unet_res_blocks, num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups, spade_intermediate_channels=config.spade_channels)
        self.register_buffer("scale_factor", torch.ones(()))
        self.scheduler = make_scheduler(config)
        self.stage = "diffusion"

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        z_mu, _ = self.autoencoder.encode(image)
        return z_mu * self.scale_factor

    def decode(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale_factor, onehot)

    def eps(self, z: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.unet(z, timesteps=t, seg=onehot)

    def freeze_for(self, stage: str) -> None:
        if stage not in STAGES:
            raise ParameterError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        self.stage = stage
        self.autoencoder.requires_grad_(stage == "autoencoder")
        self.unet.requires_grad_(stage == "diffusion")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, onehot = x[:, :1], x[:, 1:]
        if self.stage == "autoencoder":
            recon, z_mu, z_sigma = self.autoencoder(image, onehot)
            kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1)
            return torch.cat([recon.flatten(1), kl[:, None]], dim=1)
        with torch.no_grad():
            z0 = self.encode(image)
        noise = torch.randn_like(z0)
        t = torch.randint(0, self.config.timesteps, (len(z0),), device=z0.device)
        return torch.cat([self.eps(self.scheduler.add_noise(z0, noise, t), t, onehot), noise], dim=1)


def build_ldm_images(config: LDMImagesConfig) -> LDMImages:
    """:class:`LDMImages` for ``config``."""
    return LDMImages(config)


def normalise_image(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``image`` divided by the :data:`NORM_PERCENTILE` percentile of its ``brain`` voxels (float32)."""
    values = image[brain] if brain.any() else image.reshape(-1)
    scale = float(np.percentile(values, NORM_PERCENTILE)) if values.size else 1.0
    return (image / (scale if scale > 0 else 1.0)).astype(np.float32)


@torch.no_grad()
def sample_image(model: LDMImages, onehot: torch.Tensor, seed: int, index: int, steps: int) -> np.ndarray:
    """One image ``(X, Y, Z)`` for the one-hot label map ``onehot (1, C, X, Y, Z)`` by DDIM (``eta = 0``), started
    from the noise of ``sample_seed(seed, index)`` (the mask generator's start noise uses the same seed; the two
    draws have different shapes and roles, and neither depends on the other)."""
    from ..datasets import sample_seed

    device = model.scale_factor.device
    scheduler = make_scheduler(model.config)
    scheduler.set_timesteps(min(steps, model.config.timesteps), device=device)
    generator = torch.Generator().manual_seed(sample_seed(seed, index) ^ 0x5EED)
    z = torch.randn((1, *model.config.latent_shape), generator=generator).to(device)
    onehot = onehot.to(device)
    for t in scheduler.timesteps:
        eps = model.eps(z, torch.full((1,), int(t), device=device, dtype=torch.long), onehot)
        z, _ = scheduler.step(eps, int(t), z)
    return model.decode(z, onehot)[0, 0].cpu().numpy().astype(np.float32)
