"""The mask generator: one module holding the autoencoder, the conditioned latent diffusion UNet, the DDIM
settings and the latent scale factor (model kind ``ldm_masks``; docs/ldm.md).

:class:`LDMMasks` is MONAI's generative components put together:

``autoencoder``
    ``monai.networks.nets.AutoencoderKL``: one-hot label maps (``len(classes)`` channels on the working grid)
    to a latent of ``latent_channels`` channels, ``2**(len(ae_channels) - 1)`` times coarser per axis, and back
    to class logits.
``unet``
    ``monai.networks.nets.DiffusionModelUNet`` with ``with_conditioning``: predicts the noise of a noisy latent;
    the condition reaches it through cross-attention as one context token.
``condition``
    A small MLP from the condition vector ``[ventricle volume / reference_ml, flag]`` to that token.  The null
    condition (classifier-free guidance) is ``[0, 0]``: the flag says whether a volume is given.
``scale_factor``
    A buffer (so the model file carries it): latents are multiplied by it before diffusion, ``1 / std`` of the
    training latents, computed once when the diffusion stage starts.

``forward`` serves the shared training loop and depends on :attr:`LDMMasks.stage` (set by the trainer):
``"autoencoder"`` returns the logits flattened per sample with the KL term appended; ``"diffusion"`` encodes the
batch with the frozen autoencoder, measures each sample's ventricle volume (its condition), replaces the
condition by the null one with probability :attr:`LDMMasks.null_prob`, noises the latent at a random timestep
and returns the predicted and the true noise concatenated on the channel axis.  Timesteps, noise and the null
draws come from torch's global generator, which the loop seeds and checkpoints (so resuming is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError
from ..serialise import ModelSettings
from .labels import LDM_CLASSES, VENTRICLES

STAGES = ("autoencoder", "diffusion")


@dataclass(frozen=True)
class LatentGeneratorConfig(ModelSettings):
    """What both latent generators (masks here, SPADE images in :mod:`.images`) are made of: the working grid,
    an autoencoder, a diffusion UNet and the noise schedule.  Each default lives here once.

    Parameters
    ----------
    classes
        Channel names (:data:`~qmricore.ldm.labels.LDM_CLASSES`; stored so a model file describes itself).
    shape, spacing_mm
        Working grid (voxels) and its isotropic voxel size (mm) of the generated label maps.
    ae_channels, ae_res_blocks, latent_channels
        Autoencoder feature channels per level, residual blocks per level, latent channels.
    unet_channels, unet_attention, unet_res_blocks, num_head_channels
        Diffusion UNet channels per level, attention per level, residual blocks, channels per attention head.
    norm_num_groups
        Group-norm groups of both networks (must divide every channel count).
    timesteps, schedule, beta_start, beta_end
        Noise schedule (MONAI scheduler names): training timesteps and beta range.
    """

    classes: tuple[str, ...] = LDM_CLASSES
    shape: tuple[int, int, int] = (40, 48, 40)
    spacing_mm: float = 4.0
    ae_channels: tuple[int, ...] = (16, 32, 32)
    ae_res_blocks: int = 1
    latent_channels: int = 3
    unet_channels: tuple[int, ...] = (32, 64)
    unet_attention: tuple[bool, ...] = (False, True)
    unet_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field_name in ("classes", "shape", "ae_channels", "unet_channels", "unet_attention"):
            object.__setattr__(self, field_name, tuple(getattr(self, field_name)))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.classes != LDM_CLASSES:
            raise ParameterError(f"{name}: classes must be {list(LDM_CLASSES)}, got {list(self.classes)}")
        if len(self.shape) != 3 or min(self.shape) < 1 or not self.spacing_mm > 0:
            raise ParameterError(f"{name}: need 3 positive shape values and spacing_mm > 0")
        if len(self.ae_channels) < 1 or len(self.unet_channels) < 1 or len(self.unet_attention) != len(
                self.unet_channels):
            raise ParameterError(f"{name}: need ae_channels, unet_channels and one unet_attention per level")
        channels = (*self.ae_channels, *self.unet_channels)
        if any(c < 1 or c % self.norm_num_groups for c in channels):
            raise ParameterError(f"{name}: norm_num_groups {self.norm_num_groups} must divide every channel "
                                 f"count {list(channels)}")
        attended = [c for c, a in zip(self.unet_channels, self.unet_attention, strict=True) if a]
        for c in [*attended, self.unet_channels[-1]]:  # the UNet's middle block always attends
            if self.num_head_channels < 1 or c % self.num_head_channels:
                raise ParameterError(f"{name}: num_head_channels {self.num_head_channels} must divide the "
                                     f"{c} channels of an attention level (and of the last level)")
        factor = self.downsampling * 2 ** (len(self.unet_channels) - 1)
        if any(s % factor for s in self.shape):
            raise ParameterError(f"{name}: shape {list(self.shape)} must be a multiple of {factor} on every "
                                 "axis (autoencoder and UNet downsampling)")
        if min(self.ae_res_blocks, self.unet_res_blocks, self.latent_channels, self.timesteps) < 1:
            raise ParameterError(f"{name}: block counts, latent_channels and timesteps must be >= 1")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ParameterError(f"{name}: need 0 < beta_start < beta_end < 1")

    @property
    def downsampling(self) -> int:
        """Working grid voxels per latent voxel, per axis."""
        return 2 ** (len(self.ae_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(latent_channels, X, Y, Z)`` of one latent."""
        return (self.latent_channels, *(s // self.downsampling for s in self.shape))

    @property
    def strides(self) -> tuple[int, ...]:
        """The model file's window check: a generator has no input window."""
        return ()


@dataclass(frozen=True)
class LDMMasksConfig(LatentGeneratorConfig):
    """Mask generator (SPEC §14, seed 002): :class:`LatentGeneratorConfig` and the condition.

    Parameters
    ----------
    reference_ml
        The condition is ``ventricle volume (mL) / reference_ml`` (keeps it near 1).
    context_dim
        Width of the condition token.
    """

    reference_ml: float = 50.0
    context_dim: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reference_ml > 0 or self.context_dim < 1:
            raise ParameterError("LDMMasksConfig: need reference_ml > 0 and context_dim >= 1")

    @property
    def map_names(self) -> tuple[str, ...]:
        return self.classes


def make_scheduler(config: LatentGeneratorConfig) -> Any:
    """MONAI ``DDIMScheduler`` of the config's noise schedule (noising for training, DDIM steps for sampling)."""
    from monai.networks.schedulers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=config.timesteps, schedule=config.schedule, beta_start=config.beta_start,
                         beta_end=config.beta_end, clip_sample=False)


def null_draw(batch: int, probability: float, device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Which samples of a batch train with the null condition: independent Bernoulli(``probability``) draws."""
    return torch.rand(batch, device=device, generator=generator) < probability


class LDMMasks(nn.Module):
    """:class:`LDMMasksConfig`'s mask generator (see the module docstring)."""

    def __init__(self, config: LDMMasksConfig) -> None:
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

        super().__init__()
        self.config = config
        n = len(config.classes)
        self.autoencoder = AutoencoderKL(
            spatial_dims=3, in_channels=n, out_channels=n, channels=config.ae_channels,
            num_res_blocks=config.ae_res_blocks, attention_levels=(False,) * len(config.ae_channels),
            latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=config.latent_channels, out_channels=config.latent_channels,
            channels=config.unet_channels, attention_levels=config.unet_attention,
            num_res_blocks=config.unet_res_blocks, num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups, with_conditioning=True, cross_attention_dim=config.context_dim)
        self.condition = nn.Sequential(nn.Linear(2, config.context_dim), nn.SiLU(),
                                       nn.Linear(config.context_dim, config.context_dim))
        self.register_buffer("scale_factor", torch.ones(()))
        self.scheduler = make_scheduler(config)
        self.stage = "diffusion"
        self.null_prob = 0.2
        self.last_null: torch.Tensor | None = None

    # -- pieces --------------------------------------------------------------------------------------------
    def ventricle_ml(self, onehot: torch.Tensor) -> torch.Tensor:
        """Ventricle volume (mL) per sample of one-hot maps ``(B, C, X, Y, Z)`` on the working grid."""
        return onehot[:, VENTRICLES].flatten(1).sum(1) * self.config.spacing_mm ** 3 / 1000.0

    def condition_vector(self, volume_ml: torch.Tensor, null: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 2)``: ``[volume / reference_ml, 1]``, or the null condition ``[0, 0]`` where ``null`` is True."""
        cond = torch.stack([volume_ml / self.config.reference_ml, torch.ones_like(volume_ml)], dim=1)
        if null is not None:
            cond = torch.where(null[:, None], torch.zeros_like(cond), cond)
        return cond

    def encode(self, onehot: torch.Tensor) -> torch.Tensor:
        """Scaled latent (the posterior mean times :attr:`scale_factor`)."""
        z_mu, _ = self.autoencoder.encode(onehot)
        return z_mu * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C, X, Y, Z)`` of scaled latents."""
        return self.autoencoder.decode(z / self.scale_factor)

    def eps(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise of noisy latents ``z`` at timesteps ``t`` under conditions ``cond (B, 2)``."""
        return self.unet(z, timesteps=t, context=self.condition(cond)[:, None, :])

    def guided_eps(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance: ``eps_null + guidance · (eps_cond − eps_null)``, in one batched evaluation."""
        both = self.eps(torch.cat([z, z]), torch.cat([t, t]), torch.cat([torch.zeros_like(cond), cond]))
        eps_null, eps_cond = both.chunk(2)
        return eps_null + guidance * (eps_cond - eps_null)

    def freeze_for(self, stage: str) -> None:
        """Train only the parts of ``stage`` (the others get no gradients, so DDP sees no unused parameters)."""
        if stage not in STAGES:
            raise ParameterError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        self.stage = stage
        self.autoencoder.requires_grad_(stage == "autoencoder")
        self.unet.requires_grad_(stage == "diffusion")
        self.condition.requires_grad_(stage == "diffusion")

    # -- training --------------------------------------------------------------------------------------------
    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        if self.stage == "autoencoder":
            logits, z_mu, z_sigma = self.autoencoder(onehot)
            kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1)
            return torch.cat([logits.flatten(1), kl[:, None]], dim=1)
        with torch.no_grad():
            z0 = self.encode(onehot)
            null = null_draw(len(onehot), self.null_prob, onehot.device)
            cond = self.condition_vector(self.ventricle_ml(onehot), null)
        noise = torch.randn_like(z0)
        t = torch.randint(0, self.config.timesteps, (len(z0),), device=z0.device)
        self.last_null = null
        return torch.cat([self.eps(self.scheduler.add_noise(z0, noise, t), t, cond), noise], dim=1)


def build_ldm_masks(config: LDMMasksConfig) -> LDMMasks:
    """:class:`LDMMasks` for ``config``."""
    return LDMMasks(config)


def latent_scale(model: nn.Module, inputs: torch.Tensor) -> float:
    """``1 / std`` of the unscaled latents of ``inputs`` (the LDM convention: unit-variance latents); ``model`` is
    either generator (anything with an ``autoencoder.encode``)."""
    with torch.no_grad():
        z_mu, _ = model.autoencoder.encode(inputs)
    std = float(z_mu.std())
    return 1.0 / std if std > 0 and math.isfinite(std) else 1.0
