"""Benchmark: voxels/s of :func:`qmricore.mwf.fit_nnls` against the previous (per-voxel dictionary) version.

Three-pool voxels at SNR 100 (generated as ``core/tests/test_mwf_nnls.py`` does, seed 0), 32 echoes at 10 ms.
Both versions fit the same voxels; prints voxels/s of each and the largest |ΔMWF| and |Δangle| between them.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_mwf.py [--voxels 2000] [--old-voxels 500]
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
from qmricore.mwf.nnls import _refine  # noqa: E402
from qmricore.physics import cpmg  # noqa: E402


# --- the previous version (before the angle table), kept here for the side-by-side comparison -------------------
def _old_dictionary(t2: np.ndarray, angles: np.ndarray, te: float, n: int, t1: float) -> np.ndarray:
    b1 = (np.asarray(angles, np.float64) / 180.0)[:, None]
    trains = cpmg(np.tile(t2, (len(b1), 1)), t1, te=te, n_echoes=n, refocus=180.0, b1t=b1)
    trains /= np.abs(np.sin(b1 * (math.pi / 2)))[..., None]
    return np.swapaxes(trains, 1, 2)


def _old_chi2(a: np.ndarray, y: np.ndarray) -> float:
    return float(nnls(a, y)[1] ** 2)


def _old_regularised(a: np.ndarray, y: np.ndarray, chi2_factor: float) -> np.ndarray:
    x0, r0 = nnls(a, y)
    target = chi2_factor * r0 ** 2
    if r0 ** 2 <= 1e-30 * float(y @ y):
        target = max(target, 1e-12 * float(y @ y))
    n_bins = a.shape[1]
    scale = float(np.linalg.norm(a, 2))
    stacked = np.vstack([a, np.zeros((n_bins, n_bins))])
    padded = np.concatenate([y, np.zeros(n_bins)])
    eye = np.eye(n_bins)

    def solve(log_mu: float) -> np.ndarray:
        stacked[len(y):] = eye * (scale * math.exp(log_mu))
        return nnls(stacked, padded, maxiter=50 * n_bins)[0]

    def excess(log_mu: float) -> float:
        x = solve(log_mu)
        return float(np.sum((a @ x - y) ** 2)) - target

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
    grid_dicts = _old_dictionary(t2, grid, te, n, config.t1)
    coarse = np.array([[_old_chi2(d, y) for d in grid_dicts] for y in flat])
    best = np.clip(np.argmin(coarse, axis=1), 1, len(grid) - 2)
    fine = np.linspace(grid[best - 1], grid[best + 1], config.n_angles, axis=1)
    fine_dicts = _old_dictionary(t2, fine.reshape(-1), te, n, config.t1).reshape(len(flat), config.n_angles, n, -1)
    angles = np.array([_refine(fine[j], np.array([_old_chi2(d, y) for d in fine_dicts[j]]))
                       for j, y in enumerate(flat)])
    dicts = _old_dictionary(t2, angles, te, n, config.t1)
    spectra = np.array([_old_regularised(dicts[j], y, config.chi2_factor) for j, y in enumerate(flat)])
    in_sp = (t2 >= config.sp_window[0] * (1 - 1e-9)) & (t2 <= config.sp_window[1])
    total = spectra.sum(axis=1)
    return np.where(total > 0, spectra[:, in_sp].sum(axis=1) / np.where(total > 0, total, 1.0), 0.0), angles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--old-voxels", type=int, default=None, help="voxels for the old version (default: all)")
    args = parser.parse_args()
    clean, _, _ = three_pool(0, voxels=args.voxels)
    echoes = rician(clean, 100, seed=100)
    n_old = args.old_voxels or args.voxels

    start = time.perf_counter()
    old_mwf, old_flip = old_fit(echoes[:n_old], TE)
    old_rate = n_old / (time.perf_counter() - start)
    start = time.perf_counter()
    new = fit_nnls(echoes, TE)
    new_rate = args.voxels / (time.perf_counter() - start)

    d_mwf = np.abs(new.mwf[:n_old] - old_mwf)
    d_flip = np.abs(new.flip[:n_old] - old_flip)
    print(f"{args.voxels} three-pool voxels, SNR 100, {echoes.shape[1]} echoes (old version on {n_old})")
    print(f"old {old_rate:8.0f} voxels/s")
    print(f"new {new_rate:8.0f} voxels/s  ({new_rate / old_rate:.1f}x)")
    print(f"|dMWF| max {d_mwf.max():.2e}, mean {d_mwf.mean():.2e};  |dangle| max {d_flip.max():.2e} deg, "
          f"mean {d_flip.mean():.2e} deg")


if __name__ == "__main__":
    main()
