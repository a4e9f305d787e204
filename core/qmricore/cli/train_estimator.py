"""``qmricore train-estimator``: train (or resume) the qATLAS MPRAGE → qMRI-map estimator (SPEC §7).

    qmricore train-estimator --config cfg.json --out runs/qatlas [--resume] [--iterations N] [--device cuda]
"""

from __future__ import annotations

import argparse
import os

from ..training.cli_args import add_arguments, read_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-estimator", help="train the qATLAS estimator (MPRAGE -> PD, R1, R2*, MT maps)",
        description="Train the qATLAS U-Net on MPRAGEs simulated from real map sets; writes OUT/config.json, "
                    "OUT/train_log.jsonl, OUT/checkpoint.pt (atomic, resumable) and OUT/model.pt.")
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.estimator import train_estimator

    config = read_config(args, "estimator")
    path = train_estimator(config, args.out, resume=args.resume, device=args.device,
                           progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"model: {path}")
    return 0
