"""Benchmark: voxels/s of :func:`qmricore.mwf.fit_nnls` against the previous version (per-voxel scipy NNLS).

Three-pool voxels at SNR 100 (generated as ``core/tests/test_mwf_nnls.py`` does, seed 0), 32 echoes at 10 ms.
Both versions fit the same voxels in one thread; prints voxels/s of each and the largest |ΔMWF| and |Δangle|
between them.  ``bench/bench_mwf_vs_qmrpy.py`` adds processes, an established implementation and the CNN.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_mwf.py [--voxels 4096] [--old-voxels N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import brentq, nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core" / "tests"))
from test_mwf_nnls import TE, rician, three_pool  # noqa: E402

from qmricore.mwf import NNLSConfig, fit_nnls, t2_bins  # noqa: E402
from qmricore.mwf.nnls import _AngleTable, _dictionary  # noqa: E402


# --- the previous version (scipy.optimize.nnls voxel by voxel, Brent's method for mu), kept for the comparison ---
def _old_chi2(a: np.ndarray, y: np.ndarray) -> float:
    return float(nnls(a, y)[1] ** 2)


def _old_refine(angles: np.ndarray, chi2: np.ndarray) -> float:
    i = int(np.argmin(chi2))
    if i == 0 or i == len(angles) - 1:
        return float(angles[i])
    x, f = angles[i - 1:i + 2], chi2[i - 1:i + 2]
    denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
    a = (x[2] * (f[1] - f[0]) + x[1] * (f[0] - f[2]) + x[0] * (f[2] - f[1])) / denom
    b = (x[2] ** 2 * (f[0] - f[1]) + x[1] ** 2 * (f[2] - f[0]) + x[0] ** 2 * (f[1] - f[2])) / denom
    if not a > 0:
        return float(angles[i])
    return float(np.clip(-b / (2 * a), x[0], x[2]))


def _old_regularised(a: np.ndarray, y: np.ndarray, chi2_factor: float) -> np.ndarray:
    x0, r0 = nnls(a, y)
    target = chi2_factor * r0 ** 2
    if r0 ** 2 <= 1e-30 * float(y @ y):
        target = max(target, 1e-12 * float(y @ y))
    n_bins = a.shape[1]
    scale = float(np.linalg.norm(a, 2))
    stacked = np.vstack([a, np.zeros((n_bins, n_bins))])
    padded = np.concatenate([y, np.zeros(n_bins)])
    solved: dict[float, np.ndarray] = {}

    def solve(log_mu: float) -> np.ndarray:
        if log_mu not in solved:
            stacked[len(y):] = np.eye(n_bins) * (scale * math.exp(log_mu))
            solved[log_mu] = nnls(stacked, padded, maxiter=50 * n_bins)[0]
        return solved[log_mu]

    def excess(log_mu: float) -> float:
        return float(np.sum((a @ solve(log_mu) - y) ** 2)) - target

    lo, hi = math.log(1e-6), math.log(10.0)
    if excess(hi) < 0:
        return solve(hi)
    if excess(lo) > 0:
        return x0
    return solve(brentq(excess, lo, hi, xtol=1e-3))


def old_fit(flat: np.ndarray, te: float, config: NNLSConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MWF and angle per voxel of ``flat`` ``(voxels, n)`` (every voxel > 0), as fit_nnls computed them before."""
    config = config or NNLSConfig()
    n = flat.shape[1]
    t2 = t2_bins(config)
    grid = np.linspace(config.min_angle, 180.0, config.n_angles)
    grid_dicts = _dictionary(t2, grid, te, n, config.t1)
    table = _AngleTable(t2, config.min_angle, 180.0, te, n, config.t1)
    coarse = np.array([[_old_chi2(d, y) for d in grid_dicts] for y in flat])
    best = np.clip(np.argmin(coarse, axis=1), 1, len(grid) - 2)
    fine = np.linspace(grid[best - 1], grid[best + 1], config.n_angles, axis=1)
    inner = table(fine[:, 1:-1].reshape(-1)).reshape(len(flat), config.n_angles - 2, n, -1)
    rows = np.arange(len(flat))
    ends = coarse[rows, best - 1], coarse[rows, best + 1]
    angles = np.array([_old_refine(fine[j], np.array([ends[0][j], *(_old_chi2(d, y) for d in inner[j]), ends[1][j]]))
                       for j, y in enumerate(flat)])
    dicts = table(angles)
    spectra = np.array([_old_regularised(dicts[j], y, config.chi2_factor) for j, y in enumerate(flat)])
    in_sp = (t2 >= config.sp_window[0] * (1 - 1e-9)) & (t2 <= config.sp_window[1])
    total = spectra.sum(axis=1)
    return np.where(total > 0, spectra[:, in_sp].sum(axis=1) / np.where(total > 0, total, 1.0), 0.0), angles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=4096)
    parser.add_argument("--old-voxels", type=int, default=None, help="voxels for the old version (default: all)")
    args = parser.parse_args()
    clean, _, _ = three_pool(0, voxels=args.voxels)
    echoes = rician(clean, 100, seed=100)
    n_old = args.old_voxels or args.voxels

    start = time.perf_counter()
    old_mwf, old_flip = old_fit(echoes[:n_old], TE)
    old_rate = n_old / (time.perf_counter() - start)
    start = time.perf_counter()
    new = fit_nnls(echoes, TE, workers=1)
    new_rate = args.voxels / (time.perf_counter() - start)

    d_mwf = np.abs(new.mwf[:n_old] - old_mwf)
    d_flip = np.abs(new.flip[:n_old] - old_flip)
    print(f"{args.voxels} three-pool voxels, SNR 100, {echoes.shape[1]} echoes (old version on {n_old}), 1 thread")
    print(f"old {old_rate:8.0f} voxels/s  (scipy.optimize.nnls per voxel, Brent for mu)")
    print(f"new {new_rate:8.0f} voxels/s  ({new_rate / old_rate:.1f}x; batched active-set NNLS, warm starts)")
    print(f"|dMWF| max {d_mwf.max():.2e}, mean {d_mwf.mean():.2e};  |dangle| max {d_flip.max():.2e} deg, "
          f"mean {d_flip.mean():.2e} deg")


if __name__ == "__main__":
    main()
