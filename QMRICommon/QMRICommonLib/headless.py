"""A Slicer-like environment for scripts run with plain Python and slicer-core (no app, no Qt).

:class:`LogicBase` is the base of both Lib logic classes: Slicer's ``ScriptedLoadableModuleLogic`` in the app (so
each module's Logic *is* its Lib logic, with the template's parameter-node access), nothing outside it.

``slicer.util`` helpers such as ``arrayFromSegmentBinaryLabelmap`` look up ``slicer.mrmlScene`` and
``slicer.modules.<name>.logic()``.  In the app both exist; outside it :func:`newScene` creates a scene,
makes it ``slicer.mrmlScene`` and hands out real module logic objects (segmentations, volumes)
bound to that scene.  Inside the app it returns the app's scene untouched.
"""

from __future__ import annotations

import types
from typing import Any

import slicer

try:  # in the app: the template's Logic base, so a Lib logic class is the module's Logic
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as LogicBase
except ImportError:  # slicer-core without the app has no ScriptedLoadableModule

    class LogicBase:  # type: ignore[no-redef]
        """Stand-in for the app's base outside the app: no parameter-node access of its own (the parameters come
        as :class:`~.parameters.ScriptedNodeParameters`)."""

        def __init__(self, parent: Any = None) -> None:
            pass


def inApp() -> bool:
    """Whether this runs inside the Slicer application (``slicer.app`` exists)."""
    return hasattr(slicer, "app")


class _Module:
    def __init__(self, logic: Any) -> None:
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


def newScene() -> Any:
    """The app's scene in Slicer; else a new ``vtkMRMLScene`` installed as ``slicer.mrmlScene`` with
    ``slicer.modules.segmentations/volumes`` logic objects bound to it."""
    if inApp():
        return slicer.mrmlScene
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logics = {"segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
              "volumes": slicer.vtkSlicerVolumesLogic()}
    for logic in logics.values():
        logic.SetMRMLScene(scene)
    slicer.modules = types.SimpleNamespace(**{name: _Module(logic) for name, logic in logics.items()})
    return scene
