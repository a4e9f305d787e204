"""Network configurations and builders for lesion segmentation, qMRI estimation and MWF estimation.

Three networks, each described by a small frozen config dataclass that round-trips through a plain dict
(so it can be stored in a model file, see :mod:`qmricore.models.model_file`):

``SegmenterConfig`` / :func:`build_segmenter` (SPEC §8)
    ``monai.networks.nets.UNet`` with PReLU, instance norm and one residual unit per block
    (``num_res_units=1``).  Output: one logit channel per class, in the order of
    :attr:`SegmenterConfig.classes`; the lesion is always the last class.

``EstimatorConfig`` / :func:`build_estimator` (SPEC §7, qATLAS)
    A MONAI U-Net with 5 stages, channels (24, 48, 96, 192, 384), two residual units per stage
    (MONAI's ``num_res_units=2``: every encoder stage is a residual unit of two conv-norm-act
    sub-units), GELU, instance norm, dropout 0.1 and *linear* upsampling.  MONAI's ``UNet`` only
    upsamples with transposed convolutions, so :class:`LinearUpsamplingUNet` subclasses it and
    replaces each decoder's transposed convolution by trilinear interpolation
    (``monai.networks.blocks.UpSample``, mode "nontrainable") followed by a stride-1 convolution;
    everything else (encoder, skip connections, residual units) is MONAI's own code.  An
    :class:`EstimatorHead` turns the 4 output channels into physical maps (see its docstring).

``MWFNetConfig`` / :func:`build_mwf_net` (SPEC §14, SynthMap)
    A small fully convolutional network, no down-sampling: a multi-echo series normalised per voxel
    (:func:`qmricore.mwf.cnn.normalise_echoes`) in, the myelin water fraction out.  A 1×1×1 layer mixes the
    echoes, ``context_layers`` 3×3×3 layers pool neighbouring voxels (the spatial prior NNLS lacks),
    ``voxel_layers`` 1×1×1 layers map to ``mwf_max·sigmoid``.  The echo count and spacing it was trained for
    are part of its config: a model serves one protocol.

Sizes are configuration: tests build the same classes with channels (4, 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.nets import UNet
from torch import nn

from ..errors import ParameterError
from ..ldm.images import LDMImagesConfig, build_ldm_images
from ..ldm.models import LDMMasksConfig, build_ldm_masks
from ..serialise import ModelSettings

#: Class names per class set (SPEC §8).  The lesion is the last class of every set.
CLASS_SETS: dict[str, tuple[str, ...]] = {
    "binary": ("background", "lesion"),
    "tissue": ("background", "gm", "wm", "gm_wm_pv", "csf", "lesion"),
}

#: Estimator output channels, in order (SPEC §3 keys).
ESTIMATOR_MAPS: tuple[str, ...] = ("pd", "r1", "r2s", "mt")

#: Physical value at logit 0 for the exponential heads: PD in percent water (p.u.), R1 and R2* in 1/s.
#: Roughly white-matter values at 3 T, so an untrained network starts near tissue values.
DEFAULT_MAP_SCALES: dict[str, float] = {"pd": 70.0, "r1": 1.0, "r2s": 20.0}


def _check_channels(channels: tuple[int, ...], strides: tuple[int, ...], what: str) -> None:
    if len(channels) < 2 or any(int(c) < 1 for c in channels):
        raise ParameterError(f"{what}: channels must be at least two positive integers, got {channels}")
    if len(strides) != len(channels) - 1 or any(int(s) < 1 for s in strides):
        raise ParameterError(f"{what}: strides must be {len(channels) - 1} positive integers, got {strides}")


@dataclass(frozen=True)
class SegmenterConfig(ModelSettings):
    """Lesion segmentation U-Net (SPEC §8).

    Parameters
    ----------
    classes
        ``"binary"`` (background, lesion) or ``"tissue"`` (background, GM, WM, GM/WM PV, CSF, lesion).
    in_channels
        Input channels (1: each modality is segmented on its own and the logits are averaged).
    channels
        Feature channels per stage, top first.
    strides
        Downsampling stride between stages; default 2 everywhere.
    num_res_units
        Residual sub-units per block (SPEC: one).
    act, norm
        MONAI layer-factory names (SPEC: PReLU, instance norm).
    dropout
        Dropout probability.
    kernel_size, up_kernel_size
        Convolution kernel sizes of the encoder/residual units and of the decoder's transposed convolutions.
    bias
        Convolutions have a bias.
    adn_ordering
        Order of norm (N), dropout (D) and activation (A) after each convolution (MONAI's ``adn_ordering``).

    The last four are MONAI ``UNet``'s own defaults; they are stored so that a model file describes its
    constructor completely (e.g. an imported SynthStroke network, :mod:`qmricore.models.synthstroke`).
    """

    classes: str = "binary"
    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] | None = None
    num_res_units: int = 1
    act: str = "PRELU"
    norm: str = "INSTANCE"
    dropout: float = 0.0
    kernel_size: int = 3
    up_kernel_size: int = 3
    bias: bool = True
    adn_ordering: str = "NDA"

    def __post_init__(self) -> None:
        if self.classes not in CLASS_SETS:
            raise ParameterError(f"SegmenterConfig: classes must be one of {sorted(CLASS_SETS)}, got {self.classes!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.strides is None:
            object.__setattr__(self, "strides", (2,) * (len(self.channels) - 1))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        _check_channels(self.channels, self.strides, "SegmenterConfig")
        if self.in_channels < 1 or self.num_res_units < 0 or not 0.0 <= self.dropout < 1.0:
            raise ParameterError("SegmenterConfig: need in_channels >= 1, num_res_units >= 0, 0 <= dropout < 1")
        if self.kernel_size < 1 or self.up_kernel_size < 1 or self.kernel_size % 2 == 0 or self.up_kernel_size % 2 == 0:
            raise ParameterError("SegmenterConfig: kernel_size and up_kernel_size must be odd positive integers")
        if sorted(self.adn_ordering) != sorted(set(self.adn_ordering)) or not set(self.adn_ordering) <= set("NDA"):
            raise ParameterError(f"SegmenterConfig: adn_ordering must be letters of 'NDA', got {self.adn_ordering!r}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the output channels, in order."""
        return CLASS_SETS[self.classes]

    @property
    def lesion_index(self) -> int:
        """Channel index of the lesion class."""
        return self.class_names.index("lesion")


@dataclass(frozen=True)
class EstimatorConfig(ModelSettings):
    """qATLAS estimator U-Net (SPEC §7): one MPRAGE in, PD/R1/R2*/MT maps out.

    Parameters
    ----------
    in_channels
        Input channels (one MPRAGE).
    channels
        Feature channels per stage, top first (SPEC: 24, 48, 96, 192, 384).
    strides
        Downsampling stride between stages; default 2 everywhere.
    num_res_units
        Residual sub-units per encoder stage (SPEC: two).
    act, norm
        MONAI layer-factory names (SPEC: GELU, instance norm).
    dropout
        Dropout probability (SPEC: 0.1).
    scales
        Physical value at logit 0 for the exponential heads (PD p.u., R1 1/s, R2* 1/s).
    log_clamp
        The PD/R1/R2* logits are clamped to ``[-log_clamp, log_clamp]`` before ``exp``.
    """

    in_channels: int = 1
    channels: tuple[int, ...] = (24, 48, 96, 192, 384)
    strides: tuple[int, ...] | None = None
    num_res_units: int = 2
    act: str = "GELU"
    norm: str = "INSTANCE"
    dropout: float = 0.1
    scales: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAP_SCALES))
    log_clamp: float = 6.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.strides is None:
            object.__setattr__(self, "strides", (2,) * (len(self.channels) - 1))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        _check_channels(self.channels, self.strides, "EstimatorConfig")
        if set(self.scales) != set(DEFAULT_MAP_SCALES) or any(float(v) <= 0 for v in self.scales.values()):
            raise ParameterError(f"EstimatorConfig: scales need positive pd, r1, r2s, got {self.scales}")
        if self.log_clamp <= 0 or self.in_channels < 1 or not 0.0 <= self.dropout < 1.0:
            raise ParameterError("EstimatorConfig: need log_clamp > 0, in_channels >= 1, 0 <= dropout < 1")

    @property
    def map_names(self) -> tuple[str, ...]:
        """Names of the output channels, in order."""
        return ESTIMATOR_MAPS


@dataclass(frozen=True)
class MWFNetConfig(ModelSettings):
    """CNN myelin-water-fraction estimator (SPEC §14).

    Parameters
    ----------
    n_echoes, te
        The protocol the network serves: echo count and echo spacing (s).
    width
        Feature channels of every hidden layer.
    context_layers, voxel_layers
        Number of 3×3×3 (spatial context) and 1×1×1 (per-voxel) hidden layers.
    mwf_max
        Output range ``[0, mwf_max]`` (the SynthMap prior's ceiling).
    """

    n_echoes: int = 32
    te: float = 0.010
    width: int = 64
    context_layers: int = 2
    voxel_layers: int = 2
    mwf_max: float = 0.5

    def __post_init__(self) -> None:
        if self.n_echoes < 1 or self.width < 1 or self.context_layers < 0 or self.voxel_layers < 0:
            raise ParameterError("MWFNetConfig: need n_echoes >= 1, width >= 1 and layer counts >= 0")
        if not 0 < self.te <= 1.0 or not 0 < self.mwf_max <= 1.0:
            raise ParameterError(f"MWFNetConfig: need 0 < te <= 1 s and 0 < mwf_max <= 1, got {self.te}, "
                                 f"{self.mwf_max}")

    @property
    def strides(self) -> tuple[int, ...]:
        """No down-sampling: any input size works."""
        return ()

    @property
    def map_names(self) -> tuple[str, ...]:
        return ("mwf",)


class MWFNet(nn.Module):
    """:class:`MWFNetConfig`'s network: ``forward(echoes (B, n_echoes, X, Y, Z)) -> mwf (B, 1, X, Y, Z)``."""

    def __init__(self, config: MWFNetConfig) -> None:
        super().__init__()
        w = config.width
        layers: list[nn.Module] = [nn.Conv3d(config.n_echoes, w, 1), nn.GELU()]
        for _ in range(config.context_layers):
            layers += [nn.Conv3d(w, w, 3, padding=1), nn.GELU()]
        for _ in range(config.voxel_layers):
            layers += [nn.Conv3d(w, w, 1), nn.GELU()]
        layers.append(nn.Conv3d(w, 1, 1))
        self.body = nn.Sequential(*layers)
        self.mwf_max = float(config.mwf_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mwf_max * torch.sigmoid(self.body(x))


class LinearUpsamplingUNet(UNet):
    """MONAI ``UNet`` whose decoder upsamples by trilinear interpolation instead of transposed convolutions.

    Each decoder layer is ``UpSample(nontrainable, linear) -> Convolution(stride 1) -> ResidualUnit``, the
    same as MONAI's ``UNet._get_up_layer`` with the transposed convolution split into interpolation + conv.
    """

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        layers: list[nn.Module] = []
        if strides != 1:
            layers.append(
                UpSample(
                    self.dimensions,
                    scale_factor=strides,
                    mode="nontrainable",
                    pre_conv=None,
                    interp_mode="linear",
                    align_corners=False,
                )
            )
        layers.append(
            Convolution(
                self.dimensions,
                in_channels,
                out_channels,
                strides=1,
                kernel_size=self.up_kernel_size,
                act=self.act,
                norm=self.norm,
                dropout=self.dropout,
                bias=self.bias,
                conv_only=is_top and self.num_res_units == 0,
                adn_ordering=self.adn_ordering,
            )
        )
        if self.num_res_units > 0:
            layers.append(
                ResidualUnit(
                    self.dimensions,
                    out_channels,
                    out_channels,
                    strides=1,
                    kernel_size=self.kernel_size,
                    subunits=1,
                    act=self.act,
                    norm=self.norm,
                    dropout=self.dropout,
                    bias=self.bias,
                    last_conv_only=is_top,
                    adn_ordering=self.adn_ordering,
                )
            )
        return nn.Sequential(*layers)


class EstimatorHead(nn.Module):
    """Turn 4 logit channels into physical maps, channel order :data:`ESTIMATOR_MAPS`.

    ``pd = scales["pd"]·exp(clamp(z0))`` (percent water), ``r1 = scales["r1"]·exp(clamp(z1))`` (1/s),
    ``r2s = scales["r2s"]·exp(clamp(z2))`` (1/s), where ``clamp`` limits logits to ``[-log_clamp, log_clamp]``
    (so values stay finite and positive: with the defaults PD in [0.17, 28 000] p.u.), and
    ``mt = 100·sigmoid(z3)`` in percent units [0, 100].
    """

    def __init__(self, scales: Mapping[str, float], log_clamp: float) -> None:
        super().__init__()
        scale = torch.tensor([float(scales[k]) for k in ("pd", "r1", "r2s")], dtype=torch.float32)
        self.register_buffer("scale", scale.view(1, 3, 1, 1, 1), persistent=False)
        self.log_clamp = float(log_clamp)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(ESTIMATOR_MAPS):
            raise ValueError(f"EstimatorHead expects {len(ESTIMATOR_MAPS)} channels, got {logits.shape[1]}")
        positive = self.scale.to(logits) * torch.exp(logits[:, :3].clamp(-self.log_clamp, self.log_clamp))
        mt = 100.0 * torch.sigmoid(logits[:, 3:])
        return torch.cat([positive, mt], dim=1)


class Estimator(nn.Module):
    """U-Net + :class:`EstimatorHead`: ``forward(mprage)`` returns maps ``(B, 4, X, Y, Z)``.

    ``logits(x)`` returns the raw U-Net output (before the head), e.g. for losses in logit space.
    """

    def __init__(self, unet: nn.Module, head: EstimatorHead) -> None:
        super().__init__()
        self.unet = unet
        self.head = head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x))


def split_maps(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split an estimator output ``(B, 4, ...)`` into ``{"pd", "r1", "r2s", "mt"}`` tensors ``(B, ...)``."""
    return {name: maps[:, i] for i, name in enumerate(ESTIMATOR_MAPS)}


def build_segmenter(config: SegmenterConfig) -> nn.Module:
    """MONAI ``UNet`` for ``config``; output ``(B, len(config.class_names), X, Y, Z)`` logits."""
    return UNet(
        spatial_dims=3,
        in_channels=config.in_channels,
        out_channels=len(config.class_names),
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        act=config.act,
        norm=config.norm,
        dropout=config.dropout,
        kernel_size=config.kernel_size,
        up_kernel_size=config.up_kernel_size,
        bias=config.bias,
        adn_ordering=config.adn_ordering,
    )


def build_estimator(config: EstimatorConfig) -> Estimator:
    """:class:`Estimator` for ``config`` (linear-upsampling U-Net + physical head)."""
    unet = LinearUpsamplingUNet(
        spatial_dims=3,
        in_channels=config.in_channels,
        out_channels=len(ESTIMATOR_MAPS),
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        act=config.act,
        norm=config.norm,
        dropout=config.dropout,
    )
    return Estimator(unet, EstimatorHead(config.scales, config.log_clamp))


def build_mwf_net(config: MWFNetConfig) -> MWFNet:
    """:class:`MWFNet` for ``config``."""
    return MWFNet(config)


NetworkConfig = SegmenterConfig | EstimatorConfig | MWFNetConfig | LDMMasksConfig | LDMImagesConfig
#: Model-file kind -> (config class, builder).
NETWORK_KINDS: dict[str, tuple[type, Any]] = {
    "segmenter": (SegmenterConfig, build_segmenter),
    "estimator": (EstimatorConfig, build_estimator),
    "mwf": (MWFNetConfig, build_mwf_net),
    "ldm_masks": (LDMMasksConfig, build_ldm_masks),  # qmricore.ldm: autoencoder + latent diffusion (SPEC §14)
    "ldm_images": (LDMImagesConfig, build_ldm_images),  # qmricore.ldm: SPADE autoencoder + SPADE diffusion
}


def kind_of(config: NetworkConfig) -> str:
    """The model-file kind of a network config."""
    for kind, (cls, _) in NETWORK_KINDS.items():
        if isinstance(config, cls):
            return kind
    raise ParameterError(f"not a network config: {type(config).__name__}")


def build_network(kind: str, config: NetworkConfig) -> nn.Module:
    """Build a network of ``kind`` (:data:`NETWORK_KINDS`) from its config."""
    if kind not in NETWORK_KINDS or not isinstance(config, NETWORK_KINDS[kind][0]):
        raise ParameterError(f"build_network: kind {kind!r} does not match config {type(config).__name__}")
    return NETWORK_KINDS[kind][1](config)


def config_from_dict(kind: str, data: Mapping[str, Any]) -> NetworkConfig:
    """Config dataclass for ``kind`` (:data:`NETWORK_KINDS`) from its ``to_dict()`` form."""
    if kind not in NETWORK_KINDS:
        raise ParameterError(f"unknown network kind {kind!r} (expected one of {', '.join(NETWORK_KINDS)})")
    return NETWORK_KINDS[kind][0].from_dict(data)
