"""Background worker of QMRISegment: segmentation and qMRI estimation with progress lines.

Run as ``python worker.py segment|estimate ...`` by :class:`~QMRISegmentLib.runner.BackgroundRunner`.
It imports only :mod:`qmricore` (no Slicer), reads NIfTI inputs, writes NIfTI outputs atomically, prints
``PROGRESS <fraction> <message>`` lines and one ``RESULT <json>`` line on stdout, and on a user-facing
error prints ``error: <message>`` on stderr and exits with status 2.

    worker.py segment --model M --input IMG [--input IMG2 ...] --out MASK.nii.gz [--no-tta] [--device auto]
    worker.py estimate --model M --input MPRAGE.nii.gz --out-dir DIR [--no-tta] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qmricore.devices import DEVICE_CHOICES

#: File names of estimated maps (hMRI-style, so :func:`qmricore.io.load_map_set` finds them).
ESTIMATE_FILES = {"pd": "estimated_PD.nii.gz", "r1": "estimated_R1.nii.gz", "r2s": "estimated_R2s.nii.gz",
                  "mt": "estimated_MT.nii.gz"}



def progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", flush=True)


def segmentCommand(args: argparse.Namespace) -> dict:
    import numpy as np

    from qmricore.inference.predict import resolve_device, segment
    from qmricore.io import read_volume, write_nifti
    from qmricore.models.model_file import load_model

    device = resolve_device(args.device)
    progress(0.02, f"loading the model on {device.type}")
    model = load_model(args.model, device=device)
    volumes = []
    for index, path in enumerate(args.input):
        progress(0.05 + 0.05 * index / len(args.input), f"reading {Path(path).name}")
        volumes.append(read_volume(path, what=f"input {index + 1}"))
    progress(0.1, f"segmenting {len(volumes)} image(s){' with 8-flip TTA' if args.tta else ''}")
    result = segment(model, volumes, tta=args.tta, device=device)
    progress(0.95, "writing the lesion mask")
    out = write_nifti(args.out, result.lesion_mask.astype(np.uint8), volumes[0])
    return {"mask": str(out), "lesion_ml": float(result.lesion_ml),
            "lesion_voxels": int(np.count_nonzero(result.lesion_mask)), "device": device.type,
            "classes": list(result.class_names)}


def estimateCommand(args: argparse.Namespace) -> dict:
    from qmricore.inference.predict import estimate_maps, resolve_device
    from qmricore.io import read_volume, write_nifti
    from qmricore.models.model_file import load_model

    device = resolve_device(args.device)
    progress(0.02, f"loading the model on {device.type}")
    model = load_model(args.model, device=device)
    progress(0.05, f"reading {Path(args.input[0]).name}")
    volume = read_volume(args.input[0], what="MPRAGE")
    progress(0.1, "estimating PD, R1, R2*, MT")
    maps = estimate_maps(model, volume, tta=args.tta, device=device)
    written = {}
    for index, (key, data) in enumerate(maps.items()):
        progress(0.9 + 0.1 * index / len(maps), f"writing {key}")
        written[key] = str(write_nifti(Path(args.out_dir) / ESTIMATE_FILES.get(key, f"estimated_{key}.nii.gz"),
                                       data, volume))
    return {"maps": written, "device": device.type}


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="QMRISegment worker")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("segment", "estimate"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="qmricore model file (.pt)")
        p.add_argument("--input", required=True, action="append", help="input NIfTI (repeat for an ensemble)")
        p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
        p.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")
        if name == "segment":
            p.add_argument("--out", required=True, help="output lesion mask (.nii.gz)")
        else:
            p.add_argument("--out-dir", required=True, help="output folder of the estimated maps")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = buildParser().parse_args(argv)
    from qmricore.errors import QMRIError

    try:
        result = (segmentCommand if args.command == "segment" else estimateCommand)(args)
    except QMRIError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    progress(1.0, "done")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
