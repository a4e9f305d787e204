"""QMRISegment computation on MRML nodes, without Qt.

* :meth:`QMRISegmentLogic.startSegmentation` writes the input volume nodes to NIfTI in a temporary
  folder and runs ``python -m qmricore segment ... --progress-lines`` in a
  :class:`~QMRICommonLib.runner.BackgroundRunner`;
  :meth:`QMRISegmentLogic.finishJob` turns its output into MRML nodes: a segmentation node with one
  terminology-coded "Lesion" segment on the first input's grid, and a table with the lesion volume in mL.
* :meth:`QMRISegmentLogic.startEstimation` does the same with ``qmricore estimate`` (MPRAGE -> PD, R1, R2*,
  MT volume nodes on the MPRAGE's grid).
* :meth:`QMRISegmentLogic.startMwf` writes a multi-echo series (a volume sequence node: what Slicer 5 makes of a
  4D NIfTI) as one 4D NIfTI and runs ``python -m qmricore mwf ... --progress-lines`` in the same runner; the
  MWF map comes back as a scalar volume node on the first echo's exact grid.

Everything a user can get wrong (no input, no model file, a failed run) raises or reports one line.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from QMRICommonLib import mrmlio
from QMRICommonLib.headless import LogicBase
from QMRICommonLib.mrmlio import MAP_ATTRIBUTE, MAP_TITLES
from QMRICommonLib.parameters import MS_PER_S
from QMRICommonLib.runner import BackgroundRunner, Event, Job, RunnerEvent, qmricoreCommand
from QMRICommonLib.shipped import MODEL_FOLDERS, chosenOrShipped, unavailableReason

from qmricore.errors import InputError
from qmricore.io import Volume, read_volume, write_nifti
from qmricore.mwf.nnls import MIN_ECHOES, check_te

from . import models
from .models import ModelInfo

DEFAULT_SEGMENTER = "lesion_seg_qsynth.pt"
DEFAULT_ESTIMATOR = "qatlas_estimator.pt"
#: The shipped CNN MWF estimator, when there is one (Resources/Models/); without it CNN needs a chosen file.
DEFAULT_MWF_MODEL = "mwf_cnn.pt"
#: Node attribute: the method that made an MWF map.
MWF_METHOD_ATTRIBUTE = "QMRI.MWFMethod"

LESION_SEGMENT_NAME = "Lesion"
#: Display colour of the lesion segment (RGB 0-1): a saturated orange-red that stands out on grey MRI.
LESION_COLOR = (0.94, 0.33, 0.16)
#: DICOM/SNOMED CT coding of the lesion segment, as Slicer 5's terminology logic serialises it
#: (category 49755003 "Morphologically Altered Structure", type 52988006 "Lesion", region 12738006 "Brain").
LESION_TERMINOLOGY = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
    "Segmentation category and type - 3D Slicer General Anatomy list",
    "49755003", "SCT", "Morphologically Altered Structure",
    "52988006", "SCT", "Lesion",
    "", "", "",
    "Anatomic codes - DICOM master list",
    "12738006", "SCT", "Brain",
    "", "", "")
#: Node attribute holding a volume's modality tag.
MODALITY_ATTRIBUTE = "QMRI.Modality"
TABLE_COLUMNS = ("Segment", "Voxel count", "Volume (mL)", "Inputs", "Model")


def voxelVolumeMl(node: Any) -> float:
    """Volume of one voxel in mL (|det| of the IJK-to-RAS 3x3 part, mm^3, / 1000)."""
    return abs(float(np.linalg.det(mrmlio.ijkToRas(node)[:3, :3]))) / 1000.0


class QMRISegmentLogic(LogicBase):
    """Segmentation and estimation jobs and their import into MRML nodes: the module's Logic (``QMRISegment.py``
    hands this class out as ``QMRISegmentLogic``)."""

    def __init__(self, scene: Any = None, modelFolder: Path | None = None) -> None:
        LogicBase.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        #: Where imported models go (None: :func:`.models.userModelFolder`, read at each use).
        self.modelFolder = modelFolder

    # ------------------------------------------------------------------ model list
    def listModels(self, kind: str = "segmenter") -> tuple[list[ModelInfo], list[str]]:
        """Shipped and imported models of ``kind`` for the model table, and one line per unreadable file."""
        return models.listModels(kind, self.modelFolder)

    @staticmethod
    def statedSpacing(source: Any, config: Any = None) -> float | None:
        """Voxel size (mm) stated by the config of SynthStroke weights, or None (then the user must say)."""
        from qmricore.models.synthstroke import stated_spacing

        return stated_spacing(source, config)

    def importSynthStrokeModel(self, source: Any, config: Any = None, spacing: float | None = None,
                               name: str | None = None) -> ModelInfo:
        """Import downloaded SynthStroke weights into the model folder; returns the new list entry."""
        return models.importSynthStroke(source, config, spacing, name, self.modelFolder)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def inputsFromParameters(p: Any) -> list[tuple[Any, str]]:
        """``(volume node, modality)`` of the selected inputs, in slot order; ensemble off keeps the first."""
        inputs = [(getattr(p, f"inputVolume{i}"), getattr(p, f"modality{i}")) for i in (1, 2, 3)]
        inputs = [(node, modality) for node, modality in inputs if node is not None]
        return inputs if p.ensemble else inputs[:1]

    @staticmethod
    def resolveModel(path: Any, default: str = DEFAULT_SEGMENTER) -> Path:
        """The model file to use: ``path`` if given, else the shipped one; one-line errors otherwise."""
        model = chosenOrShipped(path, default, "model file")
        if model is None:
            raise InputError(f"no model file selected and the shipped model {default} is not installed "
                             f"(looked in {', '.join(str(f) for f in MODEL_FOLDERS)})")
        return model

    @staticmethod
    def writeInputs(inputs: Sequence[tuple[Any, str]], folder: Path) -> list[Path]:
        """Write each input node as NIfTI (atomically) into ``folder``; the modality is tagged on the node."""
        paths = []
        for index, (node, modality) in enumerate(inputs):
            node.SetAttribute(MODALITY_ATTRIBUTE, modality)
            paths.append(mrmlio.exportNifti(node, folder / f"input{index + 1}_{modality}.nii.gz"))
        return paths

    # ------------------------------------------------------------------ jobs
    @staticmethod
    def segmentCommand(inputs: Sequence[tuple[Path, str]], model: Path, mask: Path, tta: bool = True,
                       device: str = "auto") -> list[str]:
        """``python -m qmricore segment ... --progress-lines`` for NIfTI inputs with their modality tags."""
        arguments: list[object] = ["segment", "--model", model, "--out", mask, "--device", device]
        for path, modality in inputs:
            arguments += ["--input", path, "--modality", modality]
        return qmricoreCommand(*arguments, *([] if tta else ["--no-tta"]))

    @staticmethod
    def estimateCommand(mprage: Path, model: Path, out: Path, tta: bool = True, device: str = "auto") -> list[str]:
        """``python -m qmricore estimate ... --progress-lines``: PD, R1, R2s, MT NIfTI files into ``out``."""
        return qmricoreCommand("estimate", "--model", model, "--input", mprage, "--out", out, "--device", device,
                               *([] if tta else ["--no-tta"]))

    def startSegmentation(self, inputs: Sequence[tuple[Any, str]], model: Any = None, tta: bool = True,
                          device: str = "auto", segmentationNode: Any = None, tableNode: Any = None) -> Job:
        """Start segmenting ``inputs`` (several: logits ensembled) in a background process."""
        if not inputs:
            raise InputError("select an input volume")
        modelPath = self.resolveModel(model)
        folder = Path(tempfile.mkdtemp(prefix="qmrisegment-"))
        try:
            paths = self.writeInputs(inputs, folder)
            command = self.segmentCommand(list(zip(paths, (m for _, m in inputs), strict=True)), modelPath,
                                          folder / "lesion_mask.nii.gz", tta, device)
            runner = BackgroundRunner(command).start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Job("segment", runner, folder, inputs[0][0], list(inputs), modelPath,
                   {"segmentation": segmentationNode, "table": tableNode})

    def startEstimation(self, mprageNode: Any, model: Any = None, tta: bool = True, device: str = "auto") -> Job:
        """Start estimating PD, R1, R2*, MT from an MPRAGE volume node in a background process."""
        if mprageNode is None:
            raise InputError("select the MPRAGE volume")
        modelPath = self.resolveModel(model, DEFAULT_ESTIMATOR)
        folder = Path(tempfile.mkdtemp(prefix="qmriestimate-"))
        try:
            paths = self.writeInputs([(mprageNode, "MPRAGE")], folder)
            runner = BackgroundRunner(self.estimateCommand(paths[0], modelPath, folder / "maps", tta, device)).start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Job("estimate", runner, folder, mprageNode, [(mprageNode, "MPRAGE")], modelPath)

    def finishJob(self, job: Job, event: Event) -> dict[str, Any]:
        """Import a finished job's result into nodes (and remove its temporary folder).

        Returns the new nodes: ``{"segmentation", "table"}`` or the maps by key.  A FAILED event raises
        :class:`~qmricore.errors.QMRIError`-style ``RuntimeError`` with the run's last error line.
        """
        try:
            if event.kind is RunnerEvent.FAILED:
                raise RuntimeError(event.message)
            if event.kind is RunnerEvent.CANCELLED:
                return {}
            if job.kind == "segment":
                segmentation, table = self.importSegmentation(
                    Path(event.result["mask"]), job.referenceNode, job.outputs.get("segmentation"),
                    job.outputs.get("table"), inputs=job.inputs, model=job.model)
                return {"segmentation": segmentation, "table": table, "lesion_ml": event.result.get("lesion_ml")}
            if job.kind == "mwf":
                method = "CNN" if job.model is not None else "NNLS"
                return {"mwf": self.importMwf(Path(event.result["mwf"]), job.referenceNode, job.outputs.get("mwf"),
                                              f"{mrmlio.nodeName(job.inputs[0][0])}_MWF", method)}
            return self.importEstimatedMaps(event.result["maps"], job.referenceNode)
        finally:
            job.cleanup()

    def run(self, job: Job, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a job (batch use) and import its result; raises on failure."""
        events = job.runner.wait(timeout)
        return self.finishJob(job, events[-1])

    def segment(self, p: Any, timeout: float | None = None) -> dict[str, Any]:
        """Segment with a parameter node's settings and wait (batch use); returns the segmentation and table nodes."""
        job = self.startSegmentation(self.inputsFromParameters(p), p.modelPath, p.testTimeAugmentation, p.device,
                                     p.outputSegmentation, p.outputTable)
        return self.run(job, timeout)

    def estimateMwf(self, p: Any, timeout: float | None = None) -> Any:
        """Estimate the MWF map with a parameter node's settings and wait (batch use); returns the MWF volume node."""
        nodes = self.run(self.startMwfFromParameters(p), timeout)
        p.mwfVolume = nodes["mwf"]
        return nodes["mwf"]

    # ------------------------------------------------------------------ myelin water fraction
    @staticmethod
    def echoNodes(sequenceNode: Any) -> list[Any]:
        """The echo volumes of a multi-echo series (a volume sequence node), in sequence order, checked.

        Raises
        ------
        InputError
            No node, items that are not scalar volumes or have no voxels, echoes on different grids, fewer than
            ``qmricore.mwf.nnls.MIN_ECHOES`` echoes (one line naming the node).
        """
        if sequenceNode is None:
            raise InputError("select the multi-echo series (a 4D NIfTI loads into Slicer as a volume sequence)")
        name = mrmlio.nodeName(sequenceNode)
        if not sequenceNode.IsA("vtkMRMLSequenceNode"):
            raise InputError(f"multi-echo series: a volume sequence is needed, got a {sequenceNode.GetClassName()}",
                             name)
        echoes = [sequenceNode.GetNthDataNode(i) for i in range(sequenceNode.GetNumberOfDataNodes())]
        if len(echoes) < MIN_ECHOES:
            raise InputError(f"multi-echo series: has {len(echoes)} echo(es); at least {MIN_ECHOES} are needed", name)
        for index, node in enumerate(echoes):
            if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
                kind = "nothing" if node is None else node.GetClassName()
                raise InputError(f"multi-echo series: item {index + 1} is {kind}, not a scalar volume", name)
            if not mrmlio.sameGeometry(echoes[0], node):
                raise InputError(f"multi-echo series: echo {index + 1} is not on the grid of echo 1", name)
        return echoes

    @staticmethod
    def writeEchoSeries(echoes: Sequence[Any], path: Path) -> Path:
        """The echo volumes as one 4D NIfTI (x, y, z, echoes; float32) with echo 1's IJK-to-RAS as affine."""
        data = np.stack([mrmlio.arrayKJI(node, f"echo {i + 1}").transpose(2, 1, 0)
                         for i, node in enumerate(echoes)], axis=-1).astype(np.float32)
        like = Volume(data=np.broadcast_to(np.float32(0), data.shape), affine=mrmlio.ijkToRas(echoes[0]), header=None)
        return write_nifti(path, data, like)

    def mwfModel(self, path: Any = None) -> Path | None:
        """The CNN model file: ``path`` when given (it must exist), else the shipped one, else None."""
        return chosenOrShipped(path, DEFAULT_MWF_MODEL, "MWF model file")

    def cnnUnavailableReason(self, path: Any = None) -> str:
        """Why the CNN method cannot run now ("" when it can): no model file chosen and none shipped."""
        return unavailableReason(path, DEFAULT_MWF_MODEL, "MWF model file", "MWF model")

    @staticmethod
    def mwfCommand(series: Path, te: float, out: Path, model: Path | None = None,
                   mask: Path | None = None) -> list[str]:
        """``python -m qmricore mwf ... --progress-lines``; ``--method cnn --model M`` only with a CNN model."""
        arguments: list[object] = ["mwf", "--input", series, "--te", repr(float(te)), "--out", out]
        if model is not None:
            arguments += ["--method", "cnn", "--model", model]
        if mask is not None:
            arguments += ["--mask", mask]
        return qmricoreCommand(*arguments)

    def startMwf(self, sequenceNode: Any, te: float, method: str = "NNLS", model: Any = None, maskNode: Any = None,
                 outputNode: Any = None) -> Job:
        """Start estimating the myelin water fraction of a multi-echo series in a background process.

        Parameters
        ----------
        sequenceNode
            The multi-echo spin-echo series: a volume sequence node, one scalar volume per echo.
        te
            Echo spacing, seconds.
        method
            ``"NNLS"`` (``qmricore mwf``'s regularised NNLS) or ``"CNN"`` (needs a model: ``model`` or the shipped
            :data:`DEFAULT_MWF_MODEL`).
        maskNode
            Optional label map on the echoes' grid: only voxels > 0 are fitted.
        outputNode
            Scalar volume node to fill (None: a new one).
        """
        check_te(te)
        if method not in ("NNLS", "CNN"):
            raise InputError(f"MWF method must be NNLS or CNN, got {method!r}")
        echoes = self.echoNodes(sequenceNode)
        modelPath = None
        if method == "CNN":
            modelPath = self.mwfModel(model)
            if modelPath is None:
                raise InputError(self.cnnUnavailableReason(model))
        if maskNode is not None and not mrmlio.sameGeometry(echoes[0], maskNode):
            raise InputError(f"MWF mask is not on the grid of the multi-echo series {mrmlio.nodeName(sequenceNode)}",
                             mrmlio.nodeName(maskNode))
        folder = Path(tempfile.mkdtemp(prefix="qmrimwf-"))
        try:
            series = self.writeEchoSeries(echoes, folder / "multi_echo.nii.gz")
            mask = mrmlio.exportNifti(maskNode, folder / "mask.nii.gz") if maskNode is not None else None
            runner = BackgroundRunner(self.mwfCommand(series, te, folder / "mwf", modelPath, mask)).start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Job("mwf", runner, folder, echoes[0], [(sequenceNode, "multi-echo")], modelPath, {"mwf": outputNode})

    def startMwfFromParameters(self, p: Any) -> Job:
        """:meth:`startMwf` with a parameter node's series, echo spacing (ms there), method, model, mask, output."""
        return self.startMwf(p.multiEchoSequence, p.mwfEchoSpacing / MS_PER_S, p.mwfMethod, p.mwfModelPath,
                             p.mwfMask, p.mwfVolume)

    def importMwf(self, path: Path, referenceNode: Any, outputNode: Any = None, name: str = "MWF",
                  method: str = "NNLS") -> Any:
        """An MWF file -> a scalar volume node with the reference (echo 1) node's exact IJK-to-RAS."""
        volume = read_volume(path, what="MWF map")
        kji = np.ascontiguousarray(volume.data.transpose(2, 1, 0), dtype=np.float32)
        if kji.shape != tuple(reversed(mrmlio.dimensions(referenceNode))) or \
                not np.allclose(volume.affine, mrmlio.ijkToRas(referenceNode), atol=1e-3):
            raise InputError(f"MWF map is not on the grid of {mrmlio.nodeName(referenceNode)}", path)
        if outputNode is None:
            outputNode = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
            outputNode.CreateDefaultDisplayNodes()
        mrmlio.setArrayKJI(outputNode, kji, like=referenceNode)
        outputNode.SetAttribute(MAP_ATTRIBUTE, "mwf")
        outputNode.SetAttribute(MWF_METHOD_ATTRIBUTE, method)
        return outputNode

    # ------------------------------------------------------------------ import
    def importSegmentation(self, maskPath: Path, referenceNode: Any, segmentationNode: Any = None,
                           tableNode: Any = None, inputs: Sequence[tuple[Any, str]] = (),
                           model: Path | None = None) -> tuple[Any, Any]:
        """A lesion mask file -> a "Lesion" segment (coded, coloured) and a lesion-volume table row.

        The mask must be on the reference volume's grid (``qmricore segment`` writes it so); the segment gets the
        reference's exact IJK-to-RAS.
        """
        mask = read_volume(maskPath, what="lesion mask")
        kji = np.ascontiguousarray((mask.data > 0.5).astype(np.uint8).transpose(2, 1, 0))
        if kji.shape != tuple(reversed(mrmlio.dimensions(referenceNode))) or \
                not np.allclose(mask.affine, mrmlio.ijkToRas(referenceNode), atol=1e-3):
            raise InputError(f"lesion mask is not on the grid of {mrmlio.nodeName(referenceNode)}", maskPath)
        segmentationNode = self.lesionSegmentation(kji, referenceNode, segmentationNode)
        voxels = int(kji.sum())
        tableNode = self.lesionTable(voxels, voxels * voxelVolumeMl(referenceNode), tableNode,
                                     ", ".join(f"{mrmlio.nodeName(n)} ({m})" for n, m in inputs),
                                     model.name if model is not None else "")
        return segmentationNode, tableNode

    def lesionSegmentation(self, maskKJI: np.ndarray, referenceNode: Any, segmentationNode: Any = None) -> Any:
        """Put a binary KJI mask on the reference grid into the "Lesion" segment (replacing an old one)."""
        if segmentationNode is None:
            segmentationNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                            self.scene.GenerateUniqueName("Lesion segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceNode)
        segmentation = segmentationNode.GetSegmentation()
        old = segmentation.GetSegmentIdBySegmentName(LESION_SEGMENT_NAME)
        if old:
            segmentation.RemoveSegment(old)
        labelNode = mrmlio.addVolumeNode(self.scene, maskKJI.astype(np.uint8), mrmlio.ijkToRas(referenceNode),
                                         "__lesion_mask__", "vtkMRMLLabelMapVolumeNode")
        try:
            before = set(_segmentIds(segmentation))
            if maskKJI.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    labelNode, segmentationNode):
                raise RuntimeError("importing the lesion mask into the segmentation failed")
            new = [s for s in _segmentIds(segmentation) if s not in before]
            segmentId = new[0] if new else segmentation.AddEmptySegment("", LESION_SEGMENT_NAME)
        finally:
            display = labelNode.GetDisplayNode()
            self.scene.RemoveNode(labelNode)
            if display is not None:
                self.scene.RemoveNode(display)
        segment = segmentation.GetSegment(segmentId)
        segment.SetName(LESION_SEGMENT_NAME)
        segment.SetColor(*LESION_COLOR)
        segment.SetTerminology(LESION_TERMINOLOGY)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        return segmentationNode

    def lesionTable(self, voxels: int, volumeMl: float, tableNode: Any = None, inputs: str = "",
                    model: str = "") -> Any:
        """A one-row table: segment name, voxel count, volume (mL), inputs, model."""
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("Lesion volume"))
        table = tableNode.GetTable()
        table.Initialize()
        columns = []
        for name, cls, value in zip(TABLE_COLUMNS, (vtk.vtkStringArray, vtk.vtkIntArray, vtk.vtkDoubleArray,
                                                    vtk.vtkStringArray, vtk.vtkStringArray),
                                    (LESION_SEGMENT_NAME, voxels, volumeMl, inputs, model), strict=True):
            column = cls()
            column.SetName(name)
            column.InsertNextValue(value)
            columns.append(column)
        for column in columns:
            table.AddColumn(column)
        tableNode.SetColumnUnitLabel("Volume (mL)", "mL")
        tableNode.SetColumnDescription("Volume (mL)", "lesion volume: voxel count times voxel volume")
        tableNode.Modified()
        return tableNode

    def importEstimatedMaps(self, maps: dict[str, str], referenceNode: Any) -> dict[str, Any]:
        """Estimated map files -> volume nodes with the reference's exact IJK-to-RAS."""
        nodes = {}
        shape = tuple(reversed(mrmlio.dimensions(referenceNode)))
        for key, path in maps.items():
            volume = read_volume(path, what=f"estimated {key} map")
            kji = np.ascontiguousarray(volume.data.transpose(2, 1, 0), dtype=np.float32)
            if kji.shape != shape:
                raise InputError(f"estimated {key} map is not on the grid of {mrmlio.nodeName(referenceNode)}", path)
            node = mrmlio.addVolumeNode(self.scene, kji, mrmlio.ijkToRas(referenceNode),
                                        f"{mrmlio.nodeName(referenceNode)}_{MAP_TITLES.get(key, key)}")
            node.SetAttribute(MAP_ATTRIBUTE, key)
            nodes[key] = node
        return nodes


def _segmentIds(segmentation: Any) -> list[str]:
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
