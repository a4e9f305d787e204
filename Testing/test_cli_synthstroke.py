"""SynthStroke end to end in real subprocesses: ``import-model`` both layouts, then ``segment`` against MONAI.

The reference pipeline is written here with MONAI's own transforms (``LoadImaged``, ``EnsureChannelFirstd``,
``Orientationd("RAS")``, ``Spacingd``, ``HistogramNormalized``, ``NormalizeIntensityd``,
``SlidingWindowInferer``, ``Invertd`` back to the input grid), the authors' inference recipe; ``qmricore segment``
with the imported file must give the same lesion probabilities.  The network is the authors' 6-stage UNet
(18.6 M parameters, random weights) on a small LPS, anisotropic image (one 128³ window, padded).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import run_qmricore as qmricore
from monai.networks.nets import UNet

#: LPS-ordered, anisotropic (1.1 x 0.9 x 1.3 mm) input geometry, rotated 2 degrees about x (oblique).
_TILT = np.deg2rad(2.0)
AFFINE = np.eye(4)
_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(_TILT), -np.sin(_TILT)], [0.0, np.sin(_TILT), np.cos(_TILT)]])
AFFINE[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ _ROTATION @ np.diag([1.1, 0.9, 1.3])
AFFINE[:3, 3] = [30.0, 20.0, -15.0]
SHAPE = (40, 44, 36)


def authors_unet(out_channels: int) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(32, 64, 128, 256, 320, 320),
                strides=(2, 2, 2, 2, 2), kernel_size=3, up_kernel_size=3, num_res_units=1, act="PRELU",
                norm="INSTANCE", dropout=0, bias=True, adn_ordering="NDA").eval()


def head_image(path: Path) -> Path:
    """A bright ellipsoid 'head' with a brighter blob and noise, on a dark background."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    r2 = grid[0] ** 2 + (grid[1] / 0.9) ** 2 + (grid[2] / 0.8) ** 2
    data = 300.0 * (r2 < 0.7) + 200.0 * np.exp(-((grid[0] - 0.3) ** 2 + grid[1] ** 2 + grid[2] ** 2) / 0.02)
    data = data + rng.normal(0, 15, SHAPE) + 40.0
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), str(path))
    return path


def monai_reference(image: Path, net: torch.nn.Module, spacing: float) -> np.ndarray:
    """Lesion probability on the input grid by the authors' recipe, all in MONAI."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        HistogramNormalized,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                   Spacingd("image", pixdim=(spacing,) * 3, mode="bilinear"),
                   HistogramNormalized("image", num_bins=256, min=0, max=255), NormalizeIntensityd("image")])
    data = pre({"image": str(image)})
    inferer = SlidingWindowInferer(roi_size=(128, 128, 128), sw_batch_size=1, overlap=0.5, mode="gaussian",
                                   sigma_scale=0.125)
    with torch.inference_mode():
        data["pred"] = inferer(data["image"][None], net)[0]
    back = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)["pred"]
    return torch.softmax(back.as_tensor().float(), dim=0)[-1].numpy()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("synthstroke_cli")
    torch.manual_seed(0)
    net = authors_unet(6)
    torch.save({"net": net.state_dict(), "opt": {}, "epoch": 12}, root / "ckpt.pt")
    repo = root / "synthstroke-repo"
    repo.mkdir()
    save_file({f"unet.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"in_channels": 1, "out_channels": 6}))
    results = {}
    for layout, source, extra in (("checkpoint", root / "ckpt.pt", ()), ("folder", repo, ()),
                                  ("lowres", root / "ckpt.pt", ("--spacing", "2"))):
        out = root / f"{layout}.pt"
        results[layout] = qmricore("import-model", "--synthstroke", source, *extra, "--out", out)
        assert results[layout].returncode == 0, results[layout].stderr
    return {"root": root, "net": net, "results": results, "image": head_image(root / "head.nii.gz")}


def test_both_layouts_import_to_the_same_model(imported: dict) -> None:
    from qmricore.models.model_file import load_model

    for layout in ("checkpoint", "folder"):
        result = imported["results"][layout]
        assert "SynthStroke 6-class 1 mm: 6 classes (background, gm, wm, gm_wm_pv, csf, lesion)" in result.stdout
        assert f"18.6 M parameters, 1 mm, from the {'safetensors' if layout == 'folder' else 'checkpoint'}" \
               in result.stdout
    assert "SynthStroke 6-class 2 mm" in imported["results"]["lowres"].stdout
    a, b = (load_model(imported["root"] / f"{layout}.pt").network.state_dict() for layout in ("checkpoint", "folder"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model, spacing", [("folder", 1.0), pytest.param("lowres", 2.0, marks=pytest.mark.slow)])
def test_segment_matches_the_monai_reference_pipeline(imported: dict, model: str, spacing: float) -> None:
    root, image = imported["root"], imported["image"]
    mask, prob = root / f"mask_{model}.nii.gz", root / f"prob_{model}.nii.gz"
    result = qmricore("segment", "--model", root / f"{model}.pt", "--input", image, "--out", mask,
                      "--probabilities", prob, "--no-tta", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    ours = nib.load(str(prob))
    np.testing.assert_array_equal(ours.affine, nib.load(str(image)).affine)
    assert ours.shape == SHAPE
    reference = monai_reference(image, imported["net"], spacing)
    assert reference.shape == SHAPE
    difference = np.abs(np.asarray(ours.dataobj) - reference)
    print(f"max |qmricore - MONAI| lesion probability at {spacing:g} mm: {difference.max():.2e}")
    assert difference.max() <= 1e-3, difference.max()
    assert reference.std() > 1e-3  # the random network's lesion probability is not a constant
    # the mask is argmax == lesion (class 5 of 6): every p > 1/2 voxel is in it, no p < 1/6 voxel is
    lesion, p = np.asarray(nib.load(str(mask)).dataobj) > 0, np.asarray(ours.dataobj)
    assert lesion.any() and np.all(lesion[p > 0.5]) and not np.any(lesion[p < 1 / 6])


@pytest.mark.parametrize("case", ["code-running pickle", "wrong shapes"])
def test_bad_weights_are_one_line_exit_2_and_write_nothing(imported: dict, tmp_path: Path, case: str) -> None:
    source = tmp_path / "weights.pt"
    if case == "code-running pickle":
        marker = tmp_path / "ran"

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        torch.save({"net": {"x": Payload()}}, source)
    else:
        torch.save({"net": authors_unet(6).state_dict() | {"model.0.conv.unit0.conv.weight": torch.zeros(1)}}, source)
    out = tmp_path / "model.pt"
    result = qmricore("import-model", "--synthstroke", source, "--out", out)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"qmricore import-model: error: {source}: ")
    expected = "refused: the checkpoint holds pickled objects" if case == "code-running pickle" else \
        "wrong shapes: model.0.conv.unit0.conv.weight (1,) (expected (32, 1, 3, 3, 3))"
    assert expected in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]
