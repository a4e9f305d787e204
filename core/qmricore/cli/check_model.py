"""``qmricore check-model``: a shipped model's checks on real anatomy and held-out synthetic heads.

>>> qmricore check-model --model Resources/Models/lesion_seg_qsynth.pt --out out/checks/seg
>>> qmricore check-model --model Resources/Models/qatlas_estimator.pt --out out/checks/qatlas
>>> qmricore check-model --model Resources/Models/mwf_cnn.pt --out out/checks/mwf --heldout 2
>>> qmricore check-model --model Resources/Models/ldm_masks.pt --out out/checks/ldm --heldout 4
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-model", help="check a segmenter, estimator, MWF model or mask generator against its goals",
        description="Segmenters: lesion mL on real healthy heads, Dice of lesions put into real anatomy, Dice on "
                    "held-out synthetic whole heads per contrast. Estimators: maps per tissue on real T1w heads, "
                    "MPRAGE re-simulation, held-out errors. MWF models: CNN against NNLS on held-out SynthMap "
                    "heads per SNR. Mask generators: ventricle volume against the request, validity, distance to "
                    "the training masks, sampling time. Writes checks.json and checks.md (docs/model-checks.md).")
    parser.add_argument("--model", required=True, metavar="M.pt", help="model file (segmenter or estimator)")
    parser.add_argument("--baseline", metavar="B.pt", help="a second segmenter scored beside it on held-out heads")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--lesions", type=int, default=8, help="lesions per real-anatomy case (default: %(default)s)")
    parser.add_argument("--heldout", type=int, default=8,
                        help="held-out images per contrast (segmenter) or heads (estimator, MWF), or samples per "
                             "requested volume (mask generator); 0 skips")
    parser.add_argument("--training-labels", metavar="DIR",
                        help="mask generator: the training label maps it is compared with (default: the "
                             "repository's Resources/TrainingAnatomy)")
    parser.add_argument("--heads", nargs="+", metavar="NAME",
                        help="real heads to use (default: all of qmricore.checks.REAL_HEADS)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (slower)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checks import (
        HELDOUT_HEAD_SEEDS,
        check_estimator,
        check_ldm_masks,
        check_mwf,
        check_segmenter,
        markdown_report,
        select_heads,
        write_report,
    )
    from ..errors import ParameterError
    from ..io import check_outputs
    from ..models.model_file import read_meta

    if args.lesions < 1 or args.heldout < 0:
        raise ParameterError("--lesions must be >= 1 and --heldout >= 0")
    select_heads(args.heads)  # unknown names: an error before any work
    out = Path(args.out)
    check_outputs([out / "checks.json", out / "checks.md"], [args.model, args.baseline], folders=[out])
    kind = read_meta(args.model).kind
    if kind == "segmenter":
        report = check_segmenter(args.model, baseline=args.baseline, n_lesions=args.lesions, n_heldout=args.heldout,
                                 heads=args.heads, tta=args.tta)
    elif kind == "mwf":
        report = check_mwf(args.model, n_heldout=max(1, min(args.heldout, len(HELDOUT_HEAD_SEEDS))))
    elif kind == "ldm_masks":
        report = check_ldm_masks(args.model, args.training_labels or _training_anatomy(),
                                 per_request=max(1, args.heldout))
    else:
        report = check_estimator(args.model, n_heldout=min(args.heldout, 4), heads=args.heads)
    write_report(report, args.out)
    print(markdown_report(report))
    return 0


def _training_anatomy() -> str:
    """The repository's Resources/TrainingAnatomy (qmricore installed from its ``core`` folder)."""
    from pathlib import Path

    from .. import __file__ as package_file
    from ..errors import InputError

    folder = Path(package_file).resolve().parents[2] / "Resources" / "TrainingAnatomy"
    if not folder.is_dir():
        raise InputError("no training label maps found: pass --training-labels DIR", folder)
    return str(folder)
