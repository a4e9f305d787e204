"""Rician noise and the SNR convention (SPEC §4), checked statistically against the analytic moments.

The Rician mean is computed here independently of ``qmricore``:
``E[R] = sigma sqrt(pi/2) L_1/2(-A^2 / (2 sigma^2))`` with the Laguerre function
``L_1/2(x) = 1F1(-1/2; 1; x) = e^(x/2) [(1 - x) I0(-x/2) - x I1(-x/2)]``, and the raw moments
``E[R^2] = A^2 + 2 sigma^2``, ``E[R^4] = A^4 + 8 A^2 sigma^2 + 8 sigma^4`` (Rice 1944; Gudbjartsson &
Patz, MRM 1995;34:910).  Bounds are 5 standard errors of the sample statistic at n = 200 000.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from qmricore.physics import noise_sigma, rician_noise, simulate

N = 200_000
Z = 5.0  # standard errors allowed


def laguerre_half(x: float) -> float:
    """L_1/2(x) for x <= 0 via exponentially scaled Bessel functions (no overflow at large |x|)."""
    z = -x / 2.0
    return (1.0 - x) * special.ive(0, z) - x * special.ive(1, z)


def rician_mean(a: float, sigma: float) -> float:
    return sigma * math.sqrt(math.pi / 2.0) * laguerre_half(-(a * a) / (2.0 * sigma * sigma))


def test_laguerre_forms_agree() -> None:
    for x in (0.0, -0.1, -1.0, -5.0, -30.0):
        assert laguerre_half(x) == pytest.approx(special.hyp1f1(-0.5, 1.0, x), rel=1e-12)
    assert rician_mean(0.0, 2.0) == pytest.approx(2.0 * math.sqrt(math.pi / 2.0))  # Rayleigh
    assert rician_mean(1000.0, 1.0) == pytest.approx(math.sqrt(1000.0**2 + 1.0), rel=1e-9)  # ~Gaussian at high SNR


@pytest.mark.parametrize(("a", "sigma"), [(0.0, 1.0), (0.5, 1.0), (1.5, 0.7), (4.0, 1.0), (30.0, 3.0)])
def test_rician_moments(a: float, sigma: float) -> None:
    signal = torch.full((N,), a, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1234)
    r = rician_noise(signal, sigma, gen).numpy()
    assert r.dtype == np.float64 and r.shape == (N,) and np.all(r >= 0)
    assert np.all(signal.numpy() == a)  # input untouched

    m2 = a * a + 2.0 * sigma**2
    m4 = a**4 + 8.0 * a * a * sigma**2 + 8.0 * sigma**4
    mean = rician_mean(a, sigma)
    se_mean = math.sqrt((m2 - mean * mean) / N)
    se_m2 = math.sqrt((m4 - m2 * m2) / N)
    assert abs(r.mean() - mean) < Z * se_mean, (r.mean(), mean, se_mean)
    assert abs((r * r).mean() - m2) < Z * se_m2, ((r * r).mean(), m2, se_m2)
    # the bound is tight enough to reject the wrong (Gaussian) mean where the noise floor matters
    if a < 2 * sigma:
        assert abs(r.mean() - a) > Z * se_mean


def test_rician_noise_float32_and_generator() -> None:
    signal = torch.linspace(0, 1, 1000, dtype=torch.float32)
    a = rician_noise(signal, 0.1, torch.Generator().manual_seed(7))
    b = rician_noise(signal, 0.1, torch.Generator().manual_seed(7))
    c = rician_noise(signal, 0.1, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(rician_noise(signal, 0.0, torch.Generator().manual_seed(7)), signal)  # sigma 0: no noise


def _phantom(n: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Half head (WM-like tissue), half air (PD 0): maps, the tissue mask and the air mask."""
    shape = (n, n, n)
    tissue = np.zeros(shape, dtype=bool)
    tissue[: n // 2] = True
    maps = {"pd": np.where(tissue, 0.7, 0.0), "r1": np.full(shape, 1.2), "r2s": np.full(shape, 20.0),
            "r2": np.full(shape, 13.0)}
    return maps, tissue, ~tissue


GRE = {"tr": 0.02, "te": 0.004, "flip": 20.0}


def test_simulate_noise_is_reproducible_with_a_seed() -> None:
    maps, tissue, _ = _phantom(16)
    a = simulate("gre", maps, snr=10.0, seed=3, **GRE)
    b = simulate("gre", maps, snr=10.0, seed=3, **GRE)
    c = simulate("gre", maps, snr=10.0, seed=4, **GRE)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d, e = simulate("gre", maps, snr=10.0, **GRE), simulate("gre", maps, snr=10.0, **GRE)  # unseeded: fresh draws
    assert not np.array_equal(d, e)
    clean = simulate("gre", maps, **GRE)
    assert not np.array_equal(a, clean) and a.dtype == clean.dtype == np.float64


@pytest.mark.parametrize("snr", [5.0, 20.0, 80.0])
def test_measured_snr_matches_target(snr: float) -> None:
    """sigma from the noise-only air (Rayleigh: mean = sigma sqrt(pi/2)) gives back the requested SNR."""
    maps, tissue, air = _phantom()
    clean = simulate("gre", maps, **GRE)
    noisy = simulate("gre", maps, snr=snr, seed=11, reference=tissue, **GRE)
    sigma_mean = noisy[air].mean() / math.sqrt(math.pi / 2.0)
    sigma_std = noisy[air].std() / math.sqrt(2.0 - math.pi / 2.0)
    level = clean[tissue].mean()
    for sigma in (sigma_mean, sigma_std):
        assert level / sigma == pytest.approx(snr, rel=0.03)  # ~0.4 % / 0.7 % standard errors at 16 384 voxels
    if snr >= 20:  # at high SNR the tissue noise is ~Gaussian with the same sigma
        assert (noisy[tissue] - clean[tissue]).std() == pytest.approx(level / snr, rel=0.03)


def test_default_reference_is_the_head() -> None:
    maps, tissue, _ = _phantom(16)
    clean = simulate("gre", maps, **GRE)
    explicit = simulate("gre", maps, snr=10.0, seed=2, reference=tissue, **GRE)
    default = simulate("gre", maps, snr=10.0, seed=2, **GRE)
    np.testing.assert_allclose(default, explicit, rtol=1e-12)  # voxels above 10 % of the max are the tissue
    assert noise_sigma(torch.from_numpy(clean), 10.0) == pytest.approx(clean[tissue].mean() / 10.0)


def test_noise_sigma_value_and_reference_mask() -> None:
    signal = torch.tensor([0.0, 0.05, 1.0, 2.0, 3.0], dtype=torch.float64)
    assert noise_sigma(signal, 4.0) == pytest.approx(2.0 / 4.0)  # mean of 1, 2, 3 (above 0.3)
    mask = torch.tensor([False, True, True, False, False])
    assert noise_sigma(signal, 2.0, mask) == pytest.approx(0.525 / 2.0)


@pytest.mark.parametrize(("args", "message"), [
    ((torch.ones(4), 0.0), r"snr must be > 0, got 0"),
    ((torch.ones(4), -3.0), r"snr must be > 0, got -3"),
    ((torch.ones(4), float("nan")), r"snr must be > 0, got nan"),
    ((torch.ones(4), 10.0, torch.ones(3, dtype=torch.bool)), r"reference mask shape \(3,\) differs from the image "
                                                               r"\(4,\)"),
    ((torch.ones(4), 10.0, torch.zeros(4, dtype=torch.bool)), r"the reference tissue has no signal"),
    ((torch.zeros(4), 10.0), r"the reference tissue has no signal"),
])
def test_noise_sigma_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        noise_sigma(*args)


def test_simulate_rejects_bad_snr_and_mask() -> None:
    maps, tissue, _ = _phantom(8)
    with pytest.raises(ValueError, match="snr must be > 0"):
        simulate("gre", maps, snr=0.0, **GRE)
    with pytest.raises(ValueError, match="reference mask shape"):
        simulate("gre", maps, snr=10.0, reference=tissue[:4], **GRE)
