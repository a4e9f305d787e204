"""``qmricore sample-data``: build the sample map set from nilearn's MNI ICBM152 2009a template.

>>> qmricore sample-data --out Resources/SampleData --resolution 2
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample-data", help="build the sample qMRI map set (PD, R1, R2*, MT, R2, labels) from the MNI template",
        description="Build a sample qMRI map set at 3 T (PD, R1, R2*, MT, R2 and a tissue label map) from the "
                    "MNI ICBM152 2009a template shipped in nilearn (no download).")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--resolution", type=float, default=2.0, metavar="MM",
                        help="isotropic voxel size in mm, >= 1 (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    import nibabel as nib

    from ..sample_data import build_sample

    start = time.perf_counter()
    paths = build_sample(args.out, resolution_mm=args.resolution)
    elapsed = time.perf_counter() - start
    for key, path in paths.items():
        print(f"{key:7s} {path}  ({path.stat().st_size / 1e6:.2f} MB)")
    image = nib.load(str(paths["pd"]))
    total = sum(p.stat().st_size for p in paths.values()) / 1e6
    shape = " x ".join(str(s) for s in image.shape)
    print(f"grid {shape} at {args.resolution:g} mm; {total:.2f} MB in all; {elapsed:.1f} s")
    return 0
