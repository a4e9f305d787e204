"""CPMG multi-echo spin-echo trains by extended phase graphs (EPG), as DECAES computes them.

The train: excitation ``90° b1t`` about x, then ``n_echoes`` refocusing pulses ``refocus · b1t`` about y
(the CPMG condition), each centred in its echo spacing ``te``; between pulses the spins relax for ``te/2``,
and one unit of crusher/readout dephasing shifts the phase states; the echo is the ``F0`` state midway
between refocusing pulses.  Pulses are ideal and instantaneous.

Two facts keep the computation small and real-valued:

* Under the CPMG condition the states that can reach an echo (odd dephasing orders at the pulse times)
  stay in one phase: with ``F± = -i u, v`` and ``Z = -i w`` every coefficient is real.
* The part of the magnetisation left along z by an imperfect excitation, and the longitudinal recovery
  towards M0, only ever feed the even orders at pulse times, which never return to ``F0`` at an echo: the
  excitation therefore enters as the factor ``sin(90° b1t)`` and the recovery term drops out (T1 still
  acts through the decay of the stored ``Z`` states).

The state just before each refocusing pulse is held at orders ``1, 3, 5, ...`` (index ``j`` for order
``2j + 1``); between pulses ``F+`` moves up one index, ``F-`` down one and ``F-`` at order 1 becomes
``F+`` at order 1 (with a sign, the conjugate symmetry of ``F0``).  The echo after a pulse is ``-v_0``
decayed by ``te/2``.  A state index ``j`` is only followed while it can still be populated and still
return to order 1 before the last pulse, so echo ``i`` touches ``min(i + 1, n - i)`` orders.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ParameterError
from ._backend import ArrayLike, compute_dtype, is_numpy, like_input, single_thread, to_tensor

__all__ = ["cpmg"]

#: Voxels per slice on the CPU: the per-order state (3 x n_echoes x slice, float64) stays in the caches.
CPMG_CHUNK_VOXELS = 4096


def _check(te: float, n_echoes: int, refocus: float) -> int:
    if isinstance(n_echoes, bool) or not float(n_echoes).is_integer() or n_echoes < 1:
        raise ParameterError(f"cpmg: the number of echoes must be an integer >= 1, got {n_echoes!r}")
    if not (isinstance(te, (int, float, np.floating)) and math.isfinite(te) and te > 0):
        raise ParameterError(f"cpmg: the echo spacing TE must be > 0 s, got {te!r}")
    if te > 3.0:
        raise ParameterError(f"cpmg: TE = {te:g} s is beyond what a scanner uses; times are in seconds "
                             f"({te / 1000.0:g} s if {te:g} was milliseconds)")
    if not (isinstance(refocus, (int, float, np.floating)) and math.isfinite(refocus) and 0 < refocus <= 360):
        raise ParameterError(f"cpmg: the refocusing angle must be in (0, 360] degrees, got {refocus!r}")
    return int(n_echoes)


def _check_values(name: str, x: torch.Tensor, *, positive: bool) -> None:
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"cpmg: {name} contains NaN/Inf values")
    if positive and bool((x <= 0).any()):
        raise InputError(f"cpmg: {name} must be > 0 s everywhere (times in seconds), found {float(x.min()):g}")


def cpmg(t2: ArrayLike, t1: ArrayLike, *, te: float, n_echoes: int, refocus: float = 180.0,
         b1t: ArrayLike | None = None) -> ArrayLike:
    """Echo amplitudes of a CPMG multi-echo spin-echo train for unit proton density.

    Parameters
    ----------
    t2, t1
        Transverse and longitudinal relaxation times in seconds (> 0), broadcastable arrays of any shape;
        numpy arrays, torch tensors or floats.
    te
        Echo spacing in seconds (the first echo is at ``te``, echo ``k`` at ``k te``).
    n_echoes
        Number of echoes (>= 1).
    refocus
        Nominal refocusing flip angle in degrees (180 for an ideal train).
    b1t
        Transmit field scale (1 = nominal), broadcastable with ``t2``: the excitation is ``90° b1t`` and each
        refocusing pulse ``refocus · b1t``.  ``None`` means 1.

    Returns
    -------
    Echo magnitudes of shape ``(*broadcast_shape, n_echoes)``; numpy when ``t2`` is numpy (or a float), else a
    tensor on ``t2``'s device.  Computed in float64; returned in float64 when any input is float64, else
    float32.  With ``refocus = 180`` and ``b1t = 1`` echo ``k`` is exactly ``exp(-k te / T2)``.

    Raises
    ------
    ParameterError
        ``te <= 0`` (or beyond 3 s), ``n_echoes`` not an integer >= 1, a refocusing angle outside (0, 360].
    InputError
        ``t2``/``t1`` not > 0 or not finite, ``b1t`` not finite, shapes that do not broadcast.
    """
    n = _check(te, n_echoes, refocus)
    template = t2
    inputs = [a for a in (t2, t1, b1t) if a is not None]
    out_dtype = compute_dtype(*inputs)
    device = next((a.device for a in inputs if isinstance(a, torch.Tensor)), torch.device("cpu"))
    t2_t, t1_t = to_tensor(t2, torch.float64, device), to_tensor(t1, torch.float64, device)
    b1_t = None if b1t is None else to_tensor(b1t, torch.float64, device)
    _check_values("T2", t2_t, positive=True)
    _check_values("T1", t1_t, positive=True)
    if b1_t is not None:
        _check_values("b1t", b1_t, positive=False)
    try:
        shape = torch.broadcast_shapes(t2_t.shape, t1_t.shape, () if b1_t is None else b1_t.shape)
    except RuntimeError as error:
        raise InputError(f"cpmg: T2 {tuple(t2_t.shape)}, T1 {tuple(t1_t.shape)} and b1t "
                         f"{None if b1_t is None else tuple(b1_t.shape)} do not broadcast") from error

    flat = {"t2": t2_t.expand(shape).reshape(-1), "t1": t1_t.expand(shape).reshape(-1)}
    if b1_t is not None:
        flat["b1t"] = b1_t.expand(shape).reshape(-1)
    total = flat["t2"].numel()
    out = torch.empty((total, n), dtype=torch.float64, device=device)
    step = total if device.type != "cpu" else CPMG_CHUNK_VOXELS
    with torch.no_grad(), (single_thread() if device.type == "cpu" else _nothing()):
        for lo in range(0, max(total, 1), step):
            hi = min(lo + step, total)
            if hi <= lo:
                break
            part = {k: v[lo:hi] for k, v in flat.items()}
            out[lo:hi] = _train(part["t2"], part["t1"], part.get("b1t"), te=float(te), n=n, refocus=float(refocus))
    result = out.reshape(*shape, n).to(out_dtype)
    if template is not None and not isinstance(template, torch.Tensor) and not is_numpy(template):
        template = np.asarray(template)
    return like_input(result, template)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _train(t2: torch.Tensor, t1: torch.Tensor, b1t: torch.Tensor | None, *, te: float, n: int,
           refocus: float) -> torch.Tensor:
    """The EPG recursion for one slice of voxels (1-D float64 tensors); returns ``(voxels, n)``."""
    voxels = t2.numel()
    e2_half = torch.exp(-0.5 * te / t2)
    e2 = e2_half * e2_half
    e1 = torch.exp(-te / t1)
    if b1t is None:
        beta = torch.full((voxels,), math.radians(refocus), dtype=t2.dtype, device=t2.device)
        excite = torch.ones_like(t2)
    else:
        beta = b1t * math.radians(refocus)
        excite = torch.sin(b1t * (math.pi / 2)).abs()
    cos2 = torch.cos(0.5 * beta).square_()  # cos²(β/2)
    sin2 = 1.0 - cos2  # sin²(β/2)
    sin_b, cos_b = torch.sin(beta), torch.cos(beta)
    half_sin = 0.5 * sin_b

    u = torch.zeros((n, voxels), dtype=t2.dtype, device=t2.device)  # F+ at orders 1, 3, ... (just before a pulse)
    v = torch.zeros_like(u)  # F-
    w = torch.zeros_like(u)  # Z
    u[0] = excite * e2_half  # after the excitation and the first te/2
    echoes = torch.empty((n, voxels), dtype=t2.dtype, device=t2.device)
    for i in range(n):
        m = min(i + 1, n - i)  # orders that are populated and can still come back
        uu, vv, ww = u[:m], v[:m], w[:m]
        # refocusing pulse about y (real EPG rotation under the CPMG condition)
        nu = uu * cos2 - vv * sin2 + ww * sin_b
        nv = vv * cos2 - uu * sin2 + ww * sin_b
        nw = ww * cos_b - (uu + vv) * half_sin
        echoes[i] = -nv[0] * e2_half
        if i == n - 1:
            break
        # relax over te and dephase by two orders: F+ up, F- down, F- at order 1 turns into F+ at order 1
        m_next = min(i + 2, n - i - 1)
        u[1:m_next] = nu[: m_next - 1] * e2
        u[0] = -nv[0] * e2
        v[: m_next] = 0.0
        k = min(m - 1, m_next)
        if k > 0:
            v[:k] = nv[1:k + 1] * e2
        w[:m_next] = 0.0
        k = min(m, m_next)
        w[:k] = nw[:k] * e1
    return echoes.abs().T
