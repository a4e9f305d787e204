"""``qmricore synthmap``: synthetic multi-echo spin-echo series with known myelin water fraction from a label map.

Reads one hard label map (the class table of ``data/priors_3t.json``), checks it and the output folder, then
writes per sample ``sample_NNNN_echoes.nii.gz`` (4D, x, y, z, echoes), ``sample_NNNN_MWF.nii.gz`` (true myelin
water fraction), ``sample_NNNN_T2.nii.gz`` (geometric-mean T2 of the true spectrum, seconds) and
``sample_NNNN.json`` (the draw: :func:`qmricore.generators.synthmap.regenerate` replays it), each atomically on
the label map's exact grid.  A folder holding samples of an earlier run is refused unless ``--replace`` removes
them first.  Sample ``i`` is seeded with :func:`qmricore.datasets.sample_seed` ``(seed, i)``.
The model and its defaults are :mod:`qmricore.generators.synthmap` (docs/mwf.md).
"""

from __future__ import annotations

import argparse

#: Output file name suffixes per sample.
SUFFIXES = {"echoes": "_echoes.nii.gz", "mwf": "_MWF.nii.gz", "t2": "_T2.nii.gz", "record": ".json"}


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..generators.synthmap import DEFAULT_CONFIG

    parser = subparsers.add_parser(
        "synthmap",
        help="synthetic multi-echo spin-echo series with true MWF and T2 maps from a label map (SynthMap)",
        description="Draw N synthetic subjects on one label map: three water pools per brain voxel (myelin,\n"
                    "intra/extracellular, free water) with hierarchical priors, a smooth B1 field, CPMG echo\n"
                    "trains by EPG and Rician noise; write the echo series and the true MWF and T2 maps.",
        epilog="example:\n  qmricore synthmap --labels head_labels.nii.gz --out synthmap/ -n 4 --seed 1 --te 0.01 "
               "--echoes 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--labels", required=True, metavar="FILE", help="integer label map NIfTI file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("-n", type=int, default=1, metavar="N", help="number of samples (default 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="base seed (default 0)")
    parser.add_argument("--te", type=float, default=DEFAULT_CONFIG.te, metavar="SECONDS",
                        help=f"echo spacing in seconds (default {DEFAULT_CONFIG.te:g})")
    parser.add_argument("--echoes", type=int, default=DEFAULT_CONFIG.n_echoes, metavar="N",
                        help=f"number of echoes (default {DEFAULT_CONFIG.n_echoes})")
    parser.add_argument("--snr-range", type=float, nargs=2, default=DEFAULT_CONFIG.snr_range, metavar=("LO", "HI"),
                        help="SNR drawn uniformly in [LO, HI] (first echo in white matter over the noise sigma; "
                             f"default {DEFAULT_CONFIG.snr_range[0]:g} {DEFAULT_CONFIG.snr_range[1]:g})")
    parser.add_argument("--replace", action="store_true",
                        help="remove the samples of an earlier run in --out first (default: refuse such a folder)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from tqdm import tqdm

    from ..datasets import sample_seed
    from ..errors import InputError, ParameterError
    from ..generators.synthmap import (
        DEFAULT_CONFIG,
        apply_synthmap,
        class_index,
        draw_synthmap,
        load_synthmap_priors,
        sidecar,
    )
    from ..io import Volume, atomic_file, check_outputs, ensure_folder, read_volume, write_nifti
    from .synth import clear_older_samples

    if args.n < 1:
        raise ParameterError(f"-n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ParameterError(f"--seed must be >= 0, got {args.seed}")
    if not args.te > 0:
        raise ParameterError(f"--te: the echo spacing TE must be > 0 s, got {args.te:g}")
    if args.echoes < 1:
        raise ParameterError(f"--echoes must be >= 1, got {args.echoes}")
    lo, hi = args.snr_range
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ParameterError(f"--snr-range must satisfy 0 < LO <= HI, got {lo:g} {hi:g}")
    try:
        config = dataclasses.replace(DEFAULT_CONFIG, te=args.te, n_echoes=args.echoes, snr_range=(lo, hi))
    except ParameterError as error:
        raise ParameterError(f"--te/--echoes: {error}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", out)
    names = [out / f"sample_{i:04d}{suffix}" for i in range(args.n) for suffix in SUFFIXES.values()]
    check_outputs(names, [args.labels], folders=[out])

    # read and check the label map before writing anything
    volume = read_volume(args.labels, what="label map")
    if not np.all(np.isfinite(volume.data)) or not np.all(volume.data == np.round(volume.data)):
        raise InputError("label map: has non-integer values (labels must be integers)", volume.path)
    labels = volume.data.astype(np.int64)
    priors = load_synthmap_priors()
    try:
        class_index(labels, priors)
    except InputError as error:
        problem = str(error)
        raise InputError(problem if problem.startswith("label map") else f"label map: {problem}", volume.path) from None

    clear_older_samples(out, [args.labels], args.replace, tuple(SUFFIXES.values()))
    ensure_folder(out)
    series_grid = Volume(data=np.broadcast_to(np.float32(0), (*volume.shape, config.n_echoes)),
                         affine=volume.affine, header=volume.header, path=volume.path)
    for index in tqdm(range(args.n), desc="qmricore synthmap", unit="sample", disable=None):
        generator = torch.Generator().manual_seed(sample_seed(args.seed, index))
        draw = draw_synthmap(priors, generator, config)
        sample = apply_synthmap(labels, draw, priors, config)
        stem = out / f"sample_{index:04d}"
        write_nifti(f"{stem}{SUFFIXES['echoes']}", sample.echoes, like=series_grid)
        write_nifti(f"{stem}{SUFFIXES['mwf']}", sample.mwf, like=volume)
        write_nifti(f"{stem}{SUFFIXES['t2']}", sample.t2, like=volume)
        record = sidecar(draw, config, labels_file=str(volume.path), index=index, base_seed=args.seed,
                         noise_sigma=sample.sigma)
        with atomic_file(f"{stem}{SUFFIXES['record']}", "w") as handle:
            json.dump(record, handle, indent=1)
    print(f"wrote {args.n} sample(s) to {out}")
    return 0
