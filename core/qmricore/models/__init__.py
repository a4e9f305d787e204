"""Networks and the model file: what a trained model is and how it is stored (SPEC §7-9).

networks      the qMRI estimator and the lesion segmenter (MONAI building blocks), their config dataclasses
model_file    the ``qmricore-model`` file: a network, its classes, preprocessing and window settings
synthstroke   importer of the SynthStroke authors' published weights into a model file

Nothing heavy is imported with the package (so ``qmricore --help`` stays fast); the names below are
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("SegmenterConfig", "EstimatorConfig", "CLASS_SETS", "ESTIMATOR_MAPS", "build_network",
                     "build_segmenter", "build_estimator", "config_from_dict", "split_maps"), "networks"),
    **dict.fromkeys(("LoadedModel", "ModelMeta", "FORMAT_NAME", "FORMAT_VERSION", "load_model", "read_meta",
                     "save_model", "model_payload"), "model_file"),
    **dict.fromkeys(("import_synthstroke", "stated_spacing"), "synthstroke"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
