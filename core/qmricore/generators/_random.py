"""The random source of a draw: a generator of the stage's kind, or an int seed for a fresh one.

Every ``draw_*`` takes it as ``generator``, right after what it draws for (first when it draws for nothing),
and accepts an ``int`` in its place: ``np.random.default_rng(seed)`` for the numpy stages,
``torch.Generator().manual_seed(seed)`` (CPU) for the torch ones, the generators their callers built already.
Which kind a stage uses is fixed by the random streams of the samples, heads and models made so far (see
:mod:`qmricore.generators`), so a wrong kind is an error here rather than a silent conversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ParameterError


def _seed(generator: Any, what: str, kind: str) -> int:
    if isinstance(generator, (bool, np.bool_)) or not isinstance(generator, (int, np.integer)):
        raise ParameterError(f"{what} needs a {kind} or an int seed, got {type(generator).__module__}."
                             f"{type(generator).__qualname__}")
    return int(generator)


def numpy_rng(generator: np.random.Generator | int, what: str) -> np.random.Generator:
    """``generator`` itself, or ``np.random.default_rng(generator)`` for an int seed."""
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(_seed(generator, what, "numpy.random.Generator"))


def torch_generator(generator: torch.Generator | int, what: str) -> torch.Generator:
    """``generator`` itself (on its device), or ``torch.Generator().manual_seed(generator)`` for an int seed."""
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(_seed(generator, what, "torch.Generator"))
