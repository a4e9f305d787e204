"""``qmricore evaluate``: Dice and HD95 of predicted lesion masks against ground truth (SPEC §10).

Predictions are paired with ground-truth files by name (``sub-01.nii.gz`` or ``sub-01_<anything>.nii.gz``
against ``<truth>/sub-01.nii.gz``) or listed in a CSV manifest.  Writes the per-subject table (``--out``),
``<out stem>_summary.csv`` (medians with Student-t 95 % CIs per modality and model) and ``<out stem>.md``
(the summary as markdown, also printed).  All files are checked before the first score; outputs are
written atomically after all scores are computed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted lesion masks (Dice, HD95) and summarise per modality and model",
        description="Reslice predictions and ground truth to 1 mm, then score Dice and HD95 (mm; 256 for an\n"
                    "empty prediction against a non-empty truth); summarise medians with Student-t 95 % CIs.",
        epilog="examples:\n"
               "  qmricore evaluate --pred preds/ --truth labels/ --model qsynth --modality FLAIR --out res.csv\n"
               "  qmricore evaluate --manifest pairs.csv --out res.csv   # columns prediction,truth"
               "[,subject,modality,model]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", nargs="+", metavar="DIR_OR_FILE", help="prediction folder(s) and/or NIfTI files")
    parser.add_argument("--truth", metavar="DIR", help="folder of ground-truth masks (matched by file name)")
    parser.add_argument("--manifest", metavar="CSV",
                        help="CSV with columns prediction, truth and optional subject, modality, model "
                             "(relative paths are relative to the CSV's folder)")
    parser.add_argument("--model", default="", help="model tag for all predictions given with --pred")
    parser.add_argument("--modality", default="", help="modality tag for all predictions given with --pred")
    parser.add_argument("--label", type=int, metavar="K",
                        help="score class K of label-map masks (default: masks must be binary, 0 and one value)")
    parser.add_argument("--out", required=True, metavar="CSV",
                        help="per-subject results table (.csv); its folder is created if needed")
    parser.set_defaults(run=run)


def _nifti_files(folder: Path) -> list[Path]:
    from ..io import nifti_stem

    return sorted(p for p in folder.iterdir() if p.is_file() and nifti_stem(p) is not None)


def _pairs_from_names(args: argparse.Namespace) -> list:
    from ..errors import InputError, ParameterError
    from ..inference.metrics import EvaluationPair, match_by_name
    from ..io import nifti_stem

    if not args.truth:
        raise ParameterError("--pred needs --truth (a folder of ground-truth masks)")
    truth_dir = Path(args.truth)
    if not truth_dir.is_dir():
        raise InputError("ground-truth folder not found", truth_dir)
    predictions: list[Path] = []
    for item in args.pred:
        path = Path(item)
        if path.is_dir():
            predictions.extend(_nifti_files(path))
        elif path.exists():
            predictions.append(path)
        else:
            raise InputError("prediction not found", path)
    if not predictions:
        raise InputError("no NIfTI predictions found", " ".join(args.pred))
    truths = _nifti_files(truth_dir)
    if not truths:
        raise InputError("no NIfTI files in the ground-truth folder", truth_dir)
    return [
        EvaluationPair(p, t, subject=str(nifti_stem(t)), modality=args.modality, model=args.model)
        for p, t in match_by_name(predictions, truths)
    ]


def _pairs_from_manifest(path: Path) -> list:
    from ..errors import InputError
    from ..inference.metrics import EvaluationPair
    from ..io import nifti_stem

    if not path.is_file():
        raise InputError("manifest not found", path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the manifest ({error})", path) from error
    if not rows or not {"prediction", "truth"} <= set(rows[0]):
        raise InputError("manifest needs a header with columns prediction and truth", path)
    pairs = []
    for number, row in enumerate(rows, start=2):
        if not row.get("prediction") or not row.get("truth"):
            raise InputError(f"line {number}: empty prediction or truth", path)
        pred, truth = (path.parent / row[k] for k in ("prediction", "truth"))  # absolute paths stay absolute
        subject = row.get("subject") or str(nifti_stem(truth) or truth.name)
        pairs.append(EvaluationPair(pred, truth, subject, row.get("modality") or "", row.get("model") or ""))
    return pairs


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError, ParameterError
    from ..inference.metrics import csv_text, evaluate_pairs, summarise, summary_markdown, write_text
    from ..io import check_outputs, ensure_folder

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise InputError("output must end in .csv", out)
    if bool(args.manifest) == bool(args.pred):
        raise ParameterError("give either --pred (with --truth) or --manifest")
    if args.label is not None and args.label == 0:
        raise ParameterError("--label 0 is the background; give the class to score (e.g. --label 1)")
    pairs = _pairs_from_manifest(Path(args.manifest)) if args.manifest else _pairs_from_names(args)
    for pair in pairs:
        for path in (pair.prediction, pair.truth):
            if not path.is_file():
                raise InputError("file not found", path)
    outputs = [out, out.with_name(out.stem + "_summary.csv"), out.with_suffix(".md")]
    inputs = [p for pair in pairs for p in (pair.prediction, pair.truth)]
    check_outputs(outputs, [*inputs, args.manifest])
    rows = evaluate_pairs(pairs, label=args.label)
    summary = summarise(rows)
    markdown = summary_markdown(summary)
    texts = dict(zip(outputs, (csv_text(rows), csv_text(summary), markdown), strict=True))
    ensure_folder(out.parent)
    for path, text in texts.items():
        write_text(path, text)
    print(markdown, end="")
    print(f"{len(rows)} pair(s) scored -> {out}")
    return 0
