"""``qmricore synth``: synthetic training samples (image, label, parameters) from label maps.

Everything is read and checked first (label maps, lesion masks and their grids, priors, device, the output
folder); nothing is written when any input is bad.  A folder holding samples of an earlier run is refused
(they would mix with the new ones) unless ``--replace`` removes them first.  Each sample is written atomically as
``sample_NNNN_image.nii.gz``, ``sample_NNNN_label.nii.gz`` and ``sample_NNNN_params.json`` on the
input's grid moved to the crop origin.  Sample ``i`` is ``SyntheticDataset(labels, ...)[i]`` with the
same seed (:func:`qmricore.datasets.sample_seed`).
"""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic training images and labels from label maps (qSynth physics or GMM)",
        description="Generate N synthetic training samples from label maps (classes 0 background, 1 GM, 2 WM,\n"
                    "3 GM/WM partial volume, 4 CSF, 5 non-brain, 6 lesion). --mode qsynth draws qMRI maps\n"
                    "and a sequence and simulates the physics; --mode synth is the SynthSeg-style GMM baseline.\n"
                    "Both apply the same spatial and intensity augmentation and a random crop.",
        epilog="example:\n"
               "  qmricore synth --labels sample_labels.nii.gz --out synth/ -n 10 --mode qsynth --seed 1 --crop 160",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--labels", required=True, metavar="FILE_OR_DIR",
                        help="label map NIfTI file, or a folder of them (sample i uses file i mod count)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("-n", type=int, default=1, metavar="N", help="number of samples (default 1)")
    parser.add_argument("--mode", choices=("qsynth", "synth"), default="qsynth",
                        help="qsynth: physics from drawn qMRI maps (default); synth: GMM baseline")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="base seed (default 0)")
    parser.add_argument("--crop", type=int, default=None, metavar="VOXELS",
                        help="cubic output size in voxels (default: the augmentation default, 192)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to generate (default cpu)")
    parser.add_argument("--priors", metavar="JSON", help="tissue priors file (default: shipped 3 T priors)")
    parser.add_argument("--lesions", metavar="FILE_OR_DIR",
                        help="lesion masks on the label maps' grid; sample i pastes mask i mod count")
    parser.add_argument("--lesion-prob", type=float, default=None, metavar="P",
                        help="probability of a synthetic lesion when no --lesions are given "
                             "(default: the pipeline default)")
    parser.add_argument("--replace", action="store_true",
                        help="remove the samples of an earlier run in --out first (default: refuse such a folder)")
    parser.set_defaults(run=run)


def older_samples(out: object, endings: tuple[str, ...] = ("_image.nii.gz", "_label.nii.gz", "_params.json")) -> list:
    """Files of earlier samples (``sample_NNNN`` + one of ``endings``) in folder ``out``."""
    import re
    from pathlib import Path

    folder = Path(out)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^sample_\d{4,}(" + "|".join(re.escape(e) for e in endings) + ")$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def clear_older_samples(out: object, inputs: list, replace: bool, endings: tuple[str, ...] | None = None) -> None:
    """Refuse a folder holding an earlier run's samples (they would mix with the new ones), or with ``replace``
    remove them first; never an input."""
    from ..errors import InputError
    from ..io import check_outputs

    older = older_samples(out) if endings is None else older_samples(out, endings)
    check_outputs(older, inputs)  # --replace never removes an input
    if older and not replace:
        raise InputError(f"holds {len(older)} file(s) of earlier samples ({older[0].name}, ...); choose an empty "
                         "folder or pass --replace to remove them first", out)
    for path in older:
        path.unlink()
    if older:
        print(f"removed {len(older)} file(s) of earlier samples from {out}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..datasets import SyntheticDataset, sample_paths, write_sample
    from ..devices import resolve_device
    from ..errors import InputError, ParameterError
    from ..generators.pipeline import PipelineConfig
    from ..generators.priors import load_priors
    from ..io import check_outputs

    if args.n < 1:
        raise ParameterError(f"-n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ParameterError(f"--seed must be >= 0, got {args.seed}")
    if args.crop is not None:
        from ..generators.augment import crop_shape

        try:
            crop_shape((1, 1, 1), args.crop)
        except ParameterError as error:
            raise ParameterError(f"--crop: {error}") from None
    resolve_device(args.device)  # a CUDA request without a CUDA device fails before anything is read
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", out)

    # configuration (each default lives in its config class)
    config = PipelineConfig(mode=args.mode, priors=args.priors)
    if args.crop is not None:
        config = dataclasses.replace(config, augment=dataclasses.replace(config.augment, crop=args.crop))
    if args.lesion_prob is not None:
        config = dataclasses.replace(config, lesion_prob=args.lesion_prob)
    priors = load_priors(args.priors)

    # read and check every input before writing anything
    dataset = SyntheticDataset(args.labels, config, length=args.n, base_seed=args.seed, device=args.device,
                               lesions=args.lesions, priors=priors)
    dataset.check_inputs()
    outputs = [p for i in range(args.n) for p in sample_paths(out, i).values()]
    inputs = [*dataset.files, *dataset.lesion_files, args.priors]
    check_outputs(outputs, inputs, folders=[out])
    clear_older_samples(out, inputs, args.replace)

    # generate and write, one sample at a time
    for index in tqdm(range(args.n), desc="qmricore synth", unit="sample", disable=None):
        sample, source = dataset.sample(index)
        extra = {"labels_file": str(source.volume.path), "index": index, "base_seed": args.seed}
        if dataset.lesion_files:
            extra["lesion_file"] = str(dataset.lesion_files[index % len(dataset.lesion_files)])
        write_sample(out, index, sample, source.volume, extra)
    print(f"wrote {args.n} sample(s) to {out}")
    return 0
