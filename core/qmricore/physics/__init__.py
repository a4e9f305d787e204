"""MRI signal simulation from quantitative maps (SPEC §4).

The public entry point is :func:`simulate`; the pure per-sequence equations live in
:mod:`qmricore.physics.sequences`, the receive field and noise in :mod:`.noise`, and the field-strength
re-scaling in :mod:`.field_strength`; CPMG multi-echo trains by extended phase graphs are :func:`cpmg`
(:mod:`.epg`).

>>> image = simulate("flair", {"pd": pd, "r1": r1, "r2s": r2s}, tr=9.0, te=0.1, ti=2.5)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError, ParameterError
from . import sequences
from ._backend import ArrayLike, compute_dtype, evaluate_chunked, like_input, to_tensor
from .epg import cpmg
from .field_strength import rescale_field_strength
from .noise import noise_sigma, rician_noise

__all__ = ["SEQUENCES", "SequenceSpec", "PARAMETER_BOUNDS", "simulate", "check_parameters", "rescale_field_strength",
           "noise_sigma", "rician_noise", "sequences", "cpmg"]

MAP_KEYS = ("pd", "r1", "r2s", "mt", "r2", "b1t", "b1r")
REQUIRED_MAPS = ("pd", "r1", "r2s")


@dataclass(frozen=True)
class SequenceSpec:
    """What :func:`simulate` needs to know about one sequence.

    ``parameters`` are required keyword arguments (seconds, degrees, counts); ``defaults`` are optional
    ones with their values; ``maps`` are the map keys the equation reads besides ``pd`` and ``r1``.
    """

    name: str
    title: str
    parameters: tuple[str, ...]
    maps: tuple[str, ...]
    equation: Callable[..., Any]
    defaults: Mapping[str, float] | None = None


SEQUENCES: dict[str, SequenceSpec] = {
    s.name: s
    for s in (
        SequenceSpec("gre", "Spoiled gradient echo (SPGR/FLASH)", ("tr", "te", "flip"), ("r2s", "mt"), sequences.spgr),
        SequenceSpec("fse", "Fast spin echo (single echo at effective TE)", ("tr", "te"), ("r2",), sequences.spin_echo),
        SequenceSpec("flair", "FLAIR / inversion-recovery spin echo", ("tr", "te", "ti"), ("r2",), sequences.flair),
        SequenceSpec("mprage", "MPRAGE", ("tr", "ti", "tx", "te", "flip", "n"), ("r2s",), sequences.mprage,
                     {"eta": 1.0}),
        SequenceSpec("mp2rage", "MP2RAGE uniform image (UNI)", ("tr", "ti", "ti2", "tx", "te", "flip", "flip2", "n"),
                     ("r2s",), sequences.mp2rage_uni_lookup, {"eta": 1.0}),
    )
}


#: What a scanner can do, per sequence parameter: ``(lowest, highest, unit)``; lowest is exclusive (every
#: time and angle must be > 0), highest inclusive.  The one table of bounds: :func:`check_parameters` (so the
#: CLI, presets and Slicer) enforces it, the training samplers' ranges are checked against it
#: (:mod:`qmricore.generators.qsynth`) and the Slicer sliders stay inside it.  A time above its bound that
#: would fit once divided by 1000 gets a "looks like milliseconds" hint (the interface is seconds).
PARAMETER_BOUNDS: dict[str, tuple[float, float, str]] = {
    "tr": (0.0, 20.0, "s"),
    "te": (0.0, 3.0, "s"),  # the FSE training sampler reaches 3 s (SPEC §5)
    "ti": (0.0, 10.0, "s"),
    "ti2": (0.0, 10.0, "s"),
    "tx": (0.0, 0.1, "s"),
    "flip": (0.0, 180.0, "degrees"),
    "flip2": (0.0, 180.0, "degrees"),
}


def _check_bound(sequence: str, key: str, value: float) -> None:
    low, high, unit = PARAMETER_BOUNDS[key]
    name = "flip angle" if key == "flip" else "second flip angle" if key == "flip2" else key.upper()
    if not value > low:
        raise ParameterError(f"{sequence}: {name} must be > {low:g} {unit}, got {value:g}")
    if value > high:
        hint = ""
        if unit == "s" and low < value / 1000.0 <= high:
            hint = f"; {value:g} looks like milliseconds: times are in seconds ({value / 1000.0:g} s)"
        raise ParameterError(f"{sequence}: {name} = {value:g} {unit} is beyond what a scanner uses "
                             f"(at most {high:g} {unit}){hint}")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ParameterError(message)


def check_parameters(sequence: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate sequence parameters and return them complete (defaults filled in).

    Raises :class:`~qmricore.errors.ParameterError` (a ``ValueError``) naming the problem: unknown or
    missing parameters, non-finite values, values outside :data:`PARAMETER_BOUNDS` (TR/TE/TI/TX <= 0 or beyond
    what a scanner uses, with a hint when a time looks like milliseconds; flip <= 0 or > 180 degrees), and
    infeasible timings (TE >= TR, TI + TE >= TR, MPRAGE TA < 0 or TD < 0, TE >= TX).
    """
    spec = SEQUENCES.get(sequence)
    if spec is None:
        raise ParameterError(f"unknown sequence {sequence!r}; choose one of {', '.join(SEQUENCES)}")
    defaults = dict(spec.defaults or {})
    unknown = sorted(set(params) - set(spec.parameters) - set(defaults))
    _need(not unknown,
          f"{sequence}: unknown parameter(s) {', '.join(unknown)}; it takes {', '.join(spec.parameters)}")
    missing = [p for p in spec.parameters if params.get(p) is None]
    _need(not missing, f"{sequence}: missing parameter(s) {', '.join(missing)}")
    p = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    for key, value in p.items():
        _need(isinstance(value, (int, float)) and math.isfinite(value), f"{sequence}: {key} must be a finite number")
    for key in PARAMETER_BOUNDS:
        if key in p:
            _check_bound(sequence, key, p[key])
    if "eta" in p:
        _need(0 <= p["eta"] <= 1, f"{sequence}: inversion efficiency eta must be in [0, 1], got {p['eta']:g}")

    tr, te = p["tr"], p["te"]
    if sequence in ("gre", "fse"):
        _need(te < tr, f"{sequence}: TE ({te:g} s) must be shorter than TR ({tr:g} s)")
    elif sequence == "flair":
        _need(p["ti"] < tr, f"flair: TI ({p['ti']:g} s) must be shorter than TR ({tr:g} s)")
        _need(p["ti"] + te < tr, f"flair: TI + TE ({p['ti'] + te:g} s) must be shorter than TR ({tr:g} s)")
    else:
        n = p["n"]
        _need(not isinstance(n, bool) and float(n).is_integer() and n >= 1,
              f"{sequence}: the number of readout pulses n must be an integer >= 1")
        p["n"] = n = int(n)
        tx, k = p["tx"], sequences.centre_index(n)
        _need(te < tx, f"{sequence}: TE ({te:g} s) must be shorter than the pulse spacing TX ({tx:g} s)")
        ta = p["ti"] - (k - 1) * tx
        _need(ta >= 0, f"{sequence}: TI ({p['ti']:g} s) is shorter than the {k - 1} readout pulses before the "
                       f"k-space centre take (TA = {ta:g} s < 0)")
        last_ti = p["ti2"] if sequence == "mp2rage" else p["ti"]
        if sequence == "mp2rage":
            tb = p["ti2"] - p["ti"] - n * tx
            _need(tb >= 0, f"mp2rage: TI2 - TI ({p['ti2'] - p['ti']:g} s) is shorter than one readout train "
                           f"({n * tx:g} s)")
        td = tr - last_ti - (n - k + 1) * tx
        _need(td >= 0, f"{sequence}: TR ({tr:g} s) ends before the readout does (TD = {td:g} s < 0)")
    return p


def _check_map(key: str, value: Any, shape: tuple[int, ...]) -> None:
    vshape = tuple(getattr(value, "shape", ()))
    if key in ("b1t", "b1r") and vshape == ():
        return  # a uniform field given as a scalar
    if shape is not None and vshape != shape:
        raise InputError(f"map '{key}' has shape {vshape}, but 'pd' has {shape}; maps must share one grid")


def simulate(
    sequence: str,
    maps: Mapping[str, ArrayLike],
    *,
    snr: float | None = None,
    seed: int | None = None,
    reference: ArrayLike | None = None,
    device: torch.device | str | None = None,
    **params: float,
) -> ArrayLike:
    """Simulate one sequence from a map set; the noise-free magnitude unless ``snr`` is given.

    Parameters
    ----------
    sequence
        One of ``"gre", "fse", "flair", "mprage", "mp2rage"`` (see :data:`SEQUENCES`).
    maps
        Tissue maps and fields of one shape: ``pd``, ``r1`` (1/s), ``r2s`` (1/s) required; optional
        ``mt`` (percent), ``r2`` (1/s; spin-echo sequences fall back to ``r2s`` with a warning),
        ``b1t`` and ``b1r`` (ratios; volumes or scalars).  numpy arrays or torch tensors.
    snr, seed, reference
        Rician noise at this SNR relative to the mean signal in the boolean ``reference`` mask
        (default: voxels above 10 % of the maximum), drawn from a generator seeded with ``seed``.
    device
        Where to compute; by default where ``maps['pd']`` lives (numpy: the CPU).
    **params
        Sequence parameters in seconds and degrees: ``tr, te, ti, flip, tx, n`` (and ``ti2, flip2`` for
        MP2RAGE, ``eta`` for the inversion efficiency of MPRAGE/MP2RAGE).

    Returns
    -------
    The simulated image, numpy when ``maps['pd']`` is numpy, else a tensor; float64 when any map is
    float64, else float32.  MP2RAGE returns the UNI image in [-0.5, 0.5]: the receive field cancels in it,
    and with ``snr`` the noise is added to both complex train images before the ratio (so the background
    shows the usual salt-and-pepper UNI noise).
    """
    p = check_parameters(sequence, params)
    spec = SEQUENCES[sequence]
    missing = [k for k in REQUIRED_MAPS if maps.get(k) is None]
    if missing:
        raise InputError(f"map set lacks {', '.join(missing)} (needs pd, r1, r2s)")
    unknown = sorted(set(maps) - set(MAP_KEYS))
    if unknown:
        raise InputError(f"unknown map(s) {', '.join(unknown)}; known: {', '.join(MAP_KEYS)}")
    shape = tuple(maps["pd"].shape)
    present = {k: v for k, v in maps.items() if v is not None}
    for key, value in present.items():
        _check_map(key, value, shape)

    template = maps["pd"]
    dtype = compute_dtype(*present.values())
    if device is None:
        device = template.device if isinstance(template, torch.Tensor) else "cpu"
    t = {k: to_tensor(v, dtype, device) for k, v in present.items()}

    volumes: dict[str, torch.Tensor | None] = {"pd": t["pd"], "r1": t["r1"], "b1t": t.get("b1t")}
    if "r2" in spec.maps:
        if "r2" not in t:
            warnings.warn(f"{sequence}: no R2 map; using R2* in its place (spin-echo contrast will be too "
                          "T2*-weighted)", stacklevel=2)
        volumes["r2"] = t.get("r2", t["r2s"])
    else:
        volumes["r2s"] = t["r2s"]
    if "mt" in spec.maps:
        volumes["mt"] = t.get("mt")

    generator = None
    if snr is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed)) if seed is not None else generator.seed()
    ref = None if reference is None else to_tensor(reference, torch.bool, device)

    if sequence == "mp2rage" and snr is not None:
        return like_input(_noisy_uni(t, p, snr, ref, generator), template)
    out = torch.empty(shape, dtype=dtype, device=device)
    evaluate_chunked(spec.equation, volumes, out, **p)
    if sequence == "mp2rage":  # UNI is a ratio of the two trains: the receive field cancels
        return like_input(out, template)
    if "b1r" in t:
        out = out * t["b1r"]
    if snr is not None:
        out = rician_noise(out, noise_sigma(out, snr, ref), generator)
    return like_input(out, template)


def _noisy_uni(t: Mapping[str, torch.Tensor], p: Mapping[str, Any], snr: float, reference: torch.Tensor | None,
               generator: torch.Generator) -> torch.Tensor:
    """MP2RAGE UNI from noisy complex train images: noise enters both inversions before the ratio.

    ``sigma`` is set from ``snr`` relative to the second-inversion magnitude ``|S2|`` (the brighter one).
    """
    s1, s2, _ = sequences.mp2rage(t["pd"], t["r1"], t["r2s"], b1t=t.get("b1t"), **p)
    if "b1r" in t:
        s1, s2 = s1 * t["b1r"], s2 * t["b1r"]
    sigma = noise_sigma(s2.abs(), snr, reference)

    def noisy(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts of ``s + noise`` (complex Gaussian noise, one draw per call)."""
        noise = torch.randn((2, *s.shape), generator=generator, dtype=s.dtype, device=s.device) * sigma
        return noise[0].add_(s), noise[1]

    # Re(conj(z1) z2) / (|z1|^2 + |z2|^2) in real arithmetic: no complex temporaries.
    (x1, y1), (x2, y2) = noisy(s1), noisy(s2)
    denom = torch.mul(x1, x1).addcmul_(y1, y1).addcmul_(x2, x2).addcmul_(y2, y2)
    return torch.mul(x1, x2).addcmul_(y1, y2).div_(denom.clamp_(min=torch.finfo(denom.dtype).tiny))
