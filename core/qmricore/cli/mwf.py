"""``qmricore mwf``: myelin water fraction, geometric-mean T2 and refocusing angle from a multi-echo spin echo.

Reads one 4D NIfTI series (x, y, z, echoes) of a CPMG train with echo spacing ``--te`` and writes, on its exact
grid, ``MWF.nii.gz`` (fraction 0-1), ``T2GM.nii.gz`` (seconds), ``FLIP.nii.gz`` (fitted refocusing angle,
degrees) and with ``--spectrum`` the 4D ``T2SPECTRUM.nii.gz`` (one volume per T2 bin), each atomically, after
all are computed.  The method and its defaults are :mod:`qmricore.mwf.nnls` (docs/mwf.md).

``--method cnn --model M.pt`` runs a trained CNN estimator (:mod:`qmricore.mwf.cnn`) instead and writes
``MWF.nii.gz`` only; the series must have the model's echo count and spacing.

With ``--progress-lines`` it also prints ``PROGRESS <fraction> <message>`` lines and a last ``RESULT <json>`` line
(the written paths by key, and the voxel count) on stdout, the protocol QMRISegment's background runner reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import progress_lines
from .progress_lines import ProgressLines

METHODS = ("nnls", "cnn")
#: Output file per result.
FILE_NAMES = {"mwf": "MWF.nii.gz", "t2gm": "T2GM.nii.gz", "flip": "FLIP.nii.gz", "spectrum": "T2SPECTRUM.nii.gz"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mwf",
        help="myelin water fraction, geometric-mean T2 and refocusing angle from a multi-echo spin echo",
        description="Fit a regularised NNLS T2 spectrum (DECAES method) per voxel of a 4D multi-echo spin-echo\n"
                    "series and write MWF, T2GM and FLIP maps on its grid into <out>/.",
        epilog="example:\n  qmricore mwf --input sub01_ME.nii.gz --te 0.01 --out sub01_mwf/ --mask brain.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, metavar="ME", help="4D NIfTI series (x, y, z, echoes)")
    parser.add_argument("--te", required=True, type=float, help="echo spacing in seconds (e.g. 0.01)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--method", default="nnls", choices=METHODS, help="nnls (default: T2 spectrum, MWF, T2GM, "
                                                                          "FLIP) or cnn (MWF only, needs --model)")
    parser.add_argument("--model", metavar="M.pt", help="CNN MWF model file (--method cnn)")
    parser.add_argument("--device", default="auto", help="--method cnn: auto (CUDA if available), cpu, cuda, ...")
    parser.add_argument("--mask", metavar="FILE", help="fit only voxels > 0 in this mask (on the input's grid)")
    parser.add_argument("--echoes", type=int, metavar="N", help="expected number of echoes (checked against the "
                                                                  "input's 4th dimension)")
    parser.add_argument("--spectrum", action="store_true", help="also write the 4D T2 spectrum")
    parser.add_argument("--workers", type=int, metavar="N", help="--method nnls: processes fitting in parallel "
                                                                   "(default: every usable CPU core)")
    progress_lines.add_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..errors import InputError
    from ..io import Volume, check_outputs, grid_difference, read_volume, same_grid, write_nifti
    from ..mwf.nnls import MIN_ECHOES, NNLSConfig, check_te, fit_nnls

    check_te(args.te)
    if (args.method == "cnn") != (args.model is not None):
        raise InputError("--model is needed with --method cnn, and only there")
    if args.method == "cnn" and args.spectrum:
        raise InputError("--spectrum needs --method nnls (the CNN gives MWF only)")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if args.echoes is not None and args.echoes < MIN_ECHOES:
        raise InputError(f"--echoes must be >= {MIN_ECHOES}, got {args.echoes}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("output must be a folder", out)
    names = [FILE_NAMES["mwf"]] if args.method == "cnn" else \
        [n for k, n in FILE_NAMES.items() if k != "spectrum" or args.spectrum]
    check_outputs([out / n for n in names], [args.input, args.mask], folders=[out])
    series = read_volume(args.input, what="multi-echo series", ndim=4)
    n_echoes = series.shape[3]
    if args.echoes is not None and args.echoes != n_echoes:
        raise InputError(f"multi-echo series: has {n_echoes} echoes, --echoes says {args.echoes}", args.input)
    if n_echoes < MIN_ECHOES:
        raise InputError(f"multi-echo series: has {n_echoes} echoes; at least {MIN_ECHOES} are needed", args.input)
    grid = Volume(data=series.data[..., 0], affine=series.affine, header=series.header, path=series.path)
    mask = None
    if args.mask is not None:
        mask_volume = read_volume(args.mask, what="mask")
        if not same_grid(mask_volume, grid):
            raise InputError(f"mask: not on the grid of {args.input} ({grid_difference(mask_volume, grid)})", args.mask)
        mask = mask_volume.data > 0

    voxels = int(np.count_nonzero(series.data[..., 0] > 0 if mask is None else mask & (series.data[..., 0] > 0)))
    if args.method == "cnn":
        return run_cnn(args, series, grid, mask, out, voxels)
    config = NNLSConfig()
    lines = ProgressLines(args.progress_lines)
    with tqdm(total=voxels, unit="voxel", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        result = fit_nnls(series.data, args.te, mask=mask, config=config,
                          progress=lines.counting(bar.update, voxels, "voxel", "fitting"),
                          workers=args.workers)

    outputs = {"mwf": result.mwf, "t2gm": result.t2gm, "flip": result.flip}
    written = {}
    for key, data in outputs.items():
        written[key] = write_nifti(out / FILE_NAMES[key], data.astype(np.float32), like=grid)
        print(f"{key}: {written[key]}")
    if args.spectrum:
        spectrum_grid = Volume(data=np.broadcast_to(np.float32(0), (*series.shape[:3], config.n_bins)),
                               affine=series.affine, header=series.header, path=series.path)
        path = write_nifti(out / FILE_NAMES["spectrum"], result.spectrum.astype(np.float32), like=spectrum_grid)
        written["spectrum"] = path
        print(f"spectrum: {path}")
    lines.result({**written, "voxels": voxels})
    return 0


def run_cnn(args: argparse.Namespace, series: object, grid: object, mask: object, out: Path, voxels: int) -> int:
    """``--method cnn``: the model's MWF map on the input's grid (``voxels``: how many have signal, for RESULT)."""
    import numpy as np
    from tqdm import tqdm

    from ..devices import resolve_device
    from ..io import write_nifti
    from ..models.model_file import load_model
    from ..mwf.cnn import estimate_mwf

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    lines = ProgressLines(args.progress_lines)
    with tqdm(total=series.shape[2], unit="slice", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        mwf = estimate_mwf(series.data, args.te, model, mask=mask, device=device,
                           progress=lines.counting(bar.update, series.shape[2], "slice", "fitting"))
    path = write_nifti(out / FILE_NAMES["mwf"], mwf.astype(np.float32), like=grid)
    print(f"mwf: {path}")
    lines.result({"mwf": path, "voxels": voxels})
    return 0
