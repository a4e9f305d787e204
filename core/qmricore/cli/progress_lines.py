"""``--progress-lines``: the line protocol by which a program follows a ``qmricore`` run (QMRISegment does).

On stdout, flushed at once: ``PROGRESS <fraction> <message>`` lines while the work goes on and one last
``RESULT <json>`` line with what was written; a user-facing error is the CLI's usual ``error: ...`` line on
stderr with exit status 2.  The reader is ``QMRICommonLib.runner.BackgroundRunner``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ProgressLines:
    """Prints the protocol's lines when ``enabled``; does nothing otherwise (the plain CLI output stays as it is)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def line(self, fraction: float, message: str) -> None:
        if self.enabled:
            print(f"PROGRESS {fraction:.4f} {message}", flush=True)

    def counting(self, update: Callable[[int], object], total: int, unit: str, verb: str = "processing",
                 start: float = 0.0, stop: float = 1.0) -> Callable[[int], None]:
        """A first line ("<verb> <total> <unit>(s)"), then ``update`` (a progress bar's) followed by a PROGRESS line
        per batch of units done, the fraction going from ``start`` to ``stop`` over ``total`` units."""
        done = 0
        self.line(start, f"{verb} {total} {unit}(s)")

        def step(count: int) -> None:
            nonlocal done
            update(count)
            done += count
            self.line(start + (stop - start) * (done / total if total else 1.0), f"{done} of {total} {unit}(s) done")

        return step

    def result(self, payload: dict[str, Any]) -> None:
        """The last lines: PROGRESS 1 and ``RESULT <json>`` of ``payload`` (paths as strings)."""
        if self.enabled:
            self.line(1.0, "done")
            print("RESULT " + json.dumps(_plain(payload)), flush=True)


def add_argument(parser: Any) -> None:
    """The ``--progress-lines`` flag, worded once for every sub-command that has it."""
    parser.add_argument("--progress-lines", action="store_true",
                        help="print 'PROGRESS <fraction> <message>' lines and a last 'RESULT <json>' line on stdout "
                             "(for a program that follows the run, such as QMRISegment)")
