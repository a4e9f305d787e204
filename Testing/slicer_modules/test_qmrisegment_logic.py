"""QMRISegmentLib on a real MRML scene: lesion segment + table, estimated maps, and real background
``qmricore segment|estimate --progress-lines`` runs."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
import torch
from mrml_helpers import SHAPE_KJI, oblique_ijk_to_ras
from QMRICommonLib import mrmlio
from QMRICommonLib.parameters import ScriptedNodeParameters
from QMRICommonLib.runner import RunnerEvent
from QMRISegmentLib import LESION_COLOR, LESION_TERMINOLOGY, QMRISegmentLogic
from QMRISegmentLib.parameters import segmentNodes, segmentParameters

from qmricore.errors import InputError
from qmricore.io import Volume, read_volume, write_nifti


@pytest.fixture
def reference(scene):
    rng = np.random.default_rng(0)
    return mrmlio.addVolumeNode(scene, rng.uniform(0, 100, SHAPE_KJI).astype(np.float32), oblique_ijk_to_ras(), "flair")


def write_mask(path, mask_kji, node):
    ijk = mask_kji.transpose(2, 1, 0).astype(np.uint8)
    return write_nifti(path, ijk, Volume(ijk, mrmlio.ijkToRas(node)))


def test_mask_file_becomes_a_coded_lesion_segment_and_a_volume_table(scene, reference, tmp_path):
    mask = np.zeros(SHAPE_KJI, np.uint8)
    mask[2:5, 3:7, 4:9] = 1
    mask[6, 8, 10] = 1
    path = write_mask(tmp_path / "mask.nii.gz", mask, reference)
    logic = QMRISegmentLogic(scene)
    seg, table = logic.importSegmentation(path, reference, inputs=[(reference, "FLAIR")])
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetSegmentIdBySegmentName("Lesion")
    segment = segmentation.GetSegment(segment_id)
    assert segment.GetColor() == pytest.approx(LESION_COLOR)
    assert segment.GetTerminology() == LESION_TERMINOLOGY
    assert segment.HasTag(segment.GetTerminologyEntryTagName())  # "TerminologyEntry", as Slicer 5 stores it
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
    category = entry.GetCategoryObject()
    assert (category.GetCodingSchemeDesignator(), category.GetCodeValue()) == ("SCT", "49755003")
    assert (entry.GetTypeObject().GetCodeValue(), entry.GetTypeObject().GetCodeMeaning()) == ("52988006", "Lesion")
    # voxels: exported on the reference grid, the segment is the mask exactly
    exported = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, reference)
    np.testing.assert_array_equal(exported, mask)
    assert int(slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, segment_id).sum()) == int(mask.sum())
    # table: voxel count and volume = count x |det(IJK-to-RAS)| / 1000
    voxel_ml = 0.9 * 1.3 * 2.5 / 1000
    assert slicer.util.arrayFromTableColumn(table, "Voxel count")[0] == mask.sum()
    assert slicer.util.arrayFromTableColumn(table, "Volume (mL)")[0] == pytest.approx(mask.sum() * voxel_ml, rel=1e-9)
    assert table.GetColumnUnitLabel("Volume (mL)") == "mL"
    assert table.GetTable().GetValueByName(0, "Segment").ToString() == "Lesion"
    # a second run replaces the segment, not adds one
    empty = write_mask(tmp_path / "m2.nii.gz", np.zeros(SHAPE_KJI, np.uint8), reference)
    logic.importSegmentation(empty, reference, seg, table)
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetSegmentIdBySegmentName("Lesion")
    assert slicer.util.arrayFromTableColumn(table, "Voxel count")[0] == 0
    # the temporary labelmap is gone
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_mask_on_another_grid_is_refused(scene, reference, tmp_path):
    wrong = np.zeros((SHAPE_KJI[0] + 1,) + SHAPE_KJI[1:], np.uint8)
    path = write_nifti(tmp_path / "wrong.nii.gz", wrong.transpose(2, 1, 0), Volume(wrong.transpose(2, 1, 0), np.eye(4)))
    with pytest.raises(InputError, match="lesion mask is not on the grid of flair"):
        QMRISegmentLogic(scene).importSegmentation(path, reference)


def test_inputs_model_and_parameter_node(scene, reference, tmp_path):
    holder = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    p = ScriptedNodeParameters(holder, segmentParameters(), segmentNodes())
    assert (p.device, p.testTimeAugmentation, p.ensemble, str(p.modelPath)) == ("auto", True, True, ".")
    other = mrmlio.addVolumeNode(scene, np.ones(SHAPE_KJI, np.float32), oblique_ijk_to_ras(), "t1")
    p.inputVolume1, p.inputVolume3, p.modality3 = reference, other, "T1w"
    assert QMRISegmentLogic.inputsFromParameters(p) == [(reference, "FLAIR"), (other, "T1w")]
    p.ensemble = False
    assert QMRISegmentLogic.inputsFromParameters(p) == [(reference, "FLAIR")]
    with pytest.raises(ValueError, match="device = 'gpu' is not one of auto, cpu, cuda"):
        p.device = "gpu"
    with pytest.raises(InputError, match="model file: no such file"):
        QMRISegmentLogic.resolveModel(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="select an input volume"):
        QMRISegmentLogic(scene).startSegmentation([], tmp_path / "missing.pt")


def tiny_model(path, kind):
    from qmricore.inference.preprocess import PreprocessConfig
    from qmricore.inference.window import WindowConfig
    from qmricore.models.model_file import save_model
    from qmricore.models.networks import EstimatorConfig, SegmenterConfig, build_network

    torch.manual_seed(0)
    if kind == "segmenter":
        config = SegmenterConfig(classes="binary", channels=(2, 4), num_res_units=0)
    else:
        config = EstimatorConfig(channels=(2, 4), num_res_units=0, dropout=0.0)
    network = build_network(kind, config)
    if kind == "segmenter":  # a predictor that calls bright voxels lesion: last layer favours class 1 on high input
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.mul_(3.0)
    return save_model(path, network, config, preprocessing=PreprocessConfig(spacing=2.0),
                      inference=WindowConfig(patch=(16, 16, 16), sw_batch_size=1))


@pytest.mark.slow
def test_background_segment_run_matches_the_library(scene, reference, tmp_path):
    pytest.importorskip("qmricore.inference.predict")
    model = tiny_model(tmp_path / "seg.pt", "segmenter")
    logic = QMRISegmentLogic(scene)
    job = logic.startSegmentation([(reference, "FLAIR")], model, tta=False, device="cpu")
    events = job.runner.wait(timeout=120)
    assert events[-1].kind is RunnerEvent.FINISHED, events[-1].message
    progress = [e.fraction for e in events if e.kind is RunnerEvent.PROGRESS]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 4
    mask_file = read_volume(events[-1].result["mask"])
    out = logic.finishJob(job, events[-1])
    assert not job.folder.exists()  # temporary files removed
    seg = out["segmentation"]
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    expected = mask_file.data.transpose(2, 1, 0).astype(np.uint8)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, reference), expected)
    assert slicer.util.arrayFromTableColumn(out["table"], "Volume (mL)")[0] == pytest.approx(out["lesion_ml"], rel=1e-6)
    # the same model in this process gives the same mask (the background run adds nothing of its own)
    from qmricore.inference.predict import segment
    from qmricore.models.model_file import load_model

    direct = segment(load_model(model), [mrmlio.volumeFromNode(reference)], tta=False, device="cpu")
    np.testing.assert_array_equal(direct.lesion_mask.transpose(2, 1, 0), expected)


@pytest.mark.slow
def test_background_estimate_run_puts_maps_on_the_mprage_grid(scene, reference, tmp_path):
    pytest.importorskip("qmricore.inference.predict")
    model = tiny_model(tmp_path / "est.pt", "estimator")
    logic = QMRISegmentLogic(scene)
    job = logic.startEstimation(reference, model, tta=False, device="cpu")
    maps = logic.run(job, timeout=120)
    assert sorted(maps) == ["mt", "pd", "r1", "r2s"]
    for key, node in maps.items():
        np.testing.assert_array_equal(mrmlio.ijkToRas(node), mrmlio.ijkToRas(reference))
        array = slicer.util.arrayFromVolume(node)
        assert array.shape == SHAPE_KJI and np.all(np.isfinite(array))
        assert node.GetAttribute("QMRI.Map") == key
    assert np.all(slicer.util.arrayFromVolume(maps["r1"]) > 0)  # exp heads keep rates positive


@pytest.mark.slow
def test_background_run_failure_reaches_the_user(scene, reference, tmp_path):
    bad = tmp_path / "not_a_model.pt"
    bad.write_text("this is not a model")
    logic = QMRISegmentLogic(scene)
    job = logic.startSegmentation([(reference, "FLAIR")], bad, device="cpu")
    events = job.runner.wait(timeout=120)
    assert events[-1].kind is RunnerEvent.FAILED
    assert str(bad) in events[-1].message and events[-1].message.startswith("qmricore segment: error: ")
    with pytest.raises(RuntimeError, match="not_a_model.pt"):
        logic.finishJob(job, events[-1])
    assert not job.folder.exists()
