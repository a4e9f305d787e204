"""Model files: save/load round trip, atomic writing, clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qmricore import __version__
from qmricore.errors import InputError, ParameterError
from qmricore.inference.preprocess import PreprocessConfig
from qmricore.inference.window import WindowConfig
from qmricore.models.model_file import (
    FORMAT_NAME,
    load_model,
    model_payload,
    read_meta,
    save_model,
)
from qmricore.models.networks import EstimatorConfig, SegmenterConfig, build_estimator, build_segmenter


def test_segmenter_round_trip(tmp_path: Path) -> None:
    config = SegmenterConfig(classes="tissue", channels=(4, 8))
    net = build_segmenter(config).eval()
    window = WindowConfig(patch=(16, 16, 16), overlap=0.25)
    prep = PreprocessConfig(zscore="foreground")
    path = save_model(tmp_path / "seg.pt", net, config, preprocessing=prep, inference=window, training={"steps": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["seg.pt"]  # no temporary file left
    loaded = load_model(path)
    assert loaded.meta.kind == "segmenter" and loaded.meta.network == config
    assert loaded.meta.classes == ("background", "gm", "wm", "gm_wm_pv", "csf", "lesion")
    assert loaded.meta.inference == window and loaded.meta.preprocessing == prep
    assert loaded.meta.code_version == __version__ and loaded.meta.training == {"steps": 3}
    assert not loaded.network.training
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), net(x))


def test_estimator_round_trip_and_plain_torch_load(tmp_path: Path) -> None:
    config = EstimatorConfig(channels=(4, 8))
    net = build_estimator(config).eval()
    path = save_model(tmp_path / "est.pt", net, config)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT_NAME and raw["version"] == 1 and raw["kind"] == "estimator"
    assert raw["classes"] == ["pd", "r1", "r2s", "mt"] and raw["inference"]["patch"] == (192, 192, 192)
    assert read_meta(path).network == config
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path).network(x), net(x))


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.pt: model file not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt: not a qmricore model file"):
        load_model(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(InputError, match="foreign.pt: not a qmricore model file"):
        load_model(foreign)
    config = SegmenterConfig(channels=(4, 8))
    good = save_model(tmp_path / "good.pt", build_segmenter(config), config)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.pt: "):
        load_model(truncated)


def test_mismatched_weights_and_version(tmp_path: Path) -> None:
    config = SegmenterConfig(channels=(4, 8))
    payload = torch.load(save_model(tmp_path / "m.pt", build_segmenter(config), config), weights_only=True)
    payload["network"]["channels"] = [4, 16]
    torch.save(payload, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="wrong.pt: weights do not match the network"):
        load_model(tmp_path / "wrong.pt")
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(InputError, match="future.pt: model file version 99 is not supported"):
        load_model(tmp_path / "future.pt")


def test_patch_must_fit_the_network_stride(tmp_path: Path) -> None:
    config = SegmenterConfig(channels=(4, 8, 16))
    odd = WindowConfig(patch=(16, 16, 18))
    with pytest.raises(ParameterError, match=r"patch \(16, 16, 18\) must be a multiple of .* total stride 4"):
        save_model(tmp_path / "odd.pt", build_segmenter(config), config, inference=odd)
    payload = model_payload(build_segmenter(config), config)
    payload["inference"] = odd.to_dict()
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(InputError, match=r"odd.pt: inference patch \(16, 16, 18\) is not a multiple of .* 4"):
        load_model(path)
