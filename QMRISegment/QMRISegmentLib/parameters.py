"""Parameter definitions of QMRISegment (names, types, defaults, choices, node classes): the one place.

``QMRISegment.py`` builds its ``@parameterNodeWrapper`` class from these; the tests and the headless
:class:`~QMRICommonLib.parameters.ScriptedNodeParameters` read them too.
"""

from __future__ import annotations

import pathlib

from QMRICommonLib.parameters import NodeSpec, ParameterSpec, echoSpacingSpec

from qmricore.devices import DEVICE_CHOICES

#: Modality tags of QMRISegment input volumes (what the image is; the model may use it).
MODALITIES = ("FLAIR", "T1w", "T2w", "DWI", "MPRAGE", "other")
DEVICES = DEVICE_CHOICES
#: Methods of "Estimate MWF": ``qmricore mwf`` with its default NNLS fit, or ``--method cnn --model M``.
MWF_METHODS = ("NNLS", "CNN")


def segmentParameters() -> tuple[ParameterSpec, ...]:
    """Scalar parameters of QMRISegment."""
    return (
        ParameterSpec("modality1", str, "FLAIR", choices=MODALITIES, label="Modality 1"),
        ParameterSpec("modality2", str, "T1w", choices=MODALITIES, label="Modality 2"),
        ParameterSpec("modality3", str, "T2w", choices=MODALITIES, label="Modality 3"),
        ParameterSpec("device", str, "auto", choices=DEVICES, label="Device"),
        ParameterSpec("testTimeAugmentation", bool, True, label="Test-time augmentation (8 flips)"),
        ParameterSpec("ensemble", bool, True, label="Ensemble across modalities"),
        ParameterSpec("modelPath", pathlib.Path, pathlib.Path(), label="Segmentation model (empty: the shipped one)"),
        ParameterSpec("estimatorModelPath", pathlib.Path, pathlib.Path(),
                      label="Estimation model (empty: the shipped one)"),
        ParameterSpec("mwfMethod", str, MWF_METHODS[0], choices=MWF_METHODS, label="MWF method"),
        echoSpacingSpec("mwfEchoSpacing"),
        ParameterSpec("mwfModelPath", pathlib.Path, pathlib.Path(),
                      label="MWF CNN model (empty: Resources/Models/mwf_cnn.pt)"),
    )


def segmentNodes() -> tuple[NodeSpec, ...]:
    return (
        NodeSpec("inputVolume1", "vtkMRMLScalarVolumeNode", "Input 1"),
        NodeSpec("inputVolume2", "vtkMRMLScalarVolumeNode", "Input 2"),
        NodeSpec("inputVolume3", "vtkMRMLScalarVolumeNode", "Input 3"),
        NodeSpec("outputSegmentation", "vtkMRMLSegmentationNode", "Lesion segmentation"),
        NodeSpec("outputTable", "vtkMRMLTableNode", "Lesion volume table"),
        # a 4D NIfTI loads into Slicer 5 as a volume sequence (vtkMRMLSequenceNode of scalar volumes)
        NodeSpec("multiEchoSequence", "vtkMRMLSequenceNode", "Multi-echo series"),
        NodeSpec("mwfMask", "vtkMRMLLabelMapVolumeNode", "MWF mask"),
        NodeSpec("mwfVolume", "vtkMRMLScalarVolumeNode", "MWF map"),
    )
