"""QMRISynth's "Generate brain" on a real MRML scene: a background ``qmricore ldm sample --progress-lines`` run
with a tiny (untrained) mask generator becomes a label map node, equal voxel for voxel to the CLI's own output,
that qSynth turns into maps; Cancel, a missing generator and a broken one each say what happened."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import slicer.util
from QMRICommonLib import mrmlio
from QMRICommonLib.parameters import ScriptedNodeParameters
from QMRICommonLib.runner import RunnerEvent
from QMRISynthLib import QMRISynthLogic, synthNodes, synthParameters
from QMRISynthLib.logic import BRAIN_ATTRIBUTE, DEFAULT_BRAIN_GENERATOR

from qmricore.cli import main
from qmricore.errors import InputError
from qmricore.generators.priors import load_priors
from qmricore.ldm.models import LDMMasksConfig, build_ldm_masks
from qmricore.models.model_file import save_model

TINY = {"shape": [16, 16, 16], "spacing_mm": 4.0, "reference_ml": 5.0, "ae_channels": [8, 8],
        "unet_channels": [8, 8], "unet_attention": [False, True], "num_head_channels": 8, "norm_num_groups": 4,
        "context_dim": 8}


@pytest.fixture
def generator(tmp_path):
    import torch

    torch.manual_seed(0)
    model = build_ldm_masks(LDMMasksConfig.from_dict(TINY))
    return save_model(tmp_path / "ldm_masks_tiny.pt", model, model.config)


def parameters(scene, **values):
    p = ScriptedNodeParameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), synthParameters(), synthNodes())
    for name, value in values.items():
        setattr(p, name, value)
    return p


@pytest.mark.slow
def test_generated_brain_is_the_cli_sample_as_a_label_map_and_feeds_qsynth(scene, generator, tmp_path):
    logic = QMRISynthLogic(scene)
    p = parameters(scene, ventricleMl=20.0, brainSeed=3, brainModelPath=generator)
    assert logic.brainUnavailableReason(p.brainModelPath) == ""
    job = logic.startBrainFromParameters(p)
    events = job.runner.wait(timeout=120)
    assert events[-1].kind is RunnerEvent.FINISHED, events[-1].message
    fractions = [e.fraction for e in events if e.kind is RunnerEvent.PROGRESS]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 10  # per DDIM step
    nodes = logic.finishBrainGeneration(job, events[-1])
    assert not job.folder.exists()
    node = nodes["labels"]
    assert node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetName() == "brain_seed3_20mL"
    # the same request through the CLI in this process: the same brain, on the same grid
    assert main(["ldm", "sample", "--model", str(generator), "--ventricle-ml", "20", "-n", "1", "--seed", "3",
                 "--out", str(tmp_path / "cli")]) == 0
    expected = nib.load(str(tmp_path / "cli" / "sample_0000_labels.nii.gz"))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), np.asarray(expected.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(mrmlio.ijkToRas(node), expected.affine, atol=1e-6)
    info = json.loads(node.GetAttribute(BRAIN_ATTRIBUTE))
    assert info["condition"]["ventricle_ml"] == nodes["requested_ml"] == 20.0
    ventricles = int((slicer.util.arrayFromVolume(node) == load_priors().label_of("ventricles")).sum())
    assert nodes["measured_ml"] == pytest.approx(ventricles * 4.0**3 / 1000)
    # the generated label map is qSynth's input like any other
    p.labelVolume = node
    maps = logic.synthesizeMaps(p.labelVolume, p.qsynthSeed)
    assert {"pd", "r1", "r2s", "mt"} <= set(maps)
    assert slicer.util.arrayFromVolume(maps["pd"]).shape == (16, 16, 16)


@pytest.mark.slow
def test_cancel_leaves_nothing_and_a_broken_generator_says_why(scene, generator, tmp_path):
    logic = QMRISynthLogic(scene)
    before = scene.GetNumberOfNodes()
    job = logic.startBrainGeneration(30.0, 0, generator)
    job.runner.cancel()
    events = job.runner.wait(timeout=30)
    assert events[-1].kind is RunnerEvent.CANCELLED
    assert logic.finishBrainGeneration(job, events[-1]) == {} and not job.folder.exists()
    assert scene.GetNumberOfNodes() == before  # no half result

    broken = tmp_path / "not_a_model.pt"
    broken.write_text("not a model")
    job = logic.startBrainGeneration(30.0, 0, broken)
    events = job.runner.wait(timeout=120)
    assert events[-1].kind is RunnerEvent.FAILED and str(broken) in events[-1].message
    with pytest.raises(RuntimeError, match="not_a_model.pt"):
        logic.finishBrainGeneration(job, events[-1])
    assert not job.folder.exists()


def test_without_a_generator_the_button_says_why(scene, tmp_path):
    logic = QMRISynthLogic(scene)
    missing = tmp_path / "missing.pt"
    assert "mask generator file: no such file" in logic.brainUnavailableReason(missing)
    with pytest.raises(InputError, match="no such file"):
        logic.startBrainGeneration(30.0, 0, missing)
    if logic.brainGenerator() is None:  # no shipped Resources/Models/ldm_masks.pt
        assert DEFAULT_BRAIN_GENERATOR in logic.brainUnavailableReason()
        with pytest.raises(InputError, match=DEFAULT_BRAIN_GENERATOR):
            logic.startBrainGeneration(30.0, 0)
    command = logic.brainCommand(tmp_path / "g.pt", 42.5, 7, tmp_path / "out")
    assert command[1:] == ["-m", "qmricore", "ldm", "sample", "--model", str(tmp_path / "g.pt"), "--ventricle-ml",
                           "42.5", "-n", "1", "--seed", "7", "--out", str(tmp_path / "out"), "--device", "cpu",
                           "--progress-lines"]
