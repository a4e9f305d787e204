"""Parameter definitions of both modules: the spec classes and their headless storage, without Qt.

A module declares each parameter once as a :class:`ParameterSpec` or :class:`NodeSpec` in its Lib
(``QMRISynthLib.parameters``, ``QMRISegmentLib.parameters``).  The module file's ``@parameterNodeWrapper``
class lists the same parameters in the template's declarative form; ``Testing/test_widgets.py`` checks that
the two agree (names, types, defaults, ranges, choices, node classes) and that the ``.ui`` widgets carry the
same ranges.  :class:`ScriptedNodeParameters` stores the values in a ``vtkMRMLScriptedModuleNode`` with the
wrapper's string encoding, so the Logic runs on one object type inside and outside the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qmricore.generators.synthmap import DEFAULT_CONFIG as SYNTHMAP_DEFAULTS


@dataclass(frozen=True)
class ParameterSpec:
    """One scalar parameter of a module.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str``; numbers have ``minimum``/``maximum`` (the slider or
    spin-box range, also the wrapper's ``WithinRange``), strings with ``choices`` are combo boxes.
    """

    name: str
    kind: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    label: str = ""
    unit: str = ""
    decimals: int | None = None
    step: float | None = None

    def encode(self, value: Any) -> str:
        """The string the parameter node stores (Slicer's wrapper serializers: ``str(v)``, "True"/"False")."""
        if self.kind is bool:
            return "True" if value else "False"
        return str(self.kind(value))

    def decode(self, text: str) -> Any:
        if self.kind is bool:
            return text == "True"
        return self.kind(text)  # pathlib.Path("") is Path("."), as in Slicer's PathSerializer

    def check(self, value: Any) -> Any:
        """``value`` as ``kind``, raising ValueError when outside the range or the choices."""
        if self.kind is int and not float(value).is_integer():
            raise ValueError(f"{self.name} must be an integer, got {value}")
        value = self.kind(value)
        if self.minimum is not None and not (self.minimum <= value <= self.maximum):
            raise ValueError(f"{self.name} = {value} is outside [{self.minimum}, {self.maximum}]")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} = {value!r} is not one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class NodeSpec:
    """A node reference of a module (stored as a node reference, like the wrapper's NodeSerializer)."""

    name: str
    className: str
    label: str = ""


#: Milliseconds per second: echo spacings are shown in ms in the panels and passed to qmricore in seconds.
MS_PER_S = 1000.0


def echoSpacingSpec(name: str, label: str = "Echo spacing TE") -> ParameterSpec:
    """The echo spacing of a multi-echo spin echo, in ms: SynthMap's default and drawn range (its TE prior).

    Shared by QMRISynth (simulation) and QMRISegment (MWF estimation), so both panels offer the range the
    generator trains on; ``qmricore mwf`` itself takes any TE in (0, 1] s.
    """
    low, high = SYNTHMAP_DEFAULTS.te_range
    return ParameterSpec(name, float, SYNTHMAP_DEFAULTS.te * MS_PER_S, low * MS_PER_S, high * MS_PER_S,
                         label=label, unit="ms", decimals=2, step=0.1)


class ScriptedNodeParameters:
    """Typed attribute access to a ``vtkMRMLScriptedModuleNode``, without Qt.

    Stores exactly what Slicer's ``parameterNodeWrapper`` stores (``SetParameter(name, str)`` for numbers
    and strings, ``"True"/"False"`` for booleans, a node reference plus an empty parameter for nodes), so a
    scene saved from the app loads here and the other way round.  The Logic reads parameters through
    attribute names only, so it takes this object and the app's wrapper alike.
    """

    def __init__(self, node: Any, scalars: tuple[ParameterSpec, ...], nodes: tuple[NodeSpec, ...]) -> None:
        object.__setattr__(self, "parameterNode", node)
        object.__setattr__(self, "_scalars", {s.name: s for s in scalars})
        object.__setattr__(self, "_nodes", {s.name: s for s in nodes})
        for spec in scalars:
            if not node.HasParameter(spec.name):
                node.SetParameter(spec.name, spec.encode(spec.default))
        for spec in nodes:
            if not node.HasParameter(spec.name):
                node.SetParameter(spec.name, "")

    def __getattr__(self, name: str) -> Any:
        scalars, nodes = self.__dict__["_scalars"], self.__dict__["_nodes"]
        node = self.__dict__["parameterNode"]
        if name in scalars:
            return scalars[name].decode(node.GetParameter(name))
        if name in nodes:
            return node.GetNodeReference(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._scalars:
            spec = self._scalars[name]
            self.parameterNode.SetParameter(name, spec.encode(spec.check(value)))
        elif name in self._nodes:
            self.parameterNode.SetParameter(name, "")
            self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        else:
            raise AttributeError(f"no parameter {name!r}")
