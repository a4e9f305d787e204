"""Each default in one place, enforced (issue 9 item 4): what the CLI help, the docs, the Slicer parameter specs and
the training-config defaults say must be what the defining class or constant holds.

A default that is restated somewhere (a help string, a docs table, a panel) is checked here against its source, so
changing the source without the copy fails CI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qmricore.cli import build_parser
from qmricore.devices import DEVICE_CHOICES

ROOT = Path(__file__).resolve().parents[1]
for folder in ("QMRICommon", "QMRISynth", "QMRISegment"):  # the modules' Lib packages, as Slicer puts them on the path
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))
#: ``(default 30 80)``, ``(default: 0.01)``, ``(default 1)``: a number (or numbers) stated as a default.
STATED = re.compile(r"default:?\s+(?:the [a-z ]+ default,\s*)?(-?\d[\d.e-]*(?:\s+-?\d[\d.e-]*)*)\)?")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _source_of_unset_default(command: str, dest: str) -> object:
    """Options whose argparse default is None (the library decides): the library's value."""
    if (command, dest) == ("synth", "crop"):
        from qmricore.generators.augment import AugmentConfig

        return AugmentConfig().crop
    if (command, dest) == ("simulate", "eta"):
        from qmricore.physics import SEQUENCES

        values = {s.defaults["eta"] for s in SEQUENCES.values() if s.defaults and "eta" in s.defaults}
        assert len(values) == 1
        return values.pop()
    raise AssertionError(f"{command} --{dest}: the help states a default but the option has none; "
                         "add where the value comes from here")


def _numbers(value: object) -> list[float]:
    values = value if isinstance(value, (tuple, list)) else (value,)
    return [float(v) for v in values]


def test_every_default_stated_in_cli_help_is_the_options_default() -> None:
    checked = 0
    for command, parser in _subcommands().items():
        for action in parser._actions:
            match = STATED.search(action.help or "")
            if match is None or "%(default)" in (action.help or ""):
                continue
            stated = [float(v) for v in match.group(1).split()]
            actual = action.default if action.default is not None else _source_of_unset_default(command, action.dest)
            assert stated == _numbers(actual), f"qmricore {command} {action.option_strings}: help says {stated}, " \
                                               f"the default is {actual!r}"
            checked += 1
    assert checked >= 8  # n, seed, te, echoes, snr range, crop, eta, ...


def test_device_choices_are_one_list() -> None:
    from QMRISegmentLib import parameters

    for command, parser in _subcommands().items():
        for action in parser._actions:
            if action.dest == "device" and action.choices is not None:
                assert set(action.choices) <= set(DEVICE_CHOICES), command
                if action.default == "auto":
                    assert tuple(action.choices) == DEVICE_CHOICES, command
    assert parameters.DEVICES == DEVICE_CHOICES


def test_training_sequences_are_one_list_and_held_out_tests_add_the_unseen_mp2rage() -> None:
    import inspect

    from qmricore.generators.qsynth import TRAINING_SEQUENCES, draw_sequence
    from qmricore.inference.heldout import CONTRASTS
    from qmricore.physics import SEQUENCES
    from qmricore.training.config import SegDataConfig

    assert SegDataConfig(labels="x").sequences == TRAINING_SEQUENCES
    assert inspect.signature(draw_sequence).parameters["sequences"].default == TRAINING_SEQUENCES
    assert set(TRAINING_SEQUENCES) <= set(SEQUENCES) and "mp2rage" not in TRAINING_SEQUENCES
    assert set(CONTRASTS) == set(TRAINING_SEQUENCES) | {"mp2rage"}


def test_the_lesion_label_comes_from_the_class_table() -> None:
    from qmricore.generators.priors import load_priors
    from qmricore.training.seg import LESION_LABEL

    assert LESION_LABEL == load_priors().label_of("lesion")
    literal = re.compile(r"(?:==|!=)\s*6\b|\blabel\s*=\s*6\b")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("core/qmricore", "QMRICommon", "QMRISynth", "QMRISegment")
                 for p in (ROOT / folder).rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == [], "the lesion label is written as a literal 6"


def test_slicer_parameter_specs_take_their_defaults_from_qmricore() -> None:
    from QMRISegmentLib.parameters import segmentParameters
    from QMRISynthLib import parameters as synth

    from qmricore.generators.synthmap import DEFAULT_CONFIG
    from qmricore.physics import SEQUENCES

    specs = {s.name: s for s in synth.synthParameters()}
    assert specs["sequence"].choices == (*SEQUENCES, synth.MULTI_ECHO)
    assert specs["echoCount"].default == DEFAULT_CONFIG.n_echoes
    assert specs["echoSpacing"].default == pytest.approx(DEFAULT_CONFIG.te * 1000)
    assert specs["refocusAngle"].default == DEFAULT_CONFIG.refocus
    segment = {s.name: s for s in segmentParameters()}
    assert segment["device"].choices == DEVICE_CHOICES
    assert segment["mwfEchoSpacing"].default == pytest.approx(DEFAULT_CONFIG.te * 1000)


def test_docs_defaults_table_is_generated_from_the_classes() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "Scripts" / "defaults_table.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
