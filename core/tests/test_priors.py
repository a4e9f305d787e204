"""Tissue priors: the shipped literature file, JSON round trip and validation, fitting, ``qmricore fit-priors``."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from qmricore.errors import InputError
from qmricore.generators import HYPER, PARAMETERS, TissuePriors, default_priors_path, fit_priors, load_priors
from qmricore.generators.priors import OPTIONAL_PARAMETERS, SINGLE_SUBJECT_FRACTION

CLASSES = ("background", "gm", "wm", "gm_wm_pv", "csf", "non_brain", "lesion",
           "dura", "skull", "marrow", "muscle", "fat", "eye", "ventricles")
ALL_MAPS = PARAMETERS + OPTIONAL_PARAMETERS


def test_shipped_priors_follow_the_class_convention_and_cite_every_number():
    p = load_priors()
    assert p.names == CLASSES and p.labels == tuple(range(14)) and p.field_strength == 3.0
    assert p.parameters == ALL_MAPS  # R2 for every class: spin-echo contrast does not fall back to R2*
    raw = json.loads(default_priors_path().read_text())
    for entry in raw["classes"]:
        for param in ALL_MAPS:
            assert entry[param]["sources"], (entry["name"], param)
            assert all(key in raw["sources"] for key in entry[param]["sources"])
    mu = {(n, q): p.prior(n, q).mu_mu for n in CLASSES for q in ALL_MAPS}
    # literature orderings at 3 T
    assert mu["wm", "r1"] > mu["gm", "r1"] > mu["csf", "r1"]
    assert mu["csf", "r1"] == pytest.approx(1 / 4.3, abs=0.01)  # CSF T1 ~ 4.3 s
    assert mu["csf", "pd"] > mu["gm", "pd"] > mu["wm", "pd"]
    assert mu["wm", "mt"] > mu["gm", "mt"] > mu["csf", "mt"]
    assert mu["wm", "r2s"] > mu["gm", "r2s"] > mu["csf", "r2s"]
    # chronic lesion: lower MT and R1, higher PD than white matter
    assert mu["lesion", "mt"] < mu["wm", "mt"] and mu["lesion", "r1"] < mu["wm", "r1"]
    assert mu["lesion", "pd"] > mu["wm", "pd"]
    assert mu["background", "pd"] == 0.0
    # spin-echo R2 below R2* in every tissue; T2 of WM shorter than GM's, CSF's longest
    assert all(mu[n, "r2"] <= mu[n, "r2s"] for n in CLASSES if n != "background")
    assert mu["wm", "r2"] > mu["gm", "r2"] > mu["csf", "r2"]
    # head tissues: fat and marrow have the shortest T1, compact bone the least visible water and the
    # shortest T2*, vitreous is water like CSF, muscle's T1 is between WM's and GM's
    assert min(mu["fat", "r1"], mu["marrow", "r1"]) > mu["wm", "r1"]
    assert mu["skull", "pd"] < min(mu[n, "pd"] for n in CLASSES if n not in ("background", "skull"))
    assert mu["skull", "r2s"] == max(mu[n, "r2s"] for n in CLASSES)
    assert abs(mu["eye", "r1"] - mu["csf", "r1"]) < 0.05 and mu["eye", "pd"] > 95
    assert mu["gm", "r1"] < mu["muscle", "r1"] < mu["wm", "r1"]
    # partial volume lies between GM and WM
    for q in PARAMETERS:
        lo, hi = sorted((mu["gm", q], mu["wm", q]))
        assert lo < mu["gm_wm_pv", q] < hi
    assert load_priors() is load_priors()  # cached


def test_save_and_load_round_trip(tmp_path):
    p = load_priors()
    out = p.save(tmp_path / "p.json")
    again = load_priors(out)
    assert again.names == p.names and again.labels == p.labels
    np.testing.assert_array_equal(again.table(), p.table())
    assert again.sources == p.sources
    assert [f.name for f in tmp_path.iterdir()] == ["p.json"]  # no temporary file left


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["classes"][1].pop("mt"), "class 'gm' lacks the prior for 'mt'"),
        (lambda d: d["classes"][2]["r1"].update(sigma_mu=-0.1), "must be >= 0"),
        (lambda d: d["classes"][2]["r1"].update(mu_mu="fast"), "mu_mu must be a finite number"),
        (lambda d: d["classes"][3].update(label=2), "duplicate label values"),
        (lambda d: d["classes"][3].update(label=2.5), "'label' must be an integer"),
        (lambda d: d.update(classes=[]), "non-empty 'classes'"),
        (lambda d: d["classes"][1]["pd"].update(sources=["nowhere"]), "unknown source key(s) nowhere"),
    ],
)
def test_invalid_priors_files_are_rejected_naming_the_file(tmp_path, edit, message):
    data = json.loads(default_priors_path().read_text())
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        load_priors(path)
    assert message in str(info.value) and str(info.value).startswith(path)


def test_unreadable_priors_files(tmp_path):
    with pytest.raises(InputError, match="priors file not found"):
        load_priors(tmp_path / "missing.json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_priors(_write(tmp_path, "{not json"))


def _synthetic_subjects(rng, hyper, n_subjects, shape=(20, 20, 20)):
    """Subjects drawn from known hierarchical priors, voxel values i.i.d. (independent of qSynth)."""
    labels = np.zeros(shape, dtype=np.int16)
    labels[:, :10] = 1
    labels[:, 10:] = 2
    labels[:2] = 0
    for _ in range(n_subjects):
        maps = {p: np.zeros(shape, dtype=np.float32) for p in PARAMETERS}
        for c in (1, 2):
            for p in PARAMETERS:
                mu_mu, sigma_mu, mu_sigma, sigma_sigma = hyper[c][p]
                mu = rng.normal(mu_mu, sigma_mu)
                sigma = abs(rng.normal(mu_sigma, sigma_sigma))
                mask = labels == c
                maps[p][mask] = rng.normal(mu, sigma, mask.sum())
        yield maps, labels


HYPER_TRUE = {
    1: {"pd": (80.0, 3.0, 5.0, 1.0), "r1": (0.6, 0.05, 0.08, 0.02), "r2s": (16.0, 2.0, 4.0, 1.0),
        "mt": (0.9, 0.1, 0.2, 0.05)},
    2: {"pd": (69.0, 2.0, 3.0, 0.8), "r1": (1.0, 0.06, 0.07, 0.02), "r2s": (21.0, 2.0, 3.0, 0.8),
        "mt": (1.7, 0.1, 0.3, 0.08)},
}


def test_fit_priors_recovers_known_population_parameters():
    rng = np.random.default_rng(0)
    n = 120
    table = {"background": 0, "gm": 1, "wm": 2}
    fitted = fit_priors(_synthetic_subjects(rng, HYPER_TRUE, n), table)
    assert fitted.names == ("background", "gm", "wm") and fitted.labels == (0, 1, 2)
    for c, name in ((1, "gm"), (2, "wm")):
        for p in PARAMETERS:
            mu_mu, sigma_mu, mu_sigma, sigma_sigma = HYPER_TRUE[c][p]
            got = fitted.prior(name, p)
            assert abs(got.mu_mu - mu_mu) < 4 * sigma_mu / math.sqrt(n), (name, p)
            assert abs(got.sigma_mu / sigma_mu - 1) < 4 / math.sqrt(2 * (n - 1)), (name, p)
            assert abs(got.mu_sigma - mu_sigma) < 4 * sigma_sigma / math.sqrt(n), (name, p)
            # subject stds are estimated from ~3600 voxels: a little extra spread
            assert abs(got.sigma_sigma / sigma_sigma - 1) < 0.3, (name, p)
    # the fitted priors are a valid file
    TissuePriors.from_dict(json.loads(json.dumps(fitted.to_dict())))


def test_fit_priors_with_one_subject_and_missing_classes():
    rng = np.random.default_rng(1)
    (maps, labels), = list(_synthetic_subjects(rng, HYPER_TRUE, 1))
    maps = {k: v for k, v in maps.items() if k != "mt"}  # no MT map
    base = load_priors()
    fitted = fit_priors([(maps, labels)], base)
    gm = fitted.prior("gm", "pd")
    sd = float(maps["pd"][labels == 1].std())
    assert gm.mu_mu == pytest.approx(float(maps["pd"][labels == 1].astype(np.float64).mean()))
    assert gm.mu_sigma == pytest.approx(sd, rel=1e-4)
    assert gm.sigma_mu == pytest.approx(SINGLE_SUBJECT_FRACTION * sd, rel=1e-4)
    assert gm.sigma_sigma == pytest.approx(SINGLE_SUBJECT_FRACTION * sd, rel=1e-4)
    # classes/maps without data keep the class table's priors
    assert fitted.prior("lesion", "r1") == base.prior("lesion", "r1")
    assert fitted.prior("gm", "mt") == base.prior("gm", "mt")
    assert any("lesion/r1" in note for note in fitted.notes)
    # ... but a bare name -> label table has nothing to fall back on
    with pytest.raises(InputError, match=r"no subject has voxels of class '\w+' with a 'mt' map"):
        fit_priors([(maps, labels)], {"background": 0, "gm": 1, "wm": 2})


def test_fit_priors_input_errors():
    rng = np.random.default_rng(2)
    maps, labels = next(_synthetic_subjects(rng, HYPER_TRUE, 1))
    bad = labels.copy()
    bad[0, 0, 0] = 99
    with pytest.raises(InputError, match=r"lab.nii: unknown label value\(s\) \[99\]"):
        fit_priors([(maps, bad)], names=["lab.nii"])
    with pytest.raises(InputError, match="map 'pd' has shape"):
        fit_priors([({**maps, "pd": maps["pd"][:-1]}, labels)])
    with pytest.raises(InputError, match="non-integer"):
        fit_priors([(maps, labels + 0.5)])
    with pytest.raises(InputError, match="no subjects"):
        fit_priors([])


# ------------------------------------------------------------------------------------------------- CLI


def _write_subject(folder, rng, affine):
    nib = pytest.importorskip("nibabel")
    folder.mkdir()
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    labels[2:10, 2:6] = 1
    labels[2:10, 6:10] = 2
    values = {"PD": {1: 80.0, 2: 69.0}, "R1": {1: 0.6, 2: 1.0}, "R2s": {1: 16.0, 2: 21.0}, "MT": {1: 0.9, 2: 1.7}}
    for suffix, per_class in values.items():
        data = np.zeros(labels.shape, dtype=np.float32)
        for c, v in per_class.items():
            data[labels == c] = v * (1 + 0.05 * rng.standard_normal((labels == c).sum()))
        nib.save(nib.Nifti1Image(data, affine), folder / f"sub_{suffix}.nii.gz")
    return labels


def test_fit_priors_command(tmp_path):
    nib = pytest.importorskip("nibabel")
    pytest.importorskip("qmricore.io")
    rng = np.random.default_rng(3)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for i in range(2):
        labels = _write_subject(tmp_path / f"s{i}", rng, affine)
        nib.save(nib.Nifti1Image(labels, affine), tmp_path / f"lab{i}.nii.gz")
    out = tmp_path / "fitted.json"
    cmd = [sys.executable, "-m", "qmricore", "fit-priors", "--maps", str(tmp_path / "s0"), str(tmp_path / "s1"),
           "--labels", str(tmp_path / "lab0.nii.gz"), str(tmp_path / "lab1.nii.gz"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    fitted = load_priors(out)
    assert fitted.prior("gm", "r1").mu_mu == pytest.approx(0.6, rel=0.02)
    assert fitted.prior("wm", "pd").mu_mu == pytest.approx(69.0, rel=0.02)
    assert fitted.prior("lesion", "pd") == load_priors().prior("lesion", "pd")  # no lesion voxels: kept

    # a label map on another grid: one clear line, exit 2, nothing written
    nib.save(nib.Nifti1Image(np.ones((10, 12, 12), dtype=np.int16), affine), tmp_path / "small.nii.gz")
    out2 = tmp_path / "never.json"
    cmd2 = [sys.executable, "-m", "qmricore", "fit-priors", "--maps", str(tmp_path / "s0"),
            "--labels", str(tmp_path / "small.nii.gz"), "--out", str(out2)]
    done = subprocess.run(cmd2, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "small.nii.gz" in done.stderr and "differs from the maps' grid" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out2.exists()


def test_hyper_names():
    assert HYPER == ("mu_mu", "sigma_mu", "mu_sigma", "sigma_sigma")
