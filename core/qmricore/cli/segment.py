"""``qmricore segment``: lesion segmentation of one subject's image(s) with a segmenter model file.

Every input is read and checked before any computation; the mask (and optional lesion probability) is
written atomically on the first input's exact grid, and the lesion volume is printed in mL.  With
``--progress-lines`` it follows :mod:`qmricore.cli.progress_lines` (QMRISegment runs it so).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..devices import DEVICE_CHOICES
from . import progress_lines
from .progress_lines import ProgressLines


@contextlib.contextmanager
def warnings_to_stderr(command: str) -> Iterator[None]:
    """Print warnings (e.g. out-of-memory fallbacks) at once as ``qmricore <command>: warning: ...`` lines."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
             line: str | None = None) -> None:
        print(f"qmricore {command}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)
        warnings.showwarning = show
        yield


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment lesions with a trained model (prints the lesion volume in mL)",
        description="Segment lesions in one subject: RAS 1 mm preprocessing, sliding-window inference with\n"
                    "flip test-time augmentation, logits averaged over the given modalities, mask written on\n"
                    "the first input's grid.",
        epilog="examples:\n"
               "  qmricore segment --model seg.pt --input sub01_T1w.nii.gz --out sub01_lesion.nii.gz\n"
               "  qmricore segment --model seg.pt --input t2.nii.gz --modality T2 --input flair.nii.gz \\\n"
               "      --modality FLAIR --out lesion.nii.gz --probabilities lesion_prob.nii.gz --device cpu",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="FILE", help="segmenter model file (qmricore-model .pt)")
    parser.add_argument("--input", required=True, action="append", metavar="IMG",
                        help="input NIfTI image; repeat for more modalities of the same subject (ensembled)")
    parser.add_argument("--modality", action="append", metavar="TAG",
                        help="modality tag of each --input, in order (reported only)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output lesion mask (.nii or .nii.gz, uint8)")
    parser.add_argument("--probabilities", metavar="FILE", help="also write the lesion probability (float32)")
    parser.add_argument("--labels", metavar="FILE", help="also write the argmax label map (tissue models)")
    parser.add_argument("--no-tta", action="store_true", help="skip the 8-flip test-time augmentation (8x faster)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="compute device (default auto: CUDA when available)")
    progress_lines.add_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError, ParameterError
    from ..inference.predict import resolve_device, segment
    from ..io import check_outputs, nifti_stem, read_volume, write_nifti
    from ..models.model_file import load_model

    modalities = args.modality or []
    if modalities and len(modalities) != len(args.input):
        raise ParameterError(f"{len(modalities)} --modality tag(s) for {len(args.input)} --input image(s)")
    outputs = [Path(p) for p in (args.out, args.probabilities, args.labels) if p]
    for path in outputs:
        if nifti_stem(path) is None:
            raise InputError("output must end in .nii or .nii.gz", path)
    check_outputs(outputs, [*args.input, args.model])
    lines = ProgressLines(args.progress_lines)
    device = resolve_device(args.device)
    lines.line(0.02, "reading the input image(s)")
    volumes = [read_volume(p, what="input image") for p in args.input]
    lines.line(0.05, f"loading the model for {device.type}")
    model = load_model(args.model, device="cpu")
    lines.line(0.1, f"segmenting {len(volumes)} image(s){' with 8-flip TTA' if not args.no_tta else ''}")
    with warnings_to_stderr("segment"):
        result = segment(model, volumes, tta=not args.no_tta, device=device, progress=sys.stderr.isatty())
    reference = volumes[0]
    lines.line(0.95, "writing the lesion mask")
    write_nifti(args.out, result.lesion_mask.astype(bool), like=reference)  # uint8 on disk
    if args.probabilities:
        write_nifti(args.probabilities, result.lesion_probability, like=reference)
    if args.labels:
        write_nifti(args.labels, result.labels, like=reference)
    tags = f" ({', '.join(modalities)})" if modalities else ""
    print(f"lesion volume: {result.lesion_ml:.3f} mL{tags} -> {args.out}")
    lines.result({"mask": args.out, "lesion_ml": float(result.lesion_ml),
                  "lesion_voxels": int(result.lesion_mask.sum()), "device": device.type,
                  "classes": list(result.class_names)})
    return 0
