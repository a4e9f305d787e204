"""``qmricore heads``: whole-head training label maps built around a brain label map (docs/anatomy.md).

>>> qmricore heads --labels Resources/SampleData/sample_labels.nii.gz --out Resources/TrainingAnatomy -n 16 --seed 0
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "heads", help="varied whole-head label maps (skull, scalp, eyes, neck) around a brain label map",
        description="Build N whole-head label maps around a brain label map: random deformation, atrophy and "
                    "ventricle size, then dura, skull with diploe, scalp muscle and fat, eyes and neck. Writes "
                    "head_XXXX_labels.nii.gz and head_XXXX.json (the draw) per head.")
    parser.add_argument("--labels", required=True, metavar="FILE", help="brain label map (GM, WM, PV, CSF), RAS")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("-n", type=int, default=16, help="number of heads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of head 0; head i uses seed + i")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from ..errors import InputError, ParameterError
    from ..generators.anatomy import build_head
    from ..io import Volume, atomic_file, check_outputs, read_volume, write_nifti

    if args.n < 1 or args.seed < 0:
        raise ParameterError("-n must be >= 1 and --seed >= 0")
    out = Path(args.out)
    stems = [out / f"head_{i:04d}" for i in range(args.n)]
    check_outputs([p for s in stems for p in (f"{s}_labels.nii.gz", f"{s}.json")], [args.labels], folders=[out])
    source = read_volume(args.labels, what="label map")
    labels = source.data
    if not np.array_equal(labels, np.round(labels)):
        raise InputError("label map has non-integer values", args.labels)
    labels = np.round(labels).astype(np.int64)
    try:  # every head is built before anything is written
        heads = [build_head(labels, source.affine, args.seed + i) for i in range(args.n)]
    except InputError as error:
        raise InputError(error.problem, args.labels) from None
    out.mkdir(parents=True, exist_ok=True)
    for i, (stem, (head, affine, draw)) in enumerate(zip(stems, heads, strict=True)):
        write_nifti(f"{stem}_labels.nii.gz", head.astype(np.int16), Volume(head, affine, None, None))
        with atomic_file(Path(f"{stem}.json"), "w") as stream:
            json.dump({"source": Path(args.labels).name, "seed": args.seed + i, "draw": draw.to_dict()}, stream,
                      indent=1)
            stream.write("\n")
        counts = np.bincount(head.reshape(-1))
        print(f"{stem}_labels.nii.gz  {' x '.join(map(str, head.shape))}  head voxels {int(counts[1:].sum())}")
    return 0
