""":func:`qmricore.physics.cpmg` against a second, differently written EPG, plus its array contract.

The reference below follows the textbook formulation (Weigel 2015): one complex state vector ``F_k`` for
``k`` in ``[-K, K]`` and ``Z_k``, explicit 3x3 rotation matrices (excitation about x, refocusing about y),
relaxation with T1 recovery towards M0 and a shift of every ``F`` by one order per half echo spacing.  It
shares no code or shortcut with the implementation (which runs real-valued, on odd orders only, without the
recovery term).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qmricore.errors import InputError, ParameterError
from qmricore.physics import cpmg


def _rotation(alpha: float, phi: float) -> np.ndarray:
    """EPG rotation of (F+_k, F-_k, Z_k) by ``alpha`` (radians) about the axis at phase ``phi``."""
    c2, s2, s = math.cos(alpha / 2) ** 2, math.sin(alpha / 2) ** 2, math.sin(alpha)
    e = np.exp(1j * phi)
    return np.array([[c2, e ** 2 * s2, -1j * e * s],
                     [np.conj(e) ** 2 * s2, c2, 1j * np.conj(e) * s],
                     [-0.5j * np.conj(e) * s, 0.5j * e * s, math.cos(alpha)]])


def epg_reference(t2: float, t1: float, te: float, n: int, refocus: float, b1t: float = 1.0) -> np.ndarray:
    """Echo magnitudes of one voxel by the full complex EPG (see the module docstring)."""
    k_max = 2 * n + 2
    f = np.zeros(2 * k_max + 1, complex)  # F_k at index k + k_max
    z = np.zeros(k_max + 1, complex)
    z[0] = 1.0

    def pulse(rotation: np.ndarray) -> None:
        for k in range(k_max + 1):
            state = rotation @ np.array([f[k_max + k], np.conj(f[k_max - k]), z[k]])
            f[k_max + k], f[k_max - k], z[k] = state[0], np.conj(state[1]), state[2]
            if k == 0:
                f[k_max] = state[0]

    def relax_and_shift(t: float) -> None:
        nonlocal f
        f *= math.exp(-t / t2)
        z[:] *= math.exp(-t / t1)
        z[0] += 1.0 - math.exp(-t / t1)
        f = np.concatenate([[0.0], f[:-1]])

    pulse(_rotation(math.pi / 2 * b1t, 0.0))
    echoes = []
    for _ in range(n):
        relax_and_shift(te / 2)
        pulse(_rotation(math.radians(refocus) * b1t, math.pi / 2))
        relax_and_shift(te / 2)
        echoes.append(abs(f[k_max]))
    return np.array(echoes)


def test_reference_is_exact_for_ideal_pulses() -> None:
    np.testing.assert_allclose(epg_reference(0.08, 1.0, 0.01, 6, 180.0), np.exp(-np.arange(1, 7) * 0.01 / 0.08),
                               rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_reference_epg(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 49))
    te = float(rng.uniform(0.005, 0.015))
    refocus = float(rng.uniform(90.0, 180.0))
    t2 = np.exp(rng.uniform(math.log(0.01), math.log(2.0), 5))
    t1 = rng.uniform(0.3, 4.0, 5)
    b1t = rng.uniform(0.8, 1.2, 5) if seed % 2 else None
    got = cpmg(t2, t1, te=te, n_echoes=n, refocus=refocus, b1t=b1t)
    for i in range(5):
        want = epg_reference(t2[i], t1[i], te, n, refocus, 1.0 if b1t is None else b1t[i])
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-14 * want[0])


#: (T1, T2) in seconds at 1.5 T and 3 T (SPEC §4 asks for WM/GM/CSF/lesion at both field strengths).
TISSUES = {
    "wm 1.5T": (0.65, 0.075), "gm 1.5T": (1.10, 0.095), "csf 1.5T": (4.0, 2.0), "lesion 1.5T": (1.0, 0.15),
    "wm 3T": (0.85, 0.07), "gm 3T": (1.40, 0.09), "csf 3T": (4.0, 1.8), "lesion 3T": (1.3, 0.13),
}


@pytest.mark.parametrize("tissue", sorted(TISSUES))
def test_tissues_at_both_field_strengths_and_b1_errors(tissue: str) -> None:
    t1, t2 = TISSUES[tissue]
    b1t = np.array([0.8, 1.0, 1.2])
    got = cpmg(np.full(3, t2), np.full(3, t1), te=0.01, n_echoes=32, refocus=165.0, b1t=b1t)
    for i, b in enumerate(b1t):
        np.testing.assert_allclose(got[i], epg_reference(t2, t1, 0.01, 32, 165.0, b), rtol=1e-6)


def test_ideal_train_is_a_pure_exponential() -> None:
    t2 = np.array([0.01, 0.02, 0.08, 0.5, 2.0])
    got = cpmg(t2, np.full(5, 1.0), te=0.01, n_echoes=32, refocus=180.0, b1t=np.ones(5))
    want = np.exp(-np.arange(1, 33)[None, :] * 0.01 / t2[:, None])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


def test_stimulated_echoes_raise_the_even_echoes() -> None:
    """With 150° pulses echo 2 exceeds echo 1 in relative terms: the CPMG signature of stimulated echoes."""
    s = cpmg(np.array(0.08), np.array(1.0), te=0.01, n_echoes=4, refocus=150.0)
    assert s[1] / s[0] > math.exp(-0.01 / 0.08)


def test_numpy_and_torch_agree_and_keep_their_kind() -> None:
    rng = np.random.default_rng(1)
    t2, t1 = rng.uniform(0.01, 0.3, (3, 4)), rng.uniform(0.5, 2.0, (3, 4))
    a = cpmg(t2, t1, te=0.009, n_echoes=10, refocus=160.0)
    b = cpmg(torch.from_numpy(t2), torch.from_numpy(t1), te=0.009, n_echoes=10, refocus=160.0)
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
    assert a.dtype == np.float64 and b.dtype == torch.float64
    np.testing.assert_array_equal(a, b.numpy())
    c = cpmg(t2.astype(np.float32), t1.astype(np.float32), te=0.009, n_echoes=10, refocus=160.0)
    assert c.dtype == np.float32
    np.testing.assert_allclose(c, a, rtol=1e-6)


def test_shapes_broadcast_and_inputs_are_untouched() -> None:
    t2 = np.full((2, 3, 4), 0.05)
    t2_copy = t2.copy()
    b1t = torch.full((3, 1), 0.9)
    out = cpmg(t2, 1.2, te=0.01, n_echoes=7, refocus=170.0, b1t=b1t.numpy())
    assert out.shape == (2, 3, 4, 7)
    np.testing.assert_array_equal(t2, t2_copy)
    assert torch.equal(b1t, torch.full((3, 1), 0.9))
    assert cpmg(0.05, 1.0, te=0.01, n_echoes=3).shape == (3,)
    assert cpmg(np.zeros((0, 2)) + 0.05, 1.0, te=0.01, n_echoes=3).shape == (0, 2, 3)
    # chunking does not change values: a long column equals its first voxel repeated
    many = cpmg(np.full(10_000, 0.05), 1.0, te=0.01, n_echoes=5, refocus=140.0)
    np.testing.assert_array_equal(many, np.broadcast_to(many[:1], many.shape))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"te": 0.0}, ParameterError, "TE must be > 0 s"),
    ({"te": -0.01}, ParameterError, "TE must be > 0 s"),
    ({"te": 9.0}, ParameterError, "times are in seconds"),
    ({"n_echoes": 0}, ParameterError, "number of echoes must be an integer >= 1"),
    ({"n_echoes": 2.5}, ParameterError, "number of echoes must be an integer >= 1"),
    ({"refocus": 0.0}, ParameterError, "refocusing angle"),
    ({"t2": -0.05}, InputError, "T2 must be > 0 s"),
    ({"t1": 0.0}, InputError, "T1 must be > 0 s"),
    ({"t2": float("nan")}, InputError, "T2 contains NaN"),
])
def test_bad_parameters_are_named(kwargs: dict, error: type, message: str) -> None:
    args = {"t2": 0.05, "t1": 1.0, "te": 0.01, "n_echoes": 8, **kwargs}
    t2, t1 = np.array([0.05, args.pop("t2")]), np.array([1.0, args.pop("t1")])
    with pytest.raises(error, match=message):
        cpmg(t2, t1, **args)
