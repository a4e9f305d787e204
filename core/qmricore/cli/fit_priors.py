"""``qmricore fit-priors``: fit qSynth tissue priors from real map sets and label maps, write a priors JSON.

Map folders are read with :func:`qmricore.io.load_map_set` (hMRI names ``*_PD``, ``*_R1``, ``*_R2s``,
``*_MT``), label maps with :func:`qmricore.io.read_volume`; the i-th label file belongs to the i-th
folder and must be on its grid.  Label values are those of ``--classes`` (default: the shipped
priors: 0 background, 1 GM, 2 WM, 3 GM/WM partial volume, 4 CSF, 5 non-brain, 6 lesion); a label map without
brain-tissue voxels is an error; classes or maps with no data keep the ``--classes`` priors (each is reported as
a note).  The output folder is created if needed; the output is written atomically and never onto an input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-priors",
        help="fit qSynth tissue priors from quantitative map sets and label maps",
        description="Fit hierarchical qSynth priors (per class and map: mean and spread of subject means and of "
                    "within-subject spreads) from map folders and their label maps, and write a priors JSON.",
    )
    parser.add_argument("--maps", nargs="+", required=True, metavar="DIR",
                        help="hMRI-style map folders, one per subject (pd, r1, r2s; mt optional)")
    parser.add_argument("--labels", nargs="+", required=True, metavar="FILE",
                        help="label maps (NIfTI), one per map folder, in the same order")
    parser.add_argument("--out", required=True, metavar="JSON", help="priors file to write")
    parser.add_argument("--classes", metavar="JSON", default=None,
                        help="priors file giving class names, label values and fallback priors (default: shipped)")
    parser.set_defaults(run=run)


def _subjects(maps: list[str], labels: list[str]) -> Iterator[tuple[dict[str, Any], Any]]:
    import numpy as np

    from ..errors import InputError
    from ..io import load_map_set, read_volume

    for folder, label_file in zip(maps, labels, strict=True):
        map_set = load_map_set(folder=folder)
        for note in map_set.notes:
            print(f"note: {folder}: {note}", file=sys.stderr)
        label = read_volume(label_file, what="label map")
        ref = map_set.reference
        if label.shape != ref.shape:
            raise InputError(f"label map shape {label.shape} differs from the maps' grid {ref.shape} in {folder}",
                             label_file)
        if not np.allclose(label.affine, ref.affine, rtol=1e-5, atol=1e-4):
            raise InputError(f"label map affine differs from the maps' in {folder} "
                             f"(by up to {float(np.abs(label.affine - ref.affine).max()):.3g} mm)", label_file)
        yield map_set.maps, label.data


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..generators.priors import fit_priors, load_priors
    from ..io import check_outputs, ensure_folder, find_hmri_maps

    if len(args.maps) != len(args.labels):
        raise InputError(f"got {len(args.maps)} map folder(s) but {len(args.labels)} label file(s); "
                         "give one label map per folder")
    out = Path(args.out)
    if out.is_dir():
        raise InputError("output is a folder; give a .json file name", out)
    map_files = [p for folder in args.maps for p in find_hmri_maps(folder).values()]
    check_outputs([out], [*args.labels, *map_files, args.classes])
    table = load_priors(args.classes)
    priors = fit_priors(_subjects(args.maps, args.labels), table, names=args.labels)
    ensure_folder(out.parent)
    priors.save(out)
    for note in priors.notes[1:]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}: {priors.n_classes} classes fitted from {len(args.maps)} subject(s)")
    return 0
