"""The qmricore model file: one torch file that holds a trained network and how to use it.

A model file is ``torch.save`` of a plain dict (loadable with ``torch.load(..., weights_only=True)``):

==================  ==========================================================================
key                 value
==================  ==========================================================================
``format``          ``"qmricore-model"``
``version``         ``1`` (:data:`FORMAT_VERSION`)
``kind``            ``"segmenter"``, ``"estimator"`` or ``"mwf"``
``network``         the network config's ``to_dict()`` (:mod:`qmricore.models.networks`)
``classes``         output channel names: class names (segmenter), ``["pd", "r1", "r2s", "mt"]`` or ``["mwf"]``
``preprocessing``   ``PreprocessConfig.to_dict()``: orientation, spacing (mm), intensity normalisation
``inference``       ``WindowConfig.to_dict()``: patch (voxels), overlap, sigma_scale, sw_batch_size
``code_version``    ``qmricore.__version__`` that wrote the file
``training``        free-form JSON-like dict (iterations, data mode, ...); may be empty
``origin``          optional: where the weights come from (name, source, licence, expected input); may be absent
``state_dict``      the network's ``state_dict()`` (tensors on the CPU)
==================  ==========================================================================

Files are written atomically (temporary file in the same folder, then ``os.replace``), so a reader
never sees a half-written model.  :func:`load_model` checks every key and raises
:class:`~qmricore.errors.InputError` naming the file for anything missing, corrupt or of another format.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import InputError, ParameterError
from ..inference.preprocess import PreprocessConfig
from ..inference.window import WindowConfig
from ..io import atomic_torch_save
from .networks import NETWORK_KINDS, NetworkConfig, SegmenterConfig, build_network, config_from_dict, kind_of

FORMAT_NAME = "qmricore-model"
FORMAT_VERSION = 1
KINDS = tuple(NETWORK_KINDS)
REQUIRED_KEYS = ("format", "version", "kind", "network", "classes", "preprocessing", "inference", "state_dict")


@dataclass(frozen=True)
class ModelMeta:
    """Everything in a model file except the weights."""

    kind: str
    network: NetworkConfig
    classes: tuple[str, ...]
    preprocessing: PreprocessConfig
    inference: WindowConfig
    code_version: str
    training: dict[str, Any]
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    """A network in eval mode on its device, with its metadata."""

    network: nn.Module
    meta: ModelMeta
    path: Path | None = None


def _classes_of(config: NetworkConfig) -> tuple[str, ...]:
    return config.class_names if isinstance(config, SegmenterConfig) else config.map_names


def model_payload(
    model: nn.Module,
    config: NetworkConfig,
    *,
    preprocessing: PreprocessConfig | None = None,
    inference: WindowConfig | None = None,
    training: Mapping[str, Any] | None = None,
    origin: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict that :func:`save_model` writes (``state_dict`` tensors copied to the CPU).

    ``model`` may be wrapped (``DistributedDataParallel``, ``torch.compile``): the wrapped module's
    weights are stored under its own names.
    """
    kind = kind_of(config)
    window = inference or WindowConfig()
    factor = math.prod(config.strides)
    if any(p % factor for p in window.patch):
        raise ParameterError(
            f"inference patch {window.patch} must be a multiple of the network's total stride {factor}"
        )
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    state = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "kind": kind,
        "network": config.to_dict(),
        "classes": list(_classes_of(config)),
        "preprocessing": (preprocessing or PreprocessConfig()).to_dict(),
        "inference": window.to_dict(),
        "code_version": __version__,
        "training": dict(training or {}),
        "origin": dict(origin or {}),
        "state_dict": state,
    }


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: NetworkConfig,
    *,
    preprocessing: PreprocessConfig | None = None,
    inference: WindowConfig | None = None,
    training: Mapping[str, Any] | None = None,
    origin: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its settings to ``path`` atomically; returns the path.

    Parameters
    ----------
    path
        Output file (conventionally ``*.pt``).
    model
        The network built by :func:`qmricore.models.networks.build_network` from ``config``.
    config
        Its network config (:data:`~qmricore.models.networks.NETWORK_KINDS`).
    preprocessing, inference
        Settings to store (defaults: :class:`~qmricore.inference.preprocess.PreprocessConfig`,
        :class:`~qmricore.inference.window.WindowConfig`).
    training
        Optional JSON-like information about the training run.
    origin
        Optional JSON-like description of where the weights come from (``name``, ``source``, ``licence``,
        ``input``, ...), e.g. for an imported model (:mod:`qmricore.models.synthstroke`); shown in model lists.
    """
    payload = model_payload(model, config, preprocessing=preprocessing, inference=inference, training=training,
                            origin=origin)
    return atomic_torch_save(payload, path)


def _read_payload(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    if not path.exists():
        raise InputError("model file not found", path)
    if not path.is_file():
        raise InputError("model path is not a file", path)
    if not zipfile.is_zipfile(path):
        raise InputError("not a qmricore model file (not a torch zip archive: corrupt or another format)", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many kinds for corrupt or unsafe files
        raise InputError(f"corrupt or unsafe model file ({type(error).__name__})", path) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise InputError(f"not a qmricore model file (no format '{FORMAT_NAME}')", path)
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise InputError(f"model file lacks {', '.join(missing)}", path)
    if payload["version"] != FORMAT_VERSION:
        raise InputError(f"model file version {payload['version']} is not supported (expected {FORMAT_VERSION})", path)
    if payload["kind"] not in KINDS:
        raise InputError(f"model kind {payload['kind']!r} is not one of {KINDS}", path)
    return payload


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """Metadata of a model file without building the network (raises InputError like :func:`load_model`).

    The weights are memory-mapped, not read, so listing large models (an 18.6 M-parameter SynthStroke file
    is 75 MB) stays fast.
    """
    path = Path(path)
    return _meta_from_payload(_read_payload(path, mmap=True), path)


def _meta_from_payload(payload: Mapping[str, Any], path: Path) -> ModelMeta:
    try:
        network = config_from_dict(payload["kind"], payload["network"])
        meta = ModelMeta(
            kind=payload["kind"],
            network=network,
            classes=tuple(payload["classes"]),
            preprocessing=PreprocessConfig.from_dict(payload["preprocessing"]),
            inference=WindowConfig.from_dict(payload["inference"]),
            code_version=str(payload.get("code_version", "unknown")),
            training=dict(payload.get("training") or {}),
            origin=dict(payload.get("origin") or {}),
        )
    except (ParameterError, TypeError, ValueError) as error:
        raise InputError(f"invalid model settings ({error})", path) from error
    factor = math.prod(network.strides)
    if any(p % factor for p in meta.inference.patch):
        raise InputError(f"inference patch {meta.inference.patch} is not a multiple of the network's total stride "
                         f"{factor}", path)
    if meta.classes != _classes_of(network):
        expected = list(_classes_of(network))
        raise InputError(f"model classes {list(meta.classes)} do not match its network {expected}", path)
    return meta


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model file, rebuild its network, load the weights, move it to ``device``, set eval mode.

    Raises
    ------
    InputError
        Missing file, unreadable/corrupt file, other format or version, invalid settings, or weights that
        do not fit the network described in the file.
    """
    path = Path(path)
    payload = _read_payload(path)
    meta = _meta_from_payload(payload, path)
    network = build_network(meta.kind, meta.network)
    try:
        network.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0][:160]
        raise InputError(f"weights do not match the network in the file ({first})", path) from error
    network.to(device).eval()
    return LoadedModel(network=network, meta=meta, path=path)
