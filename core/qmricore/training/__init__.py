"""Headless training of the lesion segmenter and the qATLAS estimator (SPEC §7, §8).

config        TrainConfig dataclasses (every training default), JSON load/save
checkpoint    atomic, exactly-resumable checkpoints
loop          the one training loop both trainers use (progress bar, JSON-lines log, checkpoints, export)
seg           segmentation: real / qsynth / synth / qatlas data, mixes with real data
estimator     qATLAS estimator: MPRAGE simulated from real map sets -> maps
distributed   PyTorch DDP under ``torchrun``
cli_args      argument handling shared by ``qmricore train-seg`` and ``qmricore train-estimator``

Nothing heavy is imported with the package (so ``qmricore --help`` stays fast); the names below are
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SegTrainConfig": "config", "EstimatorTrainConfig": "config", "LoopConfig": "config",
    "OptimizerConfig": "config", "TrainConfig": "config", "load_config": "config", "save_config": "config",
    "train_segmentation": "seg", "train_estimator": "estimator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
