"""QMRISegment "Estimate MWF" on a real MRML scene: a 4D NIfTI read into a volume sequence node by Slicer's own
sequence storage node, ``python -m qmricore mwf --progress-lines`` in a real background process, the MWF map back
as a scalar volume node on the echoes' exact grid, Cancel killing the process group, and the CNN command line."""

from __future__ import annotations

import sys
import time

import nibabel as nib
import numpy as np
import pytest
import slicer
import slicer.util
from mrml_helpers import oblique_ijk_to_ras
from process_helpers import processGroupMembers
from QMRICommonLib import mrmlio
from QMRICommonLib.parameters import ScriptedNodeParameters
from QMRICommonLib.runner import RunnerEvent
from QMRISegmentLib import QMRISegmentLogic
from QMRISegmentLib.logic import MWF_METHOD_ATTRIBUTE
from QMRISegmentLib.parameters import MWF_METHODS, segmentNodes, segmentParameters

from qmricore.errors import InputError, ParameterError
from qmricore.generators.synthmap import DEFAULT_CONFIG
from qmricore.physics import cpmg

TE, N_ECHOES = 0.01, 16


def write_series(path, shape=(4, 3, 2), mwf=0.2):
    """A 4D NIfTI (x, y, z, echoes) of two-pool trains (T2 20 and 80 ms, refocusing 170 deg), one empty voxel."""
    trains = cpmg(np.array([0.02, 0.08]), 1.0, te=TE, n_echoes=N_ECHOES, refocus=170.0)
    train = 100.0 * (mwf * trains[0] + (1 - mwf) * trains[1])
    data = np.broadcast_to(train, (*shape, N_ECHOES)).astype(np.float32).copy()
    data[0, 0, 0] = 0.0
    nib.save(nib.Nifti1Image(data, oblique_ijk_to_ras()), str(path))
    return data


def load_sequence(scene, path):
    """What Slicer does with a 4D NIfTI: a vtkMRMLSequenceNode read by vtkMRMLVolumeSequenceStorageNode."""
    node = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "multi_echo")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


@pytest.fixture
def series(scene, tmp_path):
    data = write_series(tmp_path / "me.nii.gz")
    return load_sequence(scene, tmp_path / "me.nii.gz"), data


def test_mwf_runs_the_cli_in_the_background_and_lands_on_the_echo_grid(scene, series):
    sequence, data = series
    logic = QMRISegmentLogic(scene)
    echoes = logic.echoNodes(sequence)
    assert len(echoes) == N_ECHOES
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(echoes[3]), data[..., 3].transpose(2, 1, 0))
    job = logic.startMwf(sequence, TE)
    assert job.runner.command[1:5] == ["-m", "qmricore", "mwf", "--input"] and "--method" not in job.runner.command
    events = job.runner.wait(timeout=120)
    assert events[-1].kind is RunnerEvent.FINISHED, events[-1].message
    progress = [e for e in events if e.kind is RunnerEvent.PROGRESS]
    assert [e.fraction for e in progress] == sorted(e.fraction for e in progress)
    assert progress[0].message == "fitting 23 voxel(s)" and progress[-1].fraction == 1.0
    assert events[-1].result["voxels"] == 23
    written = nib.load(events[-1].result["mwf"]).get_fdata()
    out = logic.finishJob(job, events[-1])["mwf"]
    assert not job.folder.exists()  # temporary files removed
    np.testing.assert_array_equal(mrmlio.ijkToRas(out), mrmlio.ijkToRas(echoes[0]))  # bit for bit
    assert mrmlio.dimensions(out) == (4, 3, 2)
    mwf = slicer.util.arrayFromVolume(out)
    np.testing.assert_array_equal(mwf, written.transpose(2, 1, 0).astype(np.float32))
    assert mwf[0, 0, 0] == 0.0
    np.testing.assert_allclose(mwf.reshape(-1)[1:], 0.2, atol=0.02)
    assert out.GetAttribute("QMRI.Map") == "mwf" and out.GetAttribute(MWF_METHOD_ATTRIBUTE) == "NNLS"
    # a second run fills the same output node in place
    again = logic.run(logic.startMwf(sequence, TE, outputNode=out), timeout=120)["mwf"]
    assert again is out


def test_mask_limits_the_fit(scene, series):
    sequence, _ = series
    logic = QMRISegmentLogic(scene)
    mask = np.zeros((2, 3, 4), np.uint8)
    mask[1, 1, 1] = 1
    maskNode = mrmlio.addVolumeNode(scene, mask, mrmlio.ijkToRas(logic.echoNodes(sequence)[0]), "mask",
                                    "vtkMRMLLabelMapVolumeNode")
    job = logic.startMwf(sequence, TE, maskNode=maskNode)
    assert "--mask" in job.runner.command
    mwf = slicer.util.arrayFromVolume(logic.run(job, timeout=120)["mwf"])
    assert np.count_nonzero(mwf) == 1 and mwf[1, 1, 1] > 0.1


def test_cancel_kills_the_process_group(scene, tmp_path):
    write_series(tmp_path / "big.nii.gz", shape=(24, 24, 12))  # ~7 000 voxels: several seconds of fitting
    sequence = load_sequence(scene, tmp_path / "big.nii.gz")
    logic = QMRISegmentLogic(scene)
    job = logic.startMwf(sequence, TE)
    pgid = job.runner.pid
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline and not any(e.kind is RunnerEvent.PROGRESS for e in seen):
        seen += job.runner.poll()
        time.sleep(0.05)
    assert any(e.kind is RunnerEvent.PROGRESS for e in seen) and processGroupMembers(pgid)
    job.runner.cancel()
    events = job.runner.wait(timeout=10)
    assert events[-1].kind is RunnerEvent.CANCELLED
    assert processGroupMembers(pgid) == []
    assert logic.finishJob(job, events[-1]) == {} and not job.folder.exists()
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0  # no half result


def test_cnn_needs_a_model_and_passes_it_on_the_command_line(scene, series, tmp_path):
    sequence, _ = series
    logic = QMRISegmentLogic(scene)
    assert MWF_METHODS == ("NNLS", "CNN")
    assert logic.cnnUnavailableReason() == ""  # the shipped Resources/Models/mwf_cnn.pt
    with pytest.raises(InputError, match="no such file"):
        logic.startMwf(sequence, TE, method="CNN", model=tmp_path / "missing.pt")
    model = tmp_path / "mwf_cnn.pt"
    model.write_bytes(b"a model file")
    assert logic.cnnUnavailableReason(model) == ""
    command = logic.mwfCommand(tmp_path / "me.nii.gz", 0.008, tmp_path / "out", model, tmp_path / "mask.nii.gz")
    assert command == [sys.executable, "-m", "qmricore", "mwf", "--input", str(tmp_path / "me.nii.gz"),
                       "--te", "0.008", "--out", str(tmp_path / "out"),
                       "--method", "cnn", "--model", str(model), "--mask", str(tmp_path / "mask.nii.gz"),
                       "--progress-lines"]
    nnls = logic.mwfCommand(tmp_path / "me.nii.gz", 0.008, tmp_path / "out")
    assert nnls == [*command[:10], "--progress-lines"]


def test_cnn_with_the_shipped_model_runs_end_to_end(scene, tmp_path):
    """The shipped CNN (32 echoes, 10 ms) through the background process: its map equals the library's."""
    from qmricore.models.model_file import load_model
    from qmricore.mwf.cnn import estimate_mwf

    trains = cpmg(np.array([0.02, 0.08]), 1.0, te=0.01, n_echoes=32, refocus=170.0)
    rng = np.random.default_rng(0)
    mwf = rng.uniform(0.05, 0.25, (6, 5, 4, 1))
    data = (100.0 * (mwf * trains[0] + (1 - mwf) * trains[1])).astype(np.float32)
    nib.save(nib.Nifti1Image(data, oblique_ijk_to_ras()), str(tmp_path / "me32.nii.gz"))
    sequence = load_sequence(scene, tmp_path / "me32.nii.gz")
    logic = QMRISegmentLogic(scene)
    job = logic.startMwf(sequence, 0.01, method="CNN")
    assert job.runner.command[-3:] == ["--model", str(logic.mwfModel(None)), "--progress-lines"]
    out = logic.run(job, timeout=300)["mwf"]
    assert out.GetAttribute(MWF_METHOD_ATTRIBUTE) == "CNN"
    np.testing.assert_array_equal(mrmlio.ijkToRas(out), mrmlio.ijkToRas(logic.echoNodes(sequence)[0]))
    expected = estimate_mwf(data, 0.01, load_model(logic.mwfModel(None)))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected.transpose(2, 1, 0), atol=1e-6)


def test_bad_inputs_are_one_line_errors_naming_the_node(scene, series, tmp_path):
    sequence, _ = series
    logic = QMRISegmentLogic(scene)
    with pytest.raises(InputError, match="select the multi-echo series"):
        logic.startMwf(None, TE)
    with pytest.raises(ParameterError, match="times are in seconds"):
        logic.startMwf(sequence, 10.0)  # milliseconds given
    short = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "three_echoes")
    for i in range(3):
        short.SetDataNodeAtValue(logic.echoNodes(sequence)[i], str(i))
    with pytest.raises(InputError, match=r"three_echoes: multi-echo series: has 3 echo\(es\); at least 4"):
        logic.startMwf(short, TE)
    mixed = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "mixed_grids")
    for i, node in enumerate(logic.echoNodes(sequence)[:4]):
        mixed.SetDataNodeAtValue(node, str(i))
    other = mrmlio.addVolumeNode(scene, np.ones((2, 3, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "other")
    mixed.SetDataNodeAtValue(other, "4")
    with pytest.raises(InputError, match="mixed_grids: multi-echo series: echo 5 is not on the grid of echo 1"):
        logic.startMwf(mixed, TE)
    labels = mrmlio.addVolumeNode(scene, np.ones((2, 3, 4), np.uint8), np.eye(4), "offgrid",
                                  "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="offgrid: MWF mask is not on the grid"):
        logic.startMwf(sequence, TE, maskNode=labels)
    for error in (InputError, ParameterError):
        assert "\n" not in str(error)


def test_mwf_parameters_on_a_parameter_node(scene):
    p = ScriptedNodeParameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), segmentParameters(),
                               segmentNodes())
    assert (p.mwfMethod, p.mwfEchoSpacing) == ("NNLS", DEFAULT_CONFIG.te * 1000)
    specs = {s.name: s for s in segmentParameters()}
    assert (specs["mwfEchoSpacing"].minimum, specs["mwfEchoSpacing"].maximum) == tuple(
        1000 * t for t in DEFAULT_CONFIG.te_range)
    assert specs["mwfEchoSpacing"].unit == "ms"
    with pytest.raises(ValueError, match="not one of NNLS, CNN"):
        p.mwfMethod = "DECAES"
    nodeClasses = {n.name: n.className for n in segmentNodes()}
    assert nodeClasses["multiEchoSequence"] == "vtkMRMLSequenceNode"
    assert nodeClasses["mwfVolume"] == "vtkMRMLScalarVolumeNode"


def test_mwf_from_a_parameter_node_converts_milliseconds(scene, series):
    sequence, _ = series
    p = ScriptedNodeParameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), segmentParameters(),
                               segmentNodes())
    p.multiEchoSequence = sequence
    p.mwfEchoSpacing = 10.0  # ms in the panel
    logic = QMRISegmentLogic(scene)
    job = logic.startMwfFromParameters(p)
    assert job.runner.command[job.runner.command.index("--te") + 1] == "0.01"  # seconds for qmricore
    mwf = logic.run(job, timeout=120)["mwf"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(mwf).reshape(-1)[1:], 0.2, atol=0.02)
