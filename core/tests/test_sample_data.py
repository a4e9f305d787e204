"""Tests of qmricore.sample_data: the sample map set built from nilearn's MNI ICBM152 2009a template."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qmricore import sample_data as sd
from qmricore.errors import ParameterError, QMRIError
from qmricore.io import load_map_set

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "Resources" / "SampleData"
MAP_KEYS = ("pd", "r1", "r2s", "mt", "r2")


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample built at 6 mm from the template inside nilearn's package."""
    return sd.build_sample(tmp_path_factory.mktemp("sample6"), resolution_mm=6.0)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


# --- pure parts ------------------------------------------------------------------------------------------


def test_tissue_table_within_literature_ranges_and_physical():
    for tissue, ranges in sd.RANGES.items():
        for key, (low, high) in ranges.items():
            assert low <= sd.TISSUES[tissue][key] <= high, (tissue, key)
    for tissue, values in sd.TISSUES.items():
        assert values["r2s"] >= values["r2"], tissue  # R2* = R2 + R2' >= R2
        assert 0 < values["pd"] <= 100 and 0 <= values["mt"] <= 100
    # WM relaxes faster than GM, which relaxes faster than CSF (the basis of every contrast).
    for key in ("r1", "r2", "r2s"):
        assert sd.TISSUES["wm"][key] > sd.TISSUES["gm"][key] > sd.TISSUES["csf"][key]


def _probs(**values: float) -> dict[str, np.ndarray]:
    keys = ("gm", "wm", "csf", "non_brain")
    probs = {k: np.array([values.get(k, 0.0)], dtype=np.float32) for k in keys}
    probs["background"] = 1 - sum(probs.values())
    return probs


def test_mix_maps_pure_half_and_empty_voxels():
    t = sd.TISSUES
    for tissue in ("gm", "wm", "csf", "non_brain"):
        maps = sd.mix_maps(_probs(**{tissue: 1.0}))
        for key in MAP_KEYS:
            assert maps[key][0] == pytest.approx(t[tissue][key], rel=1e-6)
    # Half GM, half air: GM's rates, half GM's water.
    maps = sd.mix_maps(_probs(gm=0.5))
    assert maps["pd"][0] == pytest.approx(0.5 * t["gm"]["pd"])
    assert maps["r1"][0] == pytest.approx(t["gm"]["r1"], rel=1e-6)
    # Half GM, half WM: rates weighted by each tissue's water.
    maps = sd.mix_maps(_probs(gm=0.5, wm=0.5))
    w_gm, w_wm = 0.5 * t["gm"]["pd"], 0.5 * t["wm"]["pd"]
    assert maps["pd"][0] == pytest.approx(w_gm + w_wm)
    assert maps["r1"][0] == pytest.approx((w_gm * t["gm"]["r1"] + w_wm * t["wm"]["r1"]) / (w_gm + w_wm), rel=1e-6)
    maps = sd.mix_maps(_probs())
    assert all(maps[k][0] == 0 for k in MAP_KEYS)


def test_label_map_rule():
    cases = [  # (gm, wm, csf, non_brain) -> label
        ((0.0, 0.0, 0.0, 0.0), 0), ((0.9, 0.1, 0.0, 0.0), 1), ((0.1, 0.8, 0.1, 0.0), 2),
        ((0.45, 0.3, 0.25, 0.0), 3), ((0.3, 0.3, 0.4, 0.0), 3), ((0.29, 0.3, 0.41, 0.0), 4),
        ((0.0, 0.0, 0.2, 0.7), 5), ((0.2, 0.0, 0.1, 0.0), 0),
    ]
    probs = {k: np.array([c[0][i] for c in cases], dtype=np.float32) for i, k in enumerate(("gm", "wm", "csf",
                                                                                             "non_brain"))}
    probs["background"] = 1 - probs["gm"] - probs["wm"] - probs["csf"] - probs["non_brain"]
    labels = sd.label_map(probs)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [c[1] for c in cases]


def test_resample_probabilities_geometry_and_partial_volume():
    rng = np.random.default_rng(0)
    affine = np.array([[0, -1.0, 0, 40], [1.0, 0, 0, -20], [0, 0, 1.0, 7], [0, 0, 0, 1]])  # rotated, shifted
    block = np.zeros((12, 13, 9), dtype=np.float32)
    block[3:9, 3:9, 3:6] = 1.0
    probs = {"a": block, "b": 1 - block, "noise": rng.random(block.shape).astype(np.float32)}
    out, new_affine = sd.resample_probabilities(probs, affine, 3.0)
    assert out["a"].shape == (4, 4, 3)
    # Voxel (i, j, k) of the new grid is centred on the mean of its 3x3x3 source block.
    for index in [(0, 0, 0), (3, 2, 1)]:
        source = [np.arange(3 * i, 3 * i + 3) for i in index]
        centre = np.array([s.mean() for s in source] + [1.0])
        np.testing.assert_allclose(new_affine @ np.array([*index, 1.0]), affine @ centre, atol=1e-12)
    np.testing.assert_allclose(np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)), [3, 3, 3])
    # Probabilities stay in [0, 1] and complementary maps stay complementary away from the border.
    assert all(v.min() >= 0 and v.max() <= 1 for v in out.values())
    np.testing.assert_allclose(out["a"][1:3, 1:3, 1] + out["b"][1:3, 1:3, 1], 1.0, atol=1e-5)
    assert out["a"][1:3, 1:3, 1].min() > 0.6  # inside the block


def test_resample_refuses_finer_than_source():
    with pytest.raises(ParameterError, match="finer than the source grid's 1 mm"):
        sd.resample_probabilities({"a": np.zeros((4, 4, 4))}, np.eye(4), 0.5)


def test_build_sample_refuses_bad_resolution_and_writes_nothing(tmp_path: Path):
    target = tmp_path / "nothing"
    with pytest.raises(ParameterError, match="finer than the template's 1 mm"):
        sd.build_sample(target, resolution_mm=0.5)
    with pytest.raises(ParameterError, match="positive number of mm"):
        sd.build_sample(target, resolution_mm=float("nan"))
    assert not target.exists()


# --- the 6 mm build from nilearn ----------------------------------------------------------------------


def test_build_sample_files_and_geometry(coarse: dict[str, Path]):
    assert set(coarse) == {*MAP_KEYS, "labels"}
    template = nib.load(str(sd.template_paths()["t1"]))
    expected_shape = tuple(s // 6 for s in template.shape)  # (32, 38, 31)
    expected_affine = template.affine @ np.array([[6, 0, 0, 2.5], [0, 6, 0, 2.5], [0, 0, 6, 2.5], [0, 0, 0, 1]])
    for key, path in coarse.items():
        assert path.name == (sd.LABEL_FILE if key == "labels" else sd.MAP_FILES[key])
        data, affine = _load(path)
        assert data.shape == expected_shape == (32, 38, 31)
        np.testing.assert_allclose(affine, expected_affine, atol=1e-6)
        assert nib.load(str(path)).get_data_dtype() == (np.int16 if key == "labels" else np.float32)
    # World coordinate of voxel 0: the centre of the first 6 source voxels.
    np.testing.assert_allclose(expected_affine[:3, 3], template.affine[:3, 3] + 2.5)


def test_build_sample_values_physical_and_in_ranges(coarse: dict[str, Path]):
    maps = {k: _load(coarse[k])[0] for k in MAP_KEYS}
    labels = _load(coarse["labels"])[0]
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5}
    assert {1, 2, 4} <= set(np.unique(labels))
    for value in maps.values():
        assert np.all(np.isfinite(value)) and value.min() >= 0
    assert maps["pd"].max() <= 100 + 1e-4 and maps["mt"].max() <= 100
    head = maps["pd"] > 0
    # Every tissue voxel is a weighted mean of the tissue table, so it lies between its extremes.
    for key in ("r1", "r2s", "mt", "r2"):
        values = [v[key] for v in sd.TISSUES.values()]
        assert min(values) - 1e-4 <= maps[key][head].min() and maps[key][head].max() <= max(values) + 1e-4
        assert np.all(maps[key][~head] == 0)
    # 6 mm voxels are mostly mixtures; the class medians still keep the tissues' order.
    median = {(k, v): float(np.median(maps[k][labels == v])) for k in MAP_KEYS for v in (1, 2, 4)}
    for key in ("r1", "r2", "r2s", "mt"):
        assert median[key, 2] > median[key, 1] > median[key, 4], key
    assert median["pd", 1] > median["pd", 2]


def _assert_class_values_in_ranges(maps: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Median GM and WM values, and those of the purest CSF, lie in the literature ranges."""
    for tissue, label in (("gm", 1), ("wm", 2)):
        for key in MAP_KEYS:
            low, high = sd.RANGES[tissue][key]
            median = float(np.median(maps[key][labels == label]))
            assert low <= median <= high, (tissue, key, median)
    pure = labels == 4
    pure &= maps["pd"] >= 99.5  # CSF with at most a few percent of tissue (the ventricles)
    assert np.count_nonzero(pure) > 100
    for key in MAP_KEYS:
        low, high = sd.RANGES["csf"][key]
        assert low <= float(np.median(maps[key][pure])) <= high, key


def test_build_sample_tissue_fractions_plausible(coarse: dict[str, Path]):
    labels = _load(coarse["labels"])[0]
    litres = {c: np.count_nonzero(labels == v) * 6.0 ** 3 / 1e6 for c, v in sd.LABELS.items()}
    brain = litres["gm"] + litres["wm"] + litres["gm_wm_pv"]
    # MNI152 space is larger than an average head: intracranial volume ~1.5-2.3 L, brain 1.2-2.0 L.
    assert brain == pytest.approx(1.6, abs=0.4)
    assert brain + litres["csf"] == pytest.approx(1.9, abs=0.4)
    assert 0.8 < (litres["gm"] + litres["gm_wm_pv"] / 2) / (litres["wm"] + litres["gm_wm_pv"] / 2) < 2.5
    assert 0.02 < litres["csf"] / (brain + litres["csf"]) < 0.35
    assert litres["lesion"] == 0


def test_built_maps_load_as_an_hmri_folder(coarse: dict[str, Path]):
    map_set = load_map_set(folder=coarse["pd"].parent)
    assert set(map_set.maps) == set(MAP_KEYS)
    assert map_set.notes == []  # units recognised as 1/s and percent without conversion
    assert map_set.files["r2s"].name == "sample_R2s.nii.gz" and map_set.files["r2"].name == "sample_R2.nii.gz"


# --- the shipped copy -------------------------------------------------------------------------------------


def test_shipped_sample_loads_and_matches_its_readme(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(sd.ENV_VAR, raising=False)
    folder = sd.sample_dir()
    assert folder == SHIPPED
    map_set = load_map_set(folder=folder)
    readme = (folder / "README.md").read_text()
    shape = tuple(int(s) for s in re.search(r"Grid: (\d+) x (\d+) x (\d+) voxels", readme).groups())
    assert map_set.reference.shape == shape
    np.testing.assert_allclose(map_set.reference.zooms, [2.0, 2.0, 2.0])
    labels, affine = _load(folder / sd.LABEL_FILE)
    assert labels.shape == shape
    np.testing.assert_allclose(affine, map_set.reference.affine)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5}
    _assert_class_values_in_ranges(map_set.maps, labels)
    counts = dict(re.findall(r"(\d): (\d+)", readme.split("Voxel counts per label:")[1].split("\n")[0]))
    assert {int(k): int(v) for k, v in counts.items()} == {v: int(np.count_nonzero(labels == v)) for v in range(7)}
    total = sum(p.stat().st_size for p in folder.glob("*.nii.gz"))
    assert total < 6.5e6
    assert "qmricore sample-data --out Resources/SampleData --resolution 2" in readme


def test_sample_dir_override_and_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(sd.ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(QMRIError, match=r"absent: \$QMRI_SAMPLE_DATA does not exist; build one with: qmricore "
                                        r"sample-data --out"):
        sd.sample_dir()
    monkeypatch.setenv(sd.ENV_VAR, str(tmp_path))
    (tmp_path / "sample_PD.nii.gz").write_bytes(b"")
    with pytest.raises(QMRIError, match="sample data incomplete, missing sample_R1.nii.gz"):
        sd.sample_dir()
