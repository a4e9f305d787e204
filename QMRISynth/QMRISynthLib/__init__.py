"""Qt-free computation of the QMRISynth module (runs on a real MRML scene inside or outside Slicer).

``parameters``  parameter definitions (names, types, ranges, defaults) shared with the module and tests
``mrmlio``      volume nodes <-> arrays / :class:`qmricore.io.Volume`, NIfTI import and export
``logic``       :class:`QMRISynthLogic`: simulation (full and slice-first), hMRI folders, qSynth, presets,
                signal-versus-parameter tables and charts
``headless``    a scene with the module logics Slicer's utilities expect, for scripts outside the app
"""

from __future__ import annotations

from .logic import QMRISynthLogic, SimulationSettings
from .parameters import ScriptedNodeParameters, synthNodes, synthParameters

__all__ = ["QMRISynthLogic", "SimulationSettings", "ScriptedNodeParameters", "synthParameters", "synthNodes"]
