"""``qmricore train-mwf``: train (or resume) the CNN myelin-water-fraction estimator on SynthMap data (SPEC §14).

    qmricore train-mwf --config cfg.json --out runs/mwf [--resume] [--iterations N] [--device cuda]
"""

from __future__ import annotations

import argparse
import os

from ..training.cli_args import add_arguments, read_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-mwf", help="train the CNN MWF estimator (multi-echo spin echo -> myelin water fraction)",
        description="Train the CNN MWF estimator on SynthMap multi-echo series painted on label maps; writes "
                    "OUT/config.json, OUT/train_log.jsonl, OUT/checkpoint.pt (atomic, resumable) and OUT/model.pt.")
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.mwf import train_mwf

    config = read_config(args, "mwf")
    path = train_mwf(config, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"model: {path}")
    return 0
