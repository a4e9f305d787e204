"""``qmricore synth`` end to end in real subprocesses: files, crop geometry, replay, one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import run_qmricore

AFFINE = np.array([[-1.5, 0.0, 0.0, 40.0], [0.0, 1.2, 0.1, -20.0], [0.0, 0.0, 1.0, -10.0], [0.0, 0.0, 0.0, 1.0]])


def head(shape=(22, 24, 20)) -> np.ndarray:
    idx = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt((((idx - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] / 2)) ** 2).sum(0))
    lab = np.zeros(shape, np.int16)
    for radius, value in ((0.95, 5), (0.8, 4), (0.7, 1), (0.5, 3), (0.45, 2)):
        lab[r < radius] = value
    return lab


def synth(*args: str) -> subprocess.CompletedProcess:
    return run_qmricore("synth", *args)


@pytest.fixture
def labels(tmp_path) -> Path:
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(head(), AFFINE), path)
    return path


@pytest.mark.parametrize("mode", ["qsynth", pytest.param("synth", marks=pytest.mark.slow)])
def test_writes_samples_on_the_cropped_grid_and_they_replay(tmp_path, labels, mode):
    out = tmp_path / "out"
    result = synth("--labels", str(labels), "--out", str(out), "-n", "2", "--mode", mode, "--seed", "7",
                   "--crop", "16", "--lesion-prob", "1")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"sample_{i:04d}_{k}" for i in range(2) for k in ("image.nii.gz", "label.nii.gz", "params.json")]

    from qmricore.generators.pipeline import regenerate

    for i in range(2):
        params = json.loads((out / f"sample_{i:04d}_params.json").read_text())
        image = nib.load(out / f"sample_{i:04d}_image.nii.gz")
        label = nib.load(out / f"sample_{i:04d}_label.nii.gz")
        assert params["mode"] == mode and params["index"] == i and params["labels_file"] == str(labels)
        assert image.shape == label.shape == (16, 16, 16)
        # voxel (0, 0, 0) of the output is the crop origin of the input, in world coordinates
        offset = np.array(params["augment"]["spatial"]["offset"])
        np.testing.assert_allclose(label.affine[:, 3], AFFINE @ np.append(offset, 1.0), atol=1e-5)
        np.testing.assert_allclose(label.affine[:3, :3], AFFINE[:3, :3], atol=1e-6)
        values = set(np.unique(np.asarray(label.dataobj)).tolist())
        assert values <= {0, 1, 2, 3, 4, 5, 6}
        data = np.asarray(image.dataobj)
        assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1.0
        # the sidecar alone rebuilds the written sample bit-exactly
        again = regenerate(torch.from_numpy(head().astype(np.int64)), params)
        np.testing.assert_array_equal(again.image[0].numpy(), data)
        np.testing.assert_array_equal(again.label.numpy(), np.asarray(label.dataobj))


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, labels):
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), AFFINE), empty)
    unknown = tmp_path / "unknown.nii.gz"
    bad = head()
    bad[1, 1, 1] = 42
    nib.save(nib.Nifti1Image(bad, AFFINE), unknown)
    lesion = tmp_path / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), AFFINE), lesion)
    cases = [
        (["--labels", str(empty)], "empty.nii.gz: label map is empty"),
        (["--labels", str(unknown)], "unknown.nii.gz: unknown label value(s) [42]"),
        (["--labels", str(labels), "--lesions", str(lesion)], "lesion.nii.gz: lesion mask is on a different grid"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = synth(*args, "--out", str(out), "-n", "2", "--crop", "16")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qmricore synth: error: ") and message in lines[0]
        assert not out.exists()
