"""Benchmark: one synthetic training sample, qmricore vs cornucopia, side by side in one process.

Both generators get the same 1 mm label map (the project's sample labels built from the MNI ICBM152
template) and produce one augmented sample cropped to 192³:

- qmricore ``qsynth``: qSynth maps + a drawn sequence + physics simulation + receive field +
  spatial (affine, elastic, flip, crop) and intensity augmentation (bias, noise, low resolution,
  Gibbs, gamma);
- qmricore ``synth``: the same with the GMM baseline in place of maps and physics;
- cornucopia 0.5.1 ``SynthFromLabelTransform(patch=192)``: affine + elastic, GMM, bias, gamma,
  motion blur, low resolution, noise (its defaults; spline order 3 by default, 1 with ``--order 1``).

Each is warmed up once, then timed over ``--runs`` different seeds; the median is reported.

    .venv/bin/python bench/bench_synth.py [--runs 5] [--device cpu|cuda] [--labels FILE] [--crop 192]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def _labels(path: str | None) -> tuple[np.ndarray, tuple[float, ...]]:
    from qmricore.io import read_volume

    if path is None:
        from qmricore.sample_data import build_sample

        cache = Path(tempfile.gettempdir()) / "qmricore_bench_labels_1mm"
        target = cache / "sample_labels.nii.gz"
        if not target.exists():
            print("building the 1 mm sample label map (once) ...", flush=True)
            build_sample(cache, resolution_mm=1.0)
        path = str(target)
    volume = read_volume(path, what="label map")
    return np.rint(volume.data).astype(np.int64), volume.zooms


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(name: str, fn: Callable[[int], object], runs: int, device: torch.device) -> float:
    fn(10_000)  # warm-up (imports, allocator, kernels)
    _sync(device)
    times = []
    for seed in range(runs):
        t0 = time.perf_counter()
        fn(seed)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{name:<34s} median {med:7.3f} s   runs: {' '.join(f'{t:.2f}' for t in times)}", flush=True)
    return med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per generator (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--labels", help="label map NIfTI (default: the 1 mm sample labels, built once)")
    parser.add_argument("--crop", type=int, default=192, help="output patch size (default 192)")
    parser.add_argument("--order", type=int, default=3, help="cornucopia spline order (default 3, its default)")
    parser.add_argument("--skip", nargs="*", default=(), choices=("qsynth", "synth", "cornucopia"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    import cornucopia as cc

    from qmricore.generators.augment import AugmentConfig
    from qmricore.generators.pipeline import PipelineConfig, generate, with_voxel_size
    from qmricore.generators.priors import load_priors

    labels_np, zooms = _labels(args.labels)
    # cornucopia's patch sampler needs every axis >= the patch: zero-pad (background) both inputs alike
    pad = [(0, max(0, args.crop - n)) for n in labels_np.shape]
    labels_np = np.pad(labels_np, pad)
    labels = torch.from_numpy(labels_np).to(device)
    priors = load_priors()
    print(f"label map {tuple(labels.shape)} at {zooms} mm; crop {args.crop}^3; device {device}; "
          f"torch threads {torch.get_num_threads()}; torch {torch.__version__}, cornucopia {cc.__version__}")

    results = {}
    for mode in ("qsynth", "synth"):
        if mode in args.skip:
            continue
        config = with_voxel_size(PipelineConfig(mode=mode, augment=AugmentConfig(crop=args.crop)), zooms)
        results[mode] = _time(f"qmricore {mode}", lambda s, c=config: generate(labels, c, s, priors=priors),
                              args.runs, device)
        del config

    if "cornucopia" not in args.skip:
        synth = cc.SynthFromLabelTransform(patch=args.crop, order=args.order, device=device)
        lab4 = labels[None]

        def corn(seed: int) -> object:
            torch.manual_seed(seed)
            random.seed(seed)
            return synth(lab4)

        results["cornucopia"] = _time(f"cornucopia SynthFromLabel (order {args.order})", corn, args.runs, device)

    if "cornucopia" in results:
        for mode in ("qsynth", "synth"):
            if mode in results:
                print(f"ratio qmricore {mode} / cornucopia: {results[mode] / results['cornucopia']:.2f} "
                      f"(< 1: qmricore faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
