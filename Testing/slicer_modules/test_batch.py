"""Scripts/qmri_batch.py under plain Python (slicer-core scene) as a real subprocess."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mrml_helpers import oblique_ijk_to_ras

from qmricore import physics, protocols
from qmricore.io import Volume, read_volume, write_nifti

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "Scripts" / "qmri_batch.py"


def write_subject(folder: Path, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (9, 8, 6)  # IJK
    maps = {"pd": rng.uniform(50, 100, shape), "r1": rng.uniform(0.2, 1.5, shape), "r2s": rng.uniform(1, 30, shape),
            "mt": rng.uniform(0, 2, shape)}
    maps = {k: v.astype(np.float32) for k, v in maps.items()}
    like = Volume(maps["pd"], oblique_ijk_to_ras())
    for key, suffix in (("pd", "PD"), ("r1", "R1"), ("r2s", "R2s_OLS"), ("mt", "MT")):
        write_nifti(folder / f"{folder.name}_{suffix}.nii.gz", maps[key], like)
    return maps


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--", *args], capture_output=True, text=True, timeout=240)


def test_batch_simulates_every_subject_like_the_library(tmp_path):
    subjects = {name: write_subject(tmp_path / "in" / name, seed) for seed, name in enumerate(("s01", "s02"))}
    done = run("--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--preset", "3T FLAIR")
    assert done.returncode == 0, done.stderr
    sequence, params = protocols.preset("3T FLAIR")
    for name, maps in subjects.items():
        image = read_volume(tmp_path / "out" / name / f"{name}_3T_FLAIR.nii.gz")
        expected = physics.simulate(sequence, {k: v for k, v in maps.items() if k != "mt"}, **params)
        np.testing.assert_allclose(image.data, expected, rtol=1e-6)
        np.testing.assert_allclose(image.affine, oblique_ijk_to_ras(), atol=1e-5)
        assert f"{name}: 3T FLAIR ->" in done.stdout


@pytest.mark.slow
def test_batch_errors_are_one_line(tmp_path):
    done = run("--input", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"qmri_batch: error: {tmp_path / 'missing'}: input: no such folder"


def test_batch_without_map_sets_says_so(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("qmri_batch", SCRIPT)
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    (tmp_path / "empty").mkdir()
    assert batch.main(["--input", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no map set found (needs *_PD, *_R1, *_R2s .nii[.gz])" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_batch_segments_the_simulated_images(tmp_path):
    pytest.importorskip("qmricore.inference.predict")
    from test_qmrisegment_logic import tiny_model

    write_subject(tmp_path / "in" / "s01", 0)
    model = tiny_model(tmp_path / "seg.pt", "segmenter")
    done = run("--input", str(tmp_path / "in" / "s01"), "--out", str(tmp_path / "out"), "--preset", "T1 SPGR",
               "--segment", "--model", str(model), "--device", "cpu", "--no-tta")
    assert done.returncode == 0, done.stderr
    mask = read_volume(tmp_path / "out" / "s01" / "s01_T1_SPGR_lesion.nii.gz")
    rows = list(csv.DictReader(open(tmp_path / "out" / "lesion_volumes.csv")))
    assert rows[0]["subject"] == "s01" and int(rows[0]["lesion_voxels"]) == int(mask.data.sum())
    voxel_ml = abs(np.linalg.det(oblique_ijk_to_ras()[:3, :3])) / 1000
    assert float(rows[0]["lesion_ml"]) == pytest.approx(mask.data.sum() * voxel_ml, abs=1e-4)
