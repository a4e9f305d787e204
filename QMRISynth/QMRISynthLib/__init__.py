"""Qt-free computation of the QMRISynth module (runs on a real MRML scene inside or outside Slicer).

``parameters``  the module's parameter specs (names, types, ranges, defaults) shared with the tests
``logic``       :class:`QMRISynthLogic`: simulation (full and slice-first), hMRI folders, qSynth, presets,
                signal-versus-parameter tables and charts

MRML volume helpers, the headless scene and the parameter storage are the shared ``QMRICommonLib``.
"""

from __future__ import annotations

from .logic import QMRISynthLogic, SimulationSettings
from .parameters import synthNodes, synthParameters

__all__ = ["QMRISynthLogic", "SimulationSettings", "synthParameters", "synthNodes"]
