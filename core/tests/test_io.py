"""qmricore.io on real NIfTI files: exact geometry round trips, atomic writes, map-set loading and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qmricore import io
from qmricore.errors import InputError

GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                   "qoffset_z", "pixdim", "srow_x", "srow_y", "srow_z", "xyzt_units", "dim_info")
SHAPE = (6, 5, 4)


def oblique_image(data: np.ndarray, *, dtype=np.float32) -> nib.Nifti1Image:
    """An image whose qform (rotation, code 1) and sform (with a shear, code 4) differ, anisotropic zooms."""
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    qform = np.eye(4)
    qform[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.3])
    qform[:3, 3] = [-91.123456, 12.5, 33.3]
    sform = qform.copy()
    sform[0, 1] += 0.05  # a shear the qform cannot hold
    image = nib.Nifti1Image(data.astype(dtype), None)
    image.header.set_qform(qform, code=1)
    image.header.set_sform(sform, code=4)
    image.header.set_xyzt_units("mm", "sec")
    return image


def save(path: Path, image: nib.Nifti1Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def ramp(shape=SHAPE, low=0.5, high=1.5) -> np.ndarray:
    return np.linspace(low, high, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def write_map(path: Path, data: np.ndarray) -> Path:
    return save(path, oblique_image(data))


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------- read / write


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_keeps_geometry_exactly(tmp_path, suffix):
    source = save(tmp_path / f"in{suffix}", oblique_image(ramp()))
    volume = io.read_volume(source)
    assert volume.data.dtype == np.float32 and volume.shape == SHAPE
    out = io.write_nifti(tmp_path / "sub" / f"out{suffix}", volume.data * 2, volume)
    written, original = nib.load(str(out)), nib.load(str(source))
    for name in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(written.header[name], original.header[name], err_msg=name)
    np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
    np.testing.assert_array_equal(written.affine, original.affine)
    assert written.header.get_zooms() == original.header.get_zooms() == (0.9, 1.1, 2.3)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), ramp() * 2)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left behind


def test_read_applies_scaling_and_squeezes_trailing_singleton(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE + (1,))
    image = oblique_image(raw, dtype=np.int16)
    image.header.set_slope_inter(0.5, 10.0)
    volume = io.read_volume(save(tmp_path / "scaled.nii", image))
    assert volume.shape == SHAPE and volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, raw[..., 0] * 0.5 + 10.0)
    # written back unscaled, as float32
    back = nib.load(str(io.write_nifti(tmp_path / "back.nii", volume.data, volume)))
    assert back.shape == SHAPE and back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), raw[..., 0] * 0.5 + 10.0)


@pytest.mark.parametrize(("data", "dtype"), [
    (np.zeros(SHAPE, bool), np.uint8), (np.full(SHAPE, 7, np.int64), np.int16),
    (np.full(SHAPE, 70000, np.int64), np.int32), (np.zeros(SHAPE, np.float64), np.float32),
])
def test_write_dtypes(tmp_path, data, dtype):
    like = io.read_volume(write_map(tmp_path / "ref.nii", ramp()))
    written = nib.load(str(io.write_nifti(tmp_path / "x.nii.gz", data, like)))
    assert written.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), data.astype(dtype))


def test_write_from_headerless_volume(tmp_path):
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    like = io.Volume(np.zeros(SHAPE, np.float32), affine)
    written = nib.load(str(io.write_nifti(tmp_path / "x.nii", ramp(), like)))
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)
    assert like.zooms == pytest.approx((1.5, 2.0, 3.0))


# ------------------------------------------------------------------------------------------- atomic writes


def test_write_wrong_shape_creates_nothing(tmp_path):
    like = io.read_volume(write_map(tmp_path / "ref.nii", ramp()))
    message = error_of(io.write_nifti, tmp_path / "new" / "deep" / "x.nii.gz", np.zeros((6, 5, 3)), like)
    assert "shape (6, 5, 3)" in message and "(6, 5, 4)" in message and "x.nii.gz" in message
    assert not (tmp_path / "new").exists()


def test_write_failing_replace_leaves_nothing(tmp_path):
    like = io.read_volume(write_map(tmp_path / "ref.nii", ramp()))
    target = tmp_path / "out" / "x.nii.gz"
    target.mkdir(parents=True)  # os.replace onto a folder fails after the data are written
    (target / "keep").write_text("x")
    message = error_of(io.write_nifti, target, ramp(), like)
    assert message.startswith(f"{target}: cannot write the file")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.nii.gz"]
    assert sorted(p.name for p in target.iterdir()) == ["keep"]


def test_write_failing_flush_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    like = io.read_volume(write_map(tmp_path / "ref.nii", ramp()))
    target = io.write_nifti(tmp_path / "x.nii", ramp(), like)
    before = target.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    message = error_of(io.write_nifti, target, ramp() * 3, like)
    assert message == f"{target}: cannot write the file (No space left on device)"
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.nii", "x.nii"]
    # a failure inside new folders removes the folders it created
    message = error_of(io.write_nifti, tmp_path / "a" / "b" / "y.nii.gz", ramp(), like)
    assert not (tmp_path / "a").exists()


def test_write_refuses_bad_names_and_values(tmp_path):
    like = io.read_volume(write_map(tmp_path / "ref.nii", ramp()))
    assert "must end in .nii or .nii.gz" in error_of(io.write_nifti, tmp_path / "x.mgz", ramp(), like)
    nan = ramp()
    nan[0, 0, 0] = np.nan
    assert "NaN/Inf" in error_of(io.write_nifti, tmp_path / "x.nii", nan, like)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.nii"]


# ------------------------------------------------------------------------------------------- bad inputs


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = oblique_image(ramp()).to_bytes()
    tmp_path.mkdir(exist_ok=True)
    cases = {
        "missing": (tmp_path / "nope.nii.gz", "no such file"),
        "folder": (tmp_path / "dir.nii", "is a folder"),
        "extension": (tmp_path / "map.txt", "not a NIfTI file (expected .nii or .nii.gz)"),
        "garbage": (tmp_path / "garbage.nii", "not a readable NIfTI file"),
        "truncated": (tmp_path / "truncated.nii", "cannot read the image data"),
        "not_gzip": (tmp_path / "plain.nii.gz", "not a readable NIfTI file"),
        "2d": (tmp_path / "flat.nii", "is 2D (shape (6, 5)); a 3D volume is needed"),
        "4d": (tmp_path / "series.nii", "is 4D (shape (6, 5, 4, 3)); a 3D volume is needed"),
        "nan": (tmp_path / "nan.nii", "contains 1 NaN/Inf voxel(s)"),
        "inf": (tmp_path / "inf.nii.gz", "contains 2 NaN/Inf voxel(s)"),
    }
    (tmp_path / "dir.nii").mkdir()
    (tmp_path / "map.txt").write_bytes(good)
    (tmp_path / "garbage.nii").write_bytes(b"this is not an image" * 30)
    (tmp_path / "truncated.nii").write_bytes(good[: len(good) - 100])
    (tmp_path / "plain.nii.gz").write_bytes(good)
    save(tmp_path / "flat.nii", nib.Nifti1Image(np.ones((6, 5), np.float32), np.eye(4)))
    save(tmp_path / "series.nii", nib.Nifti1Image(np.ones(SHAPE + (3,), np.float32), np.eye(4)))
    nan, inf = ramp(), ramp()
    nan[1, 2, 3] = np.nan
    inf[0, 0, 0], inf[1, 1, 1] = np.inf, -np.inf
    write_map(tmp_path / "nan.nii", nan)
    write_map(tmp_path / "inf.nii.gz", inf)
    return cases


def test_read_volume_bad_inputs(tmp_path):
    for name, (path, problem) in bad_inputs(tmp_path).items():
        message = error_of(io.read_volume, path, what="r1 map")
        assert message.startswith(f"{path}: r1 map: "), name
        assert problem in message, (name, message)


# ------------------------------------------------------------------------------------------- map sets


def hmri_folder(folder: Path, names: dict[str, np.ndarray]) -> Path:
    for name, data in names.items():
        write_map(folder / name, data)
    return folder


def standard_maps(shape=SHAPE) -> dict[str, np.ndarray]:
    return {"pd": ramp(shape, 0.6, 1.0), "r1": ramp(shape, 0.3, 1.5), "r2s": ramp(shape, 5.0, 40.0),
            "mt": ramp(shape, 0.2, 2.5)}


def test_hmri_folder_discovery_prefers_ols(tmp_path):
    m = standard_maps()
    folder = tmp_path / "Results"
    hmri_folder(folder, {
        "s01_PD.nii": m["pd"], "s01_R1.nii.gz": m["r1"], "s01_R2s.nii": m["r2s"] * 9,
        "s01_R2s_OLS.nii": m["r2s"], "s01_MT.nii": m["mt"], "s01_B1map.nii": ramp(SHAPE, 80, 120),
        "s01_B1ref.nii": ramp(), ".s01_PD.nii.123.tmp.nii": ramp(),
    })
    (folder / "s01_R1.txt").write_text("not a map")
    found = io.find_hmri_maps(tmp_path)  # the parent: looks into Results/
    assert {k: p.name for k, p in found.items()} == {
        "pd": "s01_PD.nii", "r1": "s01_R1.nii.gz", "r2s": "s01_R2s_OLS.nii", "mt": "s01_MT.nii",
        "b1t": "s01_B1map.nii"}
    mapset = io.load_map_set(folder=folder)
    assert set(mapset.maps) == {"pd", "r1", "r2s", "mt", "b1t"}
    np.testing.assert_array_equal(mapset.maps["r2s"], m["r2s"])
    np.testing.assert_allclose(mapset.maps["b1t"], ramp(SHAPE, 80, 120) / 100, rtol=1e-6)
    assert mapset.notes == ["b1t: s01_B1map.nii: in percent (median 100), divided by 100"]
    assert mapset.reference.path == folder / "s01_PD.nii"
    assert all(a.dtype == np.float32 and a.shape == SHAPE for a in mapset.maps.values())


def test_hmri_folder_ambiguity_and_explicit_override(tmp_path):
    m = standard_maps()
    folder = hmri_folder(tmp_path, {"a_PD.nii": m["pd"], "a_R1.nii": m["r1"], "a_R2s.nii": m["r2s"],
                                    "a_MT.nii": m["mt"], "a_MTsat.nii.gz": m["mt"]})
    message = error_of(io.load_map_set, folder=folder)
    assert message == (f"{folder}: 2 files match *_MT.nii[.gz] or *_MTsat.nii[.gz] for the mt map: a_MT.nii, "
                       "a_MTsat.nii.gz; name the one to use explicitly (--mt FILE)")
    mapset = io.load_map_set({"mt": folder / "a_MTsat.nii.gz", "r1": folder / "a_R1.nii"}, folder=folder)
    assert mapset.files["mt"].name == "a_MTsat.nii.gz" and mapset.files["pd"].name == "a_PD.nii"
    write_map(folder / "b_PD.nii.gz", m["pd"])
    assert "2 files match *_PD.nii[.gz] for the pd map: a_PD.nii, b_PD.nii.gz" in error_of(
        io.load_map_set, {"mt": folder / "a_MT.nii"}, folder=folder)


def test_missing_required_maps(tmp_path):
    folder = hmri_folder(tmp_path / "f", {"x_PD.nii": ramp(), "x_R1.nii": ramp()})
    assert "missing required map(s) r2s in" in error_of(io.load_map_set, folder=folder)
    assert error_of(io.load_map_set, {"pd": folder / "x_PD.nii"}) == (
        "missing required map(s) r1, r2s; pd, r1 and r2s are needed")
    assert error_of(io.load_map_set, folder=tmp_path / "nowhere").endswith("hMRI folder: no such folder")
    assert "unknown map key(s) t2" in error_of(io.load_map_set, {"t2": folder / "x_PD.nii"})


def explicit_set(tmp_path: Path, **override: np.ndarray) -> dict[str, Path]:
    maps = {**standard_maps(), **override}
    names = {"pd": "pd.nii", "r1": "r1.nii", "r2s": "r2s.nii", "mt": "mt.nii", "t1": "T1map.nii",
             "t2s": "sub_T2star.nii.gz", "r2": "r2.nii"}
    files = {}
    for key, data in maps.items():
        files[key] = write_map(tmp_path / names[key], data)
    return files


def test_units_in_range_are_left_alone(tmp_path):
    maps = standard_maps()
    mapset = io.load_map_set(explicit_set(tmp_path))
    assert mapset.notes == []
    for key, data in maps.items():
        np.testing.assert_array_equal(mapset.maps[key], data)


@pytest.mark.parametrize(("key", "stored", "unit", "expected", "note"), [
    ("r1", ramp(SHAPE, 0.3, 1.5) / 1000, "auto", ramp(SHAPE, 0.3, 1.5),
     "r1: r1.nii: R1 in 1/ms (detected; median 0.0009), multiplied by 1000 to 1/s"),
    ("r1", 1000 / ramp(SHAPE, 0.3, 1.5), "auto", ramp(SHAPE, 0.3, 1.5),
     "r1: r1.nii: T1 in ms (detected; median 1111), converted to R1 = 1000/T1 in 1/s"),
    ("r1", 1000 / ramp(SHAPE, 0.3, 1.5), "T1_ms", ramp(SHAPE, 0.3, 1.5),
     "r1: r1.nii: T1 in ms (given; median 1111), converted to R1 = 1000/T1 in 1/s"),
    ("r1", ramp(SHAPE, 0.3, 1.5), "T1_s", 1 / ramp(SHAPE, 0.3, 1.5),
     "r1: r1.nii: T1 in s (given; median 0.9), converted to R1 = 1/T1 in 1/s"),
    ("r1", ramp(SHAPE, 0.3, 1.5) / 1000, "1/s", ramp(SHAPE, 0.3, 1.5) / 1000, None),
    ("t1", 1 / ramp(SHAPE, 0.3, 1.5), "auto", ramp(SHAPE, 0.3, 1.5),
     "r1: T1map.nii: T1 in s (detected; median 1.111), converted to R1 = 1/T1 in 1/s"),
    ("t1", 1000 / ramp(SHAPE, 0.3, 1.5), "auto", ramp(SHAPE, 0.3, 1.5),
     "r1: T1map.nii: T1 in ms (detected; median 1111), converted to R1 = 1000/T1 in 1/s"),
    ("r2s", ramp(SHAPE, 5.0, 40.0) / 1000, "auto", ramp(SHAPE, 5.0, 40.0),
     "r2s: r2s.nii: R2* in 1/ms (detected; median 0.0225), multiplied by 1000 to 1/s"),
    ("t2s", 1000 / ramp(SHAPE, 5.0, 40.0), "auto", ramp(SHAPE, 5.0, 40.0), None),
    ("r2", ramp(SHAPE, 8.0, 20.0) / 1000, "1/ms", ramp(SHAPE, 8.0, 20.0),
     "r2: r2.nii: R2 in 1/ms (given; median 0.014), multiplied by 1000 to 1/s"),
])
def test_unit_detection(tmp_path, key, stored, unit, expected, note):
    files = explicit_set(tmp_path, **{key: stored})
    target = {"t1": "r1", "t2s": "r2s"}.get(key, key)
    files[target] = files.pop(key)
    units = {f"{target}_unit": unit}
    mapset = io.load_map_set(files, **units)
    np.testing.assert_allclose(mapset.maps[target], expected, rtol=2e-6)
    if key == "t2s":
        assert mapset.notes == [
            "r2s: sub_T2star.nii.gz: T2* in ms (detected; median 44.45), converted to R2* = 1000/T2* in 1/s"]
    else:
        assert mapset.notes == ([note] if note else [])


def test_time_maps_keep_zero_background(tmp_path):
    t1 = 1000 / ramp(SHAPE, 0.3, 1.5)
    t1[0] = 0.0
    files = explicit_set(tmp_path, t1=t1)
    files["r1"] = files.pop("t1")
    mapset = io.load_map_set(files)
    assert np.all(mapset.maps["r1"][0] == 0) and np.all(np.isfinite(mapset.maps["r1"]))
    np.testing.assert_allclose(mapset.maps["r1"][1:], ramp(SHAPE, 0.3, 1.5)[1:], rtol=2e-6)


def test_ambiguous_and_bad_units(tmp_path):
    files = explicit_set(tmp_path, r1=ramp(SHAPE, 30, 60))
    assert error_of(io.load_map_set, files) == (
        f"{files['r1']}: r1 map: median 45 fits neither R1 in 1/s nor T1 in ms; give the unit with --r1-unit")
    assert "unknown R1 unit 'ms'" in error_of(io.load_map_set, files, r1_unit="ms")


def test_maps_on_different_grids(tmp_path):
    files = explicit_set(tmp_path)
    write_map(files["r1"], ramp((6, 5, 3)))
    assert error_of(io.load_map_set, files) == (
        f"maps on different grids: {files['pd']} vs {files['r1']} (shape (6, 5, 4) vs (6, 5, 3))")
    shifted = oblique_image(ramp())
    sform = shifted.header.get_sform()
    sform[2, 3] += 0.5
    shifted.header.set_sform(sform, code=4)
    save(files["r1"], shifted)
    assert error_of(io.load_map_set, files) == (
        f"maps on different grids: {files['pd']} vs {files['r1']} (affines differ by up to 0.5 mm)")


def test_negative_values(tmp_path):
    r2s = ramp(SHAPE, 5.0, 40.0)
    r2s[0, 0, :2] = -0.25, -0.5  # 2 of 120 voxels: more than 1 %
    files = explicit_set(tmp_path, r2s=r2s)
    assert error_of(io.load_map_set, files) == (
        f"{files['r2s']}: r2s map: 2 negative voxel(s) (1.7% of the non-zero voxels, min -0.5); r2s must be >= 0")


def test_isolated_negatives_are_clipped(tmp_path):
    shape = (12, 10, 10)  # 1200 voxels: 3 negatives = 0.25 %
    r1 = ramp(shape, 0.3, 1.5)
    r1.flat[[0, 50, 500]] = -0.01
    maps = standard_maps(shape)
    files = {k: write_map(tmp_path / f"{k}.nii", v) for k, v in (maps | {"r1": r1}).items()}
    mapset = io.load_map_set(files)
    assert mapset.notes == ["r1: r1.nii: 3 negative voxel(s) (0.25% of the non-zero voxels, min -0.01) clipped to 0"]
    expected = r1.copy()
    expected.flat[[0, 50, 500]] = 0
    np.testing.assert_array_equal(mapset.maps["r1"], expected)


def test_mt_above_100_and_empty_pd(tmp_path):
    mt = ramp(SHAPE, 0.2, 2.5)
    mt[2, 2, 2] = 140.0
    files = explicit_set(tmp_path, mt=mt)
    assert error_of(io.load_map_set, files) == (
        f"{files['mt']}: mt map: 1 voxel(s) above 100 (max 140); MT must be in percent units, 0-100")
    files = explicit_set(tmp_path, pd=np.zeros(SHAPE, np.float32))
    assert error_of(io.load_map_set, files) == f"{files['pd']}: pd map: no positive voxel"


def test_map_set_bad_files_name_the_file(tmp_path):
    cases = bad_inputs(tmp_path / "bad")
    files = explicit_set(tmp_path)
    for name, (path, problem) in cases.items():
        message = error_of(io.load_map_set, files | {"r2s": path})
        assert message.startswith(f"{path}: r2s map: ") and problem in message, name


def test_every_atomic_writer_gives_files_the_usual_permissions(tmp_path):
    """NIfTI, model, checkpoint, CSV, priors and config files all go through io.atomic_file: the umask
    decides their mode (tempfile.mkstemp would make them owner-only 0600)."""
    import torch

    from qmricore.generators.priors import load_priors
    from qmricore.inference.metrics import write_csv
    from qmricore.training.checkpoint import atomic_torch_save as checkpoint_save
    from qmricore.training.config import SegTrainConfig, save_config

    old = os.umask(0o027)
    try:
        like = io.read_volume(write_map(tmp_path / "ref.nii", ramp()))
        written = [io.write_nifti(tmp_path / "x.nii.gz", ramp(), like),
                   io.atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "m.pt"),
                   checkpoint_save({"w": torch.zeros(2)}, tmp_path / "c.pt"),
                   write_csv(tmp_path / "r.csv", [{"a": 1}]),
                   load_priors().save(tmp_path / "p.json"),
                   save_config(SegTrainConfig(), tmp_path / "config.json")]
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(0o640) for p in written}
    assert not list(tmp_path.glob(".*"))  # no temporary file left
