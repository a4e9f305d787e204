"""``qmricore mwf`` end to end on a tiny 4D NIfTI series (in this process: ``qmricore.cli.main``).

The bad-input rows of the command are in ``Testing/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qmricore.cli import main
from qmricore.physics import cpmg

TE, N_ECHOES = 0.01, 16


def _series(path: Path) -> nib.Nifti1Image:
    """A 4 x 3 x 2 x 16 oblique series: two-pool voxels with MWF 0.2, one empty voxel."""
    t2 = np.array([0.02, 0.08])
    trains = cpmg(t2, 1.0, te=TE, n_echoes=N_ECHOES, refocus=170.0)
    train = 100.0 * (0.2 * trains[0] + 0.8 * trains[1])
    data = np.broadcast_to(train, (4, 3, 2, N_ECHOES)).astype(np.float32).copy()
    data[0, 0, 0] = 0.0
    affine = np.array([[0.9, 0.1, 0.0, -10.0], [-0.1, 0.9, 0.0, 5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    nib.save(image, str(path))
    return image


def test_mwf_writes_the_maps_on_the_input_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _series(tmp_path / "me.nii.gz")
    out = tmp_path / "out"
    assert main(["mwf", "--input", str(tmp_path / "me.nii.gz"), "--te", str(TE), "--out", str(out),
                 "--echoes", str(N_ECHOES), "--spectrum"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["FLIP.nii.gz", "MWF.nii.gz", "T2GM.nii.gz",
                                                     "T2SPECTRUM.nii.gz"]
    for name in ("MWF", "T2GM", "FLIP", "T2SPECTRUM"):
        image = nib.load(str(out / f"{name}.nii.gz"))
        np.testing.assert_allclose(image.affine, source.affine, atol=1e-6)
        np.testing.assert_allclose(image.header.get_sform(), source.header.get_sform(), atol=1e-6)
        assert int(image.header["sform_code"]) == 2 and int(image.header["qform_code"]) == 1
        assert image.shape[:3] == (4, 3, 2)
    assert nib.load(str(out / "T2SPECTRUM.nii.gz")).shape == (4, 3, 2, 40)
    mwf = nib.load(str(out / "MWF.nii.gz")).get_fdata()
    flip = nib.load(str(out / "FLIP.nii.gz")).get_fdata()
    assert mwf[0, 0, 0] == 0.0 and flip[0, 0, 0] == 0.0
    np.testing.assert_allclose(mwf.reshape(-1)[1:], 0.2, atol=0.02)
    np.testing.assert_allclose(flip.reshape(-1)[1:], 170.0, atol=2.0)
    printed = capsys.readouterr().out
    assert "mwf:" in printed and "PROGRESS" not in printed and "RESULT" not in printed  # lines only when asked


def test_mask_limits_the_fit(tmp_path: Path) -> None:
    source = _series(tmp_path / "me.nii.gz")
    mask = np.zeros((4, 3, 2), np.uint8)
    mask[1, 1, 1] = 1
    nib.save(nib.Nifti1Image(mask, source.affine), str(tmp_path / "mask.nii.gz"))
    out = tmp_path / "out"
    assert main(["mwf", "--input", str(tmp_path / "me.nii.gz"), "--te", str(TE), "--out", str(out),
                 "--mask", str(tmp_path / "mask.nii.gz")]) == 0
    mwf = nib.load(str(out / "MWF.nii.gz")).get_fdata()
    assert np.count_nonzero(mwf) == 1 and mwf[1, 1, 1] > 0.1
    assert not (out / "T2SPECTRUM.nii.gz").exists()


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m qmricore ...`` in a real subprocess (as QMRISegment's BackgroundRunner starts it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "qmricore", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_progress_lines_and_result_in_a_subprocess(tmp_path: Path) -> None:
    _series(tmp_path / "me.nii.gz")
    out = tmp_path / "out"
    done = _run_module("mwf", "--input", str(tmp_path / "me.nii.gz"), "--te", str(TE), "--out", str(out),
                       "--progress-lines")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    progress = [line.split(maxsplit=2) for line in lines if line.startswith("PROGRESS ")]
    fractions = [float(p[1]) for p in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert progress[0][2] == "fitting 23 voxel(s)"  # 24 voxels, one empty
    assert "23 of 23 voxel(s) done" in [p[2] for p in progress]
    results = [line for line in lines if line.startswith("RESULT ")]
    assert len(results) == 1 and lines[-1] == results[0]  # the last line
    result = json.loads(results[0][len("RESULT "):])
    assert result == {"mwf": str(out / "MWF.nii.gz"), "t2gm": str(out / "T2GM.nii.gz"),
                      "flip": str(out / "FLIP.nii.gz"), "voxels": 23}
    np.testing.assert_allclose(nib.load(result["mwf"]).get_fdata().reshape(-1)[1:], 0.2, atol=0.02)


def test_progress_lines_on_bad_input_give_one_error_line_and_no_result(tmp_path: Path) -> None:
    _series(tmp_path / "me.nii.gz")
    done = _run_module("mwf", "--input", str(tmp_path / "me.nii.gz"), "--te", "10", "--out", str(tmp_path / "o"),
                       "--progress-lines")
    assert done.returncode == 2
    assert "RESULT" not in done.stdout and "PROGRESS" not in done.stdout
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("qmricore mwf: error:") and "times are in seconds" in done.stderr
    assert not (tmp_path / "o").exists()


def test_workers_report_progress_per_batch_and_match_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _series(tmp_path / "me.nii.gz")
    monkeypatch.setattr("qmricore.mwf.nnls.BATCH_VOXELS", 8)  # 23 voxels: three batches over two processes
    for workers in ("1", "2"):
        assert main(["mwf", "--input", str(tmp_path / "me.nii.gz"), "--te", str(TE), "--out", str(tmp_path / workers),
                     "--workers", workers, "--progress-lines"]) == 0
        lines = capsys.readouterr().out.splitlines()
        messages = [line.split(maxsplit=2)[2] for line in lines if line.startswith("PROGRESS ")]
        assert messages[0] == "fitting 23 voxel(s)" and messages[-1] == "done"
        done = [int(m.split()[0]) for m in messages[1:-1]]  # one line per batch, in the order they finish
        assert sorted(np.diff([0, *done])) == [7, 8, 8] and messages[-2] == "23 of 23 voxel(s) done"
        assert lines[-1].startswith("RESULT ")
    one, two = (nib.load(str(tmp_path / w / "MWF.nii.gz")).get_fdata() for w in ("1", "2"))
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-9)
