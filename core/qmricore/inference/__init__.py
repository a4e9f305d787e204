"""Running and scoring trained models (SPEC §9, §10).

preprocess    orientation, reslicing and intensity normalisation (:class:`PreprocessConfig`)
window        sliding-window prediction with flip TTA and the out-of-memory fallback (:class:`WindowConfig`)
predict       lesion segmentation and qMRI estimation with a model file, on the input's exact grid
metrics       Dice, HD95, medians with Student-t confidence intervals, evaluation tables
heldout       held-out synthetic sets per contrast and their scores (``qmricore heldout``)

Nothing heavy is imported with the package (so ``qmricore --help`` stays fast); the names below are
loaded on first use.  (The ``preprocess`` function is not re-exported: it would clash with its module.)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("PreprocessConfig", "Grid", "network_grid", "resample", "normalise_intensity"), "preprocess"),
    **dict.fromkeys(("WindowConfig", "FLIP_DIMS", "flip_tta", "sliding_window_logits", "predict_with_fallback"),
                    "window"),
    **dict.fromkeys(("SegmentationResult", "segment", "estimate_maps", "predict_on_grid", "resolve_device",
                     "lesion_volume_ml", "volume_grid", "ensemble_logits"), "predict"),
    **dict.fromkeys(("dice", "hd95", "median_confidence_interval", "evaluate_pairs", "summarise"), "metrics"),
    **dict.fromkeys(("make_set", "score"), "heldout"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
