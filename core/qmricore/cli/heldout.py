"""``qmricore heldout``: held-out synthetic sets per contrast, and lesion segmenters scored on them.

>>> qmricore heldout make --labels Resources/SampleData/sample_labels.nii.gz --out heldout.pt --n 8 --crop 96 112 96
>>> qmricore heldout score --set heldout.pt --model lesion_seg_qsynth.pt --model other.pt --out scores.json

See :mod:`qmricore.inference.heldout` for the seeds, the contrasts and the scores.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "heldout", help="make a held-out synthetic set per contrast, or score segmenters on one",
        description="make: qSynth images of a label map with one synthetic lesion each, N per contrast, seeded far\n"
                    "from any training seed (torch file of tensors).  score: Dice of each model's lesion mask per\n"
                    "image, medians with Student-t 95 % CIs per contrast (JSON; the table is printed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = actions.add_parser("make", help="generate a held-out set")
    make.add_argument("--labels", required=True, metavar="FILE", help="label map (training label convention)")
    make.add_argument("--out", required=True, metavar="SET.pt", help="held-out set to write")
    make.add_argument("--n", type=int, default=6, help="images per contrast (default: %(default)s)")
    make.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"), help="crop size in voxels")
    make.add_argument("--contrasts", nargs="+", metavar="NAME",
                      help="contrasts among flair, gre, fse, mprage, mp2rage (default: all)")
    make.set_defaults(run=run_make)
    score = actions.add_parser("score", help="score segmenters on a held-out set")
    score.add_argument("--set", required=True, metavar="SET.pt", help="held-out set from 'qmricore heldout make'")
    score.add_argument("--model", action="append", required=True, metavar="M.pt",
                       help="segmenter model file (repeat to score several)")
    score.add_argument("--out", required=True, metavar="SCORES.json", help="rows and summary to write")
    score.add_argument("--tta", action="store_true", help="flip test-time augmentation (slower)")
    score.set_defaults(run=run_score)


def run_make(args: argparse.Namespace) -> int:
    import sys

    from ..errors import ParameterError
    from ..inference.heldout import CONTRASTS, make_set, save_set
    from ..io import check_outputs

    contrasts = args.contrasts or list(CONTRASTS)
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if unknown:
        raise ParameterError(f"--contrasts: unknown {', '.join(unknown)} (choose from {', '.join(CONTRASTS)})")
    if args.n < 1:
        raise ParameterError("--n must be >= 1")
    if args.crop and min(args.crop) < 1:
        raise ParameterError("--crop sizes must be >= 1 voxel")
    check_outputs([args.out], [args.labels])
    held_out = make_set(args.labels, args.n, args.crop, contrasts)
    save_set(held_out, args.out)
    print(f"{len(held_out['items'])} images -> {args.out}", file=sys.stderr)
    return 0


def run_score(args: argparse.Namespace) -> int:
    import json

    from ..errors import InputError
    from ..inference.heldout import markdown, read_set, score
    from ..io import atomic_file, check_outputs
    from ..models.model_file import read_meta

    check_outputs([args.out], [args.set, *args.model])
    held_out = read_set(args.set)
    for path in args.model:  # every model is checked before the first (slow) score
        kind = read_meta(path).kind
        if kind != "segmenter":
            raise InputError(f"is a {kind} model; heldout score needs a segmenter model", path)
    result = score(held_out, args.model, tta=args.tta)
    with atomic_file(args.out, "w") as stream:
        json.dump(result, stream, indent=1)
        stream.write("\n")
    print(markdown(result["summary"]), end="")
    return 0
