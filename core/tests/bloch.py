"""A discrete-event Bloch simulator, written from first principles, to check :mod:`qmricore.physics`.

It shares no code and no formula with ``qmricore``: it never writes down a signal equation.  A sequence is
a list of events (RF rotations, free relaxation, crusher gradients, ideal spoiling, MT saturation,
recording the echo).  Each event is an affine map of the magnetisation; one repetition is their
composition ``M -> A M + b``, and the steady state is found exactly by solving ``(I - A) M = b``.
Then one repetition is replayed from the steady state and the recorded signals are read.

Magnetisation model
-------------------
Each voxel holds an ensemble of ``N`` isochromats, each a 3-vector (Mx, My, Mz) with equilibrium
(0, 0, PD).  A crusher gradient of order ``k`` rotates isochromat ``j`` about z by ``k * 2 pi j / N``,
so a coherence of order ``m`` (phase ``m * 2 pi j / N``) averages to exactly zero over the ensemble
unless ``m`` is a multiple of ``N``.  This is how the refocused (spin-echo) part of the transverse
magnetisation is separated from the free-induction decays and the non-refocused part: with crushers of
equal area on both sides of a refocusing pulse, only the refocused part is phase-coherent at the echo.
The recorded signal is the complex ensemble mean ``<Mx + i My>``.

Ideal spoiling destroys every coherence: the transverse components are zeroed and the longitudinal
components are replaced by their ensemble mean (a longitudinal modulation left by a refocusing pulse
is dephasing too; ideal gradient + RF spoiling removes it).  This makes ``I - A`` invertible.

Units: times in seconds, rates in 1/s, angles in degrees.  All arrays are float64 and batched over
voxels (any leading shape, flattened here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_ISO = 4  # isochromats per voxel; >= 3 cancels the coherence orders 1 and 2 that occur here


# ----------------------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Pulse:
    """Instantaneous RF rotation about x by ``b1t * degrees`` (or exactly ``degrees`` if not ``scaled``)."""

    degrees: float
    scaled: bool = True


@dataclass(frozen=True)
class Relax:
    """Free relaxation over ``t`` seconds: Mz -> PD + (Mz - PD) exp(-R1 t), Mxy -> Mxy exp(-R t).

    ``transverse`` names the tissue rate that decays Mxy: ``"r2"`` (spin echoes) or ``"r2s"`` (gradient echoes).
    """

    t: float
    transverse: str = "r2s"


@dataclass(frozen=True)
class Crush:
    """Crusher gradient: isochromat j precesses by ``order * 2 pi j / N``."""

    order: int = 1


@dataclass(frozen=True)
class Spoil:
    """Ideal spoiling: every coherence destroyed (Mxy = 0, Mz -> ensemble mean)."""


@dataclass(frozen=True)
class Saturate:
    """Scale Mz by a per-voxel factor: ``"mt"`` gives 1 - mt/100 (MT pulse), a float gives that factor."""

    factor: str | float


@dataclass(frozen=True)
class Record:
    """Record the complex ensemble-mean transverse magnetisation under ``name``."""

    name: str


Event = Pulse | Relax | Crush | Spoil | Saturate | Record


# ---------------------------------------------------------------------------------------- event matrices
def _dim(n_iso: int) -> int:
    return 3 * n_iso + 1  # homogeneous coordinates: the last entry is 1


def _eye(v: int, n_iso: int) -> np.ndarray:
    return np.broadcast_to(np.eye(_dim(n_iso)), (v, _dim(n_iso), _dim(n_iso))).copy()


def _matrix(event: Event, tissue: Mapping[str, np.ndarray], n_iso: int) -> np.ndarray:
    """Homogeneous (V, D, D) matrix of one event for every voxel."""
    v = tissue["pd"].shape[0]
    m = _eye(v, n_iso)
    ix = [3 * j for j in range(n_iso)]
    iy = [3 * j + 1 for j in range(n_iso)]
    iz = [3 * j + 2 for j in range(n_iso)]
    last = _dim(n_iso) - 1
    if isinstance(event, Pulse):
        theta = np.deg2rad(event.degrees) * (tissue["b1t"] if event.scaled else np.ones(v))
        c, s = np.cos(theta), np.sin(theta)
        for y, z in zip(iy, iz, strict=True):
            # rotation about x: (My, Mz) -> (c My + s Mz, -s My + c Mz)
            m[:, y, y], m[:, y, z] = c, s
            m[:, z, y], m[:, z, z] = -s, c
    elif isinstance(event, Relax):
        e1 = np.exp(-tissue["r1"] * event.t)
        e2 = np.exp(-tissue[event.transverse] * event.t)
        for x, y, z in zip(ix, iy, iz, strict=True):
            m[:, x, x] = e2
            m[:, y, y] = e2
            m[:, z, z] = e1
            m[:, z, last] = tissue["pd"] * (1.0 - e1)
    elif isinstance(event, Crush):
        for j, (x, y) in enumerate(zip(ix, iy, strict=True)):
            phi = event.order * 2.0 * np.pi * j / n_iso
            c, s = np.cos(phi), np.sin(phi)
            m[:, x, x], m[:, x, y] = c, -s
            m[:, y, x], m[:, y, y] = s, c
    elif isinstance(event, Spoil):
        for x, y, z in zip(ix, iy, iz, strict=True):
            m[:, x, x] = 0.0
            m[:, y, y] = 0.0
            m[:, z, z] = 0.0
            for z2 in iz:
                m[:, z, z2] = 1.0 / n_iso
    elif isinstance(event, Saturate):
        f = 1.0 - 0.01 * tissue["mt"] if event.factor == "mt" else np.full(v, float(event.factor))
        for z in iz:
            m[:, z, z] = f
    elif isinstance(event, Record):
        pass
    else:  # pragma: no cover - programming error
        raise TypeError(f"unknown event {event!r}")
    return m


def _signal(state: np.ndarray, n_iso: int) -> np.ndarray:
    mx = state[:, 0 : 3 * n_iso : 3].mean(axis=1)
    my = state[:, 1 : 3 * n_iso : 3].mean(axis=1)
    return mx + 1j * my


def run(events: Sequence[Event], tissue: Mapping[str, np.ndarray], n_iso: int = N_ISO) -> dict[str, np.ndarray]:
    """Steady-state signals of a repeated event list.

    Parameters
    ----------
    events
        One repetition (it must contain a :class:`Spoil` so the steady state is unique).
    tissue
        Per-voxel arrays of one shape: ``pd``, ``r1`` (1/s), ``r2`` and/or ``r2s`` (1/s), ``b1t``,
        optional ``mt`` (percent).
    n_iso
        Isochromats per voxel.

    Returns
    -------
    ``{name: complex array}`` of every :class:`Record`, plus ``"mz:<name>"``, the ensemble-mean Mz at the
    moment of recording, each of the input shape.
    """
    shape = np.shape(tissue["pd"])
    flat = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in tissue.items()}
    flat.setdefault("b1t", np.ones_like(flat["pd"]))
    mats = [_matrix(e, flat, n_iso) for e in events]
    total = _eye(flat["pd"].shape[0], n_iso)
    for m in mats:
        total = m @ total
    d = _dim(n_iso) - 1
    a, b = total[:, :d, :d], total[:, :d, d]
    steady = np.linalg.solve(np.eye(d) - a, b[..., None])[..., 0]
    state = np.concatenate([steady, np.ones((steady.shape[0], 1))], axis=1)
    out: dict[str, np.ndarray] = {}
    for e, m in zip(events, mats, strict=True):
        state = np.einsum("vij,vj->vi", m, state)
        if isinstance(e, Record):
            out[e.name] = _signal(state, n_iso).reshape(shape)
            out["mz:" + e.name] = state[:, 2 : 3 * n_iso : 3].mean(axis=1).reshape(shape)
    # the replayed repetition must come back to where it started: the steady state is a fixed point
    np.testing.assert_allclose(state[:, :d], steady, rtol=1e-9, atol=1e-12 * np.abs(flat["pd"]).max())
    return out


# --------------------------------------------------------------------------------------------- sequences
def spoiled_gre(tr: float, te: float, flip: float, mt: bool = False) -> list[Event]:
    """(MT pulse,) excitation, echo at TE (R2* decay), relax to TR, spoil."""
    pre: list[Event] = [Saturate("mt")] if mt else []
    return [*pre, Pulse(flip), Relax(te, "r2s"), Record("echo"), Relax(tr - te, "r2s"), Spoil()]


def _spin_echo_part(te: float) -> list[Event]:
    """90 excitation, crusher, TE/2, 180 refocusing, crusher, TE/2, echo (R2 decay)."""
    return [Pulse(90.0), Crush(1), Relax(te / 2, "r2"), Pulse(180.0), Crush(1), Relax(te / 2, "r2"), Record("echo")]


def spin_echo(tr: float, te: float) -> list[Event]:
    """Single spin echo: excitation to excitation is TR; spoiled at the end of TR."""
    return [*_spin_echo_part(te), Relax(tr - te, "r2"), Spoil()]


def inversion(eta: float = 1.0) -> list[Event]:
    """Inversion pulse (rotation by b1t 180 deg), efficiency ``eta`` scaling Mz, spoiler after it."""
    return [Pulse(180.0), *([Saturate(eta)] if eta != 1.0 else []), Spoil()]


def flair(tr: float, te: float, ti: float) -> list[Event]:
    """Inversion, TI, spin echo at TE, rest of TR (inversion to inversion), spoil."""
    return [*inversion(), Relax(ti, "r2"), *_spin_echo_part(te), Relax(tr - ti - te, "r2"), Spoil()]


def _train(n: int, tx: float, te: float, flip: float, record_at: int | None, name: str) -> list[Event]:
    """n readout pulses TX apart, each followed by its gradient echo at TE and spoiling before the next."""
    events: list[Event] = []
    for j in range(1, n + 1):
        rec: list[Event] = [Record(name)] if j == record_at else []
        events += [Pulse(flip), Relax(te, "r2s"), *rec, Relax(tx - te, "r2s"), Spoil()]
    return events


def mprage(tr: float, ti: float, tx: float, te: float, flip: float, n: int, eta: float = 1.0) -> list[Event]:
    """Inversion, TA, n pulses, TD; TI runs from the inversion to pulse k = n//2 + 1."""
    k = n // 2 + 1
    ta = ti - (k - 1) * tx
    td = tr - ta - n * tx
    assert ta >= 0 and td >= 0, (ta, td)
    return [*inversion(eta), Relax(ta), *_train(n, tx, te, flip, k, "echo"), Relax(td)]


def mp2rage(tr: float, ti: float, ti2: float, tx: float, te: float, flip: float, flip2: float, n: int,
            eta: float = 1.0) -> list[Event]:
    """Inversion, TA, train 1 (centre at TI), TB, train 2 (centre at TI2), TD."""
    k = n // 2 + 1
    ta = ti - (k - 1) * tx
    start2 = ti2 - (k - 1) * tx
    tb = start2 - ta - n * tx
    td = tr - start2 - n * tx
    assert ta >= 0 and tb >= 0 and td >= 0, (ta, tb, td)
    return [*inversion(eta), Relax(ta), *_train(n, tx, te, flip, k, "s1"), Relax(tb),
            *_train(n, tx, te, flip2, k, "s2"), Relax(td)]


def uni(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """MP2RAGE uniform image from complex signals: Re(conj(S1) S2) / (|S1|^2 + |S2|^2)."""
    return np.real(np.conj(s1) * s2) / (np.abs(s1) ** 2 + np.abs(s2) ** 2)
