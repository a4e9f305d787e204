"""The contract of :func:`qmricore.physics.simulate`: array kinds, dtypes, shapes, purity, fields, errors.

The values themselves are checked against a Bloch simulation in ``test_physics_bloch.py``; here the
reference for a voxel is ``simulate`` on that voxel alone (float64), or an analytic relation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import qmricore.physics._backend as backend
from qmricore.errors import InputError, ParameterError
from qmricore.physics import SEQUENCES, check_parameters, simulate

PARAMS = {
    "gre": {"tr": 0.02, "te": 0.004, "flip": 25.0},
    "fse": {"tr": 0.8, "te": 0.06},
    "flair": {"tr": 9.0, "te": 0.1, "ti": 2.5},
    "mprage": {"tr": 2.3, "ti": 0.9, "tx": 0.0071, "te": 0.003, "flip": 9.0, "n": 176},
    "mp2rage": {"tr": 5.0, "ti": 0.7, "ti2": 2.5, "tx": 0.0071, "te": 0.003, "flip": 4.0, "flip2": 5.0, "n": 176},
}
ALL = list(SEQUENCES)


def brain(shape: tuple[int, ...] = (3, 4, 5), seed: int = 0, dtype: type = np.float64) -> dict[str, np.ndarray]:
    """Random but plausible maps (float64 unless told): PD 0.6-1, R1 0.25-1.5 1/s, R2* 8-30, R2 6-15, MT 0-2."""
    rng = np.random.default_rng(seed)

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, shape).astype(dtype)

    return {"pd": u(0.6, 1.0), "r1": u(0.25, 1.5), "r2s": u(8.0, 30.0), "r2": u(6.0, 15.0), "mt": u(0.0, 2.0),
            "b1t": u(0.8, 1.2)}


def run(sequence: str, maps: dict, **kw: object) -> object:
    return simulate(sequence, maps, **PARAMS[sequence], **kw)


# ------------------------------------------------------------------------------------- kinds and dtypes
@pytest.mark.parametrize("sequence", ALL)
def test_numpy_in_numpy_out_and_tensor_in_tensor_out(sequence: str) -> None:
    maps = brain()
    out = run(sequence, maps)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (3, 4, 5)
    tmaps = {k: torch.from_numpy(v) for k, v in maps.items()}
    tout = run(sequence, tmaps)
    assert isinstance(tout, torch.Tensor) and tout.dtype == torch.float64 and tuple(tout.shape) == (3, 4, 5)
    np.testing.assert_array_equal(tout.numpy(), out)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("sequence", ALL)
def test_float32_stays_float32_and_agrees_with_float64(sequence: str) -> None:
    maps64 = brain()
    maps32 = {k: v.astype(np.float32) for k, v in maps64.items()}
    out32 = run(sequence, maps32)
    assert out32.dtype == np.float32
    tout32 = run(sequence, {k: torch.from_numpy(v) for k, v in maps32.items()})
    assert tout32.dtype == torch.float32
    ref = run(sequence, {k: v.astype(np.float64) for k, v in maps32.items()})
    np.testing.assert_allclose(out32, ref, rtol=2e-4, atol=1e-6)
    # one float64 map promotes the computation to float64
    assert run(sequence, {**maps32, "pd": maps64["pd"]}).dtype == np.float64


@pytest.mark.parametrize("sequence", ALL)
def test_shapes_give_identical_per_voxel_values(sequence: str) -> None:
    flat = brain((60,))
    ref = run(sequence, flat)
    for shape in ((60,), (3, 4, 5), (2, 5, 3, 2), (1, 60, 1)):
        out = run(sequence, {k: v.reshape(shape) for k, v in flat.items()})
        assert out.shape == shape
        np.testing.assert_array_equal(out.reshape(-1), ref)
    # a voxel alone gives the value it has in the batch
    for i in (0, 17, 59):
        alone = run(sequence, {k: v[i : i + 1] for k, v in flat.items()})
        np.testing.assert_allclose(alone, ref[i : i + 1], rtol=1e-14)


@pytest.mark.parametrize("sequence", ALL)
def test_chunked_evaluation_equals_unchunked(sequence: str, monkeypatch: pytest.MonkeyPatch) -> None:
    maps = brain((4, 5, 6))
    whole = run(sequence, maps)
    monkeypatch.setattr(backend, "CPU_CHUNK_VOXELS", 7)  # 120 voxels: 17 full chunks and a ragged one
    chunked = run(sequence, maps)
    np.testing.assert_allclose(chunked, whole, rtol=1e-13)  # SIMD tails may round the last bit differently
    assert not np.array_equal(run(sequence, {**maps, "pd": maps["pd"][::-1].copy()}), whole)


# -------------------------------------------------------------------------------------------- purity
@pytest.mark.parametrize("sequence", ALL)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_inputs_are_never_modified(sequence: str, kind: str) -> None:
    maps = brain()
    maps["b1r"] = np.full((3, 4, 5), 1.3)
    if kind == "torch":
        maps = {k: torch.from_numpy(v) for k, v in maps.items()}
    copies = {k: v.copy() if kind == "numpy" else v.clone() for k, v in maps.items()}
    mask = np.ones((3, 4, 5), dtype=bool)
    run(sequence, maps, snr=20.0, seed=1, reference=mask if kind == "numpy" else torch.from_numpy(mask))
    run(sequence, maps)
    for k in maps:
        np.testing.assert_array_equal(np.asarray(maps[k]), np.asarray(copies[k]), err_msg=k)
    assert mask.all()


# --------------------------------------------------------------------------------------------- fields
@pytest.mark.parametrize("sequence", ALL)
def test_scalar_b1t_equals_uniform_volume(sequence: str) -> None:
    maps = brain()
    for value in (0.85, np.float64(1.15), np.array(1.15)):
        volume = run(sequence, {**maps, "b1t": np.full((3, 4, 5), float(value))})
        np.testing.assert_allclose(run(sequence, {**maps, "b1t": value}), volume, rtol=1e-13)
    no_field = {k: v for k, v in maps.items() if k != "b1t"}
    np.testing.assert_allclose(run(sequence, no_field), run(sequence, {**maps, "b1t": 1.0}), rtol=1e-13)


@pytest.mark.parametrize("sequence", ALL)
def test_b1t_changes_the_signal(sequence: str) -> None:
    maps = brain()
    # 0.8 vs 1.0, not 0.8 vs 1.2: a spin echo's sin(a) sin^2(b/2) is symmetric about b1t = 1
    lo, hi = run(sequence, {**maps, "b1t": 0.8}), run(sequence, {**maps, "b1t": 1.0})
    assert np.all(lo != hi)
    assert np.median(np.abs(lo - hi) / np.abs(hi)) > 1e-3


@pytest.mark.parametrize("sequence", ALL)
def test_b1r_multiplies(sequence: str) -> None:
    maps = brain()
    b1r = np.random.default_rng(3).uniform(0.5, 1.5, (3, 4, 5))
    if sequence == "mp2rage":  # UNI is a ratio of two images from one coil: the receive field cancels
        np.testing.assert_array_equal(run(sequence, {**maps, "b1r": b1r}), run(sequence, maps))
        return
    np.testing.assert_allclose(run(sequence, {**maps, "b1r": b1r}), run(sequence, maps) * b1r, rtol=1e-14)
    np.testing.assert_allclose(run(sequence, {**maps, "b1r": 2.0}), 2.0 * run(sequence, maps), rtol=1e-14)


def test_noisy_mp2rage_adds_noise_to_both_trains() -> None:
    """Noise enters S1 and S2 before the ratio: noise-only voxels give UNI spread over [-0.5, 0.5]."""
    n = 20000
    maps = {"pd": np.r_[np.zeros(n), np.full(n, 0.8)], "r1": np.full(2 * n, 1.0), "r2s": np.full(2 * n, 20.0)}
    params = {"tr": 5.0, "ti": 0.7, "ti2": 2.5, "tx": 0.0071, "te": 0.003, "flip": 4.0, "flip2": 5.0, "n": 176}
    clean = simulate("mp2rage", maps, **params)
    noisy = simulate("mp2rage", maps, snr=40.0, seed=3, **params)
    np.testing.assert_array_equal(noisy, simulate("mp2rage", maps, snr=40.0, seed=3, **params))
    background, tissue = noisy[:n], noisy[n:]
    assert np.all(np.abs(noisy) <= 0.5 + 1e-12)
    assert background.std() > 0.25  # Re(z1* z2)/(|z1|²+|z2|²) of pure noise: std ~ 0.35
    assert abs(np.median(tissue) - clean[n]) < 0.01 and tissue.std() < 0.05


@pytest.mark.parametrize("sequence", ALL)
def test_mt_only_affects_gre(sequence: str) -> None:
    maps = brain()
    without = {k: v for k, v in maps.items() if k != "mt"}
    same = np.array_equal(run(sequence, maps), run(sequence, without))
    assert same == (sequence != "gre")
    if sequence == "gre":
        # saturating Mz by d before each pulse at a large flip lowers the signal
        assert np.all(run(sequence, maps) < run(sequence, without))
        zero = {**maps, "mt": np.zeros((3, 4, 5))}
        np.testing.assert_array_equal(run(sequence, zero), run(sequence, without))


@pytest.mark.parametrize("sequence", ["fse", "flair"])
def test_missing_r2_falls_back_to_r2s_with_a_warning(sequence: str) -> None:
    maps = brain()
    without = {k: v for k, v in maps.items() if k != "r2"}
    with pytest.warns(UserWarning, match=f"{sequence}: no R2 map; using R2\\* in its place"):
        fallback = run(sequence, without)
    np.testing.assert_array_equal(fallback, run(sequence, {**maps, "r2": maps["r2s"]}))
    assert not np.allclose(fallback, run(sequence, maps))


@pytest.mark.parametrize("sequence", ["gre", "mprage", "mp2rage"])
def test_gradient_echoes_need_no_r2(sequence: str, recwarn: pytest.WarningsRecorder) -> None:
    maps = brain()
    without = {k: v for k, v in maps.items() if k != "r2"}
    np.testing.assert_array_equal(run(sequence, without), run(sequence, maps))
    assert not [w for w in recwarn if "R2" in str(w.message)]


def test_mp2rage_uni_range_and_simple_values() -> None:
    out = run("mp2rage", brain((200,)))
    assert np.all(out >= -0.5) and np.all(out <= 0.5)
    assert np.ptp(out) > 0.05  # R1 from 0.25 to 1.5 1/s spreads the contrast


def test_gre_ernst_relation() -> None:
    """Independent of the closed form: at the Ernst angle the GRE signal is maximal over the flip."""
    tr, r1 = 0.02, 1.0
    ernst = math.degrees(math.acos(math.exp(-r1 * tr)))
    maps = {"pd": np.ones(3), "r1": np.full(3, r1), "r2s": np.zeros(3)}
    s = [float(simulate("gre", maps, tr=tr, te=0.001, flip=f)[0]) for f in (ernst - 1, ernst, ernst + 1)]
    assert s[1] > s[0] and s[1] > s[2]


# --------------------------------------------------------------------------------------------- errors
BAD_PARAMS = [
    ("gre", {"tr": 0.01, "te": 0.01, "flip": 10.0}, r"gre: TE \(0.01 s\) must be shorter than TR \(0.01 s\)"),
    ("fse", {"tr": 0.1, "te": 0.2}, r"fse: TE \(0.2 s\) must be shorter than TR \(0.1 s\)"),
    ("flair", {"tr": 2.0, "te": 0.1, "ti": 2.0}, r"flair: TI \(2 s\) must be shorter than TR \(2 s\)"),
    ("flair", {"tr": 2.0, "te": 0.1, "ti": 3.0}, r"flair: TI \(3 s\) must be shorter than TR"),
    ("flair", {"tr": 2.0, "te": 0.2, "ti": 1.9}, r"flair: TI \+ TE \(2.1 s\) must be shorter than TR \(2 s\)"),
    ("gre", {"tr": 0.0, "te": 0.001, "flip": 10.0}, r"gre: TR must be > 0 s, got 0"),
    ("gre", {"tr": -1.0, "te": 0.001, "flip": 10.0}, r"gre: TR must be > 0 s, got -1"),
    ("fse", {"tr": 1.0, "te": 0.0}, r"fse: TE must be > 0 s, got 0"),
    ("fse", {"tr": 1.0, "te": -0.01}, r"fse: TE must be > 0 s, got -0.01"),
    ("gre", {"tr": 0.02, "te": 0.004, "flip": 0.0}, r"gre: flip angle must be > 0 degrees, got 0"),
    ("gre", {"tr": 0.02, "te": 0.004, "flip": -5.0}, r"gre: flip angle must be > 0 degrees, got -5"),
    ("mp2rage", {**PARAMS["mp2rage"], "flip2": 0.0}, r"mp2rage: second flip angle must be > 0 degrees, got 0"),
    ("flair", {"tr": 9.0, "te": 0.1, "ti": 0.0}, r"flair: TI must be > 0 s, got 0"),
    ("mprage", {**PARAMS["mprage"], "tx": 0.0}, r"mprage: TX must be > 0 s, got 0"),
    ("mprage", {**PARAMS["mprage"], "ti": 0.5}, r"mprage: TI \(0.5 s\) is shorter than the 88 readout pulses .*TA = "
                                                r"-0.1248 s < 0"),
    ("mprage", {**PARAMS["mprage"], "tr": 1.5}, r"mprage: TR \(1.5 s\) ends before the readout does \(TD = .* < 0\)"),
    ("mprage", {**PARAMS["mprage"], "te": 0.0071}, r"mprage: TE \(0.0071 s\) must be shorter than the pulse spacing "
                                                   r"TX \(0.0071 s\)"),
    ("mprage", {**PARAMS["mprage"], "n": 17.5}, r"mprage: the number of readout pulses n must be an integer >= 1"),
    ("mprage", {**PARAMS["mprage"], "n": 0}, r"mprage: the number of readout pulses n must be an integer >= 1"),
    ("mprage", {**PARAMS["mprage"], "eta": 1.5}, r"mprage: inversion efficiency eta must be in \[0, 1\], got 1.5"),
    ("mp2rage", {**PARAMS["mp2rage"], "ti2": 1.5}, r"mp2rage: TI2 - TI \(0.8 s\) is shorter than one readout train "
                                                   r"\(1.2496 s\)"),
    ("mp2rage", {**PARAMS["mp2rage"], "tr": 3.0}, r"mp2rage: TR \(3 s\) ends before the readout does"),
    ("gre", {"tr": float("nan"), "te": 0.004, "flip": 10.0}, r"gre: tr must be a finite number"),
    ("gre", {"tr": 0.02, "te": 0.004, "flip": float("inf")}, r"gre: flip must be a finite number"),
    ("gre", {"tr": 0.02, "te": "0.004", "flip": 10.0}, r"gre: te must be a finite number"),
    ("gre", {"tr": 0.02, "te": 0.004}, r"gre: missing parameter\(s\) flip"),
    ("mprage", {"tr": 2.3, "te": 0.003}, r"mprage: missing parameter\(s\) ti, tx, flip, n"),
    ("gre", {"tr": 0.02, "te": 0.004, "flip": 10.0, "ti": 1.0}, r"gre: unknown parameter\(s\) ti; it takes tr, te, "
                                                                r"flip"),
    ("fse", {"tr": 1.0, "te": 0.1, "eta": 1.0}, r"fse: unknown parameter\(s\) eta"),
    ("epi", {"tr": 1.0, "te": 0.1}, r"unknown sequence 'epi'; choose one of gre, fse, flair, mprage, mp2rage"),
]


@pytest.mark.parametrize(("sequence", "params", "message"), BAD_PARAMS)
def test_invalid_parameters_raise_parameter_error(sequence: str, params: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        check_parameters(sequence, params)
    with pytest.raises(ParameterError, match=message):
        simulate(sequence, brain((2,)), **params)


def test_parameter_error_is_a_value_error_and_valid_parameters_pass() -> None:
    assert issubclass(ParameterError, ValueError)
    for sequence, params in PARAMS.items():
        full = check_parameters(sequence, params)
        assert {k: full[k] for k in params} == params
    assert check_parameters("mprage", PARAMS["mprage"])["eta"] == 1.0
    assert isinstance(check_parameters("mprage", {**PARAMS["mprage"], "n": 176.0})["n"], int)


BAD_MAPS = [
    (lambda m: {**m, "r1": m["r1"][:2]}, r"map 'r1' has shape \(2, 4, 5\), but 'pd' has \(3, 4, 5\); maps must "
                                         r"share one grid"),
    (lambda m: {**m, "b1t": m["b1t"].reshape(60)}, r"map 'b1t' has shape \(60,\), but 'pd' has \(3, 4, 5\)"),
    (lambda m: {**m, "b1r": np.ones((3, 4))}, r"map 'b1r' has shape \(3, 4\)"),
    (lambda m: {k: v for k, v in m.items() if k != "r2s"}, r"map set lacks r2s \(needs pd, r1, r2s\)"),
    (lambda m: {k: v for k, v in m.items() if k not in ("pd", "r1")}, r"map set lacks pd, r1"),
    (lambda m: {**m, "t1": m["r1"]}, r"unknown map\(s\) t1; known: pd, r1, r2s, mt, r2, b1t, b1r"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_MAPS)
@pytest.mark.parametrize("sequence", ["gre", "flair"])
def test_bad_maps_raise_input_error(sequence: str, edit, message: str) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=message):
        run(sequence, edit(brain()))


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sequence", ALL)
def test_cuda_equals_cpu(sequence: str) -> None:
    maps = brain((8, 8, 8))
    cpu = run(sequence, maps)
    on_gpu = run(sequence, maps, device="cuda")  # numpy in: computed on the GPU, numpy out
    assert isinstance(on_gpu, np.ndarray)
    np.testing.assert_allclose(on_gpu, cpu, rtol=1e-12, atol=1e-15)
    tmaps = {k: torch.from_numpy(v).to("cuda", torch.float32) for k, v in maps.items()}
    tout = run(sequence, tmaps)
    assert tout.device.type == "cuda" and tout.dtype == torch.float32
    np.testing.assert_allclose(tout.cpu().numpy(), cpu, rtol=2e-4, atol=1e-6)
    noisy_a = run(sequence, tmaps, snr=10.0, seed=5)
    noisy_b = run(sequence, tmaps, snr=10.0, seed=5)
    assert torch.equal(noisy_a, noisy_b)


@pytest.mark.parametrize("b1t", [None, 0.9])
@pytest.mark.parametrize("params", [PARAMS["mp2rage"], {**PARAMS["mp2rage"], "n": 1, "eta": 0.96}])
def test_mp2rage_lookup_matches_the_float64_equation(params: dict, b1t: float | None) -> None:
    """float32 UNI comes from the R1 table (CPU); it agrees with the float64 (Bloch-checked) equation to 2e-7,
    closer than the direct float32 evaluation (~3e-5); R1 = 0 and PD = 0 give 0; R1 beyond the table falls back."""
    from qmricore.physics import sequences

    rng = np.random.default_rng(5)
    r1 = rng.uniform(0.0, sequences.UNI_TABLE_R1_MAX, 4000).astype(np.float32)
    r1[:3] = [0.0, 1e-4, np.nextafter(np.float32(sequences.UNI_TABLE_R1_MAX), 0)]
    maps = {"pd": rng.uniform(0.5, 1.0, 4000).astype(np.float32), "r1": r1,
            "r2s": rng.uniform(5, 30, 4000).astype(np.float32)}
    maps["pd"][3] = 0.0
    if b1t is not None:
        maps["b1t"] = b1t
    key = tuple(params[k] for k in ("tr", "ti", "ti2", "tx", "flip", "flip2", "n")) + (b1t, params.get("eta", 1.0))
    assert sequences._uni_table64(*key) is not None
    exact = simulate("mp2rage", {k: np.float64(v) if np.isscalar(v) else v.astype(np.float64)
                                 for k, v in maps.items()}, **params)
    got = simulate("mp2rage", maps, **params)
    assert got.dtype == np.float32 and got[0] == 0 and got[3] == 0
    assert np.abs(got - exact).max() < 2e-7
    beyond = {k: np.append(maps[k], value).astype(np.float32)
              for k, value in (("pd", 1.0), ("r1", sequences.UNI_TABLE_R1_MAX), ("r2s", 10.0))}
    field = None if b1t is None else torch.tensor(b1t, dtype=torch.float32)  # as simulate() converts it
    direct = sequences.mp2rage_uni(*(torch.from_numpy(beyond[k]) for k in ("pd", "r1", "r2s")), b1t=field, **params)
    np.testing.assert_array_equal(simulate("mp2rage", {**beyond, "b1t": b1t}, **params), direct.numpy())
