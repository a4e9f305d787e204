""":mod:`qmricore.mwf.active_set` against :func:`scipy.optimize.nnls`, problem by problem.

Random problems (tall, wide, with a Tikhonov term) and the CPMG problems :func:`qmricore.mwf.fit_nnls` solves
(32 echoes x 40 bins, noisy three-pool trains); cold and warm starts, shared, grouped and per-problem Gram
matrices, and the one-by-one fallback.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls
from test_mwf_nnls import TE, rician, three_pool

from qmricore.mwf import t2_bins
from qmricore.mwf.active_set import nnls_gram, nnls_gram_definite
from qmricore.mwf.nnls import _dictionary


def _scipy(a: np.ndarray, y: np.ndarray, mu: float = 0.0) -> np.ndarray:
    n = a.shape[-1]
    return np.array([nnls(np.vstack([m, mu * np.eye(n)]), np.concatenate([v, np.zeros(n)]), maxiter=50 * n)[0]
                     for m, v in zip(a, y, strict=True)])


def _normal(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.einsum("bmi,bmj->bij", a, a), np.einsum("bmi,bm->bi", a, y)


@pytest.mark.parametrize("rows, cols", [(60, 20), (32, 40)])
def test_random_problems_match_scipy(rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows)
    a, y = rng.standard_normal((200, rows, cols)), rng.standard_normal((200, rows))
    gram, rhs = _normal(a, y)
    if rows >= cols:  # full column rank: x itself is unique
        x, positive = nnls_gram(gram, rhs)
        np.testing.assert_allclose(x, _scipy(a, y), rtol=0, atol=1e-9)
        assert np.array_equal(positive, x > 0)
    mu = 0.3
    x, _ = nnls_gram_definite(gram, rhs, ridge=np.full(200, mu ** 2))
    np.testing.assert_allclose(x, _scipy(a, y, mu), rtol=0, atol=1e-9)
    x, _ = nnls_gram(gram, rhs, ridge=np.full(200, mu ** 2))
    np.testing.assert_allclose(x, _scipy(a, y, mu), rtol=0, atol=1e-9)


def test_cpmg_problems_match_scipy_cold_warm_and_grouped() -> None:
    clean, _, _ = three_pool(5, voxels=150)
    y = rician(clean, 100, seed=5)
    dicts = _dictionary(t2_bins(), np.array([150.0, 165.0, 180.0]), TE, 32, 1.0)
    grams = np.einsum("gmi,gmj->gij", dicts, dicts)
    which = np.arange(150) % 3
    a = dicts[which]
    rhs = np.einsum("bmi,bm->bi", a, y)
    reference = _scipy(a, y)
    chi2 = np.sum((np.einsum("bmi,bi->bm", a, reference) - y) ** 2, axis=1)
    x, positive = nnls_gram(grams, rhs, which=which)  # the residual is unique; x nearly so (rank 32 < 40)
    assert np.all(x >= 0)
    np.testing.assert_allclose(np.sum((np.einsum("bmi,bi->bm", a, x) - y) ** 2, axis=1), chi2, rtol=1e-9)
    np.testing.assert_allclose(x, reference, rtol=0, atol=1e-6 * reference.max())
    rng = np.random.default_rng(0)
    for start in (positive, rng.random(positive.shape) < 0.3, np.ones_like(positive)):  # warm: the same answer
        warm, _ = nnls_gram(grams, rhs, start, which=which)
        np.testing.assert_allclose(warm, x, rtol=0, atol=1e-9 * x.max())
    one = nnls_gram(grams[1], rhs[which == 1])[0]  # a shared matrix
    np.testing.assert_allclose(one, x[which == 1], rtol=0, atol=1e-9 * x.max())
    mu = 1e-3 * np.linalg.norm(dicts[1], 2)
    ridge = np.full(150, mu ** 2)
    reference = _scipy(a, y, mu)
    for start in (None, positive):
        x, _ = nnls_gram_definite(grams, rhs, start, which=which, ridge=ridge)
        np.testing.assert_allclose(x, reference, rtol=0, atol=1e-9 * reference.max())


def test_the_fallback_solves_what_the_rounds_did_not() -> None:
    rng = np.random.default_rng(7)
    a, y = rng.standard_normal((20, 50, 12)), rng.standard_normal((20, 50))
    gram, rhs = _normal(a, y)
    x, positive = nnls_gram(gram, rhs, max_rounds=1)  # one round: nearly all left to scipy, one by one
    np.testing.assert_allclose(x, _scipy(a, y), rtol=0, atol=1e-9)
    assert np.array_equal(positive, x > 0)
    x, _ = nnls_gram_definite(gram, rhs, ridge=np.full(20, 0.04), max_rounds=1)  # exchanges, then Lawson–Hanson
    np.testing.assert_allclose(x, _scipy(a, y, 0.2), rtol=0, atol=1e-9)


def test_a_warm_start_at_the_answer_takes_two_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """One round solves on the given passive set, the next finds no column to add (a cold start needs a round per
    positive column, and more): no fallback."""
    clean, _, _ = three_pool(6, voxels=50)
    y = rician(clean, 100, seed=6)
    a = _dictionary(t2_bins(), np.array([170.0]), TE, 32, 1.0)[0]
    x, positive = nnls_gram(a.T @ a, y @ a)
    monkeypatch.setattr("qmricore.mwf.active_set._one_by_one", lambda *_: pytest.fail("fell back"))
    warm, again = nnls_gram(a.T @ a, y @ a, positive, max_rounds=2)
    np.testing.assert_allclose(warm, x, rtol=0, atol=1e-9 * x.max())
    assert np.array_equal(again, positive)
