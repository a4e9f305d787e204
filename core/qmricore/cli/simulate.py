"""``qmricore simulate``: MRI images from a quantitative map set, one NIfTI file per sequence.

Every requested sequence (presets and/or one ``--sequence`` with its parameters) is validated before
any map is read or anything is computed or written; all images are computed before the first one is
written, and each is written atomically on the grid of the ``pd`` map.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParameterError

#: Sequence-parameter options of ``--sequence`` (seconds, degrees, counts), in help order.
SEQUENCE_OPTIONS = {
    "tr": ("S", "repetition time (s)"),
    "te": ("S", "echo time (s)"),
    "ti": ("S", "inversion time (s); FLAIR, MPRAGE, first MP2RAGE inversion"),
    "flip": ("DEG", "flip angle (degrees)"),
    "tx": ("S", "readout pulse spacing (s); MPRAGE, MP2RAGE"),
    "n": ("N", "number of readout pulses per train; MPRAGE, MP2RAGE"),
    "ti2": ("S", "second inversion time (s); MP2RAGE"),
    "flip2": ("DEG", "second flip angle (degrees); MP2RAGE"),
    "eta": ("E", "inversion efficiency in [0, 1]; MPRAGE, MP2RAGE (default 1)"),
}
MAP_OPTIONS = {
    "pd": "proton density",
    "r1": "R1 (1/s; also R1 in 1/ms or T1 in ms/s, see --r1-unit)",
    "r2s": "R2* (1/s)",
    "mt": "MT saturation (percent units)",
    "r2": "R2 (1/s; spin-echo sequences use R2* without it)",
    "b1t": "transmit field (ratio, or percent as hMRI *_B1map)",
    "b1r": "receive field (ratio)",
}


@dataclass(frozen=True)
class Job:
    """One image to simulate: a validated sequence and its parameters, and where it goes."""

    label: str
    sequence: str
    params: dict[str, Any]
    output: Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate MRI sequences from quantitative maps (PD, R1, R2*, MT)",
        description="Simulate MRI images from a quantitative map set and write one NIfTI file per sequence,\n"
                    "on the grid of the input maps. Times are in SECONDS and angles in DEGREES everywhere\n"
                    "(e.g. --tr 9 --te 0.1 --ti 2.5, not milliseconds). Unit conversions of the maps and\n"
                    "warnings go to stderr as 'note:'/'warning:' lines; each file written is reported on stdout.",
        epilog="examples:\n"
               "  qmricore simulate --hmri-folder sub01/Results --preset '3T FLAIR' --preset 'T1 SPGR' --out synth/\n"
               "  qmricore simulate --pd pd.nii.gz --r1 r1.nii.gz --r2s r2s.nii.gz \\\n"
               "      --sequence gre --tr 0.02 --te 0.004 --flip 25 --snr 30 --seed 1 --output t1w.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    maps = parser.add_argument_group("maps (explicit files override those found in --hmri-folder)")
    maps.add_argument("--hmri-folder", metavar="DIR",
                      help="hMRI-toolbox results folder (*_PD, *_R1, *_R2s_OLS or *_R2s, *_MT or *_MTsat, ...)")
    for key, text in MAP_OPTIONS.items():
        maps.add_argument(f"--{key}", metavar="FILE", help=f"{text} NIfTI file")
    maps.add_argument("--r1-unit", default="auto", metavar="UNIT",
                      help="unit of the r1 file: auto (default: detected by range and file name), 1/s, 1/ms, "
                           "T1_ms, T1_s")
    maps.add_argument("--r2s-unit", default="auto", metavar="UNIT",
                      help="unit of the r2s file: auto (default), 1/s, 1/ms, T2s_ms, T2s_s")
    maps.add_argument("--r2-unit", default="auto", metavar="UNIT",
                      help="unit of the r2 file: auto (default), 1/s, 1/ms, T2_ms, T2_s")

    seq = parser.add_argument_group("sequences (give --preset and/or --sequence; seconds and degrees only)")
    seq.add_argument("--preset", action="append", default=[], metavar="NAME",
                     help="a named protocol (repeatable); see --list-presets")
    seq.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    seq.add_argument("--sequence", metavar="SEQ", help="gre, fse, flair, mprage or mp2rage, with its parameters")
    for key, (metavar, text) in SEQUENCE_OPTIONS.items():
        seq.add_argument(f"--{key}", type=float, metavar=metavar, help=text)

    other = parser.add_argument_group("noise, field strength, output")
    other.add_argument("--snr", type=float, help="add Rician noise at this SNR (mean signal of the brain / sigma)")
    other.add_argument("--seed", type=int, help="noise seed (sequence i uses seed + i)")
    other.add_argument("--b0-ref", type=float, metavar="T", help="field strength the maps were measured at (T)")
    other.add_argument("--b0", type=float, metavar="T", help="field strength to simulate at (T); needs --b0-ref")
    other.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    out = other.add_mutually_exclusive_group()
    out.add_argument("--out", metavar="DIR", help="output folder: one <sequence or preset>.nii.gz per image")
    out.add_argument("--output", metavar="FILE", help="output file (.nii or .nii.gz) when there is one image")
    parser.set_defaults(run=run)


def slugify(name: str) -> str:
    """File-name form of a preset name: ``"3T FLAIR"`` -> ``"3t_flair"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "image"


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """The validated list of images to make; raises ParameterError before anything is read or written."""
    from .. import protocols
    from ..io import nifti_stem
    from ..physics import check_parameters

    requested: list[tuple[str, str, dict[str, Any]]] = []
    for name in args.preset:
        sequence, params = protocols.preset(name)
        requested.append((name, sequence, params))
    given = {k: getattr(args, k) for k in SEQUENCE_OPTIONS if getattr(args, k) is not None}
    if args.sequence is not None:
        requested.append((args.sequence, args.sequence, given))
    elif given:
        raise ParameterError(f"--{' --'.join(given)} given without --sequence")
    if not requested:
        raise ParameterError("nothing to simulate: give --preset NAME and/or --sequence SEQ with its parameters")

    checked = []
    for label, sequence, params in requested:
        try:
            checked.append((label, sequence, check_parameters(sequence, params)))
        except ParameterError as error:
            prefix = f"preset {label!r}: " if label != sequence else ""
            raise ParameterError(f"{prefix}{error}") from error

    if args.output is not None:
        if len(checked) != 1:
            raise ParameterError(f"--output takes one image but {len(checked)} are requested; use --out DIR")
        if nifti_stem(args.output) is None:
            raise ParameterError(f"--output {args.output}: must end in .nii or .nii.gz")
        outputs = [Path(args.output)]
    elif args.out is not None:
        folder = Path(args.out)
        if folder.exists() and not folder.is_dir():
            raise ParameterError(f"--out {folder}: exists and is not a folder")
        outputs = [folder / f"{slugify(label)}.nii.gz" for label, _, _ in checked]
        names = [p.name for p in outputs]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ParameterError(f"two images would be written to the same file: {', '.join(clashes)}")
    else:
        raise ParameterError("give --out DIR or --output FILE")
    return [Job(label, seq, params, path) for (label, seq, params), path in zip(checked, outputs, strict=True)]


def _check_options(args: argparse.Namespace) -> None:
    if args.snr is not None and not args.snr > 0:
        raise ParameterError(f"--snr must be > 0, got {args.snr:g}")
    if (args.b0 is None) != (args.b0_ref is None):
        raise ParameterError("--b0 and --b0-ref go together (field strengths in tesla)")
    if args.b0 is not None and not (args.b0 > 0 and args.b0_ref > 0):
        raise ParameterError(f"field strengths must be > 0 T, got --b0-ref {args.b0_ref:g} --b0 {args.b0:g}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ParameterError(f"--device must be cpu, cuda or auto, got {args.device!r}")
    if args.hmri_folder is None and all(getattr(args, k) is None for k in MAP_OPTIONS):
        raise ParameterError("no maps: give --hmri-folder DIR and/or --pd, --r1, --r2s FILE")


def _say(kind: str, message: str) -> None:
    print(f"qmricore simulate: {kind}: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from .. import protocols

    if args.list_presets:
        for name in protocols.preset_names():
            sequence, params = protocols.preset(name)
            print(f"{name!r}: {sequence} " + " ".join(f"{k}={v:g}" for k, v in params.items()))
        return 0

    # 1. validate everything that needs no file
    _check_options(args)
    jobs = plan_jobs(args)


    from ..devices import resolve_device
    from ..io import check_outputs, load_map_set, write_nifti
    from ..physics import rescale_field_strength, simulate

    device = str(resolve_device(args.device))

    # 2. read and validate the maps
    files = {k: getattr(args, k) for k in MAP_OPTIONS}
    mapset = load_map_set(files, folder=args.hmri_folder, r1_unit=args.r1_unit, r2s_unit=args.r2s_unit,
                          r2_unit=args.r2_unit)
    check_outputs([job.output for job in jobs], mapset.files.values(), folders=[args.out])
    for note in mapset.notes:
        _say("note", note)
    maps = dict(mapset.maps)
    if args.b0 is not None and args.b0 != args.b0_ref:
        maps["r1"], maps["r2s"] = rescale_field_strength(maps["r1"], maps["r2s"], args.b0_ref, args.b0)
        _say("note", f"R1 and R2* re-scaled from {args.b0_ref:g} T to {args.b0:g} T"
                     + (" (the R2 map is left as it is)" if "r2" in maps else ""))

    # 3. compute every image, then write them all
    images = []
    for i, job in enumerate(jobs):
        seed = None if args.seed is None else args.seed + i
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images.append(simulate(job.sequence, maps, snr=args.snr, seed=seed, device=device, **job.params))
        for message in dict.fromkeys(str(w.message) for w in caught):
            _say("warning", message)
    for job, image in zip(jobs, images, strict=True):
        path = write_nifti(job.output, image, mapset.reference)
        print(f"wrote {path} ({job.label}: {job.sequence} "
              + " ".join(f"{k}={v:g}" for k, v in job.params.items()) + ")")
    return 0
