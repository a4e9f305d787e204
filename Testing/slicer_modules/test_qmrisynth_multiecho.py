"""QMRISynth's multi-echo spin echo (CPMG) on a real MRML scene: from maps (T2 = 1/R2) and from a label map
(SynthMap), the echo slider, the parameter node, and the series handed to QMRISegment's Estimate MWF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer
import slicer.util
from mrml_helpers import SHAPE_KJI, oblique_ijk_to_ras
from QMRICommonLib import mrmlio
from QMRICommonLib.parameters import ScriptedNodeParameters
from QMRISynthLib import QMRISynthLogic, SimulationSettings, synthNodes, synthParameters
from QMRISynthLib.logic import ECHO_ATTRIBUTE, SYNTHMAP_ATTRIBUTE
from QMRISynthLib.parameters import MULTI_ECHO, MULTI_ECHO_PARAMETERS, parametersOfSequence, sequenceNames

from qmricore import physics
from qmricore.errors import InputError, ParameterError
from qmricore.generators.synthmap import (
    DEFAULT_CONFIG,
    apply_synthmap,
    draw_synthmap,
    load_synthmap_priors,
    regenerate,
)
from qmricore.mwf.nnls import NNLSConfig

TE, N = 0.01, 24


def cpmg_settings(echo=1, refocus=180.0, **kw):
    return SimulationSettings(MULTI_ECHO, {"te": TE, "n_echoes": N, "refocus": refocus}, echo=echo, **kw)


@pytest.fixture
def maps(scene):
    rng = np.random.default_rng(5)
    arrays = {"pd": rng.uniform(50, 100, SHAPE_KJI).astype(np.float32),
              "r1": rng.uniform(0.3, 1.5, SHAPE_KJI).astype(np.float32),
              "r2s": rng.uniform(15, 40, SHAPE_KJI).astype(np.float32),
              "r2": rng.uniform(5, 25, SHAPE_KJI).astype(np.float32),
              "b1t": rng.uniform(0.8, 1.2, SHAPE_KJI).astype(np.float32)}
    arrays["pd"][0, 0, :3] = 0.0  # background: no signal
    nodes = {k: mrmlio.addVolumeNode(scene, v, oblique_ijk_to_ras(), k) for k, v in arrays.items()}
    return nodes, arrays


@pytest.fixture
def labels(scene):
    kji = np.zeros(SHAPE_KJI, np.int16)
    kji[1:6, 2:8, 2:10] = 2  # WM
    kji[2:5, 3:6, 3:6] = 1  # GM
    kji[3, 4, 7:9] = 4  # CSF
    return mrmlio.addVolumeNode(scene, kji, oblique_ijk_to_ras(), "labels", "vtkMRMLLabelMapVolumeNode"), kji


def test_from_maps_an_ideal_train_is_exp_minus_k_te_r2(scene, maps):
    nodes, arrays = maps
    logic = QMRISynthLogic(scene)
    out = logic.simulateVolume({k: v for k, v in nodes.items() if k != "b1t"}, cpmg_settings(echo=5))
    np.testing.assert_array_equal(mrmlio.ijkToRas(out), mrmlio.ijkToRas(nodes["pd"]))  # bit for bit
    expected = arrays["pd"] * np.exp(-5 * TE * arrays["r2"])  # 180 deg pulses: pure T2 decay, R2 not R2*
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected, rtol=2e-6)
    assert np.all(slicer.util.arrayFromVolume(out)[0, 0, :3] == 0)
    assert out.GetAttribute("QMRI.Sequence") == "cpmg" and out.GetAttribute(ECHO_ATTRIBUTE) == "5"


def test_from_maps_with_b1_and_imperfect_refocusing_equals_cpmg(scene, maps):
    nodes, arrays = maps
    logic = QMRISynthLogic(scene)
    out = logic.simulateVolume(nodes, cpmg_settings(echo=7, refocus=150.0))
    trains = physics.cpmg(1 / arrays["r2"], 1 / arrays["r1"], te=TE, n_echoes=N, refocus=150.0, b1t=arrays["b1t"])
    expected = np.where(arrays["pd"] > 0, arrays["pd"] * trains[..., 6], 0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected, rtol=2e-6)
    # the echo slider: same series object, only the displayed echo changes
    series = logic._series[1]
    again = logic.simulateVolume(nodes, cpmg_settings(echo=12, refocus=150.0), out)
    assert again is out and logic._series[1] is series
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), series[..., 11])


def test_from_maps_needs_r2_not_r2star(scene, maps):
    nodes, _ = maps
    logic = QMRISynthLogic(scene)
    without = {k: v for k, v in nodes.items() if k != "r2"}
    with pytest.raises(InputError, match=r"R2 map\(s\): the multi-echo spin echo needs PD, R1 and R2 .*R2\* is not T2"):
        logic.simulateVolume(without, cpmg_settings())
    p = ScriptedNodeParameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), synthParameters(), synthNodes())
    logic.assignMapNodes(p, without)
    p.sequence = MULTI_ECHO
    assert "R2* is not T2" in logic.missingInputs(p)
    p.r2Volume = nodes["r2"]
    assert logic.missingInputs(p) == ""


def test_noise_is_rician_at_the_first_echo_snr(scene, maps):
    nodes, arrays = maps
    logic = QMRISynthLogic(scene)
    clean = logic.echoSeries(arrays, cpmg_settings())
    noisy = logic.echoSeries(arrays, cpmg_settings(snr=20.0, seed=3))
    again = logic.echoSeries(arrays, cpmg_settings(snr=20.0, seed=3))
    np.testing.assert_array_equal(noisy, again)  # seeded
    first = clean[..., 0]
    sigma = first[first > 0.1 * first.max()].mean() / 20.0
    residual = (noisy - clean)[clean > 10 * sigma]  # high SNR: Rician ~ Gaussian with this sigma
    assert residual.std() == pytest.approx(sigma, rel=0.1)


def test_slice_update_equals_planes_of_the_full_series(scene, maps):
    nodes, _ = maps
    logic = QMRISynthLogic(scene)
    settings = cpmg_settings(echo=4, refocus=160.0)
    full = slicer.util.arrayFromVolume(logic.simulateVolume(nodes, settings)).copy()
    out = mrmlio.addVolumeNode(scene, np.zeros(SHAPE_KJI, np.float32), oblique_ijk_to_ras(), "out")
    logic.simulatePlanes(nodes, settings, [(0, 2), (1, 4), (2, 6)], out)
    got = slicer.util.arrayFromVolume(out)
    for cut in ((2,), (slice(None), 4), (slice(None), slice(None), 6)):
        np.testing.assert_allclose(got[cut], full[cut], rtol=1e-6)


def test_from_a_label_map_with_synthmap(scene, labels):
    node, kji = labels
    logic = QMRISynthLogic(scene)
    out = logic.simulateSynthMap(node, cpmg_settings(echo=2), seed=11)
    np.testing.assert_array_equal(mrmlio.ijkToRas(out), mrmlio.ijkToRas(node))
    # the library itself, on the label map in IJK order (as qmricore synthmap reads it from NIfTI)
    import dataclasses

    import torch

    config = dataclasses.replace(DEFAULT_CONFIG, te=TE, n_echoes=N, refocus=180.0)
    priors = load_synthmap_priors()
    draw = draw_synthmap(priors, torch.Generator().manual_seed(11), config)
    sample = apply_synthmap(kji.transpose(2, 1, 0).astype(np.int64), draw, priors, config, noise=False)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), sample.echoes[..., 1].transpose(2, 1, 0))
    assert np.all(slicer.util.arrayFromVolume(out)[kji == 0] == 0)  # no noise asked: dark background
    record = json.loads(out.GetAttribute(SYNTHMAP_ATTRIBUTE))
    assert record["seed"] == 11 and record["noise_sigma"] == 0.0
    # with an SNR: SynthMap's Rician noise at exactly that SNR, replayable from the stored record
    noisy = logic.simulateSynthMap(node, cpmg_settings(echo=1, snr=40.0), seed=11)
    record = json.loads(noisy.GetAttribute(SYNTHMAP_ATTRIBUTE))
    assert record["draw"]["snr"] == 40.0
    wm_first = sample.echoes[..., 0][kji.transpose(2, 1, 0) == 2].mean()
    assert record["noise_sigma"] == pytest.approx(wm_first / 40.0, rel=1e-6)
    replay = regenerate(kji.transpose(2, 1, 0).astype(np.int64), record)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(noisy), replay.echoes[..., 0].transpose(2, 1, 0))


def test_parameter_node_drives_both_sources(scene, maps, labels):
    nodes, _ = maps
    labelNode, _ = labels
    logic = QMRISynthLogic(scene)
    p = ScriptedNodeParameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"), synthParameters(), synthNodes())
    assert MULTI_ECHO in sequenceNames() and parametersOfSequence(MULTI_ECHO) == ()
    specs = {s.name: s for s in synthParameters()}
    assert (specs["echoSpacing"].default, specs["echoSpacing"].unit) == (DEFAULT_CONFIG.te * 1000, "ms")
    spacing = specs["echoSpacing"]
    assert (spacing.minimum, spacing.maximum) == tuple(1000 * t for t in DEFAULT_CONFIG.te_range)
    assert (specs["echoCount"].default, specs["echoCount"].minimum, specs["echoCount"].maximum) == (
        DEFAULT_CONFIG.n_echoes, *DEFAULT_CONFIG.echoes_range)
    assert (specs["refocusAngle"].default, specs["refocusAngle"].minimum) == (DEFAULT_CONFIG.refocus,
                                                                              NNLSConfig().min_angle)
    assert specs["displayedEcho"].maximum == DEFAULT_CONFIG.echoes_range[1]
    assert set(MULTI_ECHO_PARAMETERS) < set(specs)
    p.sequence, p.echoSpacing, p.echoCount, p.refocusAngle, p.displayedEcho = MULTI_ECHO, 8.0, 16, 170.0, 3
    settings = SimulationSettings.fromParameters(p)
    assert settings.params == {"te": 0.008, "n_echoes": 16, "refocus": 170.0} and settings.echo == 3
    assert settings.withValue("echoSpacing", 12.0).params["te"] == 0.012  # a dragged slider, ms -> s
    assert settings.withValue("tr", 1.0) is None
    logic.assignMapNodes(p, nodes)
    out = logic.simulateFromParameters(p)
    assert p.outputVolume is out and out.GetAttribute(SYNTHMAP_ATTRIBUTE) == ""
    p.multiEchoSource = "label map"
    assert "Select a label map" in logic.missingInputs(p)
    p.labelVolume = labelNode
    out = logic.simulateFromParameters(p)
    assert mrmlio.sameGeometry(out, labelNode) and json.loads(out.GetAttribute(SYNTHMAP_ATTRIBUTE))["seed"] == 0
    p.displayedEcho = 20
    with pytest.raises(ParameterError, match="cpmg: the displayed echo 20 is not one of the 16 echoes"):
        logic.simulateFromParameters(p)
    with pytest.raises(ParameterError, match="no parameter 'tr'"):
        logic.signalCurves(SimulationSettings.fromParameters(p), "tr")


def test_bad_timing_is_one_line(scene, maps):
    nodes, _ = maps
    logic = QMRISynthLogic(scene)
    with pytest.raises(ParameterError, match="^cpmg: TE = 10 s is beyond an echo spacing"):
        logic.simulateVolume(nodes, SimulationSettings(MULTI_ECHO, {"te": 10.0, "n_echoes": 8, "refocus": 180.0}))


def test_synthmap_series_goes_to_estimate_mwf(scene, tmp_path):
    """Synthesise a SynthMap series in QMRISynth, hand it over as a volume sequence, estimate MWF in QMRISegment."""
    from QMRISegmentLib import QMRISegmentLogic

    kji = np.full((2, 3, 4), 2, np.int16)  # 24 white-matter voxels
    node = mrmlio.addVolumeNode(scene, kji, oblique_ijk_to_ras(), "wm", "vtkMRMLLabelMapVolumeNode")
    synth = QMRISynthLogic(scene)
    settings = SimulationSettings(MULTI_ECHO, {"te": TE, "n_echoes": 32, "refocus": 180.0})
    shown = synth.simulateSynthMap(node, settings, seed=4)
    sequence = synth.echoSeriesSequence()
    assert sequence.GetNumberOfDataNodes() == 32 and sequence.GetIndexUnit() == "ms"
    assert [sequence.GetNthIndexValue(i) for i in range(3)] == ["10", "20", "30"]
    segment = QMRISegmentLogic(scene)
    echoes = segment.echoNodes(sequence)
    np.testing.assert_array_equal(mrmlio.ijkToRas(echoes[0]), mrmlio.ijkToRas(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(echoes[31]), synth._series[1][..., 31])
    mwf = segment.run(segment.startMwf(sequence, TE), timeout=120)["mwf"]
    np.testing.assert_array_equal(mrmlio.ijkToRas(mwf), mrmlio.ijkToRas(node))
    truth = regenerate(kji.transpose(2, 1, 0).astype(np.int64), json.loads(shown.GetAttribute(SYNTHMAP_ATTRIBUTE))).mwf
    assert abs(float(slicer.util.arrayFromVolume(mwf).mean()) - float(truth.mean())) < 0.025  # docs/mwf.md bias
