"""Where the shipped model files are, and the rule both modules use to pick a model file.

A model parameter is a path; empty (Slicer's wrapper stores ``Path("")`` as ``"."``) means "the shipped one".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qmricore.errors import InputError

#: Where the shipped models live, first match wins: the repository's Resources/Models (source tree) and the one
#: next to the module folders (an installed extension).
MODEL_FOLDERS = (Path(__file__).resolve().parents[2] / "Resources" / "Models",
                 Path(__file__).resolve().parents[1] / "Resources" / "Models")


def isEmpty(path: Any) -> bool:
    """Whether a model parameter names no file (``None``, ``""`` or the wrapper's ``"."``)."""
    return path is None or str(path) in ("", ".")


def shippedModel(name: str) -> Path | None:
    """The shipped model file of that name, or None when it is not installed."""
    for folder in MODEL_FOLDERS:
        if (folder / name).is_file():
            return folder / name
    return None


def chosenOrShipped(path: Any, name: str, what: str) -> Path | None:
    """``path`` when given (it must exist: a one-line error naming it otherwise), else the shipped ``name``, else
    None."""
    if isEmpty(path):
        return shippedModel(name)
    model = Path(str(path))
    if not model.is_file():
        raise InputError(f"{what}: no such file", model)
    return model


def unavailableReason(path: Any, name: str, what: str, where: str) -> str:
    """Why no model file can be used now ("" when one can): the chosen file is missing, or none is chosen and
    ``name`` is not installed; ``where`` says where to choose one."""
    try:
        if chosenOrShipped(path, name, what) is not None:
            return ""
    except InputError as error:
        return str(error)
    return f"needs a {what}: choose one under '{where}' (the default Resources/Models/{name} is not installed)."
