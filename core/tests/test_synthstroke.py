"""SynthStroke import: both published layouts, config keys, and one-line refusals of bad files.

The fixtures are the authors' network built here with MONAI's own ``UNet`` call (random weights), saved the
two ways the authors publish it: a ``torch.save`` checkpoint ``{"net": ..., "opt": ..., "epoch": ...}`` and a
Hugging Face folder (``config.json`` + ``model.safetensors`` with ``unet.``-prefixed names).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet
from safetensors.torch import save_file

from qmricore.errors import InputError
from qmricore.models.model_file import load_model, read_meta, save_model
from qmricore.models.networks import SegmenterConfig, build_segmenter
from qmricore.models.synthstroke import (
    LICENCE,
    SYNTHSTROKE_WINDOW,
    import_synthstroke,
    stated_spacing,
    synthstroke_preprocessing,
)


def authors_unet(out_channels: int, channels: tuple[int, ...] = (32, 64, 128, 256, 320, 320)) -> UNet:
    """The authors' constructor, written out (not through qmricore), with random weights."""
    return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=channels,
                strides=(2,) * (len(channels) - 1), kernel_size=3, up_kernel_size=3, num_res_units=1, act="PRELU",
                norm="INSTANCE", dropout=0, bias=True, adn_ordering="NDA").eval()


def save_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    torch.save({"net": net.state_dict(), "opt": {"lr": 1e-4}, "epoch": 7}, path)
    return path


def save_hf_folder(net: torch.nn.Module, folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"unet.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def six_class(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("synthstroke")
    torch.manual_seed(0)
    net = authors_unet(6)
    config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 6, "channels": [32, 64, 128, 256, 320, 320],
              "strides": [2, 2, 2, 2, 2]}
    return {"root": root, "net": net, "checkpoint": save_checkpoint(net, root / "ckpt_best.pt"),
            "folder": save_hf_folder(net, root / "synthstroke-hf", config)}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_both_layouts_import_to_the_authors_weights_and_preprocessing(six_class: dict, tmp_path: Path) -> None:
    net = six_class["net"]
    sources = {"checkpoint": six_class["checkpoint"], "folder": six_class["folder"],
               "safetensors file": six_class["folder"] / "model.safetensors"}
    for label, source in sources.items():
        out = tmp_path / f"{label.replace(' ', '_')}.pt"
        imported = import_synthstroke(source, out)
        assert imported.path == out and imported.parameters == sum(p.numel() for p in net.parameters())
        loaded = load_model(out)
        assert same_weights(loaded.network, net), label
        meta = loaded.meta
        assert meta.network.channels == (32, 64, 128, 256, 320, 320) and meta.network.strides == (2, 2, 2, 2, 2)
        assert meta.classes == ("background", "gm", "wm", "gm_wm_pv", "csf", "lesion")
        assert meta.network.lesion_index == 5
        assert meta.preprocessing == synthstroke_preprocessing(1.0) and meta.preprocessing.normalisation == "histogram"
        assert meta.inference == SYNTHSTROKE_WINDOW and meta.inference.patch == (128, 128, 128)
        assert (meta.inference.overlap, meta.inference.sigma_scale, meta.inference.padding) == (0.5, 0.125, "zero")
        assert meta.origin["licence"] == LICENCE and meta.origin["name"] == "SynthStroke 6-class 1 mm"
        assert meta.origin["layout"] == ("checkpoint" if label == "checkpoint" else "safetensors")
        assert read_meta(out).origin == meta.origin
    x = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(load_model(tmp_path / "folder.pt").network(x), net(x))
    # qmricore's own builder makes the same module tree as the authors' call
    assert build_segmenter(read_meta(tmp_path / "folder.pt").network).state_dict().keys() == net.state_dict().keys()


def test_two_class_checkpoint_without_config_and_the_low_res_variant(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = authors_unet(2)
    checkpoint = save_checkpoint(net, tmp_path / "binary.pt")
    imported = import_synthstroke(checkpoint, tmp_path / "binary_qmri.pt", spacing=2.0, name="mine")
    meta = load_model(imported.path).meta
    assert meta.classes == ("background", "lesion") and meta.network.lesion_index == 1  # rows of the final conv
    assert meta.preprocessing.spacing == 2.0 and meta.origin["name"] == "mine"
    # a config may say low_res (2 mm) or give the spacing, top level or in a "model" section
    for config, spacing in (({"num_classes": 2, "low_res": True}, 2.0), ({"model": {"pixdim": [2, 2, 2]}}, 2.0),
                            ({"n_classes": 2, "spacing": 1.0}, 1.0)):
        (tmp_path / "config.json").write_text(json.dumps(config))
        out = import_synthstroke(checkpoint, tmp_path / "c.pt", config=tmp_path / "config.json")
        assert out.spacing == spacing and read_meta(out.path).preprocessing.spacing == spacing
        assert stated_spacing(checkpoint, tmp_path / "config.json") == spacing  # from the config alone
    assert stated_spacing(checkpoint) is None  # a checkpoint carries no config: the user must say


@pytest.mark.parametrize(
    "case, message",
    [
        ("garbage", "not a torch checkpoint (not a torch zip archive) nor a .safetensors file"),
        ("qmricore model", "is already a qmricore model file"),
        ("no net", "not a SynthStroke checkpoint (no 'net' state dict; keys: epoch, state_dict)"),
        ("code-running pickle", "refused: the checkpoint holds pickled objects other than tensors"),
        ("folder without weights", "folder has no model.safetensors"),
        ("broken safetensors", "not a readable safetensors file"),
        ("missing and extra keys", "weights do not fit the SynthStroke UNet (6 classes, channels (32, 64, 128, 256, "
                                   "320, 320)): missing keys model.0.conv.unit0.conv.weight; unexpected keys extra"),
        ("wrong shapes", "weights do not fit the SynthStroke UNet (2 classes, channels (32, 64, 128, 256, 320, 320)): "
                         "missing keys"),
        ("wrong channels in config", "wrong shapes: model.0.conv.unit0.conv.weight (32, 1, 3, 3, 3) (expected (16, 1,"),
        ("three classes", "3 output classes; SynthStroke models have 2 (background, lesion) or 6"),
        ("bad json", "config is not valid JSON (line 1"),
        ("three input channels", "config in_channels = 3; SynthStroke models have in_channels = 1"),
        ("NaN weights", "weights contain NaN or Inf (model.0.conv.unit0.conv.bias)"),
    ],
)
def test_bad_files_are_refused_in_one_line_and_nothing_is_written(six_class: dict, tmp_path: Path, case: str,
                                                                   message: str) -> None:
    state = six_class["net"].state_dict()
    source, config = tmp_path / "weights.pt", None
    marker = tmp_path / "the_pickle_ran"
    if case == "garbage":
        source.write_bytes(b"\x80\x04not a checkpoint")
    elif case == "qmricore model":
        cfg = SegmenterConfig(channels=(4, 8))
        save_model(source, build_segmenter(cfg), cfg)
    elif case == "no net":
        torch.save({"state_dict": state, "epoch": 1}, source)
    elif case == "code-running pickle":
        class Payload:
            def __reduce__(self):  # unpickling calls open(marker, "w"): creates the marker file
                return (open, (str(marker), "w"))

        torch.save({"net": {"model.0.conv.unit0.conv.weight": Payload()}, "epoch": 1}, source)
    elif case == "folder without weights":
        source = tmp_path / "empty_repo"
        source.mkdir()
    elif case == "broken safetensors":
        source = tmp_path / "model.safetensors"
        source.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    elif case == "missing and extra keys":
        partial = {k: v for k, v in state.items() if k != "model.0.conv.unit0.conv.weight"}
        torch.save({"net": {**partial, "extra": torch.zeros(1)}}, source)
    elif case == "wrong shapes":  # another network's weights: every name differs or has another shape
        torch.save({"net": authors_unet(2, channels=(8, 16, 32)).state_dict()}, source)
    elif case == "wrong channels in config":
        source = save_hf_folder(six_class["net"], tmp_path / "repo", {"out_channels": 6,
                                                                       "channels": [16, 64, 128, 256, 320, 320]})
    elif case == "three classes":
        source = save_hf_folder(six_class["net"], tmp_path / "repo", {"out_channels": 3})
    elif case == "bad json":
        source = save_hf_folder(six_class["net"], tmp_path / "repo", {})
        (source / "config.json").write_text("{out_channels: 6}")
    elif case == "three input channels":
        source = save_hf_folder(six_class["net"], tmp_path / "repo", {"in_channels": 3})
    elif case == "NaN weights":
        broken = dict(state)
        broken["model.0.conv.unit0.conv.bias"] = torch.full_like(broken["model.0.conv.unit0.conv.bias"], float("nan"))
        torch.save({"net": broken}, source)
    out = tmp_path / "out" / "model.pt"
    out.parent.mkdir()
    with pytest.raises(InputError) as caught:
        import_synthstroke(source, out, config=config)
    text = str(caught.value)
    assert "\n" not in text and message in text, text
    assert list(out.parent.iterdir()) == []
    assert not marker.exists()


@pytest.mark.parametrize("spacing", [1.0, 2.0])
def test_first_voxel_grid_and_histogram_normalisation_equal_monai(spacing: float) -> None:
    """The stored preprocessing, stage by stage, against MONAI's Orientation + Spacing + HistogramNormalize +
    NormalizeIntensity on an LPS, anisotropic, oblique volume (image through our resampler onto our grid)."""
    import numpy as np
    from monai.data import MetaTensor
    from monai.transforms import HistogramNormalize, NormalizeIntensity, Orientation, Spacing
    from scipy.spatial.transform import Rotation

    from qmricore.inference.preprocess import Grid, network_grid, preprocess

    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ Rotation.from_euler("xyz", [3, -2, 4], degrees=True).as_matrix() \
        @ np.diag([1.3, 0.8, 1.7])
    affine[:3, 3] = [12.0, -7.0, 30.0]
    data = np.random.default_rng(3).gamma(2.0, 50.0, (23, 31, 17)).astype(np.float32)
    image = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(affine))
    monai = Spacing(pixdim=(spacing,) * 3, mode="bilinear")(Orientation(axcodes="RAS")(image))
    grid = network_grid(Grid(data.shape, affine), spacing, "first-voxel")
    assert grid.shape == tuple(monai.shape[1:])
    np.testing.assert_allclose(grid.affine, monai.affine.numpy(), atol=1e-5)
    ours, _ = preprocess(data, Grid(data.shape, affine), synthstroke_preprocessing(spacing))
    expected = NormalizeIntensity()(HistogramNormalize(num_bins=256, min=0, max=255)(monai))
    np.testing.assert_allclose(ours[0].numpy(), expected.numpy(), atol=2e-3)
