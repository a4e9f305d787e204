"""Steady-state signal equations, one pure function per sequence (SPEC §4).

Every function is element-wise over broadcastable torch tensors and never writes into its inputs.
Conventions, for every function here:

Tissue parameters
    pd   proton density (arbitrary units or percent water)
    r1   longitudinal relaxation rate 1/T1, in 1/s
    r2s  effective transverse relaxation rate R2*, in 1/s
    r2   transverse relaxation rate R2, in 1/s (spin-echo sequences)
    mt   magnetisation-transfer saturation, in percent units (0-100)
Fields
    b1t  transmit field scale (1 = nominal flip angle); ``None`` means 1
Sequence parameters
    times (tr, te, ti, tx, ...) in seconds, flip angles in degrees

Pulses are ideal and instantaneous and spoiling is ideal.  Feasibility of the timings is checked
by the caller (:func:`qmricore.physics.simulate`), not here.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
Field = Tensor | float | None


def _angle(b1t: Field, degrees: float) -> tuple[Tensor | float, Tensor | float]:
    """cos and sin of the actual flip ``b1t * degrees``; plain floats when b1t is not a volume."""
    if isinstance(b1t, Tensor) and b1t.dim() > 0:
        rad = b1t * math.radians(degrees)
        return torch.cos(rad), torch.sin(rad)
    rad = math.radians(degrees) * (1.0 if b1t is None else float(b1t))
    return math.cos(rad), math.sin(rad)


def _e(r1: Tensor, t: float) -> Tensor:
    """Longitudinal recovery factor E(t) = exp(-R1 t)."""
    return torch.exp(r1 * -t)


def spgr(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, te: float, flip: float,
         mt: Tensor | None = None, b1t: Field = None) -> Tensor:
    """Spoiled gradient echo (SPGR / FLASH), optionally with an MT pulse before each excitation.

    ``S = PD sin a (1-d)(1-E(TR)) / (1 - (1-d) cos a E(TR)) exp(-R2* TE)`` with ``d = mt/100``
    (``d = 0`` without an MT map) and ``a = b1t * flip``.
    """
    cos_a, sin_a = _angle(b1t, flip)
    e_tr = _e(r1, tr)
    if mt is None:
        mz = (1.0 - e_tr) / (1.0 - cos_a * e_tr)
    else:
        keep = 1.0 - mt * 0.01
        mz = keep * (1.0 - e_tr) / (1.0 - keep * cos_a * e_tr)
    return mz * pd * torch.exp(r2s * -te) * sin_a


def spin_echo(pd: Tensor, r1: Tensor, r2: Tensor, *, tr: float, te: float, b1t: Field = None) -> Tensor:
    """Single spin echo (FSE at its effective TE): 90° excitation, 180° refocusing, both scaled by b1t.

    With ``a = b1t 90°``, ``b = b1t 180°``, the longitudinal steady state before excitation is
    ``Mz = PD [1 - E(TR-TE/2) + E(TR-TE/2) cos b (1-E(TE/2))] / (1 - E(TR) cos a cos b)``
    ``   = PD [1 + (cos b - 1) E(TR-TE/2) - cos b E(TR)] / (1 - cos a cos b E(TR))``
    and ``S = |Mz| sin a sin²(b/2) exp(-R2 TE)``; at b1t = 1 this is
    ``PD exp(-R2 TE) (1 - 2 E(TR-TE/2) + E(TR))``.
    """
    cos_a, sin_a = _angle(b1t, 90.0)
    cos_b, _ = _angle(b1t, 180.0)
    e_late = _e(r1, tr - 0.5 * te)
    e_tr = _e(r1, tr)
    mz = (1.0 + (cos_b - 1.0) * e_late - cos_b * e_tr) / (1.0 - cos_a * cos_b * e_tr)
    return mz.abs() * pd * torch.exp(r2 * -te) * (sin_a * (0.5 - 0.5 * cos_b))


def flair(pd: Tensor, r1: Tensor, r2: Tensor, *, tr: float, te: float, ti: float, b1t: Field = None) -> Tensor:
    """Inversion-recovery spin echo (FLAIR, STIR): 180° inversion, TI, 90°, TE/2, 180°, echo at TE.

    TR runs from inversion to inversion, TI from the inversion to the excitation.  The inversion and
    refocusing pulses turn ``b = b1t 180°``, the excitation ``a = b1t 90°``.  Following Mz through one
    repetition (invert, recover TI, excite, recover TE/2, refocus, recover TR-TI-TE/2) and solving for
    the steady state just before excitation gives
    ``Mz = PD [1 + (cos b - 1) E(TI) + cos b (cos b - 1) E(TR-TE/2) - cos²b E(TR)] / (1 - cos a cos²b E(TR))``
    and ``S = |Mz| sin a sin²(b/2) exp(-R2 TE)``; at b1t = 1 this is
    ``PD exp(-R2 TE) |1 - 2E(TI) + 2E(TR-TE/2) - E(TR)|``.
    """
    cos_a, sin_a = _angle(b1t, 90.0)
    cos_b, _ = _angle(b1t, 180.0)
    e_ti = _e(r1, ti)
    e_late = _e(r1, tr - 0.5 * te)
    e_tr = _e(r1, tr)
    cos_b2 = cos_b * cos_b
    mz = (1.0 + (cos_b - 1.0) * e_ti + (cos_b2 - cos_b) * e_late - cos_b2 * e_tr) / (1.0 - cos_a * cos_b2 * e_tr)
    return mz.abs() * pd * torch.exp(r2 * -te) * (sin_a * (0.5 - 0.5 * cos_b))


def centre_index(n: int) -> int:
    """1-based index of the readout pulse that samples the k-space centre: ``n // 2 + 1``."""
    return n // 2 + 1


def _train_steady_state(pd: Tensor, r1: Tensor, tx: float, cos_a: Tensor | float) -> Tensor:
    """Mz just before each pulse of an endless train spaced TX: ``PD (1-E(TX)) / (1 - q)``, ``q = cos a E(TX)``."""
    e_tx = _e(r1, tx)
    return pd * (1.0 - e_tx) / (1.0 - cos_a * e_tx)


def _q_power(r1: Tensor, tx: float, cos_a: Tensor | float, m: int) -> Tensor:
    """``q^m = cos(a)^m E(m TX)``: one exponential instead of a tensor power (which costs ~50x more)."""
    return cos_a**m * _e(r1, m * tx)


def mprage(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, ti: float, tx: float, te: float, flip: float,
           n: int, b1t: Field = None, eta: float = 1.0) -> Tensor:
    """MPRAGE: inversion, wait TA, n readout pulses spaced TX, wait TD; TR = TA + n TX + TD.

    TI is measured from the inversion to the pulse that samples the k-space centre,
    ``k = n // 2 + 1``, so ``TA = TI - (k-1) TX`` and ``TD = TR - TA - n TX``.  With
    ``c = cos(b1t 180°) eta`` (eta: inversion efficiency), ``q = cos a E(TX)`` and the train's steady
    state ``Mss = PD (1-E(TX)) / (1-q)``, Mz just after the inversion wait is
    ``Mz1 = [PD(1-E(TA)) + c E(TA)(PD(1-E(TD)) + E(TD) Mss (1-q^n))] / (1 - c E(TA) E(TD) q^n)``
    and the k-space-centre signal is ``S = |Mss + (Mz1-Mss) q^(k-1)| sin a exp(-R2* TE)``.
    The code uses ``E(TA) E(TD) = E(TR - n TX)`` and ``E(TA) E(TD) q^n = cos(a)^n E(TR)``.
    """
    k = centre_index(n)
    ta = ti - (k - 1) * tx
    cos_a, sin_a = _angle(b1t, flip)
    cos_inv, _ = _angle(b1t, 180.0)
    c = cos_inv * eta
    mss = _train_steady_state(pd, r1, tx, cos_a)
    e_ta = _e(r1, ta)
    e_gaps = _e(r1, tr - n * tx)  # E(TA) E(TD)
    cycle = cos_a**n * _e(r1, tr)  # E(TA) E(TD) q^n
    mz1 = (pd * (1.0 + (c - 1.0) * e_ta - c * e_gaps) + c * mss * (e_gaps - cycle)) / (1.0 - c * cycle)
    return (mss + (mz1 - mss) * _q_power(r1, tx, cos_a, k - 1)).abs() * torch.exp(r2s * -te) * sin_a


def _mp2rage_trains(r1: Tensor, *, tr: float, ti: float, ti2: float, tx: float, flip: float, flip2: float, n: int,
                    b1t: Field, eta: float) -> tuple[Tensor, Tensor]:
    """Signed k-space-centre signals of both MP2RAGE trains per unit PD, before T2* decay.

    Everything is relative to PD (Mz recovers towards 1), so the caller multiplies by ``PD exp(-R2* TE)``
    only where it needs the images; the UNI ratio does not depend on either.
    """
    k = centre_index(n)
    ta = ti - (k - 1) * tx
    tb = ti2 - ti - n * tx
    td = tr - ti2 - (n - k + 1) * tx
    cos_1, sin_1 = _angle(b1t, flip)
    cos_2, sin_2 = _angle(b1t, flip2)
    cos_inv, _ = _angle(b1t, 180.0)
    c = cos_inv * eta
    e_tx = _e(r1, tx)
    m1 = (1.0 - e_tx) / (1.0 - cos_1 * e_tx)  # each train's steady state
    m2 = (1.0 - e_tx) / (1.0 - cos_2 * e_tx)
    e_n, e_k = _e(r1, n * tx), _e(r1, (k - 1) * tx)
    e_ta, e_tb, e_td = _e(r1, ta), _e(r1, tb), _e(r1, td)
    q1_n, q2_n = cos_1**n * e_n, cos_2**n * e_n  # q^n = cos(a)^n E(n TX)
    # Mz at the start of train 2 is a + g z, and before the next inversion u + h z, with z = Mz after TA.
    a = 1.0 - e_tb + e_tb * m1 * (1.0 - q1_n)
    g = e_tb * q1_n
    u = 1.0 - e_td + e_td * (m2 * (1.0 - q2_n) + a * q2_n)
    h = e_td * q2_n * g
    z = (1.0 - e_ta + c * e_ta * u) / (1.0 - c * e_ta * h)
    s1 = (m1 + (z - m1) * (cos_1 ** (k - 1) * e_k)) * sin_1
    s2 = (m2 + (a + g * z - m2) * (cos_2 ** (k - 1) * e_k)) * sin_2
    return s1, s2


def _uni(s1: Tensor, s2: Tensor) -> Tensor:
    """``Re(S1* S2) / (|S1|² + |S2|²)`` for real signed signals; 0 where both vanish."""
    denom = s1 * s1 + s2 * s2
    return torch.where(denom > 0, s1 * s2 / torch.where(denom > 0, denom, 1.0), 0.0)


def mp2rage(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, ti: float, ti2: float, tx: float, te: float,
            flip: float, flip2: float, n: int, b1t: Field = None, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """MP2RAGE: one inversion, two readout trains centred at TI and TI2, then the uniform image.

    Pulse ``j`` of the first train is at ``TA + (j-1) TX`` with ``TA = TI - (k-1) TX``; the second train
    starts ``TB = TI2 - TI - n TX`` after the first ends; ``TD = TR - TI2 - (n-k+1) TX`` closes the cycle.
    Returns the signed echo signals of both trains (with their T2* decay) and
    ``UNI = S1 S2 / (S1² + S2²)`` in [-0.5, 0.5]; the magnitude images are ``|S1|`` and ``|S2|``.
    """
    s1, s2 = _mp2rage_trains(r1, tr=tr, ti=ti, ti2=ti2, tx=tx, flip=flip, flip2=flip2, n=n, b1t=b1t, eta=eta)
    weight = pd * torch.exp(r2s * -te)
    s1, s2 = s1 * weight, s2 * weight
    return s1, s2, _uni(s1, s2)


def mp2rage_uni(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, ti: float, ti2: float, tx: float, te: float,
                flip: float, flip2: float, n: int, b1t: Field = None, eta: float = 1.0) -> Tensor:
    """The UNI image of :func:`mp2rage` alone: PD and T2* cancel in it, so only R1 (and B1t) is read.

    Voxels without signal (``pd <= 0``) are 0, as in :func:`mp2rage`.  ``r2s`` and ``te`` are accepted
    for a uniform signature with the other sequences.
    """
    s1, s2 = _mp2rage_trains(r1, tr=tr, ti=ti, ti2=ti2, tx=tx, flip=flip, flip2=flip2, n=n, b1t=b1t, eta=eta)
    return torch.where(pd > 0, _uni(s1, s2), 0.0)
