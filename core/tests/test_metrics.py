"""Metrics: Dice and HD95 against independent computations, empty cases, summaries with Student-t CIs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats
from scipy.spatial import cKDTree

from qmricore.errors import InputError
from qmricore.inference.metrics import (
    EMPTY_HD95,
    dice,
    hd95,
    match_by_name,
    median_confidence_interval,
    score_pair,
    summarise,
    summary_markdown,
)


def blob(seed: int, shape: tuple[int, int, int] = (24, 22, 20)) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(noise, 2.5) > 0.05


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Surfaces from explicit 6-neighbour checks, distances from a k-d tree over all surface points."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inside = padded[1:-1, 1:-1, 1:-1]
        exposed = np.zeros_like(inside)
        for axis in range(3):
            for step in (-1, 1):
                exposed |= ~np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(inside & exposed) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def test_dice_against_set_arithmetic() -> None:
    a, b = blob(1), blob(2)
    set_a, set_b = set(map(tuple, np.argwhere(a))), set(map(tuple, np.argwhere(b)))
    assert dice(a, b) == pytest.approx(2 * len(set_a & set_b) / (len(set_a) + len(set_b)))
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 2.0)])
def test_hd95_against_brute_force(spacing: tuple[float, float, float]) -> None:
    a, b = blob(3), blob(4)
    assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing), abs=1e-9)


def test_hd95_analytic_cases() -> None:
    a = np.zeros((20, 20, 20), bool)
    b = a.copy()
    a[3, 4, 5] = b[6, 8, 5] = True  # single voxels: their distance
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(5.0)
    assert hd95(a, b, (2.0, 0.5, 1.0)) == pytest.approx(math.hypot(6.0, 2.0))
    for d in (1, 3):  # cubes offset by d voxels along x
        p, t = np.zeros((40, 30, 30), bool), np.zeros((40, 30, 30), bool)
        p[5:25, 5:25, 5:25] = True
        t[5 + d:25 + d, 5:25, 5:25] = True
        assert hd95(p, t) == pytest.approx(d)
        assert hd95(p, t, (1.5, 1.0, 1.0)) == pytest.approx(1.5 * d)
    grid = np.indices((34, 34, 34)) - 16.5
    radius = np.sqrt((grid**2).sum(axis=0))
    assert hd95(radius <= 12, radius <= 7) == pytest.approx(5.0, abs=1.0)


def test_padding_does_not_change_hd95() -> None:
    a, b = blob(5), blob(6)  # blobs touch the array border
    padded = [np.pad(m, 12) for m in (a, b)]
    assert hd95(*padded) == pytest.approx(hd95(a, b))
    assert dice(*padded) == pytest.approx(dice(a, b))


def test_empty_masks() -> None:
    empty, full = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    full[2:5, 2:5, 2:5] = True
    assert (dice(empty, empty), hd95(empty, empty)) == (1.0, 0.0)
    assert (dice(empty, full), hd95(empty, full)) == (0.0, EMPTY_HD95) == (0.0, 256.0)
    assert hd95(full, empty) == EMPTY_HD95


def test_score_pair_reslices_to_the_truth_grid() -> None:
    truth = np.zeros((32, 32, 32), np.uint8)
    truth[8:24, 8:24, 8:24] = 1
    prediction = np.zeros((16, 16, 16), np.uint8)  # the same cube on a 2 mm grid
    prediction[4:12, 4:12, 4:12] = 1
    affine_2mm = np.diag([2.0, 2.0, 2.0, 1.0])
    affine_2mm[:3, 3] = 0.5  # voxel (0,0,0) covers 1 mm voxels 0 and 1
    scores = score_pair(prediction, affine_2mm, truth, np.eye(4))
    assert scores.truth_ml == pytest.approx(4.096)
    assert scores.dice == pytest.approx(1.0, abs=0.1) and scores.hd95 <= 1.0


def test_median_confidence_interval_by_hand() -> None:
    values = [0.1, 0.5, 0.6, 0.7, 0.9]
    centre, low, high = median_confidence_interval(values)
    sem = np.std(values, ddof=1) / np.sqrt(5)
    expected = stats.t.interval(0.95, 4, loc=0.6, scale=sem)
    assert centre == 0.6 and (low, high) == pytest.approx(expected)
    assert (low, high) == pytest.approx((0.6 - 2.776445 * 0.132665, 0.6 + 2.776445 * 0.132665), abs=1e-5)
    assert all(math.isnan(v) for v in median_confidence_interval([0.3])[1:])


def test_summarise_groups_and_clips() -> None:
    table = [{"modality": "T1", "model": "a", "dice": d, "hd95": h} for d, h in [(0.9, 2.0), (1.0, 1.0), (0.95, 3.0)]]
    table += [{"modality": "FLAIR", "model": "a", "dice": 0.0, "hd95": 256.0}] * 2
    summary = summarise(table)
    assert [(r["modality"], r["model"], r["n"]) for r in summary] == [("FLAIR", "a", 2), ("T1", "a", 3)]
    t1 = summary[1]
    assert t1["dice_median"] == 0.95 and t1["dice_ci_high"] == 1.0  # clipped to the Dice range
    low, high = stats.t.interval(0.95, 2, loc=2.0, scale=1.0 / np.sqrt(3))
    assert low < 0 and t1["hd95_ci_low"] == 0.0  # clipped to the HD95 range
    assert t1["hd95_median"] == 2.0 and t1["hd95_ci_high"] == pytest.approx(high)
    markdown = summary_markdown(summary)
    assert "| FLAIR | a | 2 | 0.000 (0.000-0.000) | 256.0 (256.0-256.0) |" in markdown


def test_match_by_name(tmp_path: Path) -> None:
    truths = [tmp_path / "sub-01.nii.gz", tmp_path / "sub-02.nii"]
    preds = [tmp_path / "p" / "sub-02.nii.gz", tmp_path / "p" / "sub-01_lesion.nii.gz"]
    assert match_by_name(preds, truths) == [(preds[0], truths[1]), (preds[1], truths[0])]
    with pytest.raises(InputError, match="sub-03.nii.gz: no ground-truth file with a matching name"):
        match_by_name([tmp_path / "sub-03.nii.gz"], truths)
