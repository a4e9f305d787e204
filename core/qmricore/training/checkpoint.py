"""Atomic, self-describing training checkpoints that resume a run exactly (SPEC §8, §13).

A checkpoint is one ``torch.save`` file holding

``format``, ``code_version``
    file-format tag and the ``qmricore`` version that wrote it;
``config``, ``classes``, ``preprocessing``
    the training config (JSON form), output class/map names and the input preprocessing;
``iteration``
    optimiser steps done; the data-sampler position is this number (sample indices are a pure
    function of ``(seed, iteration, rank)``, see :mod:`qmricore.training.distributed`);
``model``, ``optimizer``, ``scheduler``
    their ``state_dict()``s (the model unwrapped from DDP);
``rng``
    one entry per process (rank order): the torch CPU (and CUDA) generator states, numpy's and
    Python's ``random`` states.

It is written to a temporary file in the same folder, flushed to disk and renamed over the old one
(``os.replace`` is atomic on POSIX and Windows), so a crash or a kill at any moment leaves either the
previous checkpoint or the new one, never a torn file.  Loading uses ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import InputError
from ..io import atomic_torch_save

FORMAT = "qmricore-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint before the latest, kept to fall back on when the latest cannot be read.
PREVIOUS_NAME = "checkpoint.prev.pt"


def capture_rng() -> dict[str, Any]:
    """The current random states of torch (CPU and CUDA), numpy and Python, in a ``weights_only``-safe form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore random states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    iteration: int,
    config: Mapping[str, Any],
    meta: Mapping[str, Any],
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint (see the module docstring) atomically and return its path.

    Parameters
    ----------
    model
        The bare network (not the DDP wrapper).
    iteration
        Optimiser steps completed.
    config
        The training config in JSON form.
    meta
        ``classes`` (output names) and ``preprocessing`` (dict), stored alongside.
    rng
        Random states of every process in rank order; default: this process's only.
    """
    state = {
        "format": FORMAT,
        "code_version": __version__,
        "config": dict(config),
        "classes": list(meta.get("classes", ())),
        "preprocessing": dict(meta.get("preprocessing", {})),
        "iteration": int(iteration),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng if rng is not None else [capture_rng()],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():  # keep the current one as the previous (a hard link, so `path` never goes missing)
        previous = path.with_name(PREVIOUS_NAME)
        link = path.with_name(f".{PREVIOUS_NAME}.link")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:  # no hard links on this file system: a copy
            import shutil

            shutil.copyfile(path, link)
        os.replace(link, previous)
    return atomic_torch_save(state, path)


def load_latest_checkpoint(folder: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                           ) -> dict[str, Any] | None:
    """The checkpoint of a run folder: ``checkpoint.pt``, or ``checkpoint.prev.pt`` (with a warning) when the
    latest is missing or unreadable; ``None`` when the folder has neither."""
    import warnings

    folder = Path(folder)
    latest, previous = folder / CHECKPOINT_NAME, folder / PREVIOUS_NAME
    if not latest.exists() and not previous.exists():
        return None
    try:
        return load_checkpoint(latest, map_location)
    except InputError as error:
        if not previous.is_file():
            raise
        warnings.warn(f"{error}; resuming from the previous checkpoint {previous}", RuntimeWarning, stacklevel=2)
        return load_checkpoint(previous, map_location)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or foreign file raises ``InputError``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(f"not a readable checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})",
                         path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"not a qmricore training checkpoint (expected format {FORMAT!r})", path)
    return state


def restore_training_state(
    state: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> int:
    """Load model/optimizer/scheduler/RNG states from a checkpoint dict; return its iteration.

    ``rank`` picks this process's random states; a rank the checkpoint does not have (the run was
    resumed on more processes) keeps its own seeded states.
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if rank < len(state["rng"]):
        restore_rng(state["rng"][rank])
    return int(state["iteration"])
