"""QMRISegment: lesion segmentation and qMRI estimation (MPRAGE -> PD, R1, R2*, MT) with trained models.

Module / parameter node / Widget / Logic / Test in the Slicer 5 scripted-module shape.  The Logic is the
Qt-free ``QMRISegmentLib.logic.QMRISegmentLogic``; long work is a ``python -m qmricore ... --progress-lines``
run in a ``QMRICommonLib.runner.BackgroundRunner`` that the widget polls with a timer; Apply turns into
Cancel while it runs.  The Python packages it needs are installed on first use (``QMRICommonLib.dependencies``).
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

#: How often the widget polls the background process (ms).
POLL_INTERVAL_MS = 200


#
# QMRISegment
#


class QMRISegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("qMRI Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["QMRICommon"]
        self.parent.contributors = ["qMRI synthesis team"]
        self.parent.helpText = _(
            "Segment stroke lesions in one or more images (modality tags; logits ensembled across modalities) "
            "with a model trained on physics-based synthetic data, and estimate PD, R1, R2*, MT maps from an "
            "MPRAGE. Runs on the GPU when there is one. The result is a segmentation with a coded 'Lesion' "
            "segment and a table with the lesion volume in mL. The model list holds the shipped models and the ones "
            "you import: 'Import SynthStroke model...' turns the SynthStroke authors' published weights (which you "
            "download; their licence is the authors') into a model here, with the authors' preprocessing. "
            "'Estimate MWF' turns a multi-echo spin-echo series (a 4D NIfTI, which Slicer loads as a volume "
            "sequence) into a myelin water fraction map by regularised NNLS or a trained CNN (qmricore mwf).")
        self.parent.acknowledgementText = _("Built on the qmricore library (MONAI networks).")


#
# QMRISegmentParameterNode
#


@parameterNodeWrapper
class QMRISegmentParameterNode:
    """The panel's parameters: the specs of ``QMRISegmentLib.parameters`` written out as the template has them
    (``Testing/test_widgets.py`` checks that the two agree)."""

    modality1: Annotated[str, Choice(["FLAIR", "T1w", "T2w", "DWI", "MPRAGE", "other"])] = "FLAIR"
    modality2: Annotated[str, Choice(["FLAIR", "T1w", "T2w", "DWI", "MPRAGE", "other"])] = "T1w"
    modality3: Annotated[str, Choice(["FLAIR", "T1w", "T2w", "DWI", "MPRAGE", "other"])] = "T2w"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    testTimeAugmentation: bool = True
    ensemble: bool = True
    modelPath: pathlib.Path = pathlib.Path()
    estimatorModelPath: pathlib.Path = pathlib.Path()
    mwfMethod: Annotated[str, Choice(["NNLS", "CNN"])] = "NNLS"
    mwfEchoSpacing: Annotated[float, WithinRange(5.0, 15.0)] = 10.0
    mwfModelPath: pathlib.Path = pathlib.Path()
    inputVolume1: slicer.vtkMRMLScalarVolumeNode
    inputVolume2: slicer.vtkMRMLScalarVolumeNode
    inputVolume3: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    outputTable: slicer.vtkMRMLTableNode
    multiEchoSequence: slicer.vtkMRMLSequenceNode
    mwfMask: slicer.vtkMRMLLabelMapVolumeNode
    mwfVolume: slicer.vtkMRMLScalarVolumeNode


#
# QMRISegmentLogic: the Lib's logic class (QMRISegmentLib.logic), imported once its packages are installed
#


def __getattr__(name: str):
    """``QMRISegment.QMRISegmentLogic`` is ``QMRISegmentLib.logic.QMRISegmentLogic``; it is imported on first use
    because it needs PyTorch and the rest, which :mod:`QMRICommonLib.dependencies` installs on first use."""
    if name == "QMRISegmentLogic":
        from QMRISegmentLib.logic import QMRISegmentLogic

        return QMRISegmentLogic
    raise AttributeError(name)


#
# QMRISegmentWidget
#


class QMRISegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self._jobButton = None
        self._pollTimer = None
        self._models = []
        self._panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/QMRISegment.ui"))
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
        from QMRISegmentLib.logic import QMRISegmentLogic
        from QMRISegmentLib.models import MODEL_TABLE_COLUMNS

        self.logic = QMRISegmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.estimateButton.clicked.connect(self.onEstimateButton)
        self.ui.estimateMwfButton.clicked.connect(self.onEstimateMwfButton)
        self.ui.importModelButton.clicked.connect(self.onImportModelButton)
        self.ui.modelTableWidget.itemSelectionChanged.connect(self.onModelSelected)
        self.ui.modelTableWidget.setColumnCount(len(MODEL_TABLE_COLUMNS))
        self.ui.modelTableWidget.setHorizontalHeaderLabels(list(MODEL_TABLE_COLUMNS))
        self.ui.progressBar.setVisible(False)
        self.ui.progressBar.setRange(0, 100)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPoll)

        self.initializeParameterNode()
        self.updateModelTable()
        return True

    def cleanup(self) -> None:
        self.removeObservers()
        self.cancelJob()

    def enter(self) -> None:
        if self.connectLogic():
            self.initializeParameterNode()
            self.updateModelTable()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        if self.logic is None:
            return
        self.setParameterNode(QMRISegmentParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume1:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume1 = first

    def setParameterNode(self, inputParameterNode: QMRISegmentParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    # ------------------------------------------------------------------ model list
    def updateModelTable(self, select=None) -> None:
        """Fill the model table from the Lib (shipped + imported models); select ``select`` or the current model."""
        self._models, problems = self.logic.listModels("segmenter")
        table = self.ui.modelTableWidget
        current = str(select if select is not None else (self._parameterNode.modelPath if self._parameterNode else ""))
        table.blockSignals(True)
        table.clearContents()
        table.setRowCount(len(self._models))
        for row, model in enumerate(self._models):
            for column, text in enumerate(model.row()):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(model.toolTip)
                table.setItem(row, column, item)
            if current not in ("", ".") and str(model.path) == current:
                table.selectRow(row)
        table.resizeColumnsToContents()
        table.blockSignals(False)
        if problems:  # unreadable files in the model folders: shown, not swallowed
            self.ui.statusLabel.setText(_("Not listed: {problems}").format(problems="; ".join(problems)))

    def onModelSelected(self) -> None:
        row = self.ui.modelTableWidget.currentRow()
        if self._parameterNode is None or not 0 <= row < len(self._models):
            return
        self._parameterNode.modelPath = self._models[row].path

    def onImportModelButton(self) -> None:
        chosen = qt.QFileDialog.getOpenFileName(
            self.parent, _("Import SynthStroke model"), "",
            _("SynthStroke weights (*.safetensors *.pt *.pth *.ckpt);;All files (*)"))
        source = chosen[0] if isinstance(chosen, tuple) else chosen  # PythonQt: the path; PySide: (path, filter)
        if not source:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the SynthStroke model."), waitCursor=True):
            spacing = None
            if self.logic.statedSpacing(source) is None:  # a raw checkpoint says nothing about its voxel size
                lowRes = slicer.util.confirmYesNoDisplay(
                    _("Was this model trained at 2 mm (the authors' low-resolution variant)? "
                      "Answer No for the standard 1 mm models."))
                spacing = 2.0 if lowRes else 1.0
            model = self.logic.importSynthStrokeModel(source, spacing=spacing)
            self._parameterNode.modelPath = model.path
            self.updateModelTable(select=model.path)
            self.ui.statusLabel.setText(_("Imported {name} ({classes}); licence: {licence}").format(
                name=model.name, classes=model.classesText, licence=model.licence))

    # ------------------------------------------------------------------ buttons
    def updateButtons(self, caller=None, event=None) -> None:
        running = self.job is not None
        p = self._parameterNode
        hasInput = bool(p and p.inputVolume1)
        hasSeries = bool(p and p.multiEchoSequence)
        self.ui.applyButton.setText(_("Cancel") if running and self._jobButton == "segment" else _("Segment lesions"))
        self.ui.estimateButton.setText(_("Cancel") if running and self._jobButton == "estimate"
                                       else _("Estimate qMRI maps (MPRAGE)"))
        self.ui.estimateMwfButton.setText(_("Cancel") if running and self._jobButton == "mwf" else _("Estimate MWF"))
        self.ui.applyButton.setEnabled(hasInput and (not running or self._jobButton == "segment"))
        self.ui.estimateButton.setEnabled(hasInput and (not running or self._jobButton == "estimate"))
        self.ui.estimateMwfButton.setEnabled(hasSeries and (not running or self._jobButton == "mwf"))
        if p is not None:
            self.updateMwfMethods()

    def updateMwfMethods(self) -> None:
        """Enable the CNN method only when a model file is there; its tooltip says why not."""
        p = self._parameterNode
        reason = self.logic.cnnUnavailableReason(p.mwfModelPath)
        combo = self.ui.mwfMethodComboBox
        item = combo.model().item(combo.findText("CNN"))
        if item is not None:
            item.setEnabled(not reason)
            item.setToolTip(reason or _("Trained CNN MWF estimator"))
        combo.setToolTip(reason or _("NNLS: regularised T2 spectrum per voxel; CNN: the trained network"))
        if reason and p.mwfMethod == "CNN":
            p.mwfMethod = "NNLS"

    def onApplyButton(self) -> None:
        if self.job is not None:
            self.cancelJob()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            self._startJob("segment", self.logic.startSegmentation(
                self.logic.inputsFromParameters(p), p.modelPath, p.testTimeAugmentation, p.device,
                p.outputSegmentation, p.outputTable))

    def onEstimateButton(self) -> None:
        if self.job is not None:
            self.cancelJob()
            return
        p = self._parameterNode
        mprage = next((node for node, modality in self.logic.inputsFromParameters(p) if modality == "MPRAGE"),
                      p.inputVolume1)
        with slicer.util.tryWithErrorDisplay(_("Could not start the estimation."), waitCursor=True):
            self._startJob("estimate", self.logic.startEstimation(
                mprage, p.estimatorModelPath, p.testTimeAugmentation, p.device))

    def onEstimateMwfButton(self) -> None:
        if self.job is not None:
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the MWF estimation."), waitCursor=True):
            self._startJob("mwf", self.logic.startMwfFromParameters(self._parameterNode))

    # ------------------------------------------------------------------ background job
    def _startJob(self, button: str, job) -> None:
        self.job, self._jobButton = job, button
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.setText(_("Starting..."))
        self._pollTimer.start()
        self.updateButtons()

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
                self.ui.progressBar.setValue(int(round(100 * event.fraction)))
                self.ui.statusLabel.setText(event.message)
            elif event.kind is RunnerEvent.LOG:
                logging.info("QMRISegment background run: %s", event.message)
            else:
                self._finish(event)
                return

    def _finish(self, event) -> None:
        from QMRICommonLib.runner import RunnerEvent

        job, self.job = self.job, None
        self._pollTimer.stop()
        self.ui.progressBar.setVisible(False)
        self.updateButtons()
        if event.kind is RunnerEvent.CANCELLED:
            job.cleanup()
            self.ui.statusLabel.setText(_("Cancelled."))
            return
        try:
            nodes = self.logic.finishJob(job, event)
        except Exception as error:  # the run's last error line, shown, not swallowed
            self.ui.statusLabel.setText(str(error))
            slicer.util.errorDisplay(_("Failed: {message}").format(message=error))
            return
        p = self._parameterNode
        if job.kind == "segment":
            p.outputSegmentation, p.outputTable = nodes["segmentation"], nodes["table"]
            nodes["segmentation"].CreateClosedSurfaceRepresentation()
            self.ui.statusLabel.setText(_("Lesion volume: {ml:.2f} mL").format(ml=nodes["lesion_ml"] or 0.0))
        elif job.kind == "mwf":
            p.mwfVolume = nodes["mwf"]
            slicer.util.setSliceViewerLayers(background=nodes["mwf"], fit=True)
            self.ui.statusLabel.setText(_("MWF map: {name}").format(name=nodes["mwf"].GetName()))
        else:
            slicer.util.setSliceViewerLayers(background=nodes.get("r1"))
            names = ", ".join(node.GetName() for node in nodes.values())
            self.ui.statusLabel.setText(_("Estimated: {maps}").format(maps=names))


#
# QMRISegmentTest (runs in the Slicer app)
#


class QMRISegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ImportMaskAsCodedSegment()
        self.setUp()
        self.test_BackgroundSegmentationAndCancel()
        self.setUp()
        self.test_EstimateMwfFromA4DNifti()

    def _volume(self):
        rng = np.random.default_rng(0)
        ijkToRas = np.diag([0.9, 1.1, 2.0, 1.0])
        return slicer.util.addVolumeFromArray(rng.uniform(0, 100, (10, 12, 14)).astype(np.float32), ijkToRas,
                                              name="flair")

    def _tinyModel(self, path):
        import torch
        from qmricore.inference.preprocess import PreprocessConfig
        from qmricore.inference.window import WindowConfig
        from qmricore.models.model_file import save_model
        from qmricore.models.networks import SegmenterConfig, build_network

        torch.manual_seed(0)
        config = SegmenterConfig(classes="binary", channels=(2, 4), num_res_units=0)
        return save_model(path, build_network("segmenter", config), config, preprocessing=PreprocessConfig(spacing=2.0),
                          inference=WindowConfig(patch=(16, 16, 16)))

    def test_ImportMaskAsCodedSegment(self):
        from qmricore.io import Volume, write_nifti
        from QMRISegmentLib.logic import LESION_TERMINOLOGY

        self.delayDisplay("Mask file -> coded Lesion segment and volume table")
        volume = self._volume()
        mask = np.zeros((10, 12, 14), np.uint8)
        mask[3:6, 4:8, 5:9] = 1
        path = os.path.join(slicer.app.temporaryPath, "qmrisegment_test_mask.nii.gz")
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        like = Volume(mask.transpose(2, 1, 0), slicer.util.arrayFromVTKMatrix(matrix))
        write_nifti(path, mask.transpose(2, 1, 0), like)
        from QMRISegmentLib.logic import QMRISegmentLogic

        seg, table = QMRISegmentLogic().importSegmentation(path, volume)
        segmentId = seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
        self.assertEqual(seg.GetSegmentation().GetSegment(segmentId).GetTerminology(), LESION_TERMINOLOGY)
        exported = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentId, volume)
        self.assertEqual(int(exported.sum()), int(mask.sum()))
        self.assertAlmostEqual(slicer.util.arrayFromTableColumn(table, "Volume (mL)")[0],
                               mask.sum() * 0.9 * 1.1 * 2.0 / 1000, places=9)
        self.delayDisplay("Test passed")

    def test_BackgroundSegmentationAndCancel(self):
        self.delayDisplay("Background segmentation through the widget; Apply turns into Cancel")
        volume = self._volume()
        model = self._tinyModel(os.path.join(slicer.app.temporaryPath, "qmrisegment_test_model.pt"))
        slicer.util.selectModule("QMRISegment")
        widget = slicer.modules.QMRISegmentWidget
        p = widget._parameterNode
        p.inputVolume1, p.modelPath, p.device, p.testTimeAugmentation = volume, model, "cpu", False
        widget.ui.applyButton.click()
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        widget.ui.applyButton.click()  # cancel
        self.assertIsNone(widget.job)
        self.assertEqual(widget.ui.applyButton.text, "Segment lesions")
        widget.ui.applyButton.click()
        while widget.job is not None:
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        self.assertIsNotNone(p.outputSegmentation)
        self.assertIsNotNone(p.outputTable)
        self.delayDisplay("Test passed")

    def test_EstimateMwfFromA4DNifti(self):
        import nibabel as nib
        from qmricore.physics import cpmg

        self.delayDisplay("Estimate MWF: a 4D NIfTI loaded as a volume sequence, NNLS in the background, Cancel")
        trains = cpmg(np.array([0.02, 0.08]), 1.0, te=0.01, n_echoes=16, refocus=170.0)
        train = 100.0 * (0.2 * trains[0] + 0.8 * trains[1])  # MWF 0.2
        affine = np.array([[0.9, 0.1, 0.0, -10.0], [-0.1, 0.9, 0.0, 5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
        path = os.path.join(slicer.app.temporaryPath, "qmrisegment_test_multi_echo.nii.gz")
        nib.save(nib.Nifti1Image(np.broadcast_to(train, (4, 3, 2, 16)).astype(np.float32), affine), path)
        sequence = slicer.util.loadSequence(path)
        self.assertTrue(sequence.IsA("vtkMRMLSequenceNode"))
        slicer.util.selectModule("QMRISegment")
        widget = slicer.modules.QMRISegmentWidget
        p = widget._parameterNode
        p.multiEchoSequence, p.mwfEchoSpacing, p.mwfMethod = sequence, 10.0, "NNLS"
        combo = widget.ui.mwfMethodComboBox
        if widget.logic.cnnUnavailableReason(p.mwfModelPath):  # no shipped CNN: its item is disabled
            self.assertFalse(combo.model().item(combo.findText("CNN")).isEnabled())
        widget.ui.estimateMwfButton.click()
        self.assertEqual(widget.ui.estimateMwfButton.text, "Cancel")
        widget.ui.estimateMwfButton.click()  # cancel
        self.assertIsNone(widget.job)
        self.assertEqual(widget.ui.estimateMwfButton.text, "Estimate MWF")
        widget.ui.estimateMwfButton.click()
        while widget.job is not None:
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        mwf = slicer.util.arrayFromVolume(p.mwfVolume)
        self.assertEqual(mwf.shape, (2, 3, 4))
        self.assertTrue(np.all(np.abs(mwf - 0.2) < 0.02))
        reference, output = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        sequence.GetNthDataNode(0).GetIJKToRASMatrix(reference)
        p.mwfVolume.GetIJKToRASMatrix(output)
        np.testing.assert_array_equal(slicer.util.arrayFromVTKMatrix(output), slicer.util.arrayFromVTKMatrix(reference))
        self.delayDisplay("Test passed")


if __name__ == "__main__":  # pragma: no cover
    unittest.main()
