"""Inference pipeline: analytic expectations for sliding window + TTA, geometry, ensembling, OOM fallback."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from qmricore.errors import InputError, ParameterError
from qmricore.inference.predict import (
    ensemble_logits,
    estimate_maps,
    lesion_volume_ml,
    predict_on_grid,
    resolve_device,
    segment,
    volume_grid,
)
from qmricore.inference.preprocess import PreprocessConfig, network_grid
from qmricore.inference.window import FLIP_DIMS, WindowConfig, predict_with_fallback, sliding_window_logits
from qmricore.io import Volume, read_volume, write_nifti
from qmricore.models.model_file import LoadedModel, ModelMeta, load_model, save_model
from qmricore.models.networks import EstimatorConfig, SegmenterConfig, build_estimator, build_segmenter

PATCH = WindowConfig(patch=(16, 16, 16))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class LesionWhereBright(nn.Module):
    """A fixed 1x1 'network': logits (0, x) -> lesion wherever the normalised intensity is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


class OutOfMemoryStandIn(nn.Module):
    """Stand-in for a GPU network: raises torch.cuda.OutOfMemoryError on its first ``failures`` calls."""

    def __init__(self, inner: nn.Module, failures: int) -> None:
        super().__init__()
        self.inner, self.failures, self.calls = inner, failures, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
        return self.inner(x)


def hand_model(network: nn.Module, *, kind: str = "segmenter", prep: PreprocessConfig | None = None) -> LoadedModel:
    config = SegmenterConfig(channels=(4, 8)) if kind == "segmenter" else EstimatorConfig(channels=(4, 8))
    classes = config.class_names if kind == "segmenter" else config.map_names
    meta = ModelMeta(kind, config, classes, prep or PreprocessConfig(), PATCH, "test", {})
    return LoadedModel(network.eval(), meta)


def oblique_lps_affine() -> np.ndarray:
    """Oblique, LPS-ordered, 1.5 x 1.5 x 2.0 mm voxels with axes permuted."""
    rotation = Rotation.from_euler("xyz", [12, -8, 25], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([1.5, 1.5, 2.0])
    affine[:3, 3] = [40.0, -25.0, 12.0]
    return affine


def test_identity_network_through_sliding_window_and_tta_returns_input() -> None:
    image = torch.randn(1, 1, 20, 24, 28, generator=torch.Generator().manual_seed(0))
    for tta in (False, True):
        out = sliding_window_logits(Identity(), image, PATCH, tta=tta, sw_batch_size=2)
        torch.testing.assert_close(out, image, atol=1e-5, rtol=1e-5)
    assert len(set(FLIP_DIMS)) == 8


def test_tta_averages_flipped_predictions_of_a_convolution() -> None:
    # mean over the 8 flips of conv(k) is conv with the flip-symmetrised kernel (one window, zero padding)
    generator = torch.Generator().manual_seed(1)
    conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(1, 1, 3, 3, 3, generator=generator))
    symmetric = nn.Conv3d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        symmetric.weight.copy_(sum(torch.flip(conv.weight, d) for d in FLIP_DIMS) / 8)
    image = torch.randn(1, 1, 12, 12, 12, generator=generator)
    whole = WindowConfig(patch=(12, 12, 12))
    out = sliding_window_logits(conv, image, whole, tta=True, sw_batch_size=1)
    with torch.no_grad():
        torch.testing.assert_close(out, symmetric(image), atol=1e-5, rtol=1e-5)
        # a flip-equivariant model is unchanged by TTA
        plain = sliding_window_logits(symmetric, image, whole, tta=False, sw_batch_size=1)
        torch.testing.assert_close(sliding_window_logits(symmetric, image, whole, tta=True, sw_batch_size=1), plain,
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(sliding_window_logits(conv, image, whole, tta=False, sw_batch_size=1), out)


def test_oblique_anisotropic_input_round_trips_a_linear_image(tmp_path: Path) -> None:
    affine = oblique_lps_affine()
    shape = (18, 14, 12)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    data = (world @ np.array([0.3, -0.2, 0.5]) + 5.0).astype(np.float32)
    path = write_nifti(tmp_path / "oblique.nii.gz", data, like=Volume(data, affine))
    volume = read_volume(path)
    model = hand_model(Identity(), kind="estimator", prep=PreprocessConfig(normalisation="none", zscore="none"))
    assert nib.aff2axcodes(network_grid(volume_grid(volume)).affine) == ("R", "A", "S")
    out = predict_on_grid(model, volume, volume_grid(volume), tta=True, device="cpu")
    assert out.shape == (1, *shape)
    inner = (slice(2, -2),) * 3  # the border half-voxel is extrapolated (edge values repeated)
    np.testing.assert_allclose(out[0].numpy()[inner], data[inner], atol=2e-3)


def test_segment_output_geometry_for_oblique_input(tmp_path: Path) -> None:
    affine = oblique_lps_affine()
    data = np.random.default_rng(0).random((18, 14, 12)).astype(np.float32)
    volume = read_volume(write_nifti(tmp_path / "in.nii.gz", data, like=Volume(data, affine)))
    config = SegmenterConfig(channels=(4, 8))
    model = load_model(save_model(tmp_path / "m.pt", build_segmenter(config), config, inference=PATCH))
    result = segment(model, [volume], tta=False, device="cpu")
    assert result.lesion_mask.shape == data.shape and result.probabilities.shape == (2, *data.shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    out = read_volume(write_nifti(tmp_path / "mask.nii.gz", result.lesion_mask, like=volume))
    np.testing.assert_array_equal(out.affine, volume.affine)
    assert out.shape == volume.shape


def test_lesion_mask_and_volume_of_a_known_cube() -> None:
    data = np.zeros((24, 24, 24), np.float32)
    data[4:12, 6:14, 8:16] = 1.0  # 512 voxels of 1 mm³
    volume = Volume(data, np.eye(4))
    result = segment(hand_model(LesionWhereBright()), [volume], tta=True, device="cpu")
    np.testing.assert_array_equal(result.lesion_mask, data.astype(np.uint8))
    assert result.lesion_ml == pytest.approx(0.512)
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[:5, :4, :2] = 1
    assert lesion_volume_ml(mask, np.diag([1.5, -1.5, 2.0, 1.0])) == pytest.approx(40 * 4.5 / 1000)


def test_ensemble_is_mean_of_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    config = SegmenterConfig(channels=(4, 8))
    model = load_model(save_model(tmp_path / "m.pt", build_segmenter(config), config, inference=PATCH))
    rng = np.random.default_rng(1)
    a = Volume(rng.random((16, 20, 16)).astype(np.float32), np.diag([1.2, 1.2, 1.2, 1.0]))
    b = Volume(rng.random((16, 20, 16)).astype(np.float32), a.affine)
    grid = volume_grid(a)
    la, lb = (predict_on_grid(model, v, grid, tta=False, device="cpu") for v in (a, b))
    torch.testing.assert_close(ensemble_logits([la, lb]), (la + lb) / 2)
    result = segment(model, [a, b], tta=False, device="cpu")
    np.testing.assert_allclose(result.probabilities, torch.softmax((la + lb) / 2, 0).numpy(), atol=1e-5)


def test_out_of_memory_falls_back_with_warnings() -> None:
    image = torch.randn(1, 1, 20, 16, 16)
    window = WindowConfig(patch=(16, 16, 16), sw_batch_size=2)
    with pytest.warns(RuntimeWarning, match="retrying with sw_batch_size=1"):
        out = predict_with_fallback(OutOfMemoryStandIn(Identity(), 1), image, window, tta=False, device="cpu")
    torch.testing.assert_close(out, image, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = predict_with_fallback(OutOfMemoryStandIn(Identity(), 2), image, window, tta=False, device="cpu")
    messages = [str(w.message) for w in caught]
    assert any("retrying with sw_batch_size=1" in m for m in messages)
    assert any("falling back to the CPU" in m for m in messages)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="out of memory even on the CPU"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict_with_fallback(OutOfMemoryStandIn(Identity(), 99), image, window, tta=False, device="cpu")


def test_estimate_maps_on_input_grid(tmp_path: Path) -> None:
    config = EstimatorConfig(channels=(4, 8))
    model = load_model(save_model(tmp_path / "e.pt", build_estimator(config), config, inference=PATCH))
    volume = Volume(np.random.default_rng(2).random((14, 18, 10)).astype(np.float32), np.diag([2.0, 1.0, 1.5, 1.0]))
    maps = estimate_maps(model, volume, tta=False, device="cpu")
    assert list(maps) == ["pd", "r1", "r2s", "mt"]
    assert all(m.shape == volume.shape and m.dtype == np.float32 for m in maps.values())
    assert all((maps[k] > 0).all() for k in ("pd", "r1", "r2s"))
    assert ((maps["mt"] >= 0) & (maps["mt"] <= 100)).all()
    with pytest.raises(InputError, match="is a estimator model; this needs a segmenter model"):
        segment(model, [volume], device="cpu")


def test_constant_image_and_device_errors() -> None:
    with pytest.raises(InputError, match="flat.nii: image intensities are constant"):
        segment(hand_model(Identity()), [Volume(np.ones((8, 8, 8), np.float32), np.eye(4), path=Path("flat.nii"))],
                device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA device is available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tmp_path: Path) -> None:
    config = SegmenterConfig(channels=(4, 8))
    model = load_model(save_model(tmp_path / "m.pt", build_segmenter(config), config, inference=PATCH))
    volume = Volume(np.random.default_rng(4).random((20, 16, 18)).astype(np.float32), np.eye(4))
    cpu = segment(model, [volume], tta=True, device="cpu")
    gpu = segment(model, [volume], tta=True, device="cuda")
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-4)


def test_ensemble_inputs_must_overlap() -> None:
    a = Volume(np.random.default_rng(5).random((8, 8, 8)).astype(np.float32), np.eye(4))
    far = np.eye(4)
    far[:3, 3] = 500.0
    b = Volume(a.data, far, path=Path("elsewhere.nii.gz"))
    with pytest.raises(InputError, match="elsewhere.nii.gz: does not overlap the first input image"):
        segment(hand_model(Identity()), [a, b], device="cpu")
