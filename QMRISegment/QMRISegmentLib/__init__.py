"""Qt-free computation of the QMRISegment module (runs on a real MRML scene inside or outside Slicer).

``logic``       :class:`QMRISegmentLogic`: background ``qmricore`` runs (segment, estimate, mwf) and the import of
                their results into MRML nodes
``models``      the model list (shipped and imported models: name, classes, input, source, size), SynthStroke import
``parameters``  the module's parameter specs

What both modules use (parameter specs and their headless storage, MRML volume helpers, the background runner,
the dependency check) is the shared ``QMRICommonLib``.
"""

from __future__ import annotations

from .logic import LESION_COLOR, LESION_TERMINOLOGY, QMRISegmentLogic
from .models import MODEL_TABLE_COLUMNS, ModelInfo

__all__ = ["QMRISegmentLogic", "LESION_TERMINOLOGY", "LESION_COLOR", "ModelInfo", "MODEL_TABLE_COLUMNS"]
