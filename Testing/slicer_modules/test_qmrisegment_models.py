"""QMRISegment's model list: shipped and imported models (name, classes, input, source, size), SynthStroke import.

The imported model is the authors' 6-stage UNet (MONAI's own constructor, random weights), saved as they publish
it; the list entries are read back from the written model files.
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import UNet
from QMRICommonLib.parameters import ScriptedNodeParameters
from QMRISegmentLib import MODEL_TABLE_COLUMNS, QMRISegmentLogic
from QMRISegmentLib.parameters import segmentNodes, segmentParameters

from qmricore.errors import InputError
from qmricore.models.synthstroke import LICENCE, SOURCE


def authors_unet(out_channels: int) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(32, 64, 128, 256, 320, 320),
                strides=(2, 2, 2, 2, 2), kernel_size=3, up_kernel_size=3, num_res_units=1, act="PRELU",
                norm="INSTANCE", dropout=0, bias=True, adn_ordering="NDA")


def test_model_list_has_the_shipped_models_then_imported_synthstroke_ones(scene, tmp_path):
    folder = tmp_path / "models"
    logic = QMRISegmentLogic(scene, modelFolder=folder)
    shipped, problems = logic.listModels()
    assert problems == [] and [m.name for m in shipped] == ["lesion_seg_qsynth"]
    assert shipped[0].row() == ("lesion_seg_qsynth", "6: background, GM, WM, GM/WM PV, CSF, lesion",
                                "1 image, RAS 2 mm, percentile-normalised",
                                "shipped with qmricore (trained on qsynth data)", "9.8 MB")
    assert len(MODEL_TABLE_COLUMNS) == len(shipped[0].row())

    # a downloaded Hugging Face folder (config says low_res) and a raw training checkpoint
    torch.manual_seed(0)
    repo = tmp_path / "synthstroke-qsynth-lowres"
    repo.mkdir()
    from safetensors.torch import save_file

    save_file({f"unet.{k}": v.contiguous() for k, v in authors_unet(6).state_dict().items()},
              str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"out_channels": 6, "low_res": True}))
    checkpoint = tmp_path / "binary_best.pt"
    torch.save({"net": authors_unet(2).state_dict(), "opt": {}, "epoch": 3}, checkpoint)
    assert logic.statedSpacing(repo / "model.safetensors") == 2.0 and logic.statedSpacing(checkpoint) is None
    tissue = logic.importSynthStrokeModel(repo / "model.safetensors")
    binary = logic.importSynthStrokeModel(checkpoint, spacing=1.0)
    assert tissue.path == folder / "synthstroke_synthstroke-qsynth-lowres.pt" and binary.path.parent == folder
    assert tissue.row()[:4] == ("SynthStroke 6-class 2 mm", "6: background, GM, WM, GM/WM PV, CSF, lesion",
                                "1 image, RAS 2 mm, histogram-normalised", SOURCE)
    assert tissue.licence == LICENCE and tissue.sizeText == f"{tissue.path.stat().st_size / 1e6:.1f} MB"
    assert 74e6 < tissue.path.stat().st_size < 76e6  # 18.6 M float32 parameters
    assert binary.classesText == "2: background, lesion" and binary.name == "SynthStroke 2-class 1 mm"

    # importing again never overwrites; a file that is not a model is reported, not listed
    again = logic.importSynthStrokeModel(checkpoint, spacing=1.0)
    assert again.path == folder / "synthstroke_binary_best_2.pt"
    (folder / "notes.pt").write_text("not a model")
    models, problems = logic.listModels()
    assert [m.name for m in models] == ["lesion_seg_qsynth", "SynthStroke 2-class 1 mm",
                                        "SynthStroke 2-class 1 mm", "SynthStroke 6-class 2 mm"]
    assert [m.shipped for m in models] == [True, False, False, False]
    assert len(problems) == 1 and problems[0].startswith(f"{folder / 'notes.pt'}: not a qmricore model file")

    # the chooser: picking an entry sets the model path that the segmentation job resolves
    holder = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    p = ScriptedNodeParameters(holder, segmentParameters(), segmentNodes())
    p.modelPath = models[-1].path
    assert QMRISegmentLogic.resolveModel(p.modelPath) == tissue.path


@pytest.mark.parametrize("case", ["code-running pickle", "not weights"])
def test_a_bad_import_is_one_line_and_leaves_the_model_folder_empty(scene, tmp_path, case):
    folder = tmp_path / "models"
    source = tmp_path / "download.pt"
    marker = tmp_path / "ran"
    if case == "code-running pickle":
        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        torch.save({"net": {"x": Payload()}}, source)
    else:
        source.write_text("<html>404 Not Found</html>")
    with pytest.raises(InputError) as caught:
        QMRISegmentLogic(scene, modelFolder=folder).importSynthStrokeModel(source, spacing=1.0)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{source}: ")
    assert list(folder.iterdir()) == [] and not marker.exists()
