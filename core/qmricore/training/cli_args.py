"""Shared argument handling of the training commands (``train-seg``, ``train-estimator``, ``train-mwf``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both training commands take."""
    parser.add_argument("--config", type=Path, help="training config JSON (default with --resume: OUT/config.json)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, log, model.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    parser.add_argument("--iterations", type=int, help="override loop.iterations")
    parser.add_argument("--seed", type=int, help="override loop.seed")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_config(args: argparse.Namespace, task: str) -> Any:
    """The config to train with: ``--config``, or the run's own ``config.json`` when resuming."""
    from .config import load_config, with_overrides  # imports torch: only when a command runs

    path = args.config
    if path is None:
        if not args.resume:
            raise InputError("--config is required (except with --resume on a folder that has config.json)")
        path = args.out / "config.json"
    if not args.resume:  # a fresh run writes OUT/config.json: never onto the config it reads
        from ..io import check_outputs

        check_outputs([args.out / "config.json"], [path])
    config = load_config(path)
    if config.task != task:
        raise InputError(f"config is for task {config.task!r}, not {task!r}", path)
    if args.iterations is not None and args.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {args.iterations}")
    return with_overrides(config, iterations=args.iterations, seed=args.seed)
