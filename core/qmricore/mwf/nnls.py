"""Regularised NNLS T2 spectra with a fitted refocusing angle (the DECAES method), batched over voxels.

For a voxel's echo train ``y`` (``n`` echoes, spacing ``te``) and a refocusing angle ``a`` the dictionary
``A(a)`` has one column per T2 bin: the CPMG echo train of that T2 (:func:`qmricore.physics.cpmg`, T1 fixed at
:attr:`NNLSConfig.t1`, excitation normalised to 90°).  The fit, per voxel:

1. **Refocusing angle.**  ``chi2(a) = min_{x >= 0} |A(a) x - y|²`` on :attr:`NNLSConfig.n_angles` angles evenly
   spaced in ``[min_angle, 180]`` degrees (8: 18.6° apart); then on as many angles evenly spaced between the
   neighbours of the best one (5.3° apart); the angle is the vertex of the parabola through the best angle of
   that fine grid and its two neighbours (the best angle itself when it lies on an end of the fine grid).
   DECAES interpolates the same curve with a spline; two grids and a parabola are the simplest refinement
   that came within a fraction of a degree on noise-free trains (one grid and a parabola was 4° off).
2. **Unregularised fit** at that angle: ``chi2_0 = min_{x >= 0} |A x - y|²``.
3. **Tikhonov regularisation**: ``x(mu) = argmin_{x >= 0} |A x - y|² + mu² |x|²`` (an NNLS on ``A`` stacked
   over ``mu I``), with ``mu`` found by Brent's method on ``log mu`` such that
   ``|A x(mu) - y|² = chi2_factor · chi2_0`` (DECAES's "chi2" regularisation, factor 1.02).
4. **Summaries** of the spectrum ``x``: ``MWF = sum(x in the short window) / sum(x)``, the short window being
   ``[10, 40] ms`` (:attr:`NNLSConfig.sp_window`), and the geometric-mean T2 ``exp(sum x log T2 / sum x)``;
   the intra/extracellular fraction over ``mp_window`` (40–200 ms) is returned too.  DECAES has no default
   windows; 10–40 / 40–200 ms are the ones its documentation and Prasloski et al. (2012) use.  A 25 ms upper
   limit was measured to lose most of a 20 ms myelin peak once noise broadens it (MWF bias -0.07 at SNR 100,
   against -0.01 with 40 ms).

The voxels of a batch (:data:`BATCH_VOXELS`) are fitted together: every NNLS is Lawson–Hanson on the normal
equations, all voxels in lock-step (:mod:`qmricore.mwf.active_set`), each warm-started from the voxel's previous
solve, and for the Tikhonov weight block principal pivoting.  The coarse grid's dictionaries are exact; the fine
grids' (one per best coarse angle, shared by the voxels that chose it) and the fitted angle's are interpolated
(Catmull-Rom) from a table every :data:`TABLE_STEP` degrees built once per call, and the fine grid's two ends
reuse the coarse grid's chi².  The weight ``mu`` is searched on ``log(mu / |A|₂)`` over :data:`MU_RANGE`: a
bracket from -6 in widening steps, then the Illinois variant of regula falsi on
``log(chi2 - chi2_0) - log(target - chi2_0)`` (nearly linear in ``log mu``) to :data:`LOG_MU_TOLERANCE`: ~6
solves per voxel where Brent's method on the chi² excess over the whole range took ~11.  Up to 1e-4 in MWF
from the previous, per-voxel :func:`scipy.optimize.nnls` version (``bench/bench_mwf.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, ParameterError
from .active_set import nnls_gram, nnls_gram_definite

#: Fewest echoes a T2 spectrum is fitted from.
MIN_ECHOES = 4
#: Voxels whose dictionaries are built at once (a 40 x 32 float64 dictionary each: ~10 KiB).
BATCH_VOXELS = 2048


@dataclass(frozen=True)
class NNLSConfig:
    """Settings of :func:`fit_nnls` (times in seconds, angles in degrees); the one place of their defaults."""

    n_bins: int = 40
    t2_range: tuple[float, float] = (0.010, 2.0)
    t1: float = 1.0
    sp_window: tuple[float, float] = (0.010, 0.040)
    mp_window: tuple[float, float] = (0.040, 0.200)
    chi2_factor: float = 1.02
    min_angle: float = 50.0
    n_angles: int = 8

    def __post_init__(self) -> None:
        lo, hi = self.t2_range
        if self.n_bins < 2 or not 0 < lo < hi:
            raise ParameterError(f"mwf: need >= 2 T2 bins over 0 < t2_min < t2_max, got {self.n_bins} over "
                                 f"{self.t2_range}")
        if not self.chi2_factor > 1.0:
            raise ParameterError(f"mwf: the chi2 factor must be > 1, got {self.chi2_factor:g}")
        if not 0 < self.min_angle < 180 or self.n_angles < 3:
            raise ParameterError("mwf: the angle grid needs 0 < min_angle < 180 and >= 3 angles")
        if not self.t1 > 0:
            raise ParameterError(f"mwf: T1 must be > 0 s, got {self.t1:g}")


@dataclass(frozen=True)
class NNLSResult:
    """Per-voxel results of :func:`fit_nnls`, each of the input's voxel shape (``spectrum`` adds the bins)."""

    mwf: np.ndarray  # myelin water fraction, 0-1
    ief: np.ndarray  # intra/extracellular water fraction (mp_window), 0-1
    t2gm: np.ndarray  # geometric-mean T2, s
    flip: np.ndarray  # fitted refocusing angle, degrees
    spectrum: np.ndarray  # T2 spectrum amplitudes (signal units), (..., n_bins)
    t2: np.ndarray  # bin centres, s


def t2_bins(config: NNLSConfig = NNLSConfig()) -> np.ndarray:
    """The spectrum's T2 values: ``n_bins`` log-spaced over ``t2_range`` (seconds)."""
    return np.geomspace(*config.t2_range, config.n_bins)


def _dictionary(t2: np.ndarray, angles: np.ndarray, te: float, n: int, t1: float) -> np.ndarray:
    """``(len(angles), n, n_bins)`` CPMG dictionaries, the excitation normalised to 90°."""
    from ..physics import cpmg  # here, so that worker processes (which get the dictionaries) never import torch

    b1 = (np.asarray(angles, np.float64) / 180.0)[:, None]
    trains = cpmg(np.tile(t2, (len(b1), 1)), t1, te=te, n_echoes=n, refocus=180.0, b1t=b1)
    trains /= np.abs(np.sin(b1 * (math.pi / 2)))[..., None]
    return np.swapaxes(trains, 1, 2)


#: Spacing (degrees) of the angle table the fine-grid and final dictionaries are interpolated from.
TABLE_STEP = 0.25


class _AngleTable:
    """CPMG dictionaries on angles every :data:`TABLE_STEP` degrees over ``[lo, hi]`` (one more on each side),
    interpolated with Catmull-Rom cubics (error O(step⁴): below 1e-7 of the first echo at 0.25°)."""

    def __init__(self, t2: np.ndarray, lo: float, hi: float, te: float, n: int, t1: float) -> None:
        self.lo = lo
        count = int(math.ceil((hi - lo) / TABLE_STEP))
        angles = lo + TABLE_STEP * np.arange(-1, count + 2)
        self.table = _dictionary(t2, angles, te, n, t1)  # (count + 3, n, n_bins); table[k + 1] at lo + k step
        self.last = count - 1  # the largest cell index

    def __call__(self, angles: np.ndarray) -> np.ndarray:
        """``(len(angles), n, n_bins)`` dictionaries at ``angles`` (within ``[lo, hi]``)."""
        u = (np.asarray(angles, np.float64) - self.lo) / TABLE_STEP
        k = np.clip(np.floor(u).astype(np.intp), 0, self.last)
        t = (u - k)[:, None, None]
        t2, t3 = t * t, t * t * t
        weights = (0.5 * (2 * t2 - t - t3), 0.5 * (2 - 5 * t2 + 3 * t3), 0.5 * (t + 4 * t2 - 3 * t3), 0.5 * (t3 - t2))
        out = weights[0] * self.table[k]
        for j in range(1, 4):
            out += weights[j] * self.table[k + j]
        return out


def _gram(a: np.ndarray) -> np.ndarray:
    """``Aᵀ A`` of one ``(n, n_bins)`` dictionary or a stack ``(..., n, n_bins)``."""
    return np.matmul(np.swapaxes(a, -1, -2), a)


def _residual(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``|A x - y|²`` per voxel: ``a`` one dictionary or one per voxel, ``x`` ``(B, n_bins)``, ``y`` ``(B, n)``."""
    fit = x @ a.T if a.ndim == 2 else np.einsum("bnk,bk->bn", a, x)
    return np.sum((fit - y) ** 2, axis=1)


def _refine_batch(angles: np.ndarray, chi2: np.ndarray) -> np.ndarray:
    """Per row of ``angles`` and ``chi2`` ``(B, n_angles)``: the vertex of the parabola through the best angle and
    its two neighbours (the best angle itself on an end of the grid, or where the parabola does not open up)."""
    rows = np.arange(len(angles))
    i = np.argmin(chi2, axis=1)
    inner = (i > 0) & (i < angles.shape[1] - 1)
    j = np.clip(i, 1, angles.shape[1] - 2)
    x0, x1, x2 = (angles[rows, j + k] for k in (-1, 0, 1))
    f0, f1, f2 = (chi2[rows, j + k] for k in (-1, 0, 1))
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (f1 - f0) + x1 * (f0 - f2) + x0 * (f2 - f1)) / denom
    b = (x2 ** 2 * (f0 - f1) + x1 ** 2 * (f2 - f0) + x0 ** 2 * (f1 - f2)) / denom
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.clip(-b / (2 * a), x0, x2)
    return np.where(inner & (a > 0), vertex, angles[rows, i])


#: Tikhonov weights searched, relative to the dictionary's largest singular value, and the search's tolerance
#: on ``log mu``.
MU_RANGE = (1e-6, 10.0)
LOG_MU_TOLERANCE = 1e-3
#: Where the search for ``log(mu / |A|₂)`` starts, the slope of ``h`` it assumes first, and its largest step
#: (three-pool voxels at SNR 40-200: roots -7.4 to -4, slopes 1.2-2).
START_LOG_MU, TYPICAL_SLOPE, MAX_STEP = -6.0, 1.5, 3.0


def _largest_singular(gram: np.ndarray) -> np.ndarray:
    """``|A|₂`` per voxel from ``Aᵀ A`` ``(B, k, k)`` (power iteration; the entries are positive, so the start
    is close to the Perron vector and 30 steps reach rounding level)."""
    v = np.ones(gram.shape[:2])
    for _ in range(30):
        v = np.einsum("bij,bj->bi", gram, v)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.sqrt(np.einsum("bi,bij,bj->b", v, gram, v))


def _regularised_batch(a: np.ndarray, y: np.ndarray, chi2_factor: float,
                       passive: np.ndarray | None) -> np.ndarray:
    """Spectra ``(B, n_bins)`` with the Tikhonov weight ``mu`` per voxel such that chi² = ``chi2_factor`` · the
    unregularised chi² (dictionaries ``a`` ``(B, n, n_bins)``, trains ``y`` ``(B, n)``).

    The weight is searched on ``t = log(mu / |A|₂)`` within :data:`MU_RANGE` by a bracket from ``t = -6``
    (widening steps) and then the Illinois variant of regula falsi on ``h(t) = log(chi2(t) - chi2_0) -
    log(target - chi2_0)``, nearly linear in ``t``, until ``|h| < LOG_MU_TOLERANCE`` or the bracket is narrower
    than that; every solve is warm-started from the voxel's previous one.  As before, a voxel whose chi² stays
    below the target at the largest weight gets that weight's spectrum, and one above it at the smallest gets
    the unregularised spectrum."""
    batch = len(y)
    gram, rhs = _gram(a), np.einsum("bnk,bn->bk", a, y)
    x0, passive = nnls_gram(gram, rhs, passive)
    chi2_0 = _residual(a, x0, y)
    energy = np.sum(y * y, axis=1)
    target = chi2_factor * chi2_0
    exact = chi2_0 <= 1e-30 * energy  # an exact fit: give the target an absolute floor
    target = np.where(exact, np.maximum(target, 1e-12 * energy), target)
    log_gap = np.log(target - chi2_0)
    scale = _largest_singular(gram)
    tiny = np.finfo(float).tiny
    lo, hi = math.log(MU_RANGE[0]), math.log(MU_RANGE[1])

    spectra = x0.copy()
    found = np.zeros(batch, bool)

    def evaluate(rows: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``h(t)`` and the spectra of voxels ``rows`` (their passive sets are kept to warm-start the next)."""
        weight = (scale[rows] * np.exp(t)) ** 2
        x, passive[rows] = nnls_gram_definite(gram, rhs[rows], passive[rows], which=rows, ridge=weight)
        return np.log(np.maximum(_residual(a[rows], x, y[rows]) - chi2_0[rows], tiny)) - log_gap[rows], x

    def keep(rows: np.ndarray, x: np.ndarray) -> None:
        spectra[rows] = x
        found[rows] = True

    # bracket: from t = -6, secant steps (the first with the typical slope) until the sign changes, within [lo, hi]
    t_neg, h_neg, x_neg = np.full(batch, np.nan), np.zeros(batch), np.zeros_like(x0)  # h < 0 there
    t_pos, h_pos, x_pos = np.full(batch, np.nan), np.zeros(batch), np.zeros_like(x0)  # h > 0 there
    t = np.full(batch, START_LOG_MU)
    slope = np.full(batch, TYPICAL_SLOPE)
    rows = np.arange(batch)
    for _ in range(30):
        if not len(rows):
            break
        h, x = evaluate(rows, t[rows])
        close = np.abs(h) < LOG_MU_TOLERANCE
        keep(rows[close], x[close])
        neg = h < 0
        for side, (tt, hh, xx) in ((neg, (t_neg, h_neg, x_neg)), (~neg, (t_pos, h_pos, x_pos))):
            sel = side & ~close
            r = rows[sel]
            previous = tt[r]
            seen = ~np.isnan(previous)  # a second point on the same side: the secant's slope
            dt = t[r] - previous
            with np.errstate(divide="ignore", invalid="ignore"):
                measured = (h[sel] - hh[r]) / dt
            slope[r] = np.where(seen & (measured > 0.1 * TYPICAL_SLOPE) & np.isfinite(measured), measured, slope[r])
            tt[r], hh[r], xx[r] = t[r], h[sel], x[sel]
        rows = rows[~close]
        rows = rows[np.isnan(t_neg[rows]) | np.isnan(t_pos[rows])]  # not bracketed yet
        up = ~np.isnan(t_neg[rows])
        here = np.where(up, h_neg[rows], h_pos[rows])
        move = np.clip(-here / slope[rows], -MAX_STEP, MAX_STEP)
        move = np.where(up, np.maximum(move, LOG_MU_TOLERANCE), np.minimum(move, -LOG_MU_TOLERANCE))
        nxt = np.clip(t[rows] + move, lo, hi)
        stuck = nxt == t[rows]  # an end of the range with the same sign: the end's spectrum, or x0 at lo
        keep(rows[stuck & up], x_neg[rows[stuck & up]])
        keep(rows[stuck & ~up], x0[rows[stuck & ~up]])
        t[rows[~stuck]] = nxt[~stuck]
        rows = rows[~stuck]
    # Illinois: regula falsi that halves the retained end's value when the same end is kept twice
    rows = np.flatnonzero(~found)
    kept = np.zeros(batch, np.int8)  # +1: the negative end was replaced last, -1: the positive end
    for _ in range(60):
        if not len(rows):
            break
        tn, hn, tp, hp = t_neg[rows], h_neg[rows], t_pos[rows], h_pos[rows]
        t_new = (tn * hp - tp * hn) / (hp - hn)
        h, x = evaluate(rows, t_new)
        close = np.abs(h) < LOG_MU_TOLERANCE
        neg = h < 0
        for side, (tt, hh, xx), mark, other in ((neg, (t_neg, h_neg, x_neg), 1, h_pos),
                                                 (~neg, (t_pos, h_pos, x_pos), -1, h_neg)):
            sel = side & ~close
            r = rows[sel]
            twice = kept[r] == mark
            other[r[twice]] *= 0.5
            tt[r], hh[r], xx[r] = t_new[sel], h[sel], x[sel]
            kept[r] = mark
        narrow = ~close & (np.abs(t_pos[rows] - t_neg[rows]) < LOG_MU_TOLERANCE)
        keep(rows[close], x[close])
        keep(rows[narrow], x[narrow])
        rows = rows[~close & ~narrow]
    keep(rows, np.where((np.abs(h_neg[rows]) < np.abs(h_pos[rows]))[:, None], x_neg[rows], x_pos[rows]))
    return spectra


def check_te(te: float) -> None:
    """Raise :class:`ParameterError` unless ``te`` is a plausible echo spacing in seconds."""
    if not (isinstance(te, (int, float, np.floating)) and math.isfinite(te) and te > 0):
        raise ParameterError(f"mwf: the echo spacing TE must be > 0 s, got {te!r}")
    if te > 1.0:
        raise ParameterError(f"mwf: TE = {te:g} s is beyond an echo spacing; times are in seconds "
                             f"({te / 1000.0:g} s if {te:g} was milliseconds)")


def _validate(echoes: np.ndarray, te: float) -> None:
    check_te(te)
    if echoes.ndim < 1 or echoes.shape[-1] < MIN_ECHOES:
        raise InputError(f"mwf: need at least {MIN_ECHOES} echoes along the last axis, got shape {echoes.shape}")
    if not np.all(np.isfinite(echoes)):
        raise InputError(f"mwf: the echo data contain {int(np.count_nonzero(~np.isfinite(echoes)))} NaN/Inf "
                         "value(s)")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Dictionaries:
    """What fitting a batch of voxels needs, built once per :func:`fit_nnls` call (and sent once to a worker)."""

    grid: np.ndarray  # the coarse angle grid, degrees
    grid_dicts: np.ndarray  # its exact dictionaries, (n_angles, n, n_bins)
    grid_grams: np.ndarray  # their Gram matrices, (n_angles, n_bins, n_bins)
    fine_dicts: np.ndarray  # the fine grids' inner dictionaries by best coarse angle 1..n_angles-2: (m, m, n, n_bins)
    fine_grams: np.ndarray  # their Gram matrices
    table: _AngleTable  # everything between, interpolated
    chi2_factor: float


def _fit_batch(trains: np.ndarray, d: _Dictionaries) -> tuple[np.ndarray, np.ndarray]:
    """Spectra ``(voxels, n_bins)`` and refocusing angles ``(voxels,)`` of echo trains ``(voxels, n)``.

    All voxels of the batch go through each step together (:func:`~qmricore.mwf.active_set.nnls_gram`); each
    NNLS is warm-started from the voxel's previous one: the coarse grid's angles in turn, the fine grid from
    the best coarse angle, the fitted angle from the last fine one."""
    batch, n = trains.shape
    n_angles = len(d.grid)
    rows = np.arange(batch)
    coarse = np.empty((batch, n_angles))
    passives = np.empty((n_angles, batch, d.grid_dicts.shape[2]), bool)
    passive = None
    for i, (a, gram) in enumerate(zip(d.grid_dicts, d.grid_grams, strict=True)):
        x, passive = nnls_gram(gram, trains @ a, passive)
        coarse[:, i] = _residual(a, x, trains)
        passives[i] = passive
    best = np.clip(np.argmin(coarse, axis=1), 1, n_angles - 2)
    fine = np.linspace(d.grid[best - 1], d.grid[best + 1], n_angles, axis=1)  # (voxels, n_angles)
    fine_chi2 = np.empty((batch, n_angles))
    fine_chi2[:, 0], fine_chi2[:, -1] = coarse[rows, best - 1], coarse[rows, best + 1]  # the ends are coarse
    passive = passives[best, rows]
    for i in range(n_angles - 2):  # voxels with the same best coarse angle share the fine grid's dictionaries
        a = d.fine_dicts[best - 1, i]
        x, passive = nnls_gram(d.fine_grams[:, i], np.einsum("bnk,bn->bk", a, trains), passive, which=best - 1)
        fine_chi2[:, i + 1] = _residual(a, x, trains)
    angles = _refine_batch(fine, fine_chi2)
    return _regularised_batch(d.table(angles), trains, d.chi2_factor, passive), angles


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS limited to one thread in this process while the context lasts (a no-op without threadpoolctl).

    A batch makes thousands of tiny LAPACK calls per round; a multi-threaded OpenBLAS pays a thread hand-off on
    each (measured: 3.4x slower on 2 cores), and the parallelism is the worker processes."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


_worker_dictionaries: _Dictionaries | None = None  # set in each worker process by _start_worker
_worker_limits: object = None  # the worker's BLAS thread limit, kept for its lifetime


def _start_worker(d: _Dictionaries) -> None:
    global _worker_dictionaries, _worker_limits
    _worker_dictionaries = d
    _worker_limits = _one_blas_thread().__enter__()


def _fit_batch_in_worker(trains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_dictionaries is not None
    return _fit_batch(trains, _worker_dictionaries)


def _fit_batches(flat: np.ndarray, batches: list[np.ndarray], d: _Dictionaries,
                 workers: int) -> Iterator[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """``(batch, (spectra, angles))`` per batch of voxel indices into ``flat``, in order of completion.

    With ``workers > 1`` the batches go to that many processes (spawned, so nothing of the caller's threads or
    locks is inherited); at most two per worker are in flight, so the echo data are not all copied at once.
    Each voxel's fit depends on that voxel alone, so the results do not depend on ``workers`` beyond rounding:
    the same voxel's arrays at another memory address can round differently in the last bits (measured: spectra
    within 1e-13 of the signal, angles equal).
    """
    if workers <= 1:
        with _one_blas_thread():
            for batch in batches:
                yield batch, _fit_batch(flat[batch], d)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(d,)) as pool:
        pending: dict[Future, np.ndarray] = {}
        queue = iter(batches)

        def top_up() -> None:
            for batch in itertools.islice(queue, 2 * workers - len(pending)):
                pending[pool.submit(_fit_batch_in_worker, flat[batch])] = batch

        top_up()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
            top_up()


def fit_nnls(echoes: np.ndarray, te: float, *, mask: np.ndarray | None = None,
             config: NNLSConfig = NNLSConfig(),
             progress: Callable[[int], None] | None = None, workers: int | None = None) -> NNLSResult:
    """Fit T2 spectra, MWF, geometric-mean T2 and refocusing angle voxel by voxel (see the module docstring).

    Parameters
    ----------
    echoes
        Magnitude echo trains, shape ``(..., n_echoes)``; any units (the spectrum is in the same units).
    te
        Echo spacing in seconds.
    mask
        Boolean array of the voxel shape; voxels outside it (and voxels whose first echo is not > 0) are not
        fitted and get zeros.  Default: every voxel.
    config
        Bins, windows, T1, chi2 factor and angle grid.
    progress
        Called with the number of voxels done after each batch of :data:`BATCH_VOXELS` (a progress bar's
        ``update``), in the calling process.
    workers
        Processes that fit batches in parallel (default: :func:`usable_cores`; never more than there are
        batches, so fewer than 2 * :data:`BATCH_VOXELS` voxels are fitted in this process).  The results do
        not depend on ``workers`` (beyond rounding in the last bits).  Worker processes are spawned: a script
        that calls this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    """
    echoes = np.asarray(echoes, dtype=np.float64)
    _validate(echoes, te)
    if workers is not None and not (isinstance(workers, (int, np.integer)) and workers >= 1):
        raise ParameterError(f"mwf: workers must be an integer >= 1, got {workers!r}")
    shape, n = echoes.shape[:-1], echoes.shape[-1]
    flat = echoes.reshape(-1, n)
    keep = flat[:, 0] > 0
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise InputError(f"mwf: the mask has shape {mask.shape}, the echo data {shape}")
        keep &= mask.reshape(-1).astype(bool)
    t2 = t2_bins(config)
    grid = np.linspace(config.min_angle, 180.0, config.n_angles)
    grid_dicts = _dictionary(t2, grid, te, n, config.t1)
    table = _AngleTable(t2, config.min_angle, 180.0, te, n, config.t1)
    inner = np.linspace(grid[:-2], grid[2:], config.n_angles, axis=1)[:, 1:-1]  # by best coarse angle 1..-2
    fine_dicts = table(inner.reshape(-1)).reshape(*inner.shape, n, config.n_bins)
    dictionaries = _Dictionaries(grid=grid, grid_dicts=grid_dicts, grid_grams=_gram(grid_dicts),
                                 fine_dicts=fine_dicts, fine_grams=_gram(fine_dicts), table=table,
                                 chi2_factor=config.chi2_factor)

    spectra = np.zeros((flat.shape[0], config.n_bins))
    flips = np.zeros(flat.shape[0])
    voxels = np.flatnonzero(keep)
    batches = [voxels[lo:lo + BATCH_VOXELS] for lo in range(0, len(voxels), BATCH_VOXELS)]
    workers = min(usable_cores() if workers is None else int(workers), len(batches))
    for batch, (batch_spectra, batch_angles) in _fit_batches(flat, batches, dictionaries, workers):
        spectra[batch] = batch_spectra
        flips[batch] = batch_angles
        if progress is not None:
            progress(len(batch))

    total = spectra.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    in_sp = (t2 >= config.sp_window[0] * (1 - 1e-9)) & (t2 <= config.sp_window[1])
    in_mp = (t2 > config.sp_window[1]) & (t2 >= config.mp_window[0]) & (t2 <= config.mp_window[1])
    mwf = np.where(total > 0, spectra[:, in_sp].sum(axis=1) / safe, 0.0)
    ief = np.where(total > 0, spectra[:, in_mp].sum(axis=1) / safe, 0.0)
    t2gm = np.where(total > 0, np.exp(spectra @ np.log(t2) / safe), 0.0)
    return NNLSResult(mwf=mwf.reshape(shape), ief=ief.reshape(shape), t2gm=t2gm.reshape(shape),
                      flip=flips.reshape(shape), spectrum=spectra.reshape(*shape, config.n_bins), t2=t2)
