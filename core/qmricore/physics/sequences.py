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

import functools
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


def _add_scaled_(x: Tensor, y: Tensor, a: Tensor | float) -> Tensor:
    """``x += a * y`` in place, fused (``a`` is a float, or a tensor when the transmit field is a volume)."""
    return x.addcmul_(y, a) if isinstance(a, Tensor) else x.add_(y, alpha=a)


def _e(r1: Tensor, t: float) -> Tensor:
    """Longitudinal recovery factor E(t) = exp(-R1 t) (the exponential runs in place on a fresh product)."""
    return torch.mul(r1, -t).exp_()


def spgr(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, te: float, flip: float,
         mt: Tensor | None = None, b1t: Field = None) -> Tensor:
    """Spoiled gradient echo (SPGR / FLASH), optionally with an MT pulse before each excitation.

    ``S = PD sin a (1-d)(1-E(TR)) / (1 - (1-d) cos a E(TR)) exp(-R2* TE)`` with ``d = mt/100``
    (``d = 0`` without an MT map) and ``a = b1t * flip``.
    """
    cos_a, sin_a = _angle(b1t, flip)
    e_tr = _e(r1, tr)
    relative = torch.rsub(e_tr, 1.0)  # 1 - E(TR); in-place operators below act on fresh temporaries only
    if mt is None:
        relative.div_(e_tr.mul_(-cos_a).add_(1.0))
    else:
        keep = torch.mul(mt, -0.01).add_(1.0)
        relative.mul_(keep).div_(e_tr.mul_(keep).mul_(-cos_a).add_(1.0))
    return relative.mul_(pd).mul_(_e(r2s, te)).mul_(sin_a)


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
    e_late, e_tr = _e(r1, tr - 0.5 * te), _e(r1, tr)
    mz = _add_scaled_(e_late.mul_(cos_b - 1.0).add_(1.0), e_tr, -cos_b)  # in place on fresh temporaries only
    mz.div_(e_tr.mul_(-(cos_a * cos_b)).add_(1.0))
    return mz.abs_().mul_(pd).mul_(_e(r2, te)).mul_(sin_a * (0.5 - 0.5 * cos_b))


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
    cos_b2 = cos_b * cos_b
    e_ti, e_late, e_tr = _e(r1, ti), _e(r1, tr - 0.5 * te), _e(r1, tr)
    mz = _add_scaled_(_add_scaled_(e_ti.mul_(cos_b - 1.0).add_(1.0), e_late, cos_b2 - cos_b), e_tr, -cos_b2)
    mz.div_(e_tr.mul_(-(cos_a * cos_b2)).add_(1.0))
    return mz.abs_().mul_(pd).mul_(_e(r2, te)).mul_(sin_a * (0.5 - 0.5 * cos_b))


def centre_index(n: int) -> int:
    """1-based index of the readout pulse that samples the k-space centre: ``n // 2 + 1``."""
    return n // 2 + 1


def _train_steady_state(r1: Tensor, tx: float, cos_a: Tensor | float) -> Tensor:
    """Mz per unit PD just before each pulse of an endless train spaced TX: ``(1-E(TX)) / (1-cos a E(TX))``."""
    e_tx = _e(r1, tx)
    return torch.rsub(e_tx, 1.0).div_(e_tx.mul_(-cos_a).add_(1.0))

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
    # Everything per unit PD; in-place operators act on fresh temporaries only.
    mss = _train_steady_state(r1, tx, cos_a)
    e_gaps = _e(r1, tr - n * tx)  # E(TA) E(TD)
    cycle = _e(r1, tr).mul_(cos_a**n)  # E(TA) E(TD) q^n
    mz1 = _add_scaled_(_e(r1, ta).mul_(c - 1.0).add_(1.0), e_gaps, -c)  # 1 + (c-1) E(TA) - c E(TA) E(TD)
    _add_scaled_(mz1, e_gaps.sub_(cycle).mul_(mss), c).div_(cycle.mul_(-c).add_(1.0))
    signal = mz1.sub_(mss).mul_(_e(r1, (k - 1) * tx).mul_(cos_a ** (k - 1))).add_(mss)  # Mss + (Mz1-Mss) q^(k-1)
    return signal.abs_().mul_(pd).mul_(_e(r2s, te)).mul_(sin_a)


def _affine(x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """``a + b x`` as a fresh tensor in one pass (``a``, ``b`` floats, or tensors when b1t is a volume)."""
    if isinstance(b, Tensor):  # addcmul rounds as rsub does, so a uniform field equals the scalar one
        return torch.addcmul(a if isinstance(a, Tensor) else torch.full((), a, dtype=x.dtype, device=x.device), x, b)
    return torch.add(a, x, alpha=b) if isinstance(a, Tensor) else torch.rsub(x, a, alpha=-b)


def _train_deficit(e_tx: Tensor, cos_a: Tensor | float) -> Tensor:
    """``1 - Mss/PD`` of an endless train spaced TX: ``(1 - cos a) E(TX) / (1 - cos a E(TX))``."""
    return torch.div(e_tx, _affine(e_tx, 1.0, -cos_a)).mul_(1.0 - cos_a)


def _mp2rage_deficits(r1: Tensor, *, tr: float, ti: float, ti2: float, tx: float, flip: float, flip2: float,
                      n: int, b1t: Field, eta: float) -> tuple[Tensor, Tensor]:
    """Longitudinal deficits ``y = 1 - Mz/PD`` just before the k-space-centre pulse of each MP2RAGE train.

    In the deficit every event is one pass over the voxels: recovery for a time t multiplies y by
    E(t) = exp(-R1 t); m pulses of a train move it towards the train's steady state ``x`` (see
    :func:`_train_deficit`) as ``x + (y - x) q^m`` with ``q = cos a E(TX)``, ``q^m = cos(a)^m E(m TX)``;
    the inversion maps y to ``(1 - c) + c y`` (``c = cos(b1t 180°) eta``).  Going once round the cycle
    from the start of train 1, whose deficit is ``yA``, gives ``yA = alpha + beta yA`` with
    ``beta = c q1^n q2^n E(TA) E(TB) E(TD) = c (cos a1 cos a2)^n E(TR)`` and
    ``alpha = E(TA) [(1-c) + c E(TD) (x2 (1 - q2^n) + q2^n yB0)]``, ``yB0 = E(TB) x1 (1 - q1^n)``.  Then
    ``y1 = x1 + (yA - x1) q1^(k-1)``, train 2 starts at ``yB = yB0 + E(TB) q1^n yA`` and
    ``y2 = x2 + (yB - x2) q2^(k-1)``.  The k-space-centre signals are ``S = PD sin a (1 - y) exp(-R2* TE)``.
    """
    k = centre_index(n)
    ta = ti - (k - 1) * tx
    tb = ti2 - ti - n * tx
    td = tr - ti2 - (n - k + 1) * tx
    cos_1, _ = _angle(b1t, flip)
    cos_2, _ = _angle(b1t, flip2)
    cos_inv, _ = _angle(b1t, 180.0)
    c = cos_inv * eta
    # In-place operators below act on fresh temporaries only.
    e_tx = _e(r1, tx)
    x1, x2 = _train_deficit(e_tx, cos_1), _train_deficit(e_tx, cos_2)
    e_n = _e(r1, n * tx)
    q1_n, q2_n = e_n * cos_1**n, e_n.mul_(cos_2**n)
    e_tb = _e(r1, tb)
    y_b0 = torch.addcmul(x1, x1, q1_n, value=-1.0).mul_(e_tb)  # E(TB) x1 (1 - q1^n)
    g = e_tb.mul_(q1_n)  # E(TB) q1^n: how much of yA reaches train 2
    alpha = torch.addcmul(x2, x2, q2_n, value=-1.0).addcmul_(q2_n, y_b0).mul_(_e(r1, td))
    alpha = _affine(alpha, 1.0 - c, c).mul_(_e(r1, ta))
    y_a = alpha.div_(_affine(_e(r1, tr), 1.0, -c * (cos_1 * cos_2) ** n))
    e_k = _e(r1, (k - 1) * tx)
    y1 = torch.lerp(x1, y_a, e_k * cos_1 ** (k - 1))
    y2 = torch.lerp(x2, y_b0.addcmul_(g, y_a), e_k.mul_(cos_2 ** (k - 1)))
    return y1, y2


def _uni(s1: Tensor, s2: Tensor) -> Tensor:
    """``Re(S1* S2) / (|S1|² + |S2|²)`` for real signed signals; 0 where both vanish or either is NaN."""
    return torch.mul(s1, s2).div_(torch.mul(s1, s1).addcmul_(s2, s2)).nan_to_num_(0.0)


def mp2rage(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, ti: float, ti2: float, tx: float, te: float,
            flip: float, flip2: float, n: int, b1t: Field = None, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """MP2RAGE: one inversion, two readout trains centred at TI and TI2, then the uniform image.

    Pulse ``j`` of the first train is at ``TA + (j-1) TX`` with ``TA = TI - (k-1) TX``; the second train
    starts ``TB = TI2 - TI - n TX`` after the first ends; ``TD = TR - TI2 - (n-k+1) TX`` closes the cycle.
    Returns the signed echo signals of both trains (with their T2* decay) and
    ``UNI = S1 S2 / (S1² + S2²)`` in [-0.5, 0.5]; the magnitude images are ``|S1|`` and ``|S2|``.
    """
    y1, y2 = _mp2rage_deficits(r1, tr=tr, ti=ti, ti2=ti2, tx=tx, flip=flip, flip2=flip2, n=n, b1t=b1t, eta=eta)
    # R1 <= 0: nothing recovers, so there is no signal; 1 - y would leave rounding residue of the deficit 1.
    weight = torch.mul(pd, _e(r2s, te)).mul_(r1.clamp(min=0.0).sign_())
    s1 = _affine(y1, 1.0, -1.0).mul_(weight).mul_(_angle(b1t, flip)[1])  # in place on fresh temporaries only
    s2 = _affine(y2, 1.0, -1.0).mul_(weight).mul_(_angle(b1t, flip2)[1])
    return s1, s2, _uni(s1, s2)


def mp2rage_uni(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, ti: float, ti2: float, tx: float, te: float,
                flip: float, flip2: float, n: int, b1t: Field = None, eta: float = 1.0) -> Tensor:
    """The UNI image of :func:`mp2rage` alone: PD and T2* cancel in it, so only R1 (and B1t) is read.

    Voxels without signal (``pd <= 0``, or ``r1 <= 0``: nothing recovers) are 0, as in :func:`mp2rage`.
    ``r2s`` and ``te`` are accepted for a uniform signature with the other sequences.  UNI does not change
    when both signals are scaled alike, so it is computed from ``(sin a1 / sin a2)(1 - y1)`` and ``1 - y2``,
    with the signal mask folded in.
    """
    y1, y2 = _mp2rage_deficits(r1, tr=tr, ti=ti, ti2=ti2, tx=tx, flip=flip, flip2=flip2, n=n, b1t=b1t, eta=eta)
    ratio = _angle(b1t, flip)[1] / _angle(b1t, flip2)[1]
    has_signal = torch.minimum(pd, r1).clamp_(min=0.0).sign_()  # 1 where pd > 0 and r1 > 0, else 0 (NaN: 0 in _uni)
    return _uni(_affine(y1, ratio, -ratio).mul_(has_signal), _affine(y2, 1.0, -1.0))


#: UNI lookup over R1 (float32 maps, uniform transmit field): nodes on [0, UNI_TABLE_R1_MAX) 1/s (T1 >= 100 ms);
#: a slice with R1 outside, NaN, or a transmit-field volume is evaluated directly.
UNI_TABLE_R1_MAX = 10.0
#: Largest linear-interpolation error accepted at the midpoints between nodes: half a float32 ulp of 0.5.
#: The table has 2^16 nodes, or 2^17 where that is needed (else there is no table); building it costs ~1 % of
#: a 1 mm volume's direct evaluation.
UNI_TABLE_TOLERANCE = 3e-8


@functools.lru_cache(maxsize=16)
def _uni_table64(tr: float, ti: float, ti2: float, tx: float, flip: float, flip2: float, n: int, b1t: float | None,
                 eta: float) -> Tensor | None:
    """Rows ``(UNI(R1_i), UNI(R1_i+1) - UNI(R1_i))`` at ``R1_i = i h`` (float64), or None if no size is fine enough.

    Node 0 holds the limit R1 -> 0+ (extrapolated); R1 = 0 itself has no signal and is masked by the caller.
    """
    from ._backend import evaluate_chunked, single_thread  # as simulate() evaluates: no OpenMP contention

    params = dict(tr=tr, ti=ti, ti2=ti2, tx=tx, te=0.0, flip=flip, flip2=flip2, n=n, b1t=b1t, eta=eta)
    with single_thread():
        for size in (2**16, 2**17):
            step = UNI_TABLE_R1_MAX / size
            r1 = torch.arange(2 * size + 6, dtype=torch.float64).mul_(0.5 * step)  # nodes and midpoints
            f = evaluate_chunked(mp2rage_uni, {"pd": torch.ones_like(r1), "r1": r1, "r2s": r1},
                                 torch.empty_like(r1), **params)
            nodes, mids = f[0::2].clone(), f[1::2]
            nodes[0] = 3 * nodes[1] - 3 * nodes[2] + nodes[3]
            rows = torch.stack((nodes[: size + 1], nodes[1 : size + 2] - nodes[: size + 1]), dim=1)
            if (rows[:, 0] + 0.5 * rows[:, 1] - mids[: size + 1]).abs().max() <= UNI_TABLE_TOLERANCE:
                return rows
    return None


@functools.lru_cache(maxsize=16)
def _uni_table(key: tuple, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """:func:`_uni_table64` as two contiguous columns (values, slopes) in ``dtype`` on ``device``."""
    rows = _uni_table64(*key)
    return None if rows is None else tuple(rows.to(dtype=dtype, device=device).T.contiguous())


def mp2rage_uni_lookup(pd: Tensor, r1: Tensor, r2s: Tensor, *, tr: float, ti: float, ti2: float, tx: float,
                       te: float, flip: float, flip2: float, n: int, b1t: Field = None, eta: float = 1.0) -> Tensor:
    """:func:`mp2rage_uni` by linear interpolation in a table over R1, for float32 maps and a uniform b1t.

    With a uniform transmit field UNI is a function of R1 alone, tabulated once per parameter set in float64
    at nodes ``h = UNI_TABLE_R1_MAX / size`` apart, ``size`` the smallest power of two whose interpolation
    error at the midpoints is <= :data:`UNI_TABLE_TOLERANCE` (half a float32 ulp of 0.5; the direct float32
    evaluation is ~1e-5 off float64, from cancellation in ``1 - cos a E(TX)``).  Anything else (float64
    maps, a GPU, a b1t volume, a slice with R1 < 0, R1 >= UNI_TABLE_R1_MAX or NaN, no table fine enough)
    goes to :func:`mp2rage_uni`.  Same signature and masking (``pd <= 0`` or ``r1 <= 0`` give 0).
    """
    params = dict(tr=tr, ti=ti, ti2=ti2, tx=tx, flip=flip, flip2=flip2, n=n, eta=eta)
    uniform = not (isinstance(b1t, Tensor) and b1t.dim() > 0)
    if uniform and r1.dtype == torch.float32 and r1.device.type == "cpu":  # a GPU evaluates directly in one pass
        key = (tr, ti, ti2, tx, flip, flip2, n, None if b1t is None else float(b1t), eta)
        table = _uni_table(key, r1.dtype, r1.device)
        low, high = torch.aminmax(r1)
        if table is not None and bool(low >= 0) and bool(high < UNI_TABLE_R1_MAX):  # False for NaN
            values, slopes = table
            position = r1.reshape(-1) * (float(values.numel() - 1) / UNI_TABLE_R1_MAX)  # in units of h, >= 0
            index = position.int()  # floor; index_select is the fastest gather on the CPU
            uni = torch.addcmul(values.index_select(0, index), slopes.index_select(0, index), position.frac_())
            has_signal = torch.minimum(pd, r1).clamp_(min=0.0).sign_()  # 1 where pd > 0 and r1 > 0 (NaN: 0)
            return uni.view(r1.shape).mul_(has_signal)
    return mp2rage_uni(pd, r1, r2s, te=te, b1t=b1t, **params)
