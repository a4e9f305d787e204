"""Benchmark: fit_nnls next to qmrpy's DECAES port on the same voxels, in one run; and CNN MWF inference time.

Three-pool voxels (``core/tests/test_mwf_nnls.py``: myelin 15-25 ms, intra/extracellular 60-100 ms, free water
1.5 s, MWF 0.05-0.25, refocusing 150-180°), 32 echoes at 10 ms, Rician noise at SNR 40, 100 and 200.  Per SNR:
voxels/s of :func:`qmricore.mwf.fit_nnls` in one process (one BLAS thread) and in ``--workers`` processes, of
qmrpy's ``T2DECAESMap.fit`` (pure Python, one process) on the first ``--qmrpy-voxels`` of the same voxels, and
MWF − truth (bias, SD) of both on those voxels.  qmrpy rebuilds its 64-angle EPG dictionaries and their
finite-difference derivatives for every voxel; it is timed as shipped on ``--shipped-voxels`` voxels, and for
the table with those pure functions memoised (the same output, checked, in a fraction of the time).

qmrpy settings, as close to ours as its API allows: 40 bins over 10 ms-2 s, T1 1 s, refocusing-pulse phase 180°,
``reg="chi2"`` with ``chi2_factor=1.02``, refocusing angle fitted over 50-180° (its DECAES default: a
cubic-Hermite surrogate search on a 64-angle grid, at least 5 angles evaluated; ours: two 8-angle grids and a
parabola), MWF over 10-40 ms (``T2DECAESPart``).  It scales each train by its maximum and brackets ``mu`` from
``log mu = -4`` (Brent to 1e-3 of the chi² factor's excess); ours searches ``mu / |A|₂`` to 1e-3 in log.

qmrpy is optional (``pip install -r requirements-bench.txt``); without it that column is skipped.  The CNN part
times :func:`qmricore.mwf.cnn.estimate_mwf` with an ``MWFNetConfig(width=48)`` network (random weights) on a
``--cnn-shape`` volume of 32 echoes, with 1 and 2 torch threads.

    .venv/bin/python bench/bench_mwf_vs_qmrpy.py [--voxels 16384] [--qmrpy-voxels 100] [--workers 2]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread per process
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from qmricore.mwf import NNLSConfig, fit_nnls  # noqa: E402
from qmricore.mwf.nnls import BATCH_VOXELS  # noqa: E402

TESTS = Path(__file__).resolve().parents[1] / "core" / "tests"  # test_mwf_nnls makes the voxels; imported in
TE = 0.01  # main(), so that the processes fit_nnls spawns (which import this file) do not import torch

SNRS = (40, 100, 200)
BRAIN_VOXELS = 1_500_000


def _qmrpy() -> Any | None:
    try:
        from qmrpy.models.t2 import decaes_t2, decaes_t2part
    except ImportError:
        return None
    return decaes_t2, decaes_t2part


def _memoise(module: Any) -> None:
    """Memoise qmrpy's dictionary builders (pure functions of their keyword arguments) in ``module``."""
    cache: dict[tuple, np.ndarray] = {}

    def wrap(function: Any) -> Any:
        def cached(**kwargs: Any) -> np.ndarray:
            key = (function.__name__, *sorted((k, tuple(np.ravel(v)) if isinstance(v, np.ndarray) else v)
                                              for k, v in kwargs.items()))
            if key not in cache:
                cache[key] = function(**kwargs)
            return cache[key].copy()
        return cached

    module._basis_matrix = wrap(module._basis_matrix)
    module._basis_matrix_dalpha_fd = wrap(module._basis_matrix_dalpha_fd)


def qmrpy_fit(modules: Any, echoes: np.ndarray, config: NNLSConfig) -> tuple[np.ndarray, float]:
    """qmrpy's MWF per voxel of ``echoes`` ``(voxels, n)`` and the seconds it took."""
    decaes_t2, decaes_t2part = modules
    lo, hi = config.t2_range
    model = decaes_t2.T2DECAESMap(n_te=echoes.shape[1], te_ms=TE * 1e3, n_t2=config.n_bins,
                                  t2_range_ms=(lo * 1e3, hi * 1e3), reg="chi2", chi2_factor=config.chi2_factor,
                                  t1_ms=config.t1 * 1e3, min_ref_angle_deg=config.min_angle)
    parts = decaes_t2part.T2DECAESPart(n_t2=config.n_bins, t2_range_ms=(lo * 1e3, hi * 1e3),
                                       spwin_ms=tuple(1e3 * w for w in config.sp_window),
                                       mpwin_ms=tuple(1e3 * w for w in config.mp_window))
    start = time.perf_counter()
    mwf = np.array([parts.fit(model.fit(y)["distribution"])["sfr"] for y in echoes])
    return mwf, time.perf_counter() - start


def _import_nnls(_: int) -> float:
    import qmricore.mwf.nnls  # noqa: F401  (what a worker imports before its first batch)
    return 0.0


def worker_start_seconds(workers: int) -> float:
    """Seconds to spawn ``workers`` processes that import qmricore.mwf.nnls (what fit_nnls pays once per call)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_import_nnls, range(workers)))
    return time.perf_counter() - start


def cnn_seconds(shape: tuple[int, int, int], threads: tuple[int, ...]) -> dict[int, float]:
    """Seconds of estimate_mwf on a random 32-echo volume of ``shape``, per torch thread count."""
    import torch

    from qmricore.models.model_file import load_model, save_model
    from qmricore.models.networks import MWFNetConfig, build_mwf_net
    from qmricore.mwf.cnn import estimate_mwf

    config = MWFNetConfig(width=48)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model = load_model(save_model(Path(folder) / "mwf.pt", build_mwf_net(config), config))
    rng = np.random.default_rng(0)
    decay = np.exp(-np.arange(1, config.n_echoes + 1) * config.te / 0.08).astype(np.float32)
    echoes = (rng.uniform(50, 100, shape).astype(np.float32)[..., None] * decay)
    out = {}
    for count in threads:
        torch.set_num_threads(count)
        estimate_mwf(echoes[:, :, :8], config.te, model)  # warm-up
        start = time.perf_counter()
        estimate_mwf(echoes, config.te, model)
        out[count] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=16384, help="voxels per SNR for fit_nnls")
    parser.add_argument("--qmrpy-voxels", type=int, default=100, help="of those, voxels per SNR for qmrpy")
    parser.add_argument("--shipped-voxels", type=int, default=2, help="voxels for qmrpy as shipped (SNR 100)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cnn-shape", type=int, nargs=3, default=(160, 192, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--no-cnn", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from test_mwf_nnls import TE as tests_te
    from test_mwf_nnls import rician, three_pool
    assert tests_te == TE
    config = NNLSConfig()
    modules = _qmrpy()
    m = args.qmrpy_voxels
    print(f"three-pool voxels, 32 echoes at {TE * 1e3:g} ms; fit_nnls on {args.voxels} per SNR, qmrpy on the first "
          f"{m}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if modules is None:
        print("qmrpy: not installed, its columns are skipped (pip install --no-deps -r requirements-bench.txt)")
    else:
        import qmrpy
        print(f"qmrpy {qmrpy.__version__}: T2DECAESMap + T2DECAESPart, one process")

    shipped_line = ""
    if modules is not None:  # as shipped on a few voxels, then memoised (the same output) for the table
        clean, _, _ = three_pool(0, voxels=max(args.shipped_voxels, 1))
        echoes = rician(clean, 100, seed=100)
        shipped, seconds = qmrpy_fit(modules, echoes, config)
        _memoise(modules[0])
        memoised, _ = qmrpy_fit(modules, echoes, config)
        shipped_line = (f"qmrpy as shipped (dictionaries rebuilt per voxel, SNR 100): {seconds / len(echoes):.1f} "
                        f"s/voxel ({len(echoes) / seconds:.3f} voxels/s); memoised: the same MWF to "
                        f"{np.abs(shipped - memoised).max():.0e}")

    batches = -(-args.voxels // BATCH_VOXELS)
    if batches < args.workers:
        print(f"note: {args.voxels} voxels are {batches} batch(es) of {BATCH_VOXELS}: fit_nnls uses "
              f"{batches} process(es); give --voxels >= {args.workers * BATCH_VOXELS} for {args.workers}")
    rows, steady = [], []
    start_cost = worker_start_seconds(args.workers) if batches > 1 else 0.0
    for snr in SNRS:
        clean, truth, _ = three_pool(0, voxels=args.voxels)
        echoes = rician(clean, snr, seed=snr)
        t = time.perf_counter()
        ours = fit_nnls(echoes, TE, config=config, workers=1).mwf
        one = args.voxels / (time.perf_counter() - t)
        t = time.perf_counter()
        parallel = fit_nnls(echoes, TE, config=config, workers=args.workers).mwf
        seconds = time.perf_counter() - t
        steady.append(args.voxels / max(seconds - start_cost, 1e-9))
        row = {"snr": snr, "one": one, "many": args.voxels / seconds, "same": float(np.abs(parallel - ours).max()),
               "ours_all": ours - truth, "ours": ours[:m] - truth[:m]}
        if modules is not None:
            theirs, seconds = qmrpy_fit(modules, echoes[:m], config)
            row |= {"qmrpy": m / seconds, "theirs": theirs - truth[:m], "gap": float(np.abs(theirs - ours[:m]).mean())}
        rows.append(row)
        print(f"  SNR {snr}: done", flush=True)

    print(f"\nvoxels/s ({args.workers} processes: {args.voxels} voxels, including {start_cost:.1f} s to start them)")
    head = f"{'SNR':>4} {'ours 1 thread':>14} {f'ours {args.workers} proc':>12}"
    if modules is not None:
        head += f" {'qmrpy*':>8} {'ours/qmrpy*':>12}"
    print(head)
    for r in rows:
        line = f"{r['snr']:>4} {r['one']:>14.0f} {r['many']:>12.0f}"
        if modules is not None:
            line += f" {r['qmrpy']:>8.2f} {r['one'] / r['qmrpy']:>11.0f}x"
        print(line)
    if modules is not None:
        print("qmrpy*: its dictionary builders memoised (the same output); ratio against ours on 1 thread")
    print(f"\nMWF - truth, bias / SD (first {m} voxels; ours on all {args.voxels} in brackets)")
    for r in rows:
        e, a = r["ours"], r["ours_all"]
        line = f"SNR {r['snr']:>3}: ours {e.mean():+.3f} / {e.std():.3f} ({a.mean():+.3f} / {a.std():.3f})"
        if modules is not None:
            e = r["theirs"]
            line += f";  qmrpy {e.mean():+.3f} / {e.std():.3f};  mean |ours - qmrpy| {r['gap']:.3f}"
        print(line)
    print(f"largest |MWF({args.workers} processes) - MWF(1)|: {max(r['same'] for r in rows):.1e}")
    if shipped_line:
        print(shipped_line)

    rate_one = np.mean([r["one"] for r in rows])
    rate_many = np.mean(steady)
    print(f"\n1.5 M voxels (1 mm brain): {BRAIN_VOXELS / rate_one / 60:.1f} min on 1 thread, "
          f"{(start_cost + BRAIN_VOXELS / rate_many) / 60:.1f} min with {args.workers} processes "
          f"({rate_many:.0f} voxels/s once started); goal 5 min")
    if modules is not None:
        rate = np.mean([r["qmrpy"] for r in rows])
        print(f"qmrpy (memoised, 1 process): {BRAIN_VOXELS / rate / 3600:.0f} h")

    if not args.no_cnn:
        shape = tuple(args.cnn_shape)
        seconds = cnn_seconds(shape, (1, 2))
        print(f"\nCNN estimate_mwf, MWFNetConfig(width=48), {shape[0]}x{shape[1]}x{shape[2]} x 32 echoes on the CPU: "
              + ", ".join(f"{s:.1f} s with {k} thread{'s' if k > 1 else ''}" for k, s in seconds.items()))


if __name__ == "__main__":
    main()
