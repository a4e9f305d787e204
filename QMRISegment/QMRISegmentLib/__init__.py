"""Qt-free computation of the QMRISegment module (runs on a real MRML scene inside or outside Slicer).

``runner``  :class:`BackgroundRunner`: a worker process polled for PROGRESS/FINISHED/FAILED/CANCELLED
``worker``  the worker script (segmentation and qMRI estimation with :mod:`qmricore.inference`)
``logic``   :class:`QMRISegmentLogic`: jobs and the import of their results into MRML nodes
``models``  the model list (shipped and imported models: name, classes, input, source, size), SynthStroke import

Parameter definitions live in :mod:`QMRISynthLib.parameters` (one place for both modules); this module
depends on QMRISynth's Lib for them and for the MRML volume helpers.
"""

from __future__ import annotations

from .logic import LESION_COLOR, LESION_TERMINOLOGY, Job, QMRISegmentLogic
from .models import MODEL_TABLE_COLUMNS, ModelInfo
from .runner import BackgroundRunner, Event, RunnerEvent

__all__ = ["QMRISegmentLogic", "Job", "BackgroundRunner", "Event", "RunnerEvent", "LESION_TERMINOLOGY",
           "LESION_COLOR", "ModelInfo", "MODEL_TABLE_COLUMNS"]
