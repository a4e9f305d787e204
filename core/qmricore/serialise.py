"""Frozen dataclasses to JSON-safe plain data and back, guided by their field types (STYLE §2).

Every config and every draw of the package is a frozen dataclass saved as JSON: sidecars next to generated
samples, the settings inside model files, training configs.  One pair of functions does that for all of them:

:func:`to_plain`
    a dataclass -> ``dict`` of its fields in field order; tuples and lists -> lists, mappings -> dicts with
    ``str`` keys, numpy scalars -> Python numbers, ``None``/bool/int/float/str unchanged.  A nested dataclass
    goes through its own ``to_dict()``, so a class with its own format keeps it inside others.  The result
    equals ``json.loads(json.dumps(result))``: what is in memory is what a file gives back (unless asked to
    keep tuples, as the settings stored in model files are).
:func:`from_plain`
    the inverse for a dataclass type, read from the field annotations: lists -> tuples where the field is a
    tuple (nested tuples too), nested dataclasses rebuilt through their ``from_dict``, an int accepted where a
    float is expected (and made a float), a missing key takes the field's default.  Unknown keys, missing
    required keys and values of the wrong type raise ``error`` (``ParameterError`` unless told otherwise)
    naming the class and the field, e.g. ``SegmenterConfig: unknown keys ['depth']`` or
    ``SpatialDraw.in_shape: expected tuple[int, int, int], got [1, 2]``.  The class's own ``__post_init__``
    then checks values as it does for any construction.

:class:`JSONDataclass` is the mixin that gives a dataclass ``to_dict()``/``from_dict()`` through these two;
its ``json_error`` class attribute picks the exception: ``ParameterError`` (a bad setting) for configs, and
``InputError`` (a bad file) for draws, which use :class:`JSONDraw`; :class:`ModelSettings` keeps tuples in
``to_dict()`` for the settings stored in model files.  A class whose JSON form is not its field
layout (``MapDraw`` keyed by class name, ``TissuePriors``' file format) overrides both and says why; one that
checks more than types (``LesionDraw``, ``SequenceDraw``) calls :func:`from_plain` and then checks.

Annotations understood: ``None``, ``bool``, ``int``, ``float``, ``str``, ``Any``, ``tuple[X, ...]``,
``tuple[X, Y, Z]``, ``list[X]``, ``dict[K, V]``/``Mapping[K, V]``, unions (``X | None``; members tried in
order), and dataclasses.  This module sits at the package top (like :mod:`qmricore.errors`) because
generators, inference settings and network configs all use it and none of them should import another for it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar, TypeVar, Union

import numpy as np

from .errors import InputError, ParameterError

__all__ = ["to_plain", "from_plain", "JSONDataclass", "JSONDraw", "ModelSettings"]

T = TypeVar("T")
_NONE = type(None)


# ------------------------------------------------------------------------------------------------------------
# To plain data
# ------------------------------------------------------------------------------------------------------------

def to_plain(obj: Any, *, keep_tuples: bool = False) -> dict[str, Any]:
    """The fields of dataclass instance ``obj`` as a JSON-safe dict (see the module docstring).

    ``keep_tuples``: tuples stay tuples (as :func:`dataclasses.asdict` leaves them), for data kept in a torch
    file rather than a JSON one.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_plain needs a dataclass instance, got {type(obj).__name__}")
    return {f.name: _plain(getattr(obj, f.name), f"{type(obj).__name__}.{f.name}", keep_tuples)
            for f in dataclasses.fields(obj)}


def _plain(x: Any, where: str, keep_tuples: bool) -> Any:
    if isinstance(x, np.generic):  # before the Python types: np.float64 is a float
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return x.to_dict() if hasattr(x, "to_dict") else to_plain(x, keep_tuples=keep_tuples)
    if isinstance(x, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]", keep_tuples) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]", keep_tuples) for i, v in enumerate(x)]
        return tuple(items) if keep_tuples and isinstance(x, tuple) else items
    raise TypeError(f"{where}: a {type(x).__name__} is not JSON data")


# ------------------------------------------------------------------------------------------------------------
# From plain data
# ------------------------------------------------------------------------------------------------------------

class _Mismatch(Exception):
    """A value that does not fit one member of a union (the next member is tried)."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_plain(cls: type[T], data: Any, *, error: Callable[[str], Exception] = ParameterError) -> T:
    """Rebuild dataclass ``cls`` from :func:`to_plain` data (or JSON read from a file).

    ``error`` makes the exception from a message: an exception class, or e.g.
    ``lambda problem: InputError(f"not a lesion draw ({problem})")``.  Errors of nested dataclasses are
    theirs (they are rebuilt by their own ``from_dict``), and so are the checks of ``cls.__post_init__``.
    """
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise error(f"{name}: expected a JSON object, got {_describe(data)}")
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(str(k) for k in set(data) - {f.name for f in fields})
    if unknown:
        raise error(f"{name}: unknown keys {unknown}")
    values = {}
    for f in fields:
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], f"{name}.{f.name}", error)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise error(f"{name}: missing key {f.name!r}")
    return cls(**values)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str, error: Callable[[str], Exception]) -> Any:
    """``value`` as annotation ``tp`` wants it, or ``error`` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong() -> Exception:
        return error(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")

    if tp is Any or tp is object:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and _NONE in args:
            return None
        options = [a for a in args if a is not _NONE]
        if len(options) == 1:
            return _convert(options[0], value, where, error)
        for option in options:
            try:
                return _convert(option, value, where, _Mismatch)
            except _Mismatch:
                continue
        raise wrong()
    if tp is _NONE:
        if value is not None:
            raise wrong()
        return None
    if tp is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise wrong()
        return bool(value)
    if tp is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise wrong()
        return int(value)
    if tp is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise wrong()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong()
        return tuple(_convert(a, v, f"{where}[{i}]", error) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        item = args[0] if args else Any
        return [_convert(item, v, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise wrong()
        key, item = args if args else (Any, Any)
        return {_convert(key, k, f"{where} key", error): _convert(item, v, f"{where}[{k!r}]", error)
                for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if error is _Mismatch and not isinstance(value, Mapping):
            raise wrong()
        return tp.from_dict(value) if hasattr(tp, "from_dict") else from_plain(tp, value, error=error)
    raise TypeError(f"{where}: from_plain does not handle the annotation {tp!r}")


class JSONDataclass:
    """Mixin for frozen dataclasses: ``to_dict()`` is :func:`to_plain`, ``from_dict()`` is :func:`from_plain`.

    ``json_error`` is the exception ``from_dict`` raises for unknown or missing keys and wrong types.
    ``keep_tuples`` (default False) makes ``to_dict()`` keep tuples (:class:`ModelSettings`).
    """

    json_error: ClassVar[Callable[[str], Exception]] = ParameterError
    keep_tuples: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-safe plain data (tuples become lists unless ``keep_tuples``)."""
        return to_plain(self, keep_tuples=self.keep_tuples)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Rebuild from :meth:`to_dict` data (lists back to tuples; missing keys take their defaults)."""
        return from_plain(cls, data, error=cls.json_error)  # type: ignore[attr-defined]


class ModelSettings(JSONDataclass):
    """:class:`JSONDataclass` for the settings a model file stores (network, preprocessing, inference):
    ``to_dict()`` keeps tuples, as in every model file written so far (a torch file keeps them)."""

    keep_tuples = True


class JSONDraw(JSONDataclass):
    """:class:`JSONDataclass` for draws: a draw comes from a file (a sidecar), so a bad one is an ``InputError``."""

    json_error = InputError
