""":func:`qmricore.mwf.fit_nnls` on synthetic three-pool voxels with known myelin water fraction.

Each voxel is the sum of three narrow log-Gaussian T2 peaks (myelin water ~20 ms, intra/extracellular ~80 ms,
free water ~1.5 s), simulated with :func:`qmricore.physics.cpmg` on a grid 10 times finer than the fit's
bins (so the fit's dictionary is not the simulation's), a refocusing angle of 150-180°, and Rician noise.
The bounds are the measured bias and spread (seed 0, 200 voxels per SNR) with a margin.
"""

from __future__ import annotations

import numpy as np
import pytest

from qmricore.errors import InputError, ParameterError
from qmricore.mwf import NNLSConfig, fit_nnls, t2_bins
from qmricore.physics import cpmg

TE, N_ECHOES, VOXELS = 0.01, 32, 200
FINE_T2 = np.geomspace(0.005, 3.0, 400)


def _peak(centre: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Unit-area log-Gaussian peaks on :data:`FINE_T2`, one per centre (seconds)."""
    w = np.exp(-0.5 * ((np.log(FINE_T2)[None, :] - np.log(centre)[:, None]) / width) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def three_pool(seed: int, voxels: int = VOXELS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free echo trains ``(voxels, N_ECHOES)`` of unit proton density, their MWF and refocusing angles."""
    rng = np.random.default_rng(seed)
    mwf = rng.uniform(0.05, 0.25, voxels)
    fw = rng.uniform(0.0, 0.1, voxels)
    flip = rng.uniform(150.0, 180.0, voxels)
    spectrum = (mwf[:, None] * _peak(rng.uniform(0.015, 0.025, voxels))
                + (1 - mwf - fw)[:, None] * _peak(rng.uniform(0.06, 0.1, voxels))
                + fw[:, None] * _peak(np.full(voxels, 1.5)))
    b1 = (flip / 180.0)[:, None]
    trains = cpmg(np.tile(FINE_T2, (voxels, 1)), 1.0, te=TE, n_echoes=N_ECHOES, b1t=b1)
    trains /= np.sin(b1 * np.pi / 2)[..., None]
    return np.einsum("vbn,vb->vn", trains, spectrum), mwf, flip


def rician(signal: np.ndarray, snr: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = signal[:, 0].mean() / snr
    return np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))


def test_noise_free_voxels_are_recovered() -> None:
    clean, mwf, flip = three_pool(1, voxels=60)
    result = fit_nnls(clean, TE)
    assert abs(np.mean(result.mwf - mwf)) < 0.01
    assert np.max(np.abs(result.mwf - mwf)) < 0.03
    assert np.median(np.abs(result.flip - flip)) < 1.0
    np.testing.assert_allclose(result.spectrum.sum(axis=-1), 1.0, rtol=0.03)  # unit proton density
    assert np.all((result.t2gm > 0.03) & (result.t2gm < 0.2))


#: SNR: (largest |bias|, largest spread) of MWF - truth, measured with a margin (see the module docstring).
#: Measured: SNR 40 +0.030 / 0.088, SNR 100 +0.003 / 0.055, SNR 200 -0.009 / 0.038.
BOUNDS = {40: (0.05, 0.11), 100: (0.02, 0.07), 200: (0.02, 0.05)}


@pytest.mark.parametrize("snr", sorted(BOUNDS))
def test_mwf_bias_and_spread_at_snr(snr: float) -> None:
    clean, mwf, _ = three_pool(0)
    result = fit_nnls(rician(clean, snr, seed=snr), TE)
    error = result.mwf - mwf
    print(f"SNR {snr}: bias {error.mean():+.4f}, spread {error.std():.4f}")
    max_bias, max_spread = BOUNDS[snr]
    assert abs(error.mean()) < max_bias
    assert error.std() < max_spread
    assert np.all((result.mwf >= 0) & (result.mwf <= 1))


def test_ideal_single_pool_has_its_t2_and_no_myelin_water() -> None:
    t2 = t2_bins()[20]
    y = 3.0 * cpmg(np.full(4, t2), 1.0, te=TE, n_echoes=N_ECHOES, refocus=180.0)
    result = fit_nnls(y, TE)
    np.testing.assert_allclose(result.t2gm, t2, rtol=0.02)
    np.testing.assert_allclose(result.mwf, 0.0, atol=1e-6)
    np.testing.assert_allclose(result.flip, 180.0, atol=1.0)
    np.testing.assert_allclose(result.spectrum.sum(axis=-1), 3.0, rtol=0.02)


def test_shapes_mask_and_empty_voxels() -> None:
    clean, _, _ = three_pool(2, voxels=6)
    echoes = clean.reshape(2, 3, N_ECHOES).copy()
    echoes[0, 0] = 0.0
    mask = np.ones((2, 3), bool)
    mask[1, 2] = False
    result = fit_nnls(echoes, TE, mask=mask)
    assert result.mwf.shape == result.flip.shape == result.t2gm.shape == (2, 3)
    assert result.spectrum.shape == (2, 3, NNLSConfig().n_bins)
    for voxel in ((0, 0), (1, 2)):
        assert result.mwf[voxel] == result.flip[voxel] == result.t2gm[voxel] == 0.0
        assert not result.spectrum[voxel].any()
    assert result.mwf[0, 1] > 0


@pytest.mark.parametrize("te, echoes, error, message", [
    (0.0, np.ones((2, 8)), ParameterError, "TE must be > 0 s"),
    (9.0, np.ones((2, 8)), ParameterError, "times are in seconds"),
    (0.01, np.ones((2, 3)), InputError, "at least 4 echoes"),
    (0.01, np.full((2, 8), np.nan), InputError, "NaN/Inf"),
])
def test_bad_inputs_are_named(te: float, echoes: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fit_nnls(echoes, te)


def test_workers_give_the_results_of_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three batches over two spawned processes: the same fit as in this process, progress per batch."""
    monkeypatch.setattr("qmricore.mwf.nnls.BATCH_VOXELS", 16)
    clean, _, _ = three_pool(3, voxels=40)
    echoes = rician(clean, 100, seed=3)
    done: list[int] = []
    one = fit_nnls(echoes, TE, workers=1)
    two = fit_nnls(echoes, TE, workers=2, progress=done.append)
    assert sorted(done) == [8, 16, 16]
    # the same arithmetic; arrays at other memory addresses may round differently in the last bits
    np.testing.assert_allclose(two.flip, one.flip, rtol=0, atol=1e-9)
    np.testing.assert_allclose(two.spectrum, one.spectrum, rtol=0, atol=1e-9)
    np.testing.assert_allclose(two.mwf, one.mwf, rtol=0, atol=1e-9)
    assert np.abs(two.mwf - one.mwf).max() < 1e-11


@pytest.mark.parametrize("workers", [0, -1, 1.5])
def test_bad_worker_counts_are_named(workers: object) -> None:
    with pytest.raises(ParameterError, match="workers must be an integer >= 1"):
        fit_nnls(np.ones((2, 8)), TE, workers=workers)
