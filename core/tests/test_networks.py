"""Networks: output shapes, physical head ranges, config round trips, linear upsampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qmricore.errors import ParameterError
from qmricore.models.networks import (
    CLASS_SETS,
    ESTIMATOR_MAPS,
    EstimatorConfig,
    EstimatorHead,
    SegmenterConfig,
    build_estimator,
    build_segmenter,
    config_from_dict,
    split_maps,
)


@pytest.mark.parametrize("classes, n", [("binary", 2), ("tissue", 6)])
def test_segmenter_output_shape_and_classes(classes: str, n: int) -> None:
    config = SegmenterConfig(classes=classes, channels=(4, 8))
    net = build_segmenter(config).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 16, 12, 8))
    assert out.shape == (2, n, 16, 12, 8)
    assert config.class_names == CLASS_SETS[classes]
    assert config.class_names[config.lesion_index] == "lesion" and config.lesion_index == n - 1


def test_segmenter_follows_spec_blocks() -> None:
    net = build_segmenter(SegmenterConfig(channels=(4, 8, 16)))
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"PReLU", "InstanceNorm3d", "ResidualUnit"} <= kinds
    assert "ConvTranspose3d" in kinds  # MONAI UNet decoder


def test_estimator_heads_are_physical() -> None:
    torch.manual_seed(0)
    net = build_estimator(EstimatorConfig(channels=(4, 8, 16))).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 16, 16) * 10)
    assert out.shape == (1, 4, 16, 16, 16)
    maps = split_maps(out)
    assert list(maps) == list(ESTIMATOR_MAPS)
    for key in ("pd", "r1", "r2s"):
        assert torch.all(maps[key] > 0)
    assert torch.all((maps["mt"] >= 0) & (maps["mt"] <= 100))


def test_estimator_uses_linear_upsampling_gelu_dropout() -> None:
    net = build_estimator(EstimatorConfig(channels=(4, 8, 16)))
    kinds = [type(m).__name__ for m in net.modules()]
    assert "ConvTranspose3d" not in kinds
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 2 and all(u.mode == "trilinear" for u in ups)
    assert "GELU" in kinds and "InstanceNorm3d" in kinds
    assert {m.p for m in net.modules() if isinstance(m, nn.Dropout)} == {0.1}


def test_head_values_match_formula() -> None:
    head = EstimatorHead({"pd": 70.0, "r1": 1.0, "r2s": 20.0}, log_clamp=6.0)
    logits = torch.tensor([0.0, 1.0, -100.0, 0.0]).view(1, 4, 1, 1, 1)
    out = head(logits).flatten()
    expected = torch.tensor([70.0, torch.e, 20.0 * torch.exp(torch.tensor(-6.0)).item(), 50.0])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("config", [SegmenterConfig(classes="tissue", channels=(4, 8)), EstimatorConfig()])
def test_config_round_trip(config: SegmenterConfig | EstimatorConfig) -> None:
    kind = "segmenter" if isinstance(config, SegmenterConfig) else "estimator"
    assert config_from_dict(kind, config.to_dict()) == config


def test_estimator_spec_defaults() -> None:
    config = EstimatorConfig()
    assert config.channels == (24, 48, 96, 192, 384) and config.strides == (2, 2, 2, 2)
    assert (config.num_res_units, config.act, config.norm, config.dropout) == (2, "GELU", "INSTANCE", 0.1)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ParameterError, match="classes must be one of"):
        SegmenterConfig(classes="tumour")
    with pytest.raises(ParameterError, match="channels must be at least two"):
        SegmenterConfig(channels=(4,))
    with pytest.raises(ParameterError, match="unknown keys"):
        SegmenterConfig.from_dict({"classes": "binary", "depth": 3})
    with pytest.raises(ParameterError, match="scales need positive"):
        EstimatorConfig(scales={"pd": 1.0})
