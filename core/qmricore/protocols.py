"""Sequence presets and sampling ranges, read from ``data/protocols.json`` (the one place they live).

The CLI's ``--preset``, the Slicer modules' preset menus and the training samplers all read here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import ParameterError


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads(resources.files("qmricore").joinpath("data/protocols.json").read_text())


def preset_names() -> list[str]:
    """Names of the shipped presets, in file order."""
    return list(_table()["presets"])


def preset(name: str) -> tuple[str, dict[str, float]]:
    """``(sequence, parameters)`` of a named preset (a fresh dict each call)."""
    table = _table()["presets"]
    if name not in table:
        raise ParameterError(f"unknown preset {name!r}; choose one of: {', '.join(table)}")
    params = dict(table[name])
    return params.pop("sequence"), params


def sampling_ranges(name: str) -> dict[str, dict[str, Any]]:
    """Parameter distributions for one sampler (``flair, fse, mprage, gre, qatlas_mprage``)."""
    table = _table()["sampling"]
    if name not in table:
        raise ParameterError(f"no sampling ranges for {name!r}; known: {', '.join(table)}")
    return {k: dict(v) for k, v in table[name].items() if not k.startswith("_")}
