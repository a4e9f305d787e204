"""The ``qmricore`` command line: thin argument parsing over typed library functions.

Each sub-command lives in its own module here with a ``register(subparsers)`` function that adds its
parser and sets ``run=`` to a function taking the parsed arguments.  Heavy imports (torch models,
MONAI) happen inside ``run`` so that ``qmricore --help`` stays fast.

Errors a user can act on (:class:`~qmricore.errors.QMRIError`, bad files, infeasible timings) print
one line ``qmricore <command>: error: <file>: <problem>`` and exit with status 2; nothing is left
half-written because every output goes through :func:`qmricore.io.atomic_file`.  Every command checks its
outputs with :func:`qmricore.io.check_outputs` first (never an input, writable); an OS error that still
happens while writing (disk full, a folder removed meanwhile) is one line naming the path, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import QMRIError

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "simulate", "demo", "sample-data", "train-seg", "train-estimator", "train-mwf", "fit-priors", "synth",
    "heads", "segment", "estimate", "mwf", "synthmap", "evaluate", "heldout", "import-model", "check-model",
    "ldm",
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="qmricore", description="Physics-based MRI synthesis from quantitative maps.")
    parser.add_argument("--version", action="version", version=f"qmricore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except QMRIError as error:
        print(f"qmricore {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the environment, not a bug: one line naming the path
        where = f"{error.filename}: " if error.filename else ""
        print(f"qmricore {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qmricore {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
