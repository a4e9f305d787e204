"""Tests of qmricore.serialise (dataclasses to JSON data and back) and of every draw's JSON round trip."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import qmricore
from qmricore.errors import InputError, ParameterError
from qmricore.generators.anatomy import HeadDraw, draw_head
from qmricore.generators.augment import AugmentConfig, AugmentDraw, IntensityDraw, SpatialDraw, draw_augment
from qmricore.generators.gmm import GMMDraw, draw_gmm
from qmricore.generators.lesions import LesionDraw
from qmricore.generators.pipeline import PipelineConfig, ReceiveDraw, SampleDraw, draw_sample
from qmricore.generators.priors import load_priors
from qmricore.generators.qsynth import MapDraw, SequenceDraw, draw_clinical_sequence, draw_maps, draw_sequence
from qmricore.generators.synthmap import SynthMapDraw, draw_synthmap, load_synthmap_priors
from qmricore.inference.window import WindowConfig
from qmricore.ldm.labels import MaskDraw, MaskSetConfig, draw_mask
from qmricore.serialise import JSONDataclass, JSONDraw, from_plain, to_plain


@dataclass(frozen=True)
class Inner(JSONDataclass):
    size: tuple[int, int, int]
    scale: float = 1.0


@dataclass(frozen=True)
class Outer(JSONDataclass):
    name: str
    inner: Inner
    table: tuple[tuple[str, float], ...] = ()
    options: dict[str, float] = field(default_factory=dict)
    maybe: Inner | None = None
    crop: int | tuple[int, int, int] | None = 4
    flags: tuple[bool, ...] = ()


@dataclass(frozen=True)
class ADraw(JSONDraw):
    seed: int


def via_json(data: Any) -> Any:
    return json.loads(json.dumps(data))


# ------------------------------------------------------------------------------------------------------------
# The generic helper
# ------------------------------------------------------------------------------------------------------------

def test_nested_dataclass_round_trips_with_tuples_none_and_dicts() -> None:
    obj = Outer("a", Inner((1, 2, 3), 0.5), (("wm", 0.6), ("gm", 0.4)), {"x": 2.0}, None, (8, 9, 10), (True, False))
    plain = obj.to_dict()
    assert plain == {"name": "a", "inner": {"size": [1, 2, 3], "scale": 0.5}, "table": [["wm", 0.6], ["gm", 0.4]],
                     "options": {"x": 2.0}, "maybe": None, "crop": [8, 9, 10], "flags": [True, False]}
    assert via_json(plain) == plain  # what is in memory is what a JSON file gives back
    again = Outer.from_dict(via_json(plain))
    assert again == obj and isinstance(again.table[0], tuple) and isinstance(again.inner.size, tuple)
    with_inner = dataclasses.replace(obj, maybe=Inner((4, 5, 6)), crop=None)
    assert Outer.from_dict(via_json(with_inner.to_dict())) == with_inner


def test_missing_keys_take_defaults_ints_become_floats_and_unions_keep_their_member() -> None:
    assert Outer.from_dict({"name": "b", "inner": {"size": [1, 1, 1]}}) == Outer("b", Inner((1, 1, 1)))
    inner = Inner.from_dict({"size": [1, 2, 3], "scale": 2})
    assert type(inner.scale) is float and inner.scale == 2.0
    assert Outer.from_dict({"name": "c", "inner": {"size": [1, 1, 1]}, "crop": 5}).crop == 5
    assert Outer.from_dict({"name": "c", "inner": {"size": [1, 1, 1]}, "crop": [1, 2, 3]}).crop == (1, 2, 3)
    assert Outer.from_dict({"name": "c", "inner": Inner((7, 7, 7))}).inner == Inner((7, 7, 7))  # objects pass


def test_numpy_scalars_become_python_numbers_and_other_objects_are_refused() -> None:
    plain = Inner((np.int64(1), 2, 3), np.float64(0.25)).to_dict()  # type: ignore[arg-type]
    assert [type(v) for v in plain["size"]] == [int, int, int] and type(plain["scale"]) is float
    with pytest.raises(TypeError, match=r"Inner.size: a ndarray is not JSON data"):
        to_plain(Inner(np.zeros(3), 1.0))  # type: ignore[arg-type]


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "a", "inner": {"size": [1, 1, 1]}, "colour": 1, "age": 2}, r"^Outer: unknown keys \['age', 'colour'\]$"),
    ({"name": "a"}, r"^Outer: missing key 'inner'$"),
    ({"name": 3, "inner": {"size": [1, 1, 1]}}, r"^Outer.name: expected str, got 3$"),
    ({"name": "a", "inner": {"size": [1, 2]}}, r"^Inner.size: expected tuple\[int, int, int\], got \[1, 2\]$"),
    ({"name": "a", "inner": {"size": [1.5, 2, 3]}}, r"^Inner.size\[0\]: expected int, got 1.5$"),
    ({"name": "a", "inner": {"size": [True, 2, 3]}}, r"^Inner.size\[0\]: expected int, got True$"),
    ({"name": "a", "inner": {"size": [1, 1, 1], "scale": "big"}}, r"^Inner.scale: expected float, got 'big'$"),
    ({"name": "a", "inner": {"size": [1, 1, 1]}, "flags": [1]}, r"^Outer.flags\[0\]: expected bool, got 1$"),
    ({"name": "a", "inner": {"size": [1, 1, 1]}, "options": [1]}, r"^Outer.options: expected dict\[str, float\]"),
    ({"name": "a", "inner": {"size": [1, 1, 1]}, "crop": "x"},
     r"^Outer.crop: expected int \| tuple\[int, int, int\] \| None, got 'x'$"),
    ({"name": "a", "inner": 3}, r"^Inner: expected a JSON object, got 3$"),
    ([1, 2], r"^Outer: expected a JSON object"),
])
def test_bad_data_is_refused_naming_the_class_and_the_field(data: Any, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        Outer.from_dict(data)


def test_the_error_is_the_classes_choice_or_the_callers() -> None:
    with pytest.raises(InputError, match=r"^ADraw: missing key 'seed'$"):
        ADraw.from_dict({})  # draws come from files: InputError
    with pytest.raises(InputError, match=r"^not an inner \(Inner: missing key 'size'\)$"):
        from_plain(Inner, {}, error=lambda problem: InputError(f"not an inner ({problem})"))


def test_model_file_settings_keep_tuples() -> None:
    plain = WindowConfig(patch=(8, 8, 16)).to_dict()
    assert plain["patch"] == (8, 8, 16) and isinstance(plain["patch"], tuple)
    assert WindowConfig.from_dict(via_json(plain)) == WindowConfig(patch=(8, 8, 16))


# ------------------------------------------------------------------------------------------------------------
# Every draw of the package
# ------------------------------------------------------------------------------------------------------------

def _head_labels() -> torch.Tensor:
    """A 14³ hard label map: background, CSF, GM and a WM core (room for a lesion)."""
    priors = load_priors()
    x = np.arange(14) - 6.5
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    lab = np.full((14,) * 3, priors.label_of("background"), np.int64)
    for radius, name in ((6.5, "csf"), (5.5, "gm"), (4.0, "wm")):
        lab[r < radius] = priors.label_of(name)
    return torch.as_tensor(lab)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sample(mode: str) -> SampleDraw:
    config = PipelineConfig(mode=mode, lesion_prob=1.0, augment=AugmentConfig(crop=8, bias_prob=1.0, lowres_prob=1.0,
                                                                              gibbs_prob=1.0))
    return draw_sample(_head_labels(), config, 3)


#: One or more instances of every draw class (a new ``*Draw`` class must be added here).
DRAWS: dict[type, Callable[[], list[Any]]] = {
    HeadDraw: lambda: [draw_head(np.random.default_rng(0))],
    SpatialDraw: lambda: [_sample("qsynth").augment.spatial,
                          draw_augment((9, 8, 7), AugmentConfig(crop=None), 1).spatial],
    IntensityDraw: lambda: [_sample("qsynth").augment.intensity, IntensityDraw()],
    AugmentDraw: lambda: [_sample("synth").augment],
    GMMDraw: lambda: [draw_gmm(5, 2)],
    LesionDraw: lambda: [_sample("qsynth").lesion],
    MapDraw: lambda: [draw_maps(load_priors(), _gen(1))],
    SequenceDraw: lambda: [draw_sequence(_gen(s), seq) for s, seq in enumerate((("gre",), ("fse",), ("flair",),
                                                                                 ("mprage",)))]
    + [draw_clinical_sequence(3, ("mprage",))],  # (last: an MPRAGE, with its integer n)
    ReceiveDraw: lambda: [_sample("qsynth").receive],
    SampleDraw: lambda: [_sample("qsynth"), _sample("synth")],
    SynthMapDraw: lambda: [draw_synthmap(load_synthmap_priors(), _gen(2))],
    MaskDraw: lambda: [draw_mask(np.random.default_rng(0), 3, 1, MaskSetConfig())],
}


def _package_classes(test: Callable[[str, type], bool]) -> set[type]:
    found = set()
    for info in pkgutil.walk_packages(qmricore.__path__, "qmricore."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__ == module.__name__ and test(name, obj):
                found.add(obj)
    return found


def test_every_draw_class_is_listed_and_serialised_by_the_one_protocol() -> None:
    draws = _package_classes(lambda name, obj: dataclasses.is_dataclass(obj) and name.endswith("Draw"))
    unlisted = sorted(c.__qualname__ for c in draws - set(DRAWS))
    assert not unlisted, f"new draw classes {unlisted}: add them to DRAWS in {__name__}"
    assert all(issubclass(c, JSONDraw) and c.__dataclass_params__.frozen for c in draws)


@pytest.mark.parametrize("cls", list(DRAWS), ids=lambda c: c.__name__)
def test_every_draw_round_trips_through_json_text(cls: type) -> None:
    for draw in DRAWS[cls]():
        assert type(draw) is cls
        text = json.dumps(draw.to_dict())
        again = cls.from_dict(json.loads(text))
        assert again == draw
        assert json.dumps(again.to_dict()) == text
    if cls is SequenceDraw:  # MPRAGE's readout count stays an integer
        assert type(DRAWS[cls]()[-1].params["n"]) is int and type(again.params["n"]) is int


def test_every_config_round_trips_through_json_text() -> None:
    configs = _package_classes(lambda name, obj: issubclass(obj, JSONDataclass) and name.endswith("Config"))
    assert {"AugmentConfig", "PipelineConfig", "SegmenterConfig", "PreprocessConfig"} <= {c.__name__ for c in configs}
    for cls in configs:
        config = cls()
        assert cls.from_dict(via_json(config.to_dict())) == config, cls.__name__
