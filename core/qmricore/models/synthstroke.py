"""Import the SynthStroke authors' published segmentation weights into qmricore model files.

The authors of the seed paper (001) publish trained SynthStroke models, one Hugging Face repository per
model (``config.json`` + ``model.safetensors``, tensor names prefixed ``unet.``); their training scripts
save plain ``torch.save`` dicts ``{"net": state_dict, "opt": ..., "epoch": ...}``.  This project ships
none of their files: the user downloads them, and :func:`import_synthstroke` turns either layout into a
qmricore model file (:mod:`qmricore.models.model_file`) that ``qmricore segment`` and QMRISegment run like the
shipped models, with the authors' preprocessing stored in it.

Network (fixed by the authors' code): MONAI ``UNet(spatial_dims=3, in_channels=1, out_channels=2 or 6,
channels=(32, 64, 128, 256, 320, 320), strides=(2, 2, 2, 2, 2), kernel_size=3, up_kernel_size=3,
num_res_units=1, act="PRELU", norm="INSTANCE", dropout=0, bias=True, adn_ordering="NDA")``; 2 classes
(background, lesion) or 6 (background, GM, WM, GM/WM partial volume, CSF, lesion).

Preprocessing stored in the file (:func:`synthstroke_preprocessing`, :data:`SYNTHSTROKE_WINDOW`): RAS, 1 mm
(2 mm for the low-resolution variant) on MONAI ``Spacing``'s grid, MONAI ``HistogramNormalize`` (256 bins,
0-255), z-score over all voxels, sliding window 128³ with 50 % overlap, Gaussian weights (σ 0.125),
padding 0 (MONAI's default).

Keys read from ``config.json`` (top level, or inside a ``"model"``/``"network"``/``"unet"`` object; all
optional, everything else is ignored; :data:`CONFIG_KEYS`):

* classes: ``out_channels`` | ``num_classes`` | ``n_classes`` (2 or 6); when absent, the number of rows of
  the network's final convolution weight;
* ``channels``, ``strides``: lists (default the authors' values above);
* voxel size: ``spacing`` | ``pixdim`` | ``resolution`` (mm, a number or three equal numbers), or
  ``low_res`` | ``lowres`` | ``low_resolution`` (true: 2 mm); default 1 mm; ``--spacing`` overrides;
* ``in_channels`` and ``spatial_dims``, when present, must be 1 and 3.

Safety: weights are read with ``torch.load(..., weights_only=True)`` or ``safetensors`` only, so a file
can never run code; a checkpoint that needs more than tensors and plain containers is refused.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ParameterError
from ..inference.preprocess import PreprocessConfig
from ..inference.window import WindowConfig
from .model_file import save_model
from .networks import SegmenterConfig, build_segmenter

#: The authors' network (their training scripts' ``UNet(...)`` call).
SYNTHSTROKE_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
SYNTHSTROKE_STRIDES: tuple[int, ...] = (2, 2, 2, 2, 2)
#: Class set per number of output channels (the lesion is the last class: index 1 or 5).
CLASSES_BY_OUT_CHANNELS: dict[int, str] = {2: "binary", 6: "tissue"}
#: Voxel size (mm) of the standard and the low-resolution variants.
STANDARD_SPACING = 1.0
LOW_RES_SPACING = 2.0
#: The authors' sliding window: 128³, 50 % overlap, Gaussian σ = 0.125 of the window, padding 0 (MONAI default).
SYNTHSTROKE_WINDOW = WindowConfig(patch=(128, 128, 128), overlap=0.5, sigma_scale=0.125, sw_batch_size=1,
                                  padding="zero")
#: Tensor-name prefixes stripped when every name carries them (Hugging Face wrapper, DDP, torch.compile).
KEY_PREFIXES = ("unet.", "module.", "_orig_mod.")
#: config.json keys read, per setting, first match wins.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "out_channels": ("out_channels", "num_classes", "n_classes"),
    "channels": ("channels",),
    "strides": ("strides",),
    "spacing": ("spacing", "pixdim", "resolution"),
    "low_res": ("low_res", "lowres", "low_resolution"),
    "in_channels": ("in_channels",),
    "spatial_dims": ("spatial_dims",),
}
#: Objects inside config.json that may hold the settings instead of the top level.
CONFIG_SECTIONS = ("model", "network", "unet")
LICENCE = ("the SynthStroke authors' licence (see their model repository); the weights are not part of this "
           "project and not covered by its licence")
SOURCE = "SynthStroke (the seed authors' published weights)"


def synthstroke_preprocessing(spacing: float = STANDARD_SPACING) -> PreprocessConfig:
    """The authors' inference preprocessing at ``spacing`` mm (see the module docstring)."""
    return PreprocessConfig(spacing=spacing, orientation="RAS", normalisation="histogram", zscore="whole",
                            grid="first-voxel", histogram_bins=256, histogram_range=(0.0, 255.0))


@dataclass(frozen=True)
class SynthStrokeWeights:
    """What was read from the user's files: tensors (prefix stripped), the parsed config, where they came from."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    layout: str  # "checkpoint" ({"net": ...}) or "safetensors"
    weights_path: Path
    config_path: Path | None


@dataclass(frozen=True)
class ImportedModel:
    """Result of :func:`import_synthstroke`."""

    path: Path
    network: SegmenterConfig
    spacing: float
    parameters: int
    layout: str
    origin: dict[str, Any]


def _listing(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover - safetensors is a dependency
        raise InputError("reading .safetensors needs the 'safetensors' package (pip install safetensors)",
                         path) from error
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError, ValueError for broken headers
        raise InputError(f"not a readable safetensors file ({_first_line(error)})", path) from error


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):
        raise InputError("not a torch checkpoint (not a torch zip archive) nor a .safetensors file", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for anything that is not tensors + plain containers
        raise InputError("refused: the checkpoint holds pickled objects other than tensors and plain containers "
                         "(loading it could run code); save its 'net' state dict alone with torch.save",
                         path) from error
    if not isinstance(payload, dict):
        raise InputError(f"not a SynthStroke checkpoint (a {type(payload).__name__}, expected a dict with 'net')", path)
    if payload.get("format") == "qmricore-model":
        raise InputError("is already a qmricore model file; use it with --model directly", path)
    if "net" not in payload:
        keys = _listing(sorted(map(str, payload)))
        raise InputError(f"not a SynthStroke checkpoint (no 'net' state dict; keys: {keys})", path)
    if not isinstance(payload["net"], Mapping):
        raise InputError(f"not a SynthStroke checkpoint ('net' is a {type(payload['net']).__name__}, not a state dict)",
                         path)
    return dict(payload["net"])


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError("config file not found", path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the config ({_first_line(error)})", path) from error
    except json.JSONDecodeError as error:
        raise InputError(f"config is not valid JSON (line {error.lineno}: {error.msg})", path) from error
    if not isinstance(config, dict):
        raise InputError("config is not a JSON object", path)
    return config


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The weights file of ``path``: the file itself, or a folder's ``model.safetensors`` (InputError if none)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise InputError("folder has no model.safetensors (expected a SynthStroke model repository)", path)
        return path / "model.safetensors"
    return path


def config_file(path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None) -> Path | None:
    """The config.json that goes with the weights at ``path``: ``config`` if given, else the ``config.json`` next
    to a ``.safetensors`` file (or in the model folder), else None (a torch checkpoint carries no config)."""
    if config is not None:
        return Path(config)
    weights = weights_file(path)
    found = weights.with_name("config.json")
    return found if weights.suffix == ".safetensors" and found.is_file() else None


def stated_spacing(path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None) -> float | None:
    """The voxel size (mm) the config of these weights states, or None; reads only the config (fast)."""
    where = config_file(path, config)
    return None if where is None else config_spacing(_read_config(where), where)


def read_weights(path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None) -> SynthStrokeWeights:
    """Read SynthStroke weights in either layout, never running pickled code.

    Parameters
    ----------
    path
        A folder holding ``model.safetensors`` (and usually ``config.json``), a ``.safetensors`` file (its
        ``config.json`` is looked for next to it), or a ``torch.save`` checkpoint ``{"net": state_dict, ...}``.
    config
        A ``config.json`` to use instead of the one found next to the weights.

    Raises
    ------
    InputError
        Missing file, another format, a pickle that needs more than tensors, no ``net`` state dict,
        non-tensor entries, an unreadable config.
    """
    weights = weights_file(path)
    config_path = config_file(path, config)
    if weights.suffix == ".safetensors":
        layout, state = "safetensors", _read_safetensors(weights)
    else:
        layout, state = "checkpoint", _read_checkpoint(weights)
    if not state:
        raise InputError("holds no tensors", weights)
    bad = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise InputError(f"state dict entries that are not tensors: {_listing(bad)}", weights)
    return SynthStrokeWeights(_strip_prefixes(state), _read_config(config_path) if config_path else {}, layout,
                              weights, config_path)


def _setting(config: Mapping[str, Any], name: str) -> Any:
    sections = [config] + [config[s] for s in CONFIG_SECTIONS if isinstance(config.get(s), Mapping)]
    for section in sections:
        for key in CONFIG_KEYS[name]:
            if key in section and section[key] is not None:
                return section[key]
    return None


def _int_list(value: Any, name: str, where: Path | None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise InputError(f"config '{name}' must be a list of positive integers, got {value!r}", where)
    return tuple(int(v) for v in value)


def config_spacing(config: Mapping[str, Any], where: Path | None = None) -> float | None:
    """The voxel size (mm) a config states (``spacing``/``pixdim``/``resolution`` or ``low_res``), or None."""
    value = _setting(config, "spacing")
    if value is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values) \
                or len({float(v) for v in values}) != 1:
            raise InputError(f"config spacing must be one positive size in mm (isotropic), got {value!r}", where)
        return float(values[0])
    low_res = _setting(config, "low_res")
    if low_res is not None:
        if not isinstance(low_res, bool):
            raise InputError(f"config low_res must be true or false, got {low_res!r}", where)
        return LOW_RES_SPACING if low_res else STANDARD_SPACING
    return None


def _final_weight_key(channels: tuple[int, ...], strides: tuple[int, ...]) -> str:
    """Name of the last convolution weight of the MONAI UNet (its rows are the output classes)."""
    probe = build_segmenter(SegmenterConfig(classes="binary", channels=(1,) * len(channels), strides=strides))
    return [k for k, v in probe.state_dict().items() if k.endswith(".weight") and v.dim() == 5][-1]


def network_config(weights: SynthStrokeWeights) -> SegmenterConfig:
    """The :class:`SegmenterConfig` of the authors' UNet for these weights (classes from config or weights)."""
    where = weights.config_path
    for name, expected in (("in_channels", 1), ("spatial_dims", 3)):
        value = _setting(weights.config, name)
        if value is not None and value != expected:
            raise InputError(f"config {name} = {value!r}; SynthStroke models have {name} = {expected}", where)
    channels_value = _setting(weights.config, "channels")
    strides_value = _setting(weights.config, "strides")
    channels = SYNTHSTROKE_CHANNELS if channels_value is None else _int_list(channels_value, "channels", where)
    strides = SYNTHSTROKE_STRIDES if strides_value is None else _int_list(strides_value, "strides", where)
    if len(strides) != len(channels) - 1:
        raise InputError(f"config has {len(channels)} channels but {len(strides)} strides (need one fewer)", where)
    out_channels = _setting(weights.config, "out_channels")
    if out_channels is None:
        final = weights.state_dict.get(_final_weight_key(channels, strides))
        # without that tensor the key check below names what is missing
        out_channels = int(final.shape[0]) if final is not None and final.dim() == 5 else 2
        where = weights.weights_path
    valid = isinstance(out_channels, int) and not isinstance(out_channels, bool)
    if not valid or out_channels not in CLASSES_BY_OUT_CHANNELS:
        raise InputError(f"{out_channels!r} output classes; SynthStroke models have 2 (background, lesion) or 6 "
                         "(background, GM, WM, GM/WM PV, CSF, lesion)", where)
    return SegmenterConfig(classes=CLASSES_BY_OUT_CHANNELS[out_channels], in_channels=1, channels=channels,
                           strides=strides, num_res_units=1, act="PRELU", norm="INSTANCE", dropout=0.0,
                           kernel_size=3, up_kernel_size=3, bias=True, adn_ordering="NDA")


def check_fits(network: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """InputError naming the missing/unexpected tensors and wrong shapes, if ``state`` does not fit ``network``."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label} {_listing(names)}" for label, names in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes:", shapes)) if names]
    if problems:
        raise InputError(f"weights do not fit {what}: {'; '.join(problems)}", path)
    for key, tensor in state.items():
        if not tensor.is_floating_point() and expected[key].is_floating_point():
            raise InputError(f"weights do not fit {what}: {key} has dtype {tensor.dtype}", path)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"weights contain NaN or Inf ({key})", path)


def import_synthstroke(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    spacing: float | None = None,
    name: str | None = None,
) -> ImportedModel:
    """Read SynthStroke weights (either layout), check them against the authors' UNet, write a model file.

    Parameters
    ----------
    path
        Folder with ``model.safetensors``, a ``.safetensors`` file or a ``{"net": ...}`` torch checkpoint.
    out
        The qmricore model file to write (atomically; nothing is written on any error).
    config
        ``config.json`` to use (default: the one next to a ``.safetensors`` file; none for a checkpoint).
    spacing
        Voxel size (mm) the model was trained at; default from the config, else 1 mm (2 mm: low-res variant).
    name
        Display name stored in the file (default ``"SynthStroke <n>-class <spacing> mm"``).

    Raises
    ------
    InputError
        Anything wrong with the files (one line naming the file and the problem).
    """
    weights = read_weights(path, config)
    stated = config_spacing(weights.config, weights.config_path)
    if spacing is not None and not spacing > 0:
        raise ParameterError(f"spacing must be > 0 mm, got {spacing}")
    chosen = float(spacing if spacing is not None else stated if stated is not None else STANDARD_SPACING)
    network_cfg = network_config(weights)
    network = build_segmenter(network_cfg)
    n_classes = len(network_cfg.class_names)
    what = f"the SynthStroke UNet ({n_classes} classes, channels {network_cfg.channels})"
    check_fits(network, weights.state_dict, weights.weights_path, what)
    network.load_state_dict(weights.state_dict, strict=True)
    factor = math.prod(network_cfg.strides)
    window = SYNTHSTROKE_WINDOW
    if any(p % factor for p in window.patch):
        raise InputError(f"the network's total stride {factor} does not divide the 128³ window", weights.config_path)
    origin = {
        "name": name or f"SynthStroke {n_classes}-class {chosen:g} mm",
        "source": SOURCE,
        "licence": LICENCE,
        "input": f"one brain MRI of any contrast, resliced to RAS {chosen:g} mm",
        "imported_from": str(Path(path).resolve()),
        "layout": weights.layout,
        "config": weights.config,
    }
    written = save_model(out, network, network_cfg, preprocessing=synthstroke_preprocessing(chosen),
                         inference=window, origin=origin)
    parameters = sum(p.numel() for p in network.parameters())
    return ImportedModel(Path(written), network_cfg, chosen, parameters, weights.layout, origin)
