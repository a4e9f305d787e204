"""Exceptions that carry a one-line, user-facing message.

The command line prints ``str(error)`` and exits non-zero for these; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class QMRIError(Exception):
    """Base class for errors a user can act on (bad input, infeasible parameters)."""


class InputError(QMRIError, ValueError):
    """A file or array given by the user is missing, unreadable or invalid.

    The message names the file (when there is one) and the problem, on one line.
    """

    def __init__(self, problem: str, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ParameterError(QMRIError, ValueError):
    """Sequence parameters that are invalid or physically infeasible (TI >= TR, TA < 0, TE <= 0...)."""
