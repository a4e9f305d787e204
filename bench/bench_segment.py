"""Benchmark: time to segment a 1 mm brain with a segmenter of the shipped size, with and without TTA.

Input: nilearn's MNI152 2009 T1 template (1 mm, 197 x 233 x 189), or a random volume of that shape
when nilearn is missing.  Network: ``SegmenterConfig(channels=(16, 32, 64, 128, 256))``, 2 classes,
random weights (timing only), saved to and loaded from a real model file; the window size comes from
that file (``WindowConfig.patch``, default 192³, overridable with ``--patch``).  Times cover the whole
:func:`qmricore.inference.segment` call (preprocessing, sliding window, resampling back, softmax).

    .venv/bin/python bench/bench_segment.py [--threads 2] [--patch 192] [--device cpu] [--skip-tta]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qmricore.inference.predict import segment
from qmricore.inference.window import WindowConfig
from qmricore.io import Volume, read_volume
from qmricore.models.model_file import load_model, save_model
from qmricore.models.networks import SegmenterConfig, build_segmenter

SHAPE_1MM = (197, 233, 189)


def brain() -> tuple[Volume, str]:
    """The MNI152 1 mm T1 template shipped with nilearn, or random data of its shape."""
    try:
        import nilearn.datasets

        path = Path(nilearn.datasets.__file__).parent / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        return read_volume(path), "MNI152 2009 T1 (nilearn)"
    except Exception:  # noqa: BLE001 - the benchmark still runs on random data
        data = np.random.default_rng(0).random(SHAPE_1MM).astype(np.float32)
        return Volume(data, np.eye(4)), "random volume"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--patch", type=int, default=None, help="window side in voxels (default: the model file's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--skip-tta", action="store_true", help="time only the run without TTA")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    volume, source = brain()
    config = SegmenterConfig(channels=(16, 32, 64, 128, 256))
    window = WindowConfig() if args.patch is None else WindowConfig(patch=(args.patch,) * 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(Path(tmp) / "bench.pt", build_segmenter(config), config, inference=window)
        model = load_model(path)
    n_params = sum(p.numel() for p in model.network.parameters())
    print(f"input: {source}, shape {volume.shape}, voxel {tuple(round(z, 2) for z in volume.zooms)} mm")
    print(f"network: UNet channels {config.channels}, {n_params / 1e6:.2f} M parameters, 2 classes")
    print(f"window: {model.meta.inference.patch}, overlap {model.meta.inference.overlap}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    for tta in (False,) if args.skip_tta else (False, True):
        start = time.perf_counter()
        result = segment(model, [volume], tta=tta, device=args.device)
        elapsed = time.perf_counter() - start
        print(f"TTA {'on (8 flips)' if tta else 'off':13s} {elapsed:8.1f} s   lesion {result.lesion_ml:.1f} mL")


if __name__ == "__main__":
    main()
