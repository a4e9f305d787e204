"""QMRISynth: simulate MRI sequences from quantitative maps (PD, R1, R2*, MT) with live sliders.

Module / parameter node / Widget / Logic / Test in the Slicer 5 scripted-module shape.  The Logic is the
Qt-free ``QMRISynthLib.logic.QMRISynthLogic`` (it also runs outside the app on a slicer-core MRML scene);
this file binds the panel to a parameter node and calls that Logic.  The Python packages it needs are
installed on first use (``QMRICommonLib.dependencies``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import unittest
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from QMRICommonLib import dependencies
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Milliseconds to wait after the last change before the full-volume update (coalesces bursts).
FULL_UPDATE_DELAY_MS = 150
#: How often the widget polls a background "Generate brain" run (ms).
POLL_INTERVAL_MS = 200


#
# QMRISynth
#


class QMRISynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("qMRI Synth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["QMRICommon"]
        self.parent.contributors = ["qMRI synthesis team"]
        self.parent.helpText = _(
            "Simulate FSE, GRE/SPGR, FLAIR, MPRAGE and MP2RAGE images from quantitative maps (PD, R1, R2*, "
            "MT, optional B1) and watch the contrast change while dragging the TR/TE/TI/flip sliders. "
            "Load an hMRI-toolbox folder, or generate maps from a label map with qSynth (seeded). "
            "The multi-echo spin echo (cpmg) simulates a whole echo train and shows the echo you choose; it needs "
            "an R2 map (R2* is not T2) or takes the series from the label map with SynthMap. "
            "Times are in seconds, angles in degrees.")
        self.parent.acknowledgementText = _(
            "Physics after the qMRI-synthesis seed papers (physics-constrained synthetic data for lesion "
            "segmentation; SynthSeg). Built on the qmricore library.")


#
# QMRISynthParameterNode
#


@parameterNodeWrapper
class QMRISynthParameterNode:
    """The panel's parameters: the specs of ``QMRISynthLib.parameters`` written out as the template has them
    (``Testing/test_widgets.py`` checks that the two agree; the sequence ranges there come from
    ``qmricore.protocols``)."""

    sequence: Annotated[str, Choice(["gre", "fse", "flair", "mprage", "mp2rage", "cpmg"])] = "flair"
    tr: Annotated[float, WithinRange(0.001, 10.0)] = 9.0
    te: Annotated[float, WithinRange(0.001, 3.0)] = 0.1
    ti: Annotated[float, WithinRange(0.001, 4.0)] = 2.5
    flip: Annotated[float, WithinRange(1.0, 90.0)] = 25.0
    tx: Annotated[float, WithinRange(0.003, 0.02)] = 0.0071
    n: Annotated[int, WithinRange(1, 256)] = 176
    ti2: Annotated[float, WithinRange(0.5, 6.0)] = 2.5
    flip2: Annotated[float, WithinRange(1.0, 30.0)] = 5.0
    multiEchoSource: Annotated[str, Choice(["maps", "label map"])] = "maps"
    echoSpacing: Annotated[float, WithinRange(5.0, 15.0)] = 10.0
    echoCount: Annotated[int, WithinRange(8, 48)] = 32
    refocusAngle: Annotated[float, WithinRange(50.0, 180.0)] = 180.0
    displayedEcho: Annotated[int, WithinRange(1, 48)] = 1
    useB1t: bool = True
    useB1r: bool = True
    addNoise: bool = False
    snr: Annotated[float, WithinRange(1.0, 200.0)] = 30.0
    noiseSeed: Annotated[int, WithinRange(0, 999999)] = 0
    liveUpdate: bool = True
    qsynthSeed: Annotated[int, WithinRange(0, 999999)] = 0
    sweptParameter: Annotated[str, Choice(["tr", "te", "ti", "flip", "tx", "n", "ti2", "flip2"])] = "tr"
    ventricleMl: Annotated[float, WithinRange(8.0, 150.0)] = 25.0
    brainSeed: Annotated[int, WithinRange(0, 999999)] = 0
    brainModelPath: pathlib.Path = pathlib.Path()
    pdVolume: slicer.vtkMRMLScalarVolumeNode
    r1Volume: slicer.vtkMRMLScalarVolumeNode
    r2sVolume: slicer.vtkMRMLScalarVolumeNode
    mtVolume: slicer.vtkMRMLScalarVolumeNode
    r2Volume: slicer.vtkMRMLScalarVolumeNode
    b1tVolume: slicer.vtkMRMLScalarVolumeNode
    b1rVolume: slicer.vtkMRMLScalarVolumeNode
    labelVolume: slicer.vtkMRMLLabelMapVolumeNode
    outputVolume: slicer.vtkMRMLScalarVolumeNode
    signalTable: slicer.vtkMRMLTableNode


#
# QMRISynthLogic: the Lib's logic class (QMRISynthLib.logic), imported once its packages are installed
#


def __getattr__(name: str):
    """``QMRISynth.QMRISynthLogic`` is ``QMRISynthLib.logic.QMRISynthLogic``; it is imported on first use because
    it needs PyTorch and the rest, which :mod:`QMRICommonLib.dependencies` installs on first use."""
    if name == "QMRISynthLogic":
        from QMRISynthLib.logic import QMRISynthLogic

        return QMRISynthLogic
    raise AttributeError(name)


#
# QMRISynthWidget
#


class QMRISynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._simulating = False
        self._fullUpdateTimer = None
        self._panel = None
        self.job = None
        self._pollTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/QMRISynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._panel = uiWidget
        self.connectLogic()

    def connectLogic(self) -> bool:
        """Create the Logic and wire the panel once the Python packages are there (asked for, and installed, on
        first use); until then the panel is disabled and says why."""
        if self.logic is not None:
            return True
        if not dependencies.ensureInSlicer():
            self._panel.setEnabled(False)
            self.ui.statusLabel.setText(_("Needs Python packages that are not installed yet: leave and re-enter "
                                          "the module to be asked again."))
            return False
        self._panel.setEnabled(True)
        from QMRISynthLib.logic import QMRISynthLogic
        from QMRISynthLib.parameters import SEQUENCE_PARAMETERS, presetNames

        self.logic = QMRISynthLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.presetComboBox.addItem(_("(choose a preset)"))
        for name in presetNames():
            self.ui.presetComboBox.addItem(name)
        self.ui.presetComboBox.currentIndexChanged.connect(self.onPresetSelected)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.loadHMRIButton.clicked.connect(self.onLoadHMRIFolder)
        self.ui.synthesizeButton.clicked.connect(self.onSynthesize)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.plotButton.clicked.connect(self.onPlot)
        # Sliders do not track (the .ui sets tracking off): while dragging they emit valueIsChanging, which
        # updates the displayed slices; on release valueChanged reaches the parameter node, which triggers
        # the full-volume update.
        for name in SEQUENCE_PARAMETERS:
            if name != "n":
                slider = getattr(self.ui, f"{name}SliderWidget")
                slider.valueIsChanging.connect(lambda value, name=name: self.onSliderDragged(name, value))
        self.ui.snrSliderWidget.valueIsChanging.connect(lambda value: self.onSliderDragged("snr", value))
        self.ui.echoSpacingSliderWidget.valueIsChanging.connect(
            lambda value: self.onSliderDragged("echoSpacing", value))
        self.ui.refocusAngleSliderWidget.valueIsChanging.connect(
            lambda value: self.onSliderDragged("refocusAngle", value))
        self.ui.echoSeriesButton.clicked.connect(self.onEchoSeries)
        self.ui.generateBrainButton.clicked.connect(self.onGenerateBrainButton)
        self.ui.brainProgressBar.setRange(0, 100)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPoll)

        self._fullUpdateTimer = qt.QTimer()
        self._fullUpdateTimer.setSingleShot(True)
        self._fullUpdateTimer.setInterval(FULL_UPDATE_DELAY_MS)
        self._fullUpdateTimer.timeout.connect(self.updateFullVolume)

        self.initializeParameterNode()
        return True

    def cleanup(self) -> None:
        self.removeObservers()
        self.cancelJob()
        if self._fullUpdateTimer is not None:
            self._fullUpdateTimer.stop()

    def enter(self) -> None:
        if self.connectLogic():
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        if self.logic is None:
            return
        self.setParameterNode(QMRISynthParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, inputParameterNode: QMRISynthParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    # ------------------------------------------------------------------ state
    def _ready(self) -> bool:
        p = self._parameterNode
        return bool(p) and not self.logic.missingInputs(p)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        from QMRISynthLib.parameters import MULTI_ECHO, SEQUENCE_PARAMETERS, parametersOfSequence

        p = self._parameterNode
        if p is None:
            return
        used = parametersOfSequence(p.sequence)
        for name in SEQUENCE_PARAMETERS:
            control = self.ui.nSpinBox if name == "n" else getattr(self.ui, f"{name}SliderWidget")
            control.setVisible(name in used)
            getattr(self.ui, f"{name}Label").setVisible(name in used)
        multiEcho = p.sequence == MULTI_ECHO
        self.ui.multiEchoGroupBox.setVisible(multiEcho)
        if multiEcho and p.displayedEcho > p.echoCount:  # fewer echoes than the one shown: show the last
            p.displayedEcho = p.echoCount
            return  # the change comes back here
        self.ui.displayedEchoValueLabel.setText(_("echo {k} of {n}, at {t:g} ms").format(
            k=p.displayedEcho, n=p.echoCount, t=p.displayedEcho * p.echoSpacing))
        self.ui.echoSeriesButton.setEnabled(multiEcho and p.outputVolume is not None)
        self.ui.snrSliderWidget.setEnabled(p.addNoise)
        self.ui.noiseSeedSpinBox.setEnabled(p.addNoise)
        missing = self.logic.missingInputs(p)
        self.ui.applyButton.setEnabled(not missing)
        self.ui.applyButton.setToolTip(_("Simulate the whole volume") if not missing else missing)
        self.ui.synthesizeButton.setEnabled(p.labelVolume is not None)
        self.updateBrainButton()
        self.ui.exportButton.setEnabled(p.outputVolume is not None)
        if p.liveUpdate and self._ready() and not self._simulating:
            self._fullUpdateTimer.start()

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)

    # ------------------------------------------------------------------ live update
    def _sliceNodes(self) -> list:
        layoutManager = slicer.app.layoutManager()
        return [layoutManager.sliceWidget(name).mrmlSliceNode() for name in layoutManager.sliceViewNames()]

    def onSliderDragged(self, name: str, value: float) -> None:
        """Update only the displayed planes with the value being dragged (the parameter node waits)."""
        from QMRISynthLib.logic import SimulationSettings

        p = self._parameterNode
        if not (p and p.liveUpdate and self._ready() and p.outputVolume is not None):
            return
        if self.logic.fromLabels(p):  # SynthMap paints the whole label map: it follows on release
            return
        settings = SimulationSettings.fromParameters(p).withValue(name, value)
        if settings is None:
            return
        try:
            mapNodes = self.logic.mapNodesFromParameters(p)
            planes = self.logic.displayedPlanes(p.pdVolume, self._sliceNodes())
            self.logic.simulatePlanes(mapNodes, settings, planes, p.outputVolume)
            self._setStatus("")
        except ValueError as error:  # ParameterError / InputError: infeasible while dragging, say why
            self._setStatus(str(error))

    def updateFullVolume(self) -> None:
        if not self._ready():
            return
        try:
            self._simulate()
            self._setStatus("")
        except ValueError as error:
            self._setStatus(str(error))

    def _simulate(self):
        p = self._parameterNode
        self._simulating = True
        try:
            hadOutput = p.outputVolume is not None
            output = self.logic.simulateFromParameters(p)
            if not hadOutput:
                slicer.util.setSliceViewerLayers(background=output, fit=True)
            return output
        finally:
            self._simulating = False

    # ------------------------------------------------------------------ buttons
    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Simulation failed."), waitCursor=True):
            self._simulate()

    def onPresetSelected(self, index: int) -> None:
        if index <= 0 or self._parameterNode is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not apply the preset."), waitCursor=True):
            self.logic.applyPreset(self._parameterNode, self.ui.presetComboBox.currentText)

    def onLoadHMRIFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, _("hMRI-toolbox results folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the map set."), waitCursor=True):
            nodes = self.logic.loadHMRIFolder(folder)
            self.logic.assignMapNodes(self._parameterNode, nodes)
            if self.logic.lastNotes:
                self._setStatus("\n".join(self.logic.lastNotes))

    def onSynthesize(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("qSynth failed."), waitCursor=True):
            nodes = self.logic.synthesizeMaps(p.labelVolume, p.qsynthSeed)
            self.logic.assignMapNodes(p, nodes)

    def onExport(self) -> None:
        path = self.ui.exportPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            if not path:
                raise ValueError(_("choose a file name ending in .nii or .nii.gz"))
            written = self.logic.exportNifti(self._parameterNode.outputVolume, path)
            self._setStatus(_("Written: {path}").format(path=written))

    def onEchoSeries(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not make the echo series."), waitCursor=True):
            sequence = self.logic.echoSeriesSequence()
            self._setStatus(_("Echo series: {name} (choose it in qMRI Segment > Myelin water fraction)").format(
                name=sequence.GetName()))

    # ------------------------------------------------------------------ generate a brain (background run)
    def updateBrainButton(self) -> None:
        """Cancel while a brain is generated; disabled, with the reason as tooltip, without a mask generator."""
        p = self._parameterNode
        if p is None:
            return
        reason = self.logic.brainUnavailableReason(p.brainModelPath)
        running = self.job is not None
        self.ui.generateBrainButton.setText(_("Cancel") if running else _("Generate brain"))
        self.ui.generateBrainButton.setEnabled(running or not reason)
        self.ui.generateBrainButton.setToolTip(reason or _("Sample a labelled brain with this ventricle volume in "
                                                           "the background; it becomes the label map for qSynth"))

    def onGenerateBrainButton(self) -> None:
        if self.job is not None:
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start generating a brain."), waitCursor=True):
            self.job = self.logic.startBrainFromParameters(self._parameterNode)
            self.ui.brainProgressBar.setValue(0)
            self.ui.brainProgressBar.setVisible(True)
            self._setStatus(_("Starting..."))
            self._pollTimer.start()
        self.updateBrainButton()

    def cancelJob(self) -> None:
        if self.job is None:
            return
        self.job.runner.cancel()
        self.onPoll()

    def onPoll(self) -> None:
        from QMRICommonLib.runner import RunnerEvent

        if self.job is None:
            return
        for event in self.job.runner.poll():
            if event.kind is RunnerEvent.PROGRESS:
                self.ui.brainProgressBar.setValue(int(round(100 * event.fraction)))
                self._setStatus(event.message)
            elif event.kind is RunnerEvent.LOG:
                logging.info("QMRISynth background run: %s", event.message)
            else:
                self._finishBrain(event)
                return

    def _finishBrain(self, event) -> None:
        job, self.job = self.job, None
        self._pollTimer.stop()
        self.ui.brainProgressBar.setVisible(False)
        try:
            nodes = self.logic.finishBrainGeneration(job, event)
        except Exception as error:  # the run's last error line, shown, not swallowed
            self._setStatus(str(error))
            slicer.util.errorDisplay(_("Failed: {message}").format(message=error))
            return
        finally:
            self.updateBrainButton()
        if not nodes:
            self._setStatus(_("Cancelled."))
            return
        self._parameterNode.labelVolume = nodes["labels"]
        slicer.util.setSliceViewerLayers(label=nodes["labels"], fit=True)
        self._setStatus(_("Generated brain: ventricles {measured:.1f} mL (requested {requested:g} mL); "
                          "'Generate maps from labels' turns it into maps").format(
                              measured=nodes["measured_ml"], requested=nodes["requested_ml"]))

    def onPlot(self) -> None:
        from QMRISynthLib.logic import SimulationSettings

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not plot the signal."), waitCursor=True):
            table, chart = self.logic.signalCurves(SimulationSettings.fromParameters(p), p.sweptParameter,
                                                   tableNode=p.signalTable)
            p.signalTable = table
            slicer.modules.plots.logic().ShowChartInLayout(chart)


#
# QMRISynthTest (runs in the Slicer app: Developer mode > Reload and Test)
#


class QMRISynthTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SimulationMatchesLibrary()
        self.setUp()
        self.test_SliceUpdateAndWidget()
        self.setUp()
        self.test_MultiEchoFromMapsAndLabels()
        self.setUp()
        self.test_GenerateBrainInTheBackground()

    def _maps(self):
        rng = np.random.default_rng(0)
        shape = (12, 16, 20)
        ijkToRas = np.array([[0.9, 0.1, 0.0, -10.0], [-0.1, 1.2, 0.2, 5.0], [0.0, -0.2, 2.0, 3.0], [0, 0, 0, 1.0]])
        arrays = {"pd": rng.uniform(50, 100, shape), "r1": rng.uniform(0.2, 1.5, shape),
                  "r2s": rng.uniform(1, 30, shape)}
        nodes = {k: slicer.util.addVolumeFromArray(v.astype(np.float32), ijkToRas, name=k) for k, v in arrays.items()}
        return nodes, {k: v.astype(np.float32) for k, v in arrays.items()}, ijkToRas

    def test_SimulationMatchesLibrary(self):
        from qmricore import physics

        self.delayDisplay("Simulation equals qmricore.physics.simulate, geometry kept")
        nodes, arrays, ijkToRas = self._maps()
        from QMRISynthLib.logic import QMRISynthLogic

        logic = QMRISynthLogic()
        p = QMRISynthParameterNode(logic.getParameterNode())
        logic.assignMapNodes(p, nodes)
        logic.applyPreset(p, "3T FLAIR")
        output = logic.simulateFromParameters(p)
        expected = physics.simulate("flair", arrays, tr=p.tr, te=p.te, ti=p.ti)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(output), expected, rtol=1e-6)
        matrix = vtk.vtkMatrix4x4()
        output.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ijkToRas, atol=1e-9)
        self.delayDisplay("Test passed")

    def test_SliceUpdateAndWidget(self):
        self.delayDisplay("Slice-first update through the widget")
        nodes, _, _ = self._maps()
        slicer.util.selectModule("QMRISynth")
        widget = slicer.modules.QMRISynthWidget
        p = widget._parameterNode
        widget.logic.assignMapNodes(p, nodes)
        from QMRISynthLib.parameters import presetNames

        widget.ui.presetComboBox.setCurrentIndex(presetNames().index("T1 SPGR") + 1)
        self.assertEqual(p.sequence, "gre")
        widget.ui.applyButton.click()
        self.assertIsNotNone(p.outputVolume)
        slicer.util.setSliceViewerLayers(background=p.outputVolume, fit=True)
        before = slicer.util.arrayFromVolume(p.outputVolume).copy()
        widget.onSliderDragged("flip", 60.0)
        after = slicer.util.arrayFromVolume(p.outputVolume)
        self.assertFalse(np.array_equal(before, after))
        self.assertFalse(widget.ui.tiSliderWidget.visible)  # GRE has no TI
        self.delayDisplay("Test passed")

    def test_MultiEchoFromMapsAndLabels(self):
        from qmricore import physics

        self.delayDisplay("Multi-echo spin echo: echo k from maps is PD exp(-k TE R2); SynthMap from a label map")
        nodes, arrays, ijkToRas = self._maps()
        rng = np.random.default_rng(1)
        r2 = rng.uniform(5, 25, arrays["pd"].shape).astype(np.float32)
        nodes["r2"] = slicer.util.addVolumeFromArray(r2, ijkToRas, name="r2")
        slicer.util.selectModule("QMRISynth")
        widget = slicer.modules.QMRISynthWidget
        p = widget._parameterNode
        widget.logic.assignMapNodes(p, nodes)
        p.sequence, p.multiEchoSource, p.echoSpacing, p.echoCount, p.refocusAngle, p.displayedEcho = (
            "cpmg", "maps", 10.0, 16, 180.0, 4)
        self.assertFalse(widget.ui.multiEchoGroupBox.isHidden())
        self.assertTrue(widget.ui.trSliderWidget.isHidden())  # the CPMG train has no TR slider
        widget.ui.applyButton.click()
        expected = arrays["pd"] * np.exp(-4 * 0.010 * r2)  # ideal refocusing: T2 decay with R2, not R2*
        np.testing.assert_allclose(slicer.util.arrayFromVolume(p.outputVolume), expected, rtol=1e-5)
        p.displayedEcho = 20  # beyond the 16 echoes: the widget shows the last one
        self.assertEqual(p.displayedEcho, 16)
        p.refocusAngle = 150.0
        widget.ui.applyButton.click()
        trains = physics.cpmg(1 / r2, 1 / arrays["r1"], te=0.010, n_echoes=16, refocus=150.0)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(p.outputVolume), arrays["pd"] * trains[..., 15],
                                   rtol=1e-5)
        labels = np.zeros(arrays["pd"].shape, np.int16)
        labels[2:10, 3:13, 4:16] = 2  # white matter
        p.labelVolume = slicer.util.addVolumeFromArray(labels, ijkToRas, name="labels",
                                                       nodeClassName="vtkMRMLLabelMapVolumeNode")
        p.multiEchoSource, p.displayedEcho = "label map", 1
        widget.ui.applyButton.click()
        shown = slicer.util.arrayFromVolume(p.outputVolume)
        self.assertTrue(np.all(shown[labels == 0] == 0) and np.all(shown[labels == 2] > 0))  # noise off
        self.assertTrue(p.outputVolume.GetAttribute("QMRI.SynthMapDraw"))
        widget.ui.echoSeriesButton.click()
        series = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
        self.assertEqual(series.GetNumberOfDataNodes(), 16)
        self.delayDisplay("Test passed")

    def test_GenerateBrainInTheBackground(self):
        import torch
        from qmricore.ldm.models import LDMMasksConfig, build_ldm_masks
        from qmricore.models.model_file import save_model

        self.delayDisplay("Generate brain: a tiny untrained mask generator, sampled in the background, Cancel")
        torch.manual_seed(0)
        config = LDMMasksConfig(shape=(16, 16, 16), reference_ml=5.0, ae_channels=(8, 8), unet_channels=(8, 8),
                                num_head_channels=8, norm_num_groups=4, context_dim=8)
        path = os.path.join(slicer.app.temporaryPath, "qmrisynth_test_ldm_masks.pt")
        save_model(path, build_ldm_masks(config), config)
        slicer.util.selectModule("QMRISynth")
        widget = slicer.modules.QMRISynthWidget
        p = widget._parameterNode
        p.brainModelPath, p.ventricleMl, p.brainSeed = path, 20.0, 1
        widget.ui.generateBrainButton.click()
        self.assertEqual(widget.ui.generateBrainButton.text, "Cancel")
        widget.ui.generateBrainButton.click()  # cancel
        self.assertIsNone(widget.job)
        self.assertEqual(widget.ui.generateBrainButton.text, "Generate brain")
        widget.ui.generateBrainButton.click()
        while widget.job is not None:
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        self.assertTrue(p.labelVolume.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertEqual(slicer.util.arrayFromVolume(p.labelVolume).shape, (16, 16, 16))
        self.delayDisplay("Test passed")


if __name__ == "__main__":  # pragma: no cover
    logging.info("QMRISynth is a Slicer module; load it in Slicer. %s", os.path.basename(__file__))
    unittest.main()
