"""STAND-IN harness: build the modules' panels from their .ui files with PySide6, outside Slicer.

There is no Slicer application, PythonQt or CTK here.  This harness maps the Slicer/CTK custom widget
classes the .ui files use to small PySide6 stand-ins with the same class names and the properties the
.ui sets (``ctkSliderWidget`` -> slider + spin box, ``qMRMLNodeComboBox`` -> combo box listing the node
types, ``ctkCollapsibleButton`` -> group box, ``ctkPathLineEdit`` -> line edit, ``qMRMLWidget`` -> widget),
loads each panel with ``QUiLoader`` and renders it offscreen.  It proves that the .ui files load, that the
properties exist and how the panel is laid out; it does NOT prove the real CTK/MRML widgets behave the
same (that needs the app: the modules' ``<Module>Test`` classes).

    QT_QPA_PLATFORM=offscreen python Testing/widget_standin.py     # writes Resources/Screenshots/*.png
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Property, QBuffer, QByteArray, QIODevice, Qt  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QSlider,
    QToolButton,
    QWidget,
)

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("QMRISynth", "QMRISegment")
SCREENSHOTS = ROOT / "Resources" / "Screenshots"
#: Node names the stand-in combo boxes show, per node class (what a loaded scene would offer).
EXAMPLE_NODES = {
    "vtkMRMLScalarVolumeNode": ["sample_PD", "sample_R1", "sample_R2s", "sample_MT"],
    "vtkMRMLLabelMapVolumeNode": ["sample_labels"],
    "vtkMRMLSegmentationNode": ["(create new Segmentation)"],
    "vtkMRMLTableNode": ["(create new Table)"],
}


class qMRMLWidget(QWidget):  # noqa: N801 - the .ui class name
    """Stand-in for Slicer's qMRMLWidget (a QWidget with an MRML scene)."""


class ctkCollapsibleButton(QGroupBox):  # noqa: N801
    """Stand-in: a titled group box; ``collapsed`` hides the contents."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def getText(self) -> str:
        return self.title()

    def setText(self, text: str) -> None:
        self.setTitle(("\u25b8 " if self._collapsed else "\u25be ") + text.lstrip("\u25b8\u25be "))

    def getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, value: bool) -> None:
        self._collapsed = bool(value)
        self.setText(self.title())
        self.setMaximumHeight(24 if self._collapsed else 16777215)

    text = Property(str, getText, setText)
    collapsed = Property(bool, getCollapsed, setCollapsed)


class ctkSliderWidget(QWidget):  # noqa: N801
    """Stand-in for ctkSliderWidget: a QSlider and a QDoubleSpinBox sharing one value."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._slider = QSlider(Qt.Horizontal, self)
        self._spin = QDoubleSpinBox(self)
        self._tracking = True
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._slider, 1)
        layout.addWidget(self._spin)
        self._slider.setRange(0, 1000)
        self._slider.valueChanged.connect(self._fromSlider)
        self._spin.valueChanged.connect(self._toSlider)

    def _fromSlider(self, position: int) -> None:
        span = self._spin.maximum() - self._spin.minimum()
        self._spin.setValue(self._spin.minimum() + span * position / 1000)

    def _toSlider(self, value: float) -> None:
        span = self._spin.maximum() - self._spin.minimum()
        self._slider.blockSignals(True)
        self._slider.setValue(int(round(1000 * (value - self._spin.minimum()) / span)) if span > 0 else 0)
        self._slider.blockSignals(False)

    def getMinimum(self) -> float:
        return self._spin.minimum()

    def setMinimum(self, value: float) -> None:
        self._spin.setMinimum(value)
        self._toSlider(self._spin.value())

    def getMaximum(self) -> float:
        return self._spin.maximum()

    def setMaximum(self, value: float) -> None:
        self._spin.setMaximum(value)
        self._toSlider(self._spin.value())

    def getValue(self) -> float:
        return self._spin.value()

    def setValue(self, value: float) -> None:
        self._spin.setValue(value)
        self._toSlider(value)

    def getDecimals(self) -> int:
        return self._spin.decimals()

    def setDecimals(self, value: int) -> None:
        self._spin.setDecimals(value)

    def getSingleStep(self) -> float:
        return self._spin.singleStep()

    def setSingleStep(self, value: float) -> None:
        self._spin.setSingleStep(value)

    def getSuffix(self) -> str:
        return self._spin.suffix()

    def setSuffix(self, value: str) -> None:
        self._spin.setSuffix(value)

    def getTracking(self) -> bool:
        return self._tracking

    def setTracking(self, value: bool) -> None:
        self._tracking = bool(value)
        self._slider.setTracking(self._tracking)

    minimum = Property(float, getMinimum, setMinimum)
    maximum = Property(float, getMaximum, setMaximum)
    value = Property(float, getValue, setValue)
    decimals = Property(int, getDecimals, setDecimals)
    singleStep = Property(float, getSingleStep, setSingleStep)
    suffix = Property(str, getSuffix, setSuffix)
    tracking = Property(bool, getTracking, setTracking)


class qMRMLNodeComboBox(QComboBox):  # noqa: N801
    """Stand-in for qMRMLNodeComboBox: lists example node names of its ``nodeTypes``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes: list[str] = []
        self._flags = {"noneEnabled": False, "addEnabled": False, "removeEnabled": False, "renameEnabled": False,
                       "showChildNodeTypes": True, "selectNodeUponCreation": True}

    def _refill(self) -> None:
        self.clear()
        if self._flags["noneEnabled"]:
            self.addItem("None")
        for nodeType in self._nodeTypes:
            self.addItems(EXAMPLE_NODES.get(nodeType, [nodeType]))

    def getNodeTypes(self) -> list:
        return list(self._nodeTypes)

    def setNodeTypes(self, value) -> None:
        self._nodeTypes = [str(v) for v in value]
        self._refill()

    def _flag(name):  # noqa: N805 - property factory
        def get(self) -> bool:
            return self._flags[name]

        def set_(self, value: bool) -> None:
            self._flags[name] = bool(value)
            self._refill()

        return Property(bool, get, set_)

    nodeTypes = Property("QStringList", getNodeTypes, setNodeTypes)
    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    showChildNodeTypes = _flag("showChildNodeTypes")
    selectNodeUponCreation = _flag("selectNodeUponCreation")


class ctkPathLineEdit(QWidget):  # noqa: N801
    """Stand-in for ctkPathLineEdit: a line edit and a browse button; ``currentPath`` is the text."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._edit = QLineEdit(self)
        self._edit.setPlaceholderText("(path)")
        button = QToolButton(self)
        button.setText("...")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._edit, 1)
        layout.addWidget(button)

    def getCurrentPath(self) -> str:
        return self._edit.text()

    def setCurrentPath(self, value: str) -> None:
        self._edit.setText(value)

    currentPath = Property(str, getCurrentPath, setCurrentPath)


STAND_INS = (qMRMLWidget, ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox, ctkPathLineEdit)


def application() -> QApplication:
    return QApplication.instance() or QApplication(sys.argv[:1])


def loadPanel(module: str) -> QWidget:
    """The module's panel built from its .ui with the stand-in widgets (raises if the .ui does not load)."""
    application()
    loader = QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    path = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    # The .ui's <connections> pass the MRML scene (mrmlSceneChanged -> setMRMLScene); there is no scene
    # here, so they are dropped; everything else loads as written.
    text = re.sub(r"<connections>.*</connections>", "", path.read_text(), flags=re.S)
    handle = QBuffer()
    handle.setData(QByteArray(text.encode()))
    handle.open(QIODevice.ReadOnly)
    try:
        panel = loader.load(handle)
    finally:
        handle.close()
    if panel is None:
        raise RuntimeError(f"{path}: {loader.errorString()}")
    return panel


def findWidget(panel: QWidget, name: str) -> QWidget | None:
    return panel if panel.objectName() == name else panel.findChild(QWidget, name)


def moduleSpecs(module: str) -> dict:
    """The module's scalar parameter specs by name (from its Lib, the one definition)."""
    for folder in ("QMRICommon", "QMRISynth", "QMRISegment"):
        if str(ROOT / folder) not in sys.path:
            sys.path.insert(0, str(ROOT / folder))
    if module == "QMRISynth":
        from QMRISynthLib.parameters import synthParameters as scalars
    else:
        from QMRISegmentLib.parameters import segmentParameters as scalars
    return {spec.name: spec for spec in scalars()}


def writeDefaults(panel: QWidget, specs: dict) -> list[str]:
    """Stand-in for the wrapper's ``connectGui``: write each parameter's default into its widget.

    Like the real connectors, a slider also gets the parameter's range.  Returns the parameter names
    written; raises KeyError for a widget whose SlicerParameterName is not a scalar parameter.
    """
    written = []
    for widget in panel.findChildren(QWidget):
        name = widget.property("SlicerParameterName")
        if not name or name not in specs:
            continue  # node references: no scene here
        spec = specs[name]
        if isinstance(widget, ctkSliderWidget):
            widget.setMinimum(spec.minimum)
            widget.setMaximum(spec.maximum)
            widget.setValue(spec.default)
        elif isinstance(widget, QComboBox):
            widget.setCurrentIndex(widget.findText(str(spec.default)))
        elif isinstance(widget, ctkPathLineEdit):
            widget.setCurrentPath("" if str(spec.default) == "." else str(spec.default))
        elif hasattr(widget, "setChecked"):
            widget.setChecked(bool(spec.default))
        else:
            widget.setValue(spec.default)
        written.append(name)
    return written


def dressSynthPanel(panel: QWidget) -> None:
    """What QMRISynthWidget.setup and connectGui do before the panel shows: presets, defaults, visibility."""
    writeDefaults(panel, moduleSpecs("QMRISynth"))
    from QMRISynthLib.parameters import parametersOfSequence, presetNames

    for key, title in (("pd", "PD"), ("r1", "R1"), ("r2s", "R2s"), ("mt", "MT")):  # a loaded sample map set
        selector = findWidget(panel, f"{key}Selector")
        selector.setCurrentIndex(selector.findText(f"sample_{title}"))
    combo = findWidget(panel, "presetComboBox")
    combo.addItem("(choose a preset)")
    combo.addItems(presetNames())
    used = parametersOfSequence(findWidget(panel, "sequenceComboBox").currentText())
    for name in ("tr", "te", "ti", "flip", "tx", "n", "ti2", "flip2"):  # the widget hides unused sliders
        control = findWidget(panel, "nSpinBox" if name == "n" else f"{name}SliderWidget")
        control.setVisible(name in used)
        findWidget(panel, f"{name}Label").setVisible(name in used)
    findWidget(panel, "multiEchoGroupBox").setVisible(False)  # shown for the cpmg sequence only


def showMultiEcho(panel: QWidget, echo: int = 3) -> None:
    """What the widget shows for the multi-echo spin echo: only its group, with the echo label filled."""
    from QMRISynthLib.parameters import MULTI_ECHO, SEQUENCE_PARAMETERS

    combo = findWidget(panel, "sequenceComboBox")
    combo.setCurrentIndex(combo.findText(MULTI_ECHO))
    for name in SEQUENCE_PARAMETERS:
        findWidget(panel, "nSpinBox" if name == "n" else f"{name}SliderWidget").setVisible(False)
        findWidget(panel, f"{name}Label").setVisible(False)
    findWidget(panel, "multiEchoGroupBox").setVisible(True)
    findWidget(panel, "displayedEchoSlider").setValue(echo)
    spacing = findWidget(panel, "echoSpacingSliderWidget").getValue()
    count = findWidget(panel, "echoCountSpinBox").value()
    findWidget(panel, "displayedEchoValueLabel").setText(f"echo {echo} of {count}, at {echo * spacing:g} ms")


def disableUnavailableCnn(panel: QWidget, reason: str) -> None:
    """What QMRISegmentWidget.updateMwfMethods does without a CNN model: the CNN item greyed out, with why."""
    combo = findWidget(panel, "mwfMethodComboBox")
    item = combo.model().item(combo.findText("CNN"))
    item.setEnabled(False)
    item.setToolTip(reason)
    combo.setToolTip(reason)


def fillModelTable(panel: QWidget, rows: list[tuple[str, ...]]) -> None:
    """What QMRISegmentWidget.updateModelTable does: one row per model, cells in MODEL_TABLE_COLUMNS order."""
    from PySide6.QtWidgets import QTableWidgetItem

    table = findWidget(panel, "modelTableWidget")
    table.setRowCount(len(rows))
    for row, cells in enumerate(rows):
        for column, text in enumerate(cells):
            table.setItem(row, column, QTableWidgetItem(text))
    table.resizeColumnsToContents()


def dressSegmentPanel(panel: QWidget) -> None:
    writeDefaults(panel, moduleSpecs("QMRISegment"))
    from QMRISegmentLib.models import listModels

    shipped, _ = listModels("segmenter", userFolder=ROOT / "no-user-models")  # the real shipped entries
    example = ("SynthStroke 6-class 1 mm", "6: background, GM, WM, GM/WM PV, CSF, lesion",
               "1 image, RAS 1 mm, histogram-normalised", "SynthStroke (the seed authors' published weights)",
               "74.6 MB")  # what an import adds (illustration: no authors' file ships here)
    fillModelTable(panel, [m.row() for m in shipped] + [example])
    findWidget(panel, "modelTableWidget").selectRow(len(shipped))
    sys.path.insert(0, str(ROOT / "QMRISegment"))
    from QMRISegmentLib.logic import QMRISegmentLogic

    reason = QMRISegmentLogic(scene=object()).cnnUnavailableReason()
    if reason:  # (the shipped CNN makes it available)
        disableUnavailableCnn(panel, reason)
    findWidget(panel, "mwfCollapsibleButton").setCollapsed(False)
    findWidget(panel, "progressBar").setVisible(True)
    findWidget(panel, "progressBar").setValue(40)
    findWidget(panel, "statusLabel").setText("segmenting 1 image(s) with 8-flip TTA")


def screenshot(module: str, out: Path | None = None, multiEcho: bool = False) -> Path:
    """Render the stand-in panel offscreen to ``Resources/Screenshots/<module>_panel.png`` (QMRISynth with
    ``multiEcho``: the multi-echo spin echo's controls, ``QMRISynth_multiecho_panel.png``)."""
    panel = loadPanel(module)
    (dressSynthPanel if module == "QMRISynth" else dressSegmentPanel)(panel)
    if multiEcho:
        showMultiEcho(panel)
    panel.resize(420, panel.sizeHint().height())
    panel.show()
    application().processEvents()
    panel.resize(420, panel.sizeHint().height())
    application().processEvents()
    out = out or SCREENSHOTS / f"{module}{'_multiecho' if multiEcho else ''}_panel.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(out)):
        raise OSError(f"{out}: could not write the screenshot")
    panel.close()
    return out


if __name__ == "__main__":
    for name in MODULES:
        print(screenshot(name))
    print(screenshot("QMRISynth", multiEcho=True))
