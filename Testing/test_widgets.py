"""Widget wiring of the Slicer modules, checked without the Slicer app.

Static: every ``SlicerParameterName`` in a .ui names a parameter of the module (from its Lib) on a widget
the parameter-node wrapper can connect to that type; sliders and spin boxes carry the parameter's range;
every ``self.ui.<name>`` the module code uses exists in the .ui; no string-signal ``connect('...')``.
Dynamic: each panel loads from its .ui with the PySide6 stand-ins (``widget_standin.py``) offscreen.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for folder in ("QMRICommon", "QMRISynth", "QMRISegment"):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

from QMRISegmentLib.parameters import segmentNodes, segmentParameters  # noqa: E402
from QMRISynthLib.parameters import synthNodes, synthParameters  # noqa: E402

MODULES = {"QMRISynth": (synthParameters(), synthNodes()), "QMRISegment": (segmentParameters(), segmentNodes())}
#: Widget classes Slicer's parameterNodeWrapper connects to each parameter kind (guiConnectors.py).
CONNECTABLE = {float: {"ctkSliderWidget", "QDoubleSpinBox"}, int: {"QSpinBox", "QSlider"},
               bool: {"QCheckBox", "QPushButton"}, str: {"QComboBox", "QLineEdit"},
               Path: {"ctkPathLineEdit", "ctkDirectoryButton"}}


def ui_tree(module: str) -> ET.Element:
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()


def widgets(module: str) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ui_tree(module).iter("widget")}


def prop(widget: ET.Element, name: str):
    for p in widget.findall("property"):
        if p.get("name") == name:
            value = p[0]
            if value.tag == "double":
                return float(value.text)
            if value.tag == "number":
                return int(value.text)
            if value.tag == "bool":
                return value.text == "true"
            if value.tag == "stringlist":
                return [s.text for s in value]
            return value.text
    return None


def kind_of(spec) -> type:
    return Path if spec.kind.__name__.endswith("Path") else spec.kind


@pytest.mark.parametrize("module", MODULES)
def test_every_bound_widget_matches_its_parameter(module):
    scalars, nodes = MODULES[module]
    specs = {s.name: s for s in scalars}
    node_specs = {n.name: n for n in nodes}
    bound = {}
    for name, widget in widgets(module).items():
        parameter = prop(widget, "SlicerParameterName")
        if parameter is None:
            continue
        assert parameter not in bound, f"{parameter} bound twice ({bound.get(parameter)} and {name})"
        bound[parameter] = name
        cls = widget.get("class")
        if parameter in node_specs:
            assert cls == "qMRMLNodeComboBox", (name, cls)
            assert prop(widget, "nodeTypes") == [node_specs[parameter].className], name
            continue
        assert parameter in specs, f"{module}.ui: {name} is bound to unknown parameter {parameter!r}"
        spec = specs[parameter]
        assert cls in CONNECTABLE[kind_of(spec)], f"{name}: a {cls} cannot hold a {kind_of(spec).__name__}"
        if spec.minimum is not None:
            assert (prop(widget, "minimum"), prop(widget, "maximum")) == (spec.minimum, spec.maximum), name
            assert prop(widget, "value") == spec.default, name
        if cls == "ctkSliderWidget":
            assert prop(widget, "tracking") is False, f"{name}: live update needs tracking off (drag vs release)"
            assert prop(widget, "decimals") == spec.decimals and prop(widget, "singleStep") == spec.step, name
        if cls == "QComboBox" and spec.choices is not None:
            items = [item.find("property/string").text for item in widget.findall("item")]
            assert items == list(spec.choices), name
    # every parameter has a widget, except the ones the widget code sets itself
    assert set(bound) == {s.name for s in scalars} | {n.name for n in nodes}, set(specs) ^ set(bound)


@pytest.mark.parametrize("module", MODULES)
def test_names_the_code_looks_up_exist_in_the_ui(module):
    code = (ROOT / module / f"{module}.py").read_text()
    names = set(widgets(module))
    used = set(re.findall(r"self\.ui\.(\w+)", code)) | set(re.findall(r"widget\.ui\.(\w+)", code))
    # names built with f-strings: getattr(self.ui, f"{name}SliderWidget") / f"{name}Label"
    for template in re.findall(r'getattr\(self\.ui, f"\{name\}(\w+)"\)', code):
        from QMRISynthLib.parameters import SEQUENCE_PARAMETERS

        used |= {f"{n}{template}" for n in SEQUENCE_PARAMETERS if n != "n" or template == "Label"}
    assert used, "no widget lookups found"
    assert used <= names, f"{module}.py uses widgets missing from the .ui: {sorted(used - names)}"


@pytest.mark.parametrize("module", MODULES)
def test_module_code_uses_only_shared_pythonqt_pyside_syntax(module):
    for path in [ROOT / module / f"{module}.py", *sorted((ROOT / module / f"{module}Lib").glob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"\.connect\(\s*['\"]", text), f"{path.name}: string-signal connect('signal(...)')"
        assert not re.search(r"\.disconnect\(\s*['\"]", text), path.name
        ast.parse(text)
    libs = [*sorted((ROOT / module / f"{module}Lib").glob("*.py")),
            *sorted((ROOT / "QMRICommon" / "QMRICommonLib").glob("*.py"))]
    for path in libs:  # the Libs stay Qt-free
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"qt", "ctk", "PythonQt", "PySide6", "PyQt5"}, path.name
        if path.name != "headless.py":  # the one place that picks the Logic base (the app's, or none)
            assert "ScriptedLoadableModule" not in path.read_text(), path.name


@pytest.mark.parametrize("module", MODULES)
def test_module_file_has_the_slicer5_shape(module):
    """Module / declarative parameter node / Widget / Logic / Test, as Slicer's scripted-module template has it;
    the Logic is the Lib's class (no wrapper around it), the shared Lib is a module dependency (no sys.path)."""
    source = (ROOT / module / f"{module}.py").read_text()
    tree = ast.parse(source)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases[module] == ["ScriptedLoadableModule"]
    assert bases[f"{module}Widget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    wrapper = classes[f"{module}ParameterNode"]
    assert [ast.unparse(d) for d in wrapper.decorator_list] == ["parameterNodeWrapper"]
    assert all(isinstance(item, ast.AnnAssign) for item in wrapper.body[1:])  # a readable list, nothing built
    assert f"{module}Logic" not in classes and "sys.path" not in source and ".core." not in source
    assert 'self.parent.dependencies = ["QMRICommon"]' in source
    lib = (ROOT / module / f"{module}Lib" / "logic.py").read_text()
    assert f"class {module}Logic(LogicBase):" in lib
    for folder in (module, "QMRICommon"):
        cmake = (ROOT / folder / "CMakeLists.txt").read_text()
        assert "slicerMacroBuildScriptedModule" in cmake and f"add_subdirectory({folder})" in (
            ROOT / "CMakeLists.txt").read_text()
        for path in sorted((ROOT / folder / f"{folder}Lib").glob("*.py")):
            assert f"{folder}Lib/{path.name}" in cmake, f"{path.name} missing from MODULE_PYTHON_SCRIPTS"
    cmake = (ROOT / module / "CMakeLists.txt").read_text()
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in cmake
    assert (ROOT / module / "Resources" / "Icons" / f"{module}.png").stat().st_size > 1000
    assert (ROOT / module / "Testing" / "Python" / "CMakeLists.txt").is_file()
    assert (ROOT / "CMakeLists.txt").read_text().index("add_subdirectory(QMRICommon)") < (
        ROOT / "CMakeLists.txt").read_text().index(f"add_subdirectory({module})")


def test_standin_panels_load_and_render(tmp_path):
    pytest.importorskip("PySide6.QtUiTools")
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT / "Testing"))
    import widget_standin

    for module in MODULES:
        panel = widget_standin.loadPanel(module)
        names = {w.objectName() for w in panel.findChildren(widget_standin.QWidget)}
        assert set(widgets(module)) - {module} <= names
        specs = widget_standin.moduleSpecs(module)
        written = widget_standin.writeDefaults(panel, specs)
        assert set(written) == set(specs)
        if module == "QMRISynth":
            slider = widget_standin.findWidget(panel, "trSliderWidget")
            assert (slider.getMinimum(), slider.getMaximum(), slider.getValue()) == (
                specs["tr"].minimum, specs["tr"].maximum, specs["tr"].default)
        out = widget_standin.screenshot(module, tmp_path / f"{module}.png")
        assert out.stat().st_size > 5000


@pytest.mark.parametrize("module", MODULES)
def test_module_file_executes_with_stub_app_modules(module, monkeypatch):
    """Import ``<Module>.py`` with STUBS for the app-only modules (qt, ctk, ScriptedLoadableModule, the wrapper):
    catches errors at import time and checks the parameter-node class it builds (real typing, real MRML classes)."""
    import importlib
    import importlib.util
    import types
    import typing

    import slicer

    class Validator:
        def __init__(self, *args):
            self.args = args

    def stub(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    base = type("Base", (), {"__init__": lambda self, *a, **k: None})
    stub("qt")
    stub("ctk")
    stub("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    stub("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, WithinRange=Validator, Choice=Validator)
    stub("slicer.ScriptedLoadableModule", ScriptedLoadableModule=base, ScriptedLoadableModuleWidget=base,
         ScriptedLoadableModuleLogic=base, ScriptedLoadableModuleTest=base)
    spec = importlib.util.spec_from_file_location(f"_{module}_stubbed", ROOT / module / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, loaded)
    spec.loader.exec_module(loaded)
    cls = getattr(loaded, f"{module}ParameterNode")
    hints = typing.get_type_hints(cls, include_extras=True)  # what parameterNodeWrapper itself calls
    scalars, nodes = MODULES[module]
    # the declarative class and the Lib's specs agree: names, kinds, defaults, ranges, choices, node classes
    assert list(hints) == [s.name for s in scalars] + [n.name for n in nodes]
    for n in nodes:
        assert hints[n.name] is getattr(slicer, n.className)
    for s in scalars:
        assert getattr(cls, s.name) == s.default and type(getattr(cls, s.name)) is type(s.default), s.name
        kind, *validators = typing.get_args(hints[s.name]) or (hints[s.name],)
        assert kind is (Path if isinstance(s.default, Path) else s.kind), s.name
        if s.minimum is not None:
            assert [v.args for v in validators] == [(s.minimum, s.maximum)], s.name
        elif s.choices is not None:
            assert [v.args for v in validators] == [(list(s.choices),)], s.name
        else:
            assert validators == [], s.name
    lib = importlib.import_module(f"{module}Lib.logic")
    assert getattr(loaded, f"{module}Logic") is getattr(lib, f"{module}Logic")  # the module's Logic is the Lib's


def test_segment_model_list_widgets():
    """The model table (shipped + imported models) and the import action of QMRISegment (issue 11)."""
    from QMRISegmentLib.models import MODEL_TABLE_COLUMNS

    found = widgets("QMRISegment")
    table, button = found["modelTableWidget"], found["importModelButton"]
    assert table.get("class") == "QTableWidget" and button.get("class") == "QPushButton"
    headers = [c.find("property/string").text for c in table.findall("column")]
    assert headers == list(MODEL_TABLE_COLUMNS)  # the .ui's header is the Lib's one definition
    assert prop(table, "selectionBehavior") == "QAbstractItemView::SelectRows"
    assert prop(table, "selectionMode") == "QAbstractItemView::SingleSelection"
    assert prop(table, "editTriggers") == "QAbstractItemView::NoEditTriggers"
    assert prop(button, "text") == "Import SynthStroke model\u2026"
    code = (ROOT / "QMRISegment" / "QMRISegment.py").read_text()
    assert "self.ui.importModelButton.clicked.connect(self.onImportModelButton)" in code
    assert "self.ui.modelTableWidget.itemSelectionChanged.connect(self.onModelSelected)" in code
    # the chooser writes the picked model into the parameter node, and the import goes through the Logic
    assert "self._parameterNode.modelPath = self._models[row].path" in code
    assert "self.logic.importSynthStrokeModel(" in code and "self.logic.listModels(" in code


def test_standin_model_table_shows_the_shipped_models(tmp_path):
    pytest.importorskip("PySide6.QtUiTools")
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT / "Testing"))
    import widget_standin
    from QMRISegmentLib.models import listModels

    panel = widget_standin.loadPanel("QMRISegment")
    widget_standin.dressSegmentPanel(panel)
    table = widget_standin.findWidget(panel, "modelTableWidget")
    shipped, _ = listModels("segmenter", userFolder=tmp_path)
    assert table.columnCount() == 5 and table.rowCount() == len(shipped) + 1
    assert [table.horizontalHeaderItem(c).text() for c in range(5)] == ["Name", "Classes", "Expected input",
                                                                        "Source", "Size"]
    assert [table.item(r, 0).text() for r in range(len(shipped))] == ["lesion_seg_qsynth"]
    assert table.item(0, 1).text() == "6: background, GM, WM, GM/WM PV, CSF, lesion"


def test_multi_echo_widgets_of_qmrisynth():
    """The CPMG sequence: its own group (shown for "cpmg" only) with the five bound controls, drags wired."""
    from QMRISynthLib.parameters import MULTI_ECHO, MULTI_ECHO_PARAMETERS

    tree = ui_tree("QMRISynth")
    group = next(w for w in tree.iter("widget") if w.get("name") == "multiEchoGroupBox")
    inside = {prop(w, "SlicerParameterName"): w for w in group.iter("widget") if prop(w, "SlicerParameterName")}
    assert set(inside) == {"multiEchoSource", *MULTI_ECHO_PARAMETERS}
    assert inside["displayedEcho"].get("class") == "QSlider" and inside["echoCount"].get("class") == "QSpinBox"
    assert prop(inside["echoSpacing"], "suffix") == " ms" and prop(inside["refocusAngle"], "suffix") == " deg"
    sequence = widgets("QMRISynth")["sequenceComboBox"]
    assert MULTI_ECHO in [item.find("property/string").text for item in sequence.findall("item")]
    code = (ROOT / "QMRISynth" / "QMRISynth.py").read_text()
    assert "self.ui.multiEchoGroupBox.setVisible(multiEcho)" in code
    for name in ("echoSpacing", "refocusAngle"):  # dragging updates the slices, release the volume
        assert re.search(rf'self\.ui\.{name}SliderWidget\.valueIsChanging\.connect\(\s*lambda value: '
                         rf'self\.onSliderDragged\("{name}", value\)\)', code), name
    assert "self.logic.echoSeriesSequence()" in code and "self.logic.missingInputs(p)" in code


def test_mwf_widgets_of_qmrisegment():
    """Estimate MWF: a volume-sequence input, TE in ms, NNLS/CNN, model, mask, output, one button (Cancel too)."""
    found = widgets("QMRISegment")
    assert prop(found["multiEchoSequenceSelector"], "nodeTypes") == ["vtkMRMLSequenceNode"]
    assert found["mwfEchoSpacingSpinBox"].get("class") == "QDoubleSpinBox"
    assert prop(found["mwfEchoSpacingSpinBox"], "suffix") == " ms"
    assert prop(found["mwfVolumeSelector"], "addEnabled") is True
    code = (ROOT / "QMRISegment" / "QMRISegment.py").read_text()
    assert "self.ui.estimateMwfButton.clicked.connect(self.onEstimateMwfButton)" in code
    assert 'self._startJob("mwf", self.logic.startMwfFromParameters(self._parameterNode))' in code
    assert 'self.ui.estimateMwfButton.setText(_("Cancel") if running and self._jobButton == "mwf"' in code
    assert "self.logic.cnnUnavailableReason(p.mwfModelPath)" in code


def test_standin_cnn_item_is_disabled_with_the_reason(tmp_path):
    pytest.importorskip("PySide6.QtUiTools")
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT / "Testing"))
    import widget_standin
    from PySide6.QtCore import Qt

    sys.path.insert(0, str(ROOT / "QMRISegment"))
    from QMRISegmentLib.logic import QMRISegmentLogic

    panel = widget_standin.loadPanel("QMRISegment")
    widget_standin.dressSegmentPanel(panel)
    combo = widget_standin.findWidget(panel, "mwfMethodComboBox")
    item = combo.model().item(combo.findText("CNN"))
    assert item.isEnabled()  # the shipped Resources/Models/mwf_cnn.pt
    missing = tmp_path / "mwf_cnn.pt"
    widget_standin.disableUnavailableCnn(panel, QMRISegmentLogic(scene=object()).cnnUnavailableReason(missing))
    assert not item.isEnabled() and not (item.flags() & Qt.ItemIsEnabled)
    assert "mwf_cnn.pt" in item.toolTip() and "MWF model file: no such file" in combo.toolTip()
    assert combo.model().item(combo.findText("NNLS")).isEnabled()
    synth = widget_standin.loadPanel("QMRISynth")
    widget_standin.dressSynthPanel(synth)
    widget_standin.showMultiEcho(synth, echo=4)
    assert widget_standin.findWidget(synth, "displayedEchoValueLabel").text() == "echo 4 of 32, at 40 ms"
    assert widget_standin.screenshot("QMRISynth", tmp_path / "me.png", multiEcho=True).stat().st_size > 5000


@pytest.mark.parametrize("module", MODULES)
def test_module_test_class_runs_every_test_and_uses_real_slicer_util(module):
    """The in-app ``<Module>Test`` cannot run here: check that runTest calls each test_ method, and that every
    ``slicer.util.<name>`` the module uses exists in slicer-core's ``slicer.util`` (a typo fails only in the app)."""
    import slicer.util

    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    test = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Test")
    methods = {f.name for f in test.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    run = next(f for f in test.body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
    called = {c.func.attr for c in ast.walk(run) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
    assert methods and methods <= called, f"{module}Test.runTest skips {sorted(methods - called)}"
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "util" and isinstance(n.value.value, ast.Name) and n.value.value.id == "slicer"}
    assert used, "no slicer.util calls found"
    missing = sorted(name for name in used if not hasattr(slicer.util, name))
    assert not missing, f"{module}.py uses slicer.util functions that do not exist: {missing}"
