"""Whole-head training anatomy (qmricore.generators.anatomy): geometry, layer order and thickness, ventricles,
atrophy, reproducibility, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from qmricore.errors import InputError, ParameterError
from qmricore.generators.anatomy import HEAD_CLASSES, HeadConfig, apply_head, build_head, draw_head, ventricle_mask
from qmricore.generators.priors import load_priors

PRIORS = load_priors()
L = {name: PRIORS.label_of(name) for name in PRIORS.names}
VOXEL = 2.0
AFFINE = np.array([[VOXEL, 0, 0, -40.0], [0, VOXEL, 0, -50.0], [0, 0, VOXEL, -30.0], [0, 0, 0, 1]])


def brain(n: int = 40) -> np.ndarray:
    """A sphere brain on a 2 mm grid: WM core with a CSF ventricle in it, PV, GM and a CSF shell (radius 32 mm)."""
    x = np.arange(n) - (n - 1) / 2
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) * VOXEL
    lab = np.zeros((n, n, n), dtype=np.int64)
    for radius, name in ((32, "csf"), (30, "gm"), (24, "gm_wm_pv"), (22, "wm"), (6, "csf")):
        lab[r < radius] = L[name]
    return lab


#: No deformation, atrophy or ventricle change: the brain must come out exactly where it went in.
RIGID = HeadConfig(scale=(1.0, 1.0), rotation_deg=0.0, elastic_mm=0.0, atrophy_prob=0.0, ventricle_mm=(0.0, 0.0))


def test_the_head_keeps_the_brain_and_its_world_position_exactly():
    lab = brain()
    head, affine, _ = build_head(lab, AFFINE, seed=3, config=RIGID)
    pad = np.round(np.linalg.solve(affine, AFFINE)[:3, 3]).astype(int)  # input voxel 0 in output voxels
    assert np.allclose(affine[:3, :3], AFFINE[:3, :3])
    assert tuple(pad) == (5, 5, 25)  # the default padding: 10 mm sides, 50 mm below for the neck
    inside = head[pad[0]:pad[0] + 40, pad[1]:pad[1] + 40, pad[2]:pad[2] + 40]
    brain_classes = np.isin(lab, [L[n] for n in ("gm", "wm", "gm_wm_pv", "csf")])
    np.testing.assert_array_equal(inside[brain_classes], lab[brain_classes])
    assert set(np.unique(head)) >= {L[n] for n in ("background", "skull", "muscle", "fat")}  # dura: where >= 1 voxel


def test_layers_lie_outside_the_intracranial_volume_in_order_and_within_their_thickness_ranges():
    config = dataclasses.replace(RIGID, eye_radius_mm=(1.0, 1.0))  # (no eyes: they would cut the layers)
    head, _, draw = build_head(brain(), AFFINE, seed=5, config=config)
    icv = np.isin(head, [L[n] for n in ("gm", "wm", "gm_wm_pv", "csf")])
    icv = ndimage.binary_fill_holes(icv)
    d = ndimage.distance_transform_edt(~icv, sampling=VOXEL)
    top = head.shape[2] - 6  # above the neck: only the layers
    region = np.zeros_like(icv)
    region[:, :, top - 10:] = True
    def dist(name: str) -> np.ndarray:
        return d[region & (head == L[name])]
    skull, muscle, fat = dist("skull"), dist("muscle"), dist("fat")
    assert skull.size and muscle.size and fat.size
    assert skull.min() > 0  # nothing of the head inside the skull's inner surface
    # order outwards: dura, then skull, then muscle/fat; the skull ends within the drawn thickness
    assert np.median(dist("dura")) < np.median(skull) < np.median(muscle)
    assert skull.max() <= draw.dura_mm[1] + draw.skull_mm[1] + VOXEL
    outer = draw.dura_mm[1] + draw.skull_mm[1] + draw.muscle_mm[1] + draw.temporalis_mm + draw.fat_mm[1] \
        + draw.skin_mm[1]
    air = d[region & (head == L["background"])]
    assert air.min() > draw.dura_mm[0] + draw.skull_mm[0] + draw.muscle_mm[0] + draw.skin_mm[0] - VOXEL
    assert (d[region & (head != L["background"])] <= outer + VOXEL).all()


def test_ventricles_are_found_and_grow_or_shrink_with_the_draw():
    lab = brain()
    vent = ventricle_mask(lab, PRIORS)
    x = np.arange(40) - 19.5
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) * VOXEL
    np.testing.assert_array_equal(vent, r < 6)  # the inner CSF, not the shell around the brain
    sizes = {}
    for grow in (-2.0, 0.0, 6.0):
        config = dataclasses.replace(RIGID, ventricle_mm=(grow, grow))
        head, _, _ = build_head(lab, AFFINE, seed=1, config=config)
        sizes[grow] = int(ventricle_mask(head, PRIORS).sum())
    assert sizes[-2.0] < sizes[0.0] < sizes[6.0]
    assert sizes[0.0] == int(vent.sum())


def test_atrophy_turns_cortex_bordering_csf_into_csf():
    lab = brain()
    plain, _, _ = build_head(lab, AFFINE, seed=2, config=RIGID)
    config = dataclasses.replace(RIGID, atrophy_prob=1.0, atrophy_mm=(4.0, 4.0))
    atrophic, _, draw = build_head(lab, AFFINE, seed=2, config=config)
    assert draw.atrophy_mm == 4.0
    assert (atrophic == L["gm"]).sum() < (plain == L["gm"]).sum()
    assert (atrophic == L["csf"]).sum() > (plain == L["csf"]).sum()
    assert ((atrophic == L["wm"]) == (plain == L["wm"])).all()  # white matter untouched


def test_heads_are_reproducible_by_seed_and_differ_between_seeds():
    lab = brain()
    a, affine_a, draw_a = build_head(lab, AFFINE, seed=7)
    b, affine_b, draw_b = build_head(lab, AFFINE, seed=7)
    c, _, draw_c = build_head(lab, AFFINE, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(affine_a, affine_b)
    assert draw_a == draw_b and draw_a != draw_c and not np.array_equal(a, c)
    assert draw_head(np.random.default_rng(7)) == draw_a
    assert a.dtype == np.int16 and set(np.unique(a)) <= set(PRIORS.labels)
    assert all(isinstance(v, (int, float, list)) for v in draw_a.to_dict().values())  # JSON data


def test_eyes_sit_outside_the_brain_in_orbital_fat():
    head, _, _ = build_head(brain(), AFFINE, seed=4, config=RIGID)
    eye = head == L["eye"]
    assert eye.sum() > 100
    icv = ndimage.binary_fill_holes(np.isin(head, [L[n] for n in ("gm", "wm", "gm_wm_pv", "csf")]))
    assert not (eye & icv).any()
    around = ndimage.binary_dilation(eye, iterations=1) & ~eye
    assert (head[around] == L["fat"]).mean() > 0.5


def test_bad_input_and_bad_config_are_rejected():
    with pytest.raises(InputError, match="no brain tissue"):
        apply_head(np.full((8, 8, 8), L["muscle"]), AFFINE, draw_head(np.random.default_rng(0)))
    with pytest.raises(InputError, match="3D label map"):
        apply_head(np.zeros((8, 8)), AFFINE, draw_head(np.random.default_rng(0)))
    with pytest.raises(ParameterError, match="skull_mm low"):
        HeadConfig(skull_mm=(9.0, 4.0))
    with pytest.raises(ParameterError, match="atrophy_prob"):
        HeadConfig(atrophy_prob=1.5)
    assert set(HEAD_CLASSES) <= set(PRIORS.names)
