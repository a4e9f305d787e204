"""``qmricore import-model``: turn published weights (SynthStroke) into a qmricore model file.

Everything is read and checked before anything is written; the model file is written atomically, so a bad
input leaves no file behind.  See :mod:`qmricore.models.synthstroke` for the layouts and the config keys read.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-model",
        help="import the SynthStroke authors' published weights as a qmricore model file",
        description="Import a SynthStroke segmentation model (2-class: background, lesion; 6-class: background,\n"
                    "GM, WM, GM/WM PV, CSF, lesion) from either layout the authors publish: a Hugging Face\n"
                    "model folder / model.safetensors (keys prefixed 'unet.', with its config.json), or a\n"
                    "torch.save checkpoint {'net': state_dict, ...}.  Weights are loaded without running any\n"
                    "pickled code.  The model file stores the authors' preprocessing (RAS, 1 mm or 2 mm,\n"
                    "histogram normalisation, z-score, 128^3 windows), which 'qmricore segment' applies.\n"
                    "The weights keep the authors' licence.",
        epilog="examples:\n"
               "  qmricore import-model --synthstroke ~/Downloads/synthstroke-qsynth/ --out synthstroke.pt\n"
               "  qmricore import-model --synthstroke ckpt_best.pt --spacing 2 --out synthstroke_lowres.pt\n"
               "  qmricore segment --model synthstroke.pt --input flair.nii.gz --out lesion.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--synthstroke", required=True, metavar="PATH",
                        help="model folder, model.safetensors, or a {'net': ...} torch checkpoint")
    parser.add_argument("--config", metavar="JSON",
                        help="config.json to use (default: the one next to model.safetensors; none for a checkpoint)")
    parser.add_argument("--spacing", type=float, metavar="MM",
                        help="voxel size the model was trained at (default: from the config, else 1; "
                             "2 for the low-res variant)")
    parser.add_argument("--name", help="display name stored in the model file")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="qmricore model file to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io import check_outputs
    from ..models.synthstroke import import_synthstroke

    source = Path(args.synthstroke)
    inputs = [source, args.config] + ([source / "model.safetensors", source / "config.json"] if source.is_dir() else [])
    check_outputs([args.out], inputs)
    model = import_synthstroke(args.synthstroke, args.out, config=args.config, spacing=args.spacing, name=args.name)
    classes = ", ".join(model.network.class_names)
    print(f"{model.origin['name']}: {len(model.network.class_names)} classes ({classes}), "
          f"{model.parameters / 1e6:.1f} M parameters, {model.spacing:g} mm, from the {model.layout} layout "
          f"-> {model.path}")
    return 0
