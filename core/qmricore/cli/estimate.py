"""``qmricore estimate``: qMRI maps (PD, R1, R2*, MT) from one MPRAGE with an estimator model file (qATLAS).

Writes ``<prefix>PD.nii.gz`` (percent water), ``<prefix>R1.nii.gz`` (1/s), ``<prefix>R2s.nii.gz`` (1/s) and
``<prefix>MT.nii.gz`` (percent units) on the MPRAGE's exact grid, each atomically, after all are computed.
With ``--progress-lines`` it follows :mod:`qmricore.cli.progress_lines` (QMRISegment runs it so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..devices import DEVICE_CHOICES
from . import progress_lines
from .progress_lines import ProgressLines

#: Output file name per map key (hMRI-toolbox style, readable by ``qmricore simulate --hmri-folder``).
FILE_NAMES = {"pd": "PD", "r1": "R1", "r2s": "R2s", "mt": "MT"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate qMRI maps (PD, R1, R2*, MT) from an MPRAGE with a trained model",
        description="Estimate PD (percent water), R1 (1/s), R2* (1/s) and MT (percent units) maps from one\n"
                    "MPRAGE image; the maps are written on the MPRAGE's grid as <out>/<prefix>PD.nii.gz etc.",
        epilog="example:\n  qmricore estimate --model qatlas.pt --input sub01_T1w.nii.gz --out sub01_maps/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="FILE", help="estimator model file (qmricore-model .pt)")
    parser.add_argument("--input", required=True, metavar="MPRAGE", help="input MPRAGE NIfTI image")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--prefix", default="", help="file-name prefix, e.g. 'sub01_' (default none)")
    parser.add_argument("--no-tta", action="store_true", help="skip the 8-flip test-time augmentation")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="compute device (default auto: CUDA when available)")
    progress_lines.add_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..inference.predict import estimate_maps, resolve_device
    from ..io import check_outputs, read_volume, write_nifti
    from ..models.model_file import load_model
    from .segment import warnings_to_stderr

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("output must be a folder", out)
    check_outputs([out / f"{args.prefix}{name}.nii.gz" for name in FILE_NAMES.values()], [args.input, args.model],
                  folders=[out])
    lines = ProgressLines(args.progress_lines)
    device = resolve_device(args.device)
    lines.line(0.02, "reading the MPRAGE")
    volume = read_volume(args.input, what="MPRAGE")
    lines.line(0.05, f"loading the model for {device.type}")
    model = load_model(args.model, device="cpu")
    lines.line(0.1, "estimating PD, R1, R2*, MT")
    with warnings_to_stderr("estimate"):
        maps = estimate_maps(model, volume, tta=not args.no_tta, device=device, progress=sys.stderr.isatty())
    written = {}
    for index, (key, data) in enumerate(maps.items()):
        lines.line(0.9 + 0.1 * index / len(maps), f"writing {key}")
        written[key] = write_nifti(out / f"{args.prefix}{FILE_NAMES[key]}.nii.gz", data, like=volume)
        print(f"{key}: {written[key]}")
    lines.result({"maps": written, "device": device.type})
    return 0
