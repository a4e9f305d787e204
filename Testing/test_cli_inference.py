"""``qmricore segment``, ``estimate`` and ``evaluate`` end to end in real subprocesses with a tiny model file."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_qmricore as qmricore

from qmricore.inference.window import WindowConfig
from qmricore.io import load_map_set
from qmricore.models.model_file import save_model
from qmricore.models.networks import (
    EstimatorConfig,
    SegmenterConfig,
    build_estimator,
    build_segmenter,
)

#: LPS-ordered, anisotropic, slightly oblique input geometry.
AFFINE = np.array([[-1.5, 0.0, 0.0, 40.0], [0.0, -1.2, 0.1, 20.0], [0.0, 0.05, 2.0, -10.0], [0.0, 0.0, 0.0, 1.0]])
WINDOW = WindowConfig(patch=(16, 16, 16))


def write_image(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_inference")
    rng = np.random.default_rng(0)
    seg = SegmenterConfig(channels=(4, 8))
    est = EstimatorConfig(channels=(4, 8))
    return {
        "root": root,
        "seg": save_model(root / "seg.pt", build_segmenter(seg), seg, inference=WINDOW),
        "est": save_model(root / "est.pt", build_estimator(est), est, inference=WINDOW),
        "t1": write_image(root / "t1.nii.gz", rng.random((18, 20, 12))),
        "flair": write_image(root / "flair.nii.gz", rng.random((18, 20, 12))),
    }


def test_segment_writes_mask_on_input_grid(files: dict[str, Path]) -> None:
    out, prob = files["root"] / "out" / "mask.nii.gz", files["root"] / "out" / "prob.nii.gz"
    labels = files["root"] / "out" / "labels.nii"
    result = qmricore("segment", "--model", files["seg"], "--input", files["t1"], "--modality", "T1",
                      "--input", files["flair"], "--modality", "FLAIR", "--out", out, "--probabilities", prob,
                      "--labels", labels, "--no-tta", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "lesion volume:" in result.stdout and "mL (T1, FLAIR)" in result.stdout
    reference = nib.load(str(files["t1"]))
    for path in (out, prob, labels):
        image = nib.load(str(path))
        assert image.shape == reference.shape
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-6)
    mask = np.asarray(nib.load(str(out)).dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, np.asarray(nib.load(str(labels)).dataobj) == 1)  # binary: lesion = 1
    probability = np.asarray(nib.load(str(prob)).dataobj)
    np.testing.assert_array_equal(mask, probability > 0.5)
    millilitres = float(result.stdout.split("lesion volume:")[1].split("mL")[0])
    assert millilitres == pytest.approx(mask.sum() * abs(np.linalg.det(AFFINE[:3, :3])) / 1000, abs=1e-3)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing input", "nope.nii.gz: input image: no such file"),
        ("corrupt model", "bad.pt: not a qmricore model file"),
        pytest.param("4D input", "4d.nii.gz: input image: is 4D", marks=pytest.mark.slow),
        pytest.param("estimator model", "est.pt: is a estimator model; this needs a segmenter model",
                     marks=pytest.mark.slow),
    ],
)
def test_segment_bad_input_is_one_line_and_writes_nothing(files: dict[str, Path], case: str, message: str) -> None:
    root = files["root"] / case.replace(" ", "_")
    root.mkdir()
    model, image = files["seg"], files["t1"]
    if case == "missing input":
        image = root / "nope.nii.gz"
    elif case == "corrupt model":
        model = root / "bad.pt"
        model.write_bytes(b"garbage")
    elif case == "4D input":
        image = write_image(root / "4d.nii.gz", np.zeros((8, 8, 8, 2)))
    else:
        model = files["est"]
    result = qmricore("segment", "--model", model, "--input", image, "--out", root / "mask.nii.gz", "--device", "cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qmricore segment: error: ") and message in lines[0]
    assert not (root / "mask.nii.gz").exists()


@pytest.mark.slow
def test_estimate_writes_four_maps(files: dict[str, Path]) -> None:
    out = files["root"] / "maps"
    result = qmricore("estimate", "--model", files["est"], "--input", files["t1"], "--out", out, "--no-tta",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    reference = nib.load(str(files["t1"]))
    for name in ("PD", "R1", "R2s", "MT"):
        image = nib.load(str(out / f"{name}.nii.gz"))
        assert image.shape == reference.shape
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-6)
    maps = load_map_set(folder=out).maps  # readable as an hMRI-style map set (qATLAS -> simulate)
    assert set(maps) == {"pd", "r1", "r2s", "mt"}


def test_evaluate_scores_and_summarises(files: dict[str, Path]) -> None:
    root = files["root"] / "eval"
    (root / "pred").mkdir(parents=True)
    (root / "truth").mkdir()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    cube = np.zeros((20, 20, 20))
    cube[5:15, 5:15, 5:15] = 1
    shifted = np.roll(cube, 2, axis=0)
    write_image(root / "truth" / "sub-01.nii.gz", cube, affine)
    write_image(root / "truth" / "sub-02.nii.gz", cube, affine)
    write_image(root / "pred" / "sub-01_pred.nii.gz", cube, affine)
    write_image(root / "pred" / "sub-02.nii.gz", shifted, affine)
    out = root / "results.csv"
    result = qmricore("evaluate", "--pred", root / "pred", "--truth", root / "truth", "--model", "m",
                      "--modality", "T1", "--out", out)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["subject"], float(r["dice"]), float(r["hd95"])) for r in rows] == [
        ("sub-01", 1.0, 0.0), ("sub-02", 0.8, 2.0)]
    with open(root / "results_summary.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert summary[0]["modality"] == "T1" and float(summary[0]["dice_median"]) == pytest.approx(0.9)
    assert "| T1 | m | 2 | 0.900" in (root / "results.md").read_text()
    missing = qmricore("evaluate", "--pred", root / "pred", "--truth", root / "nothing", "--out", root / "x.csv")
    assert missing.returncode == 2 and "nothing: ground-truth folder not found" in missing.stderr
    assert not (root / "x.csv").exists()


@pytest.mark.slow
def test_evaluate_with_manifest(files: dict[str, Path]) -> None:
    root = files["root"] / "manifest"
    root.mkdir()
    cube = np.zeros((16, 16, 16))
    cube[4:12, 4:12, 4:12] = 1
    write_image(root / "truth.nii.gz", cube, np.eye(4))
    write_image(root / "pred.nii.gz", np.zeros_like(cube), np.eye(4))
    (root / "pairs.csv").write_text("prediction,truth,subject,modality,model\npred.nii.gz,truth.nii.gz,s1,FLAIR,x\n")
    out = root / "res.csv"
    result = qmricore("evaluate", "--manifest", root / "pairs.csv", "--out", out)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as handle:
        row = next(csv.DictReader(handle))
    assert (row["subject"], row["modality"], row["model"]) == ("s1", "FLAIR", "x")
    assert (float(row["dice"]), float(row["hd95"])) == (0.0, 256.0)
