"""Benchmark: CPU time to simulate each sequence on a 1 mm brain, against a memory-streaming floor.

The floor is measured in the same run on the same maps: one pass that reads every map a sequence
reads and writes one freshly allocated output volume (the least any per-voxel simulator must do).
Also timed: a plain numpy GRE (the naive baseline).  Prints a table of times and ratios.

    .venv/bin/python bench/bench_simulate.py [--repeats 7] [--threads N] [--device cuda] [--sequences mp2rage,gre]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from qmricore import physics, protocols
from qmricore.physics._backend import evaluate_chunked

SHAPE_1MM = (197, 233, 189)  # MNI152 2009 at 1 mm
#: The maps each equation reads (the floor reads the same): UNI depends on R1 only (PD masks it).
READS = {"gre": ("pd", "r1", "r2s", "mt"), "fse": ("pd", "r1", "r2"), "flair": ("pd", "r1", "r2"),
         "mprage": ("pd", "r1", "r2s"), "mp2rage": ("pd", "r1")}


def brain_maps(device: str) -> dict[str, torch.Tensor]:
    """The 1 mm sample map set (built from nilearn's MNI152), or random physical maps of that size."""
    try:
        from qmricore.io import load_map_set
        from qmricore.sample_data import build_sample

        with tempfile.TemporaryDirectory() as tmp:
            build_sample(Path(tmp), resolution_mm=1.0)
            maps = load_map_set(folder=tmp).maps
        source = "MNI152 1 mm sample map set"
    except Exception as error:  # noqa: BLE001 - the benchmark still runs on synthetic maps
        rng = np.random.default_rng(0)
        maps = {"pd": rng.uniform(0.6, 1.0, SHAPE_1MM), "r1": rng.uniform(0.25, 1.5, SHAPE_1MM),
                "r2s": rng.uniform(5, 30, SHAPE_1MM), "mt": rng.uniform(0, 3, SHAPE_1MM)}
        source = f"random maps of 1 mm brain size ({error.__class__.__name__}: {error})"
    print(f"maps: {source}, shape {next(iter(maps.values())).shape}")
    return {k: torch.as_tensor(np.ascontiguousarray(v, dtype=np.float32), device=device) for k, v in maps.items()}


def _sum(**volumes: torch.Tensor) -> torch.Tensor:
    total = None
    for v in volumes.values():
        total = v if total is None else total + v
    return total


def floor(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Read every map once and write one fresh output volume (chunked like the simulator)."""
    first = next(iter(maps.values()))
    out = torch.empty(first.shape, dtype=first.dtype, device=first.device)
    return evaluate_chunked(_sum, maps, out)


def numpy_gre(pd: np.ndarray, r1: np.ndarray, r2s: np.ndarray, tr: float, te: float, flip: float) -> np.ndarray:
    a = np.deg2rad(flip)
    e = np.exp(-r1 * tr)
    return pd * np.sin(a) * (1 - e) / (1 - np.cos(a) * e) * np.exp(-r2s * te)


def timed_pair(baseline, candidate, repeats: int, sync) -> tuple[float, float]:
    """Median seconds of ``baseline`` and ``candidate``, run alternately so load drifts hit both alike."""
    baseline(), candidate()
    sync()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((baseline, times[0]), (candidate, times[1])):
            start = time.perf_counter()
            fn()
            sync()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequences", default=None,
                        help="comma-separated subset to time, e.g. mp2rage,gre (default: all; the numpy "
                             "baseline runs with gre)")
    args = parser.parse_args(argv)
    presets = {"gre": "T1 SPGR", "fse": "3T T2 FSE", "flair": "3T FLAIR", "mprage": "MPRAGE ADNI-like",
               "mp2rage": "MP2RAGE 3T"}
    chosen = list(presets) if args.sequences is None else [s.strip() for s in args.sequences.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in presets]
    if unknown or not chosen:
        parser.error(f"--sequences: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(presets)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    warnings.simplefilter("ignore")  # sequences without an R2 map warn once per call; noise in a timing table
    maps = brain_maps(args.device)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'sequence':<18}{'maps read':<22}{'floor ms':>10}{'simulate ms':>13}{'ratio':>8}")
    rows = []
    for sequence in chosen:
        name = presets[sequence]
        _, params = protocols.preset(name)
        reads = READS[sequence]
        used = {k: maps[k] for k in dict.fromkeys(("pd", "r1", "r2s", *reads)) if k in maps}
        read = {k: maps[k] for k in reads if k in maps}
        t_floor, t_sim = timed_pair(lambda r=read: floor(r), lambda s=sequence, p=params, u=used:
                                    physics.simulate(s, u, **p), args.repeats, sync)
        rows.append((sequence, t_floor, t_sim))
        print(f"{sequence:<18}{','.join(read):<22}{t_floor * 1e3:>10.1f}{t_sim * 1e3:>13.1f}{t_sim / t_floor:>8.2f}")
    if args.device == "cpu" and "gre" in chosen:
        np_maps = {k: maps[k].numpy() for k in ("pd", "r1", "r2s")}
        three = {k: maps[k] for k in ("pd", "r1", "r2s")}
        t_floor, t_np = timed_pair(lambda: floor(three), lambda: numpy_gre(**np_maps, tr=0.02, te=0.004, flip=25.0),
                                   args.repeats, sync)
        print(f"{'gre (plain numpy)':<18}{'pd,r1,r2s':<22}{t_floor * 1e3:>10.1f}{t_np * 1e3:>13.1f}"
              f"{t_np / t_floor:>8.2f}")
    worst = max(t / f for _, f, t in rows)
    print(f"worst ratio {worst:.2f} (goal: every sequence within 4x of the floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
