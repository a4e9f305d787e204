"""End to end: ``qmricore demo`` on the shipped sample map set, run as a real subprocess.

Checks the files it promises, that every image keeps the sample's geometry, that the contrasts are the
textbook ones on tissue means taken with the shipped labels, that the noisy images are reproducible
from ``demo.json``, and that the montage is a real PNG drawn in the radiological convention.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from qmricore.cli.demo import display_slice
from qmricore.io import load_map_set
from qmricore.physics import simulate
from qmricore.protocols import preset_names
from qmricore.sample_data import LABEL_FILE, LABELS, sample_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "QMRI_SAMPLE_DATA"}
    done = subprocess.run([sys.executable, "-m", "qmricore", "demo", "--out", str(out), "--device", "cpu"],
                          check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return {"out": out, "stdout": done.stdout, "manifest": json.loads((out / "demo.json").read_text())}


@pytest.fixture(scope="module")
def sample() -> dict:
    folder = sample_dir()
    map_set = load_map_set(folder=folder)
    labels = np.asarray(nib.load(str(folder / LABEL_FILE)).dataobj)
    return {"maps": map_set, "labels": labels}


def _image(demo: dict, preset: str, key: str = "file") -> np.ndarray:
    entry = next(e for e in demo["manifest"]["images"] if e["preset"] == preset)
    return np.asarray(nib.load(str(demo["out"] / entry[key])).dataobj)


def _means(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: float(image[labels == LABELS[name]].mean()) for name in ("gm", "wm", "csf")}


@pytest.mark.slow
def test_demo_writes_every_preset_on_the_sample_grid(demo: dict, sample: dict):
    manifest = demo["manifest"]
    assert [e["preset"] for e in manifest["images"]] == preset_names()
    reference = sample["maps"].reference
    for entry in manifest["images"]:
        for key in ("file", "noisy_file"):
            path = demo["out"] / entry[key]
            assert path.is_file() and str(path) in demo["stdout"]  # one printed line per file
            image = nib.load(str(path))
            assert image.shape == reference.shape
            np.testing.assert_array_equal(image.affine, reference.affine)
            assert image.get_data_dtype() == np.float32
            data = np.asarray(image.dataobj)
            assert np.all(np.isfinite(data)) and data.std() > 0
        assert f"{entry['preset']} ({entry['sequence']}" in demo["stdout"]  # the timing line
        assert entry["seconds"] >= 0
    assert sorted(p.name for p in demo["out"].glob("*.nii.gz")) == sorted(
        [e["file"] for e in manifest["images"]] + [e["noisy_file"] for e in manifest["images"]])


@pytest.mark.slow
def test_demo_montage_is_a_png_of_sensible_size(demo: dict):
    path = demo["out"] / "montage.png"
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert 800 <= width <= 3000 and 600 <= height <= 3000
    assert 50_000 < len(raw) < 5_000_000
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (height, width) and pixels[..., :3].std() > 0.1  # not blank


@pytest.mark.slow
def test_demo_contrasts_on_tissue_means(demo: dict, sample: dict):
    labels = sample["labels"]
    flair = _means(_image(demo, "3T FLAIR"), labels)
    assert flair["csf"] < flair["wm"] < flair["gm"]  # fluid suppressed
    t2 = _means(_image(demo, "3T T2 FSE"), labels)
    assert t2["csf"] > t2["gm"] > t2["wm"]
    mprage = _means(_image(demo, "MPRAGE ADNI-like"), labels)
    assert mprage["wm"] > mprage["gm"] > mprage["csf"]
    spgr = _means(_image(demo, "T1 SPGR"), labels)
    assert spgr["wm"] > spgr["gm"] > spgr["csf"]
    uni = _means(_image(demo, "MP2RAGE 3T"), labels)
    assert uni["wm"] > uni["gm"] > uni["csf"] and -0.5 <= uni["csf"] < 0
    # The noisy FLAIR keeps the contrast at SNR 30.
    noisy = _means(_image(demo, "3T FLAIR", "noisy_file"), labels)
    assert noisy["csf"] < noisy["wm"] < noisy["gm"]


@pytest.mark.slow
def test_demo_images_are_reproducible_from_the_manifest(demo: dict, sample: dict):
    manifest = demo["manifest"]
    entry = next(e for e in manifest["images"] if e["preset"] == "3T T2 FSE")
    maps = sample["maps"].maps
    reference = sample["labels"] == LABELS["wm"]
    clean = simulate(entry["sequence"], maps, **entry["parameters"])
    np.testing.assert_allclose(_image(demo, entry["preset"]), clean, rtol=1e-5, atol=1e-6)
    noisy = simulate(entry["sequence"], maps, snr=manifest["snr"], seed=entry["seed"], reference=reference,
                     **entry["parameters"])
    np.testing.assert_allclose(_image(demo, entry["preset"], "noisy_file"), noisy, rtol=1e-5, atol=1e-5)
    # SNR 30 in white matter: the noise sigma is about a thirtieth of the mean WM signal.
    background = _image(demo, entry["preset"], "noisy_file")[sample["maps"].maps["pd"] == 0]
    sigma = background.mean() / np.sqrt(np.pi / 2)  # Rayleigh mean
    assert sigma == pytest.approx(clean[reference].mean() / manifest["snr"], rel=0.02)


def test_display_slice_is_radiological_with_anterior_up():
    volume = np.zeros((5, 6, 3), dtype=np.float32)
    volume[4, 5, 1] = 1.0  # patient's right (+x), anterior (+y) corner of the mid axial slice
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    shown = display_slice(volume, ras)
    assert shown.shape == (6, 5)
    assert shown[0, 0] == 1.0  # top row = anterior, left column = patient's right
    # The same anatomy stored in LPS voxel order must display identically.
    lps = ras @ np.array([[-1, 0, 0, 4], [0, -1, 0, 5], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(display_slice(volume[::-1, ::-1, :], lps), shown)


def test_demo_and_sample_data_errors_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    from qmricore.cli import main

    monkeypatch.setenv("QMRI_SAMPLE_DATA", str(tmp_path / "absent"))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qmricore demo: error: ") and "QMRI_SAMPLE_DATA does not exist" in err
    assert "\n" not in err and not (tmp_path / "demo").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--snr", "0"]) == 2
    assert "--snr must be > 0" in capsys.readouterr().err
    assert main(["sample-data", "--out", str(tmp_path / "sample"), "--resolution", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "qmricore sample-data: error: resolution 0.5 mm is finer than the template's 1 mm voxels"
    assert not (tmp_path / "sample").exists()
