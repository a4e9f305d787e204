"""``qmricore train-seg``: train (or resume) a lesion segmentation network (SPEC §8).

    qmricore train-seg --config cfg.json --out runs/seg [--resume] [--iterations N] [--device cuda]
    torchrun --nproc-per-node 4 --no-python qmricore train-seg --config cfg.json --out runs/seg
"""

from __future__ import annotations

import argparse
import os

from ..training.cli_args import add_arguments, read_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-seg", help="train a lesion segmentation network (real, qsynth, synth, qatlas data)",
        description="Train a lesion segmentation U-Net from a JSON config; writes OUT/config.json, "
                    "OUT/train_log.jsonl, OUT/checkpoint.pt (atomic, resumable) and OUT/model.pt.")
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.seg import train_segmentation

    config = read_config(args, "seg")
    path = train_segmentation(config, args.out, resume=args.resume, device=args.device,
                              progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"model: {path}")
    return 0
