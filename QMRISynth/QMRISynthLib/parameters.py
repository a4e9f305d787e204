"""Parameters of QMRISynth: name, type, default, range (sliders), choices (combo boxes), node classes.

The specs (:class:`~QMRICommonLib.parameters.ParameterSpec`) are what the headless Logic and the tests
read; ``QMRISynth.py`` declares the same parameters in its ``@parameterNodeWrapper`` class, and
``Testing/test_widgets.py`` checks that the two and the ``.ui`` ranges agree.

Sequence-parameter ranges and defaults come from :mod:`qmricore.protocols` (the one place where the
sampling distributions and presets live): the slider range of a parameter is the hull of every sampling
distribution's support and every preset value, widened by :data:`SLIDER_REACH` where a slider should
reach further than the samplers do, rounded outwards to one significant digit, and kept inside
:data:`qmricore.physics.PARAMETER_BOUNDS` (the one table of what a scanner can do).  Times are seconds,
angles degrees.
"""

from __future__ import annotations

import math
import pathlib
from functools import cache
from typing import Any

from QMRICommonLib.parameters import NodeSpec, ParameterSpec, echoSpacingSpec

from qmricore import protocols
from qmricore.generators.synthmap import DEFAULT_CONFIG as SYNTHMAP_DEFAULTS
from qmricore.ldm.labels import MaskSetConfig
from qmricore.mwf.nnls import NNLSConfig
from qmricore.physics import PARAMETER_BOUNDS, SEQUENCES

#: Sequence parameters with a slider (int for the readout-pulse count ``n``), in panel order.
SEQUENCE_PARAMETERS = ("tr", "te", "ti", "flip", "tx", "n", "ti2", "flip2")
#: Labels and units shown next to the sliders.
SEQUENCE_PARAMETER_LABELS = {
    "tr": ("TR", "s"), "te": ("TE", "s"), "ti": ("TI", "s"), "flip": ("Flip angle", "deg"),
    "tx": ("Echo spacing TX", "s"), "n": ("Readout pulses n", ""), "ti2": ("TI2", "s"),
    "flip2": ("Flip angle 2", "deg"),
}
#: Where a slider reaches beyond the sampled ranges and presets (e.g. a 90 degree flip on a GRE).
SLIDER_REACH: dict[str, tuple[float, float]] = {
    "tr": (0.005, 10.0), "te": (0.001, 0.3), "ti": (0.01, 4.0), "flip": (1.0, 90.0),
    "tx": (0.003, 0.02), "n": (1, 256), "ti2": (0.5, 6.0), "flip2": (1.0, 30.0),
}
#: The multi-echo spin echo (CPMG): an echo series (:func:`qmricore.physics.cpmg`, or SynthMap from a label map),
#: offered next to :data:`qmricore.physics.SEQUENCES` (which simulate one image each).
MULTI_ECHO = "cpmg"
MULTI_ECHO_TITLE = "Multi-echo spin echo (CPMG)"
#: Where the echo series comes from: the map set (PD, R1, R2; R2* is not T2) or the label map through SynthMap.
MULTI_ECHO_SOURCES = ("maps", "label map")
#: The multi-echo parameters with a widget, in panel order (spacing in ms, count, refocusing angle, shown echo).
MULTI_ECHO_PARAMETERS = ("echoSpacing", "echoCount", "refocusAngle", "displayedEcho")
#: The preset whose values are the defaults (then the first preset that has the parameter).
DEFAULT_PRESET = "3T FLAIR"
#: Simulation options that are not sequence parameters.
SNR_RANGE = (1.0, 200.0)
SNR_DEFAULT = 30.0
SEED_RANGE = (0, 999999)


def _support(dist: dict[str, Any]) -> tuple[float, float]:
    """Lower and upper end of a sampling distribution (normal: mean +- 3 std; lognormal: +- 3 sigma)."""
    kind = dist["dist"]
    if kind in ("uniform", "loguniform"):
        return float(dist["low"]), float(dist["high"])
    if kind == "normal":
        return float(dist["mean"]) - 3 * float(dist["std"]), float(dist["mean"]) + 3 * float(dist["std"])
    if kind == "lognormal":
        spread = 10.0 ** (3 * float(dist["sigma_decades"]))
        return float(dist["median"]) / spread, float(dist["median"]) * spread
    raise ValueError(f"unknown distribution {kind!r} in protocols.json")


def _round_out(value: float, up: bool) -> float:
    """Round to one significant digit, away from the inside of the range."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** math.floor(math.log10(value))
    digit = (math.ceil if up else math.floor)(round(value / scale, 9))
    return float(f"{digit * scale:.6g}")


def _sampler_names() -> tuple[str, ...]:
    return tuple(protocols._table()["sampling"])  # the samplers protocols.json defines


@cache
def sequenceParameterRange(name: str) -> tuple[float, float]:
    """Slider range of a sequence parameter: hull of the sampled supports, presets and :data:`SLIDER_REACH`."""
    lows, highs = [SLIDER_REACH[name][0]], [SLIDER_REACH[name][1]]
    for sampler in _sampler_names():
        dist = protocols.sampling_ranges(sampler).get(name)
        if dist is not None:
            low, high = _support(dist)
            lows.append(low)
            highs.append(high)
    for preset in protocols.preset_names():
        value = protocols.preset(preset)[1].get(name)
        if value is not None:
            lows.append(float(value))
            highs.append(float(value))
    if name == "n":  # a count: the hull as it is
        return float(max(1, math.floor(min(lows)))), float(math.ceil(max(highs)))
    bound_low, bound_high, _ = PARAMETER_BOUNDS[name]  # never beyond what a scanner (and simulate) accepts
    low = _round_out(max(min(lows), 0.0), up=False)
    return (low if low > bound_low else SLIDER_REACH[name][0]), min(_round_out(max(highs), up=True), bound_high)


@cache
def sequenceParameterDefault(name: str) -> float:
    """Default of a sequence parameter: its value in :data:`DEFAULT_PRESET`, else in the first preset having it."""
    order = [DEFAULT_PRESET] + [p for p in protocols.preset_names() if p != DEFAULT_PRESET]
    for preset in order:
        value = protocols.preset(preset)[1].get(name)
        if value is not None:
            return float(value)
    low, high = sequenceParameterRange(name)
    return 0.5 * (low + high)


def presetNames() -> list[str]:
    return protocols.preset_names()


def sequenceNames() -> tuple[str, ...]:
    return (*SEQUENCES, MULTI_ECHO)


def parametersOfSequence(sequence: str) -> tuple[str, ...]:
    """The :data:`SEQUENCE_PARAMETERS` a sequence uses (from :data:`qmricore.physics.SEQUENCES`; none for CPMG,
    whose parameters are :data:`MULTI_ECHO_PARAMETERS`)."""
    if sequence == MULTI_ECHO:
        return ()
    return tuple(p for p in SEQUENCES[sequence].parameters if p in SEQUENCE_PARAMETERS)


def _sequenceSpec(name: str) -> ParameterSpec:
    low, high = sequenceParameterRange(name)
    label, unit = SEQUENCE_PARAMETER_LABELS[name]
    if name == "n":
        return ParameterSpec(name, int, int(sequenceParameterDefault(name)), int(low), int(high), label=label)
    degrees = unit == "deg"
    return ParameterSpec(name, float, sequenceParameterDefault(name), low, high, label=label, unit=unit,
                         decimals=1 if degrees else 4, step=0.5 if degrees else 0.0005)


def multiEchoParameters() -> tuple[ParameterSpec, ...]:
    """The CPMG parameters: SynthMap's defaults and drawn ranges (echo spacing, echo count, nominal refocusing
    angle); the refocusing angle spans the NNLS fit's range (``NNLSConfig.min_angle`` to the flip bound)."""
    lowEchoes, highEchoes = SYNTHMAP_DEFAULTS.echoes_range
    return (
        ParameterSpec("multiEchoSource", str, MULTI_ECHO_SOURCES[0], choices=MULTI_ECHO_SOURCES,
                      label="Echo series from"),
        echoSpacingSpec("echoSpacing"),
        ParameterSpec("echoCount", int, SYNTHMAP_DEFAULTS.n_echoes, lowEchoes, highEchoes, label="Echoes"),
        ParameterSpec("refocusAngle", float, SYNTHMAP_DEFAULTS.refocus, NNLSConfig().min_angle,
                      PARAMETER_BOUNDS["flip"][1], label="Refocusing angle", unit="deg", decimals=1, step=0.5),
        ParameterSpec("displayedEcho", int, 1, 1, highEchoes, label="Displayed echo"),
    )


def synthParameters() -> tuple[ParameterSpec, ...]:
    """Scalar parameters of QMRISynth."""
    sequence, _ = protocols.preset(DEFAULT_PRESET)
    return (
        ParameterSpec("sequence", str, sequence, choices=sequenceNames(), label="Sequence"),
        *(_sequenceSpec(name) for name in SEQUENCE_PARAMETERS),
        *multiEchoParameters(),
        ParameterSpec("useB1t", bool, True, label="Use B1 transmit map"),
        ParameterSpec("useB1r", bool, True, label="Use B1 receive map"),
        ParameterSpec("addNoise", bool, False, label="Add Rician noise"),
        ParameterSpec("snr", float, SNR_DEFAULT, *SNR_RANGE, label="SNR", decimals=1, step=1.0),
        ParameterSpec("noiseSeed", int, 0, *SEED_RANGE, label="Noise seed"),
        ParameterSpec("liveUpdate", bool, True, label="Live update"),
        ParameterSpec("qsynthSeed", int, 0, *SEED_RANGE, label="qSynth seed"),
        ParameterSpec("sweptParameter", str, "tr", choices=SEQUENCE_PARAMETERS, label="Swept parameter"),
        *brainParameters(),
    )


#: The requested ventricle volume a brain starts with (mL): a normal adult's, inside the training range.
VENTRICLE_ML_DEFAULT = 25.0


def brainParameters() -> tuple[ParameterSpec, ...]:
    """"Generate brain": the requested ventricle volume (the mask generator's training range,
    ``MaskSetConfig.ventricle_ml_range``), the seed, and the mask generator file."""
    low, high = MaskSetConfig().ventricle_ml_range
    return (
        ParameterSpec("ventricleMl", float, VENTRICLE_ML_DEFAULT, low, high, label="Ventricle volume", unit="mL",
                      decimals=0, step=1.0),
        ParameterSpec("brainSeed", int, 0, *SEED_RANGE, label="Brain seed"),
        ParameterSpec("brainModelPath", pathlib.Path, pathlib.Path(),
                      label="Mask generator (empty: Resources/Models/ldm_masks.pt)"),
    )


def synthNodes() -> tuple[NodeSpec, ...]:
    """Node references of QMRISynth: the map set, the label map for qSynth, the output and the plot table."""
    return (
        NodeSpec("pdVolume", "vtkMRMLScalarVolumeNode", "PD"),
        NodeSpec("r1Volume", "vtkMRMLScalarVolumeNode", "R1 (1/s)"),
        NodeSpec("r2sVolume", "vtkMRMLScalarVolumeNode", "R2* (1/s)"),
        NodeSpec("mtVolume", "vtkMRMLScalarVolumeNode", "MT (p.u.)"),
        NodeSpec("r2Volume", "vtkMRMLScalarVolumeNode", "R2 (1/s)"),
        NodeSpec("b1tVolume", "vtkMRMLScalarVolumeNode", "B1 transmit"),
        NodeSpec("b1rVolume", "vtkMRMLScalarVolumeNode", "B1 receive"),
        NodeSpec("labelVolume", "vtkMRMLLabelMapVolumeNode", "Label map"),
        NodeSpec("outputVolume", "vtkMRMLScalarVolumeNode", "Simulated image"),
        NodeSpec("signalTable", "vtkMRMLTableNode", "Signal table"),
    )


#: Map keys of qmricore and the node parameter holding each.
MAP_NODE_PARAMETERS = {"pd": "pdVolume", "r1": "r1Volume", "r2s": "r2sVolume", "mt": "mtVolume",
                       "r2": "r2Volume", "b1t": "b1tVolume", "b1r": "b1rVolume"}
