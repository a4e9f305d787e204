"""Put the scripted modules' folders on sys.path and give each test a fresh real MRML scene."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for module in ("QMRICommon", "QMRISynth", "QMRISegment"):
    if str(ROOT / module) not in sys.path:
        sys.path.insert(0, str(ROOT / module))


@pytest.fixture
def scene():
    """A new vtkMRMLScene installed as ``slicer.mrmlScene`` (with real module logics in ``slicer.modules``)."""
    from QMRICommonLib.headless import newScene

    scene = newScene()
    yield scene
    scene.Clear(1)
