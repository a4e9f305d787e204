"""``qmricore simulate`` run as a real console script on tiny NIfTI map sets (SPEC §12, §13).

Each run is a subprocess (about 2 s for the torch import), so the bad-input cases are launched together by
one module fixture (a few at a time) and each test then checks its own result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qmricore.io import read_volume
from qmricore.physics import simulate

SHAPE = (7, 6, 5)
TIMEOUT = 300  # s per run; a run takes ~2-5 s on a quiet machine
SCRIPT = shutil.which("qmricore", path=os.path.dirname(sys.executable)) or shutil.which("qmricore")


def oblique(data: np.ndarray, shift: float = 0.0) -> nib.Nifti1Image:
    affine = np.array([[0.0, -1.2, 0.1, 40.5], [0.9, 0.0, 0.0, -12.25 + shift], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data.astype(np.float32), None)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    return image


def ramp(low: float, high: float, shape=SHAPE) -> np.ndarray:
    return np.linspace(low, high, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def write_maps(folder: Path) -> dict[str, Path]:
    """pd, r1 (1/s), r2s (1/s) and mt (percent) on one oblique grid."""
    folder.mkdir(parents=True, exist_ok=True)
    maps = {"pd": ramp(0.6, 1.0), "r1": ramp(0.25, 1.6), "r2s": ramp(4.0, 35.0), "mt": ramp(0.1, 2.5)}
    files = {}
    for key, data in maps.items():
        files[key] = folder / f"{key}.nii.gz"
        nib.save(oblique(data), str(files[key]))
    return files


def map_args(files: dict[str, Path]) -> list[str]:
    return [arg for key, path in files.items() for arg in (f"--{key}", str(path))]


def qmricore(*args: str, wait: bool = True):
    command = [SCRIPT, *args] if SCRIPT else [sys.executable, "-m", "qmricore", *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_simulate_writes_geometry_and_values(tmp_path):
    files = write_maps(tmp_path / "maps")
    out = tmp_path / "out"
    result = qmricore("simulate", *map_args(files), "--preset", "3T FLAIR", "--preset", "T1 SPGR",
                      "--sequence", "mprage", "--tr", "2.3", "--ti", "0.9", "--tx", "0.007", "--te", "0.003",
                      "--flip", "9", "--n", "100", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    expected = {"3t_flair.nii.gz": ("flair", {"tr": 9.0, "te": 0.1, "ti": 2.5}),
                "t1_spgr.nii.gz": ("gre", {"tr": 0.02, "te": 0.004, "flip": 25.0}),
                "mprage.nii.gz": ("mprage", {"tr": 2.3, "ti": 0.9, "tx": 0.007, "te": 0.003, "flip": 9.0, "n": 100})}
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert [line.split()[1] for line in result.stdout.splitlines()] == [str(out / n) for n in expected]
    # flair has no R2 map: one warning line, no Python warning text
    assert result.stderr.splitlines() == [
        "qmricore simulate: warning: flair: no R2 map; using R2* in its place (spin-echo contrast will be too "
        "T2*-weighted)"]

    reference = nib.load(str(files["pd"]))
    maps = {k: read_volume(p).data for k, p in files.items()}
    for name, (sequence, params) in expected.items():
        image = nib.load(str(out / name))
        np.testing.assert_array_equal(image.affine, reference.affine)
        np.testing.assert_array_equal(image.header.get_qform(), reference.header.get_qform())
        np.testing.assert_array_equal(image.header.get_sform(), reference.header.get_sform())
        assert image.header["qform_code"] == 1 and image.header["sform_code"] == 2
        assert image.header.get_zooms() == reference.header.get_zooms()
        assert image.shape == SHAPE and image.get_data_dtype() == np.float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flair's "no R2 map", checked on stderr above
            want = simulate(sequence, maps, **params)
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), want)
        assert np.all(want > 0)


def test_noise_hmri_folder_units_and_module_entry(tmp_path):
    """python -m qmricore, an hMRI folder with R1 in 1/ms, noise with a seed, one --output file."""
    files = write_maps(tmp_path / "Results")
    for key, suffix in (("pd", "PD"), ("r2s", "R2s_OLS"), ("mt", "MT")):
        files[key].rename(tmp_path / "Results" / f"s1_{suffix}.nii.gz")
    nib.save(oblique(ramp(0.25, 1.6) / 1000), str(tmp_path / "Results" / "s1_R1.nii"))
    files["r1"].unlink()
    output = tmp_path / "out" / "t1w.nii"
    args = ["simulate", "--hmri-folder", str(tmp_path), "--sequence", "gre", "--tr", "0.02", "--te", "0.004",
            "--flip", "25", "--snr", "20", "--seed", "3", "--output", str(output)]
    result = subprocess.run([sys.executable, "-m", "qmricore", *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "qmricore simulate: note: r1: s1_R1.nii: R1 in 1/ms (detected; median 0.000925), multiplied by 1000 to 1/s"]
    maps = {"pd": ramp(0.6, 1.0), "r1": ramp(0.25, 1.6) / 1000 * 1000, "r2s": ramp(4.0, 35.0), "mt": ramp(0.1, 2.5)}
    clean = simulate("gre", maps, tr=0.02, te=0.004, flip=25.0)
    noisy = simulate("gre", maps, tr=0.02, te=0.004, flip=25.0, snr=20, seed=3)
    written = nib.load(str(output)).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(written, noisy, rtol=1e-5)
    assert not np.allclose(written, clean, rtol=1e-3)
    listing = subprocess.run([sys.executable, "-m", "qmricore", "simulate", "--list-presets"], capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert listing.returncode == 0 and "'3T FLAIR': flair tr=9 te=0.1 ti=2.5" in listing.stdout.splitlines()


# ------------------------------------------------------------------------------------------- bad inputs


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    problem: str  # substring of the one stderr line
    file: str | None = None  # file name (relative to the case folder) the line must name


GRE = ("--sequence", "gre", "--tr", "0.02", "--te", "0.004", "--flip", "25")
CASES = {
    "missing file": Case(("--r1", "{d}/nowhere.nii.gz", *GRE), "r1 map: no such file", "nowhere.nii.gz"),
    "unreadable file": Case(("--r1", "{d}/garbage.nii", *GRE), "r1 map: not a readable NIfTI file", "garbage.nii"),
    "non-NIfTI": Case(("--r1", "{d}/r1.mgz", *GRE), "r1 map: not a NIfTI file (expected .nii or .nii.gz)", "r1.mgz"),
    "2D": Case(("--r2s", "{d}/flat.nii.gz", *GRE), "r2s map: is 2D (shape (7, 6)); a 3D volume is needed",
               "flat.nii.gz"),
    "4D": Case(("--pd", "{d}/series.nii.gz", *GRE), "pd map: is 4D (shape (7, 6, 5, 2)); a 3D volume is needed",
               "series.nii.gz"),
    "different grids": Case(("--mt", "{d}/shifted.nii.gz", *GRE),
                            "maps on different grids: {d}/maps/pd.nii.gz vs {d}/shifted.nii.gz "
                            "(affines differ by up to 3 mm)", "shifted.nii.gz"),
    "NaN": Case(("--r1", "{d}/nan.nii.gz", *GRE), "r1 map: contains 1 NaN/Inf voxel(s)", "nan.nii.gz"),
    "negative rates": Case(("--r2s", "{d}/negative.nii.gz", *GRE),
                           "r2s map: 21 negative voxel(s) (10.0% of the non-zero voxels, min -5); r2s must be >= 0",
                           "negative.nii.gz"),
    "TI > TR": Case(("--preset", "3T FLAIR", "--sequence", "flair", "--tr", "2", "--te", "0.1", "--ti", "2.5"),
                    "error: flair: TI (2.5 s) must be shorter than TR (2 s)"),
    "TA < 0": Case(("--sequence", "mprage", "--tr", "2.3", "--ti", "0.3", "--tx", "0.007", "--te", "0.003",
                    "--flip", "9", "--n", "176"), "mprage: TI (0.3 s) is shorter than the 88 readout pulses"),
    "TE <= 0": Case(("--sequence", "gre", "--tr", "0.02", "--te", "0", "--flip", "25"), "gre: TE must be > 0 s, got 0"),
    "TR <= 0": Case(("--preset", "T1 SPGR", "--sequence", "fse", "--tr=-1", "--te", "0.1"),
                    "fse: TR must be > 0 s, got -1"),
    "flip <= 0": Case(("--sequence", "gre", "--tr", "0.02", "--te", "0.004", "--flip", "0"),
                      "gre: flip angle must be > 0 degrees, got 0"),
    "unknown preset": Case(("--preset", "T1 SPGR", "--preset", "3T FLAIRE"), "unknown preset '3T FLAIRE'; choose one"),
}


def write_bad_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.nii").write_bytes(b"not an image at all " * 40)
    (folder / "r1.mgz").write_bytes(oblique(ramp(0.25, 1.6)).to_bytes())
    nib.save(oblique(ramp(0.25, 1.6, SHAPE[:2])), str(folder / "flat.nii.gz"))
    nib.save(oblique(np.stack([ramp(0.6, 1.0)] * 2, axis=-1)), str(folder / "series.nii.gz"))
    nib.save(oblique(ramp(0.1, 2.5), shift=3.0), str(folder / "shifted.nii.gz"))
    nan = ramp(0.25, 1.6)
    nan[3, 2, 1] = np.nan
    nib.save(oblique(nan), str(folder / "nan.nii.gz"))
    negative = ramp(4.0, 35.0)
    negative.flat[::10] = -5.0
    nib.save(oblique(negative), str(folder / "negative.nii.gz"))


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Run every case (as many at once as there are CPU cores); returns each case's folder and result."""
    root = tmp_path_factory.mktemp("bad")
    write_bad_inputs(root)
    files = write_maps(root / "maps")
    pending = list(CASES.items())
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    results = {}
    while pending or running:
        while pending and len(running) < max(2, os.cpu_count() or 1):
            name, case = pending.pop(0)
            given = {a.lstrip("-") for a in case.args if a.startswith("--")}
            args = [a.replace("{d}", str(root)) for a in case.args]
            base = [a for k, p in files.items() if k not in given for a in (f"--{k}", str(p))]
            out = root / "out" / name.replace(" ", "_")
            running[name] = (qmricore("simulate", *base, *args, "--out", str(out), wait=False), time.monotonic())
        for name, (process, started) in list(running.items()):
            if process.poll() is not None or time.monotonic() - started > TIMEOUT:
                stdout, stderr = process.communicate(timeout=10) if process.poll() is not None else ("", "timeout")
                if process.poll() is None:
                    process.kill()
                results[name] = (root, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
                del running[name]
        time.sleep(0.05)
    return results


@pytest.mark.slow  # 14 subprocesses, ~2 s of CPU each (the torch import), 2 at a time
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(bad_runs, name):
    root, result = bad_runs[name]
    case = CASES[name]
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qmricore simulate: error: ")
    assert case.problem.replace("{d}", str(root)) in lines[0]
    if case.file is not None:
        assert str(root / case.file) in lines[0]
    assert result.stdout == ""
    assert files_under(root / "out" / name.replace(" ", "_")) == []


def test_options_agree_with_library():
    """The CLI offers every sequence parameter and unit the library knows (defaults live in one place)."""
    import argparse

    from qmricore import io
    from qmricore.cli import simulate as cli_simulate
    from qmricore.physics import SEQUENCES

    parser = argparse.ArgumentParser()
    cli_simulate.register(parser.add_subparsers())
    known = {p for spec in SEQUENCES.values() for p in (*spec.parameters, *(spec.defaults or {}))}
    assert set(cli_simulate.SEQUENCE_OPTIONS) == known
    assert set(cli_simulate.MAP_OPTIONS) == set(io.MAP_KEYS)
    sub = parser._subparsers._group_actions[0].choices["simulate"]
    helps = {flag: action.help for action in sub._actions for flag in action.option_strings}
    for flag, units in (("--r1-unit", io.R1_UNITS), ("--r2s-unit", io.R2S_UNITS), ("--r2-unit", io.R2_UNITS)):
        assert [u for u in units if u not in helps[flag]] == [], (flag, helps[flag])
