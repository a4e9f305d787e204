"""QMRISynthLib on a real MRML scene (slicer-core): geometry, values, slice-first updates, qSynth, plots."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import slicer.util
from mrml_helpers import SHAPE_KJI, oblique_ijk_to_ras
from QMRICommonLib import mrmlio
from QMRICommonLib.parameters import ScriptedNodeParameters
from QMRISynthLib import QMRISynthLogic, SimulationSettings, synthNodes, synthParameters
from QMRISynthLib.parameters import SEQUENCE_PARAMETERS, parametersOfSequence, sequenceParameterRange

from qmricore import physics, protocols
from qmricore.errors import InputError, ParameterError
from qmricore.io import Volume, read_volume, write_nifti


def make_maps(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"pd": rng.uniform(50, 100, SHAPE_KJI).astype(np.float32),
            "r1": rng.uniform(0.2, 1.5, SHAPE_KJI).astype(np.float32),
            "r2s": rng.uniform(1, 30, SHAPE_KJI).astype(np.float32),
            "mt": rng.uniform(0, 2, SHAPE_KJI).astype(np.float32),
            "b1t": rng.uniform(0.8, 1.2, SHAPE_KJI).astype(np.float32)}


@pytest.fixture
def map_nodes(scene):
    arrays = make_maps(np.random.default_rng(3))
    matrix = oblique_ijk_to_ras()
    nodes = {k: mrmlio.addVolumeNode(scene, v, matrix, k) for k, v in arrays.items()}
    return nodes, arrays


def test_simulated_volume_keeps_oblique_geometry_and_equals_qmricore(scene, map_nodes):
    nodes, arrays = map_nodes
    settings = SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 25.0})
    out = QMRISynthLogic(scene).simulateVolume(nodes, settings)
    np.testing.assert_array_equal(mrmlio.ijkToRas(out), mrmlio.ijkToRas(nodes["pd"]))  # bit for bit
    np.testing.assert_allclose(mrmlio.ijkToRas(out), oblique_ijk_to_ras(), rtol=0, atol=1e-12)
    assert mrmlio.dimensions(out) == (11, 9, 7)
    expected = physics.simulate("gre", arrays, tr=0.02, te=0.004, flip=25.0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), expected)
    # and against the equation itself at one voxel, written out here (SPEC §4, with MT and B1t)
    k, j, i = 3, 4, 5
    a = np.radians(25.0 * arrays["b1t"][k, j, i])
    e = np.exp(-arrays["r1"][k, j, i] * 0.02)
    keep = 1 - arrays["mt"][k, j, i] / 100
    decay = np.exp(-arrays["r2s"][k, j, i] * 0.004)
    s = arrays["pd"][k, j, i] * np.sin(a) * keep * (1 - e) / (1 - keep * np.cos(a) * e) * decay
    assert slicer.util.arrayFromVolume(out)[k, j, i] == pytest.approx(s, rel=1e-5)


def test_b1_toggle_and_noise_follow_the_settings(scene, map_nodes):
    nodes, arrays = map_nodes
    logic = QMRISynthLogic(scene)
    settings = SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 25.0}, useB1t=False, snr=20.0, seed=7)
    out = logic.simulateVolume(nodes, settings)
    maps = {k: v for k, v in arrays.items() if k != "b1t"}
    expected = physics.simulate("gre", maps, snr=20.0, seed=7, tr=0.02, te=0.004, flip=25.0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), expected)


def test_output_reused_in_place_and_inputs_untouched(scene, map_nodes):
    nodes, arrays = map_nodes
    logic = QMRISynthLogic(scene)
    out = logic.simulateVolume(nodes, SimulationSettings("flair", {"tr": 9.0, "te": 0.1, "ti": 2.5}))
    view = slicer.util.arrayFromVolume(out)
    again = logic.simulateVolume(nodes, SimulationSettings("flair", {"tr": 9.0, "te": 0.1, "ti": 1.5}), out)
    assert again is out and np.shares_memory(view, slicer.util.arrayFromVolume(out))
    for key, node in nodes.items():
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), arrays[key])


def slice_node(scene, name, normal_ras, point_ras):
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
    normal = np.asarray(normal_ras, float) / np.linalg.norm(normal_ras)
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, normal)
    x /= np.linalg.norm(x)
    y = np.cross(normal, x)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = x, y, normal, point_ras
    node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(matrix))
    node.UpdateMatrices()
    return node


def test_displayed_planes_follow_the_slice_nodes(scene, map_nodes):
    nodes, _ = map_nodes
    matrix = oblique_ijk_to_ras()
    voxel = np.array([5, 4, 3, 1.0])  # I, J, K
    point = matrix @ voxel
    direction = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    views = [slice_node(scene, name, direction[:, axis], point[:3])
             for name, axis in (("Red", 2), ("Yellow", 0), ("Green", 1))]
    planes = QMRISynthLogic.displayedPlanes(nodes["pd"], views)
    assert planes == [(0, 3), (2, 5), (1, 4)]  # K = 3, I = 5, J = 4 in KJI axes
    outside = slice_node(scene, "Far", direction[:, 2], (matrix @ np.array([0, 0, 50, 1.0]))[:3])
    assert QMRISynthLogic.displayedPlanes(nodes["pd"], [outside]) == []


@pytest.mark.parametrize("sequence", ["gre", "flair", "mprage", "mp2rage"])
def test_slice_update_equals_planes_of_the_full_simulation(scene, map_nodes, sequence):
    nodes, _ = map_nodes
    name = {"gre": "T1 SPGR", "flair": "3T FLAIR", "mprage": "MPRAGE ADNI-like", "mp2rage": "MP2RAGE 3T"}[sequence]
    seq, params = protocols.preset(name)
    settings = SimulationSettings(seq, params)
    logic = QMRISynthLogic(scene)
    full = slicer.util.arrayFromVolume(logic.simulateVolume(nodes, settings)).copy()
    changed = "ti" if "ti" in params else "flip"  # a parameter every one of these images depends on
    out = logic.simulateVolume(nodes, SimulationSettings(seq, {**params, changed: params[changed] * 1.1}))
    stale = slicer.util.arrayFromVolume(out).copy()
    planes = [(0, 2), (1, 8), (2, 0)]
    logic.simulatePlanes(nodes, settings, planes, out)
    updated = slicer.util.arrayFromVolume(out)
    mask = np.zeros(full.shape, bool)
    for axis, index in planes:
        cut = (slice(None),) * axis + (index,)
        # same equation on fewer voxels: equal up to float32 rounding (torch's vector and scalar-tail paths
        # of exp/pow may differ in the last bit)
        np.testing.assert_allclose(updated[cut], full[cut], rtol=1e-6, atol=0)
        mask[cut] = True
    np.testing.assert_array_equal(updated[~mask], stale[~mask])  # the rest waits for the full update
    assert not np.array_equal(stale[mask], full[mask])


def test_slice_update_with_noise_uses_the_full_draw(scene, map_nodes):
    nodes, arrays = map_nodes
    settings = SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 25.0}, snr=10.0, seed=5)
    logic = QMRISynthLogic(scene)
    out = logic.simulatePlanes(nodes, settings, [(0, 1)])
    noisy = slicer.util.arrayFromVolume(out)[1]
    clean = physics.simulate("gre", {k: v[1] for k, v in arrays.items()}, tr=0.02, te=0.004, flip=25.0)
    full = physics.simulate("gre", arrays, snr=10.0, seed=5, tr=0.02, te=0.004, flip=25.0)[1]
    # same standard-normal draws as the full simulation; only the noise level may differ slightly
    sigma_full = np.median(np.abs(full - clean))
    sigma_plane = np.median(np.abs(noisy - clean))
    assert sigma_plane == pytest.approx(sigma_full, rel=0.2)
    assert np.corrcoef((noisy - clean).ravel(), (full - clean).ravel())[0, 1] > 0.99


def test_infeasible_timings_and_bad_inputs_give_one_line_errors(scene, map_nodes):
    nodes, _ = map_nodes
    logic = QMRISynthLogic(scene)
    with pytest.raises(ParameterError, match=r"TI \(3 s\) must be shorter than TR \(2 s\)"):
        logic.simulateVolume(nodes, SimulationSettings("flair", {"tr": 2.0, "te": 0.1, "ti": 3.0}))
    with pytest.raises(InputError, match="select the R1 map"):
        logic.simulateVolume({"pd": nodes["pd"], "r2s": nodes["r2s"]},
                             SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 20}))
    other = mrmlio.addVolumeNode(scene, np.ones(SHAPE_KJI, np.float32), np.diag([1.0, 1, 1, 1]), "shifted")
    with pytest.raises(InputError, match="R1 map is not on the grid of the PD map"):
        logic.simulateVolume({**nodes, "r1": other}, SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 20}))
    bad = make_maps(np.random.default_rng(0))
    bad["r1"][1, 2, 3] = np.nan
    bad_node = mrmlio.addVolumeNode(scene, bad["r1"], oblique_ijk_to_ras(), "nan_r1")
    gre = SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 20})
    with pytest.raises(InputError, match="nan_r1: R1 map holds NaN/Inf voxels"):
        logic.simulateVolume({**nodes, "r1": bad_node}, gre)
    bad["r2s"][0, 0, :2] = -1.0
    negative = mrmlio.addVolumeNode(scene, bad["r2s"], oblique_ijk_to_ras(), "neg_r2s")
    with pytest.raises(InputError, match=r"neg_r2s: R2s map has 2 negative voxel\(s\) \(min -1\); it must be >= 0"):
        logic.simulateVolume({**nodes, "r2s": negative}, gre)
    volumes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()
    assert volumes == len(nodes) + 3  # the three bad inputs; no output volume was made


def test_parameters_from_a_parameter_node_and_presets(scene, map_nodes):
    nodes, arrays = map_nodes
    holder = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "QMRISynth")
    p = ScriptedNodeParameters(holder, synthParameters(), synthNodes())
    QMRISynthLogic.assignMapNodes(p, nodes)
    QMRISynthLogic.applyPreset(p, "MPRAGE ADNI-like")
    assert p.sequence == "mprage" and p.n == 176 and p.ti == 0.9
    out = QMRISynthLogic(scene).simulateFromParameters(p)
    assert p.outputVolume is out
    seq, params = protocols.preset("MPRAGE ADNI-like")
    expected = physics.simulate(seq, {k: arrays[k] for k in ("pd", "r1", "r2s", "b1t")}, **params)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), expected)


def test_parameter_ranges_come_from_protocols():
    specs = {s.name: s for s in synthParameters()}
    for name in SEQUENCE_PARAMETERS:
        low, high = sequenceParameterRange(name)
        assert (specs[name].minimum, specs[name].maximum) == (low, high)
        for preset in protocols.preset_names():  # every preset fits on the sliders
            value = protocols.preset(preset)[1].get(name)
            if value is not None:
                assert low <= value <= high, (preset, name)
        for sampler in ("flair", "fse", "gre", "mprage", "qatlas_mprage"):
            dist = protocols.sampling_ranges(sampler).get(name)
            if dist and dist["dist"] in ("uniform", "loguniform"):
                assert low <= dist["low"] and dist["high"] <= high, (sampler, name)
    seq, params = protocols.preset("3T FLAIR")
    assert specs["sequence"].default == seq and all(specs[k].default == v for k, v in params.items())
    assert parametersOfSequence("flair") == ("tr", "te", "ti")


def test_parameter_node_survives_a_saved_and_reloaded_scene(scene, map_nodes, tmp_path):
    nodes, _ = map_nodes
    holder = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "QMRISynth")
    holder.SetModuleName("QMRISynth")
    p = ScriptedNodeParameters(holder, synthParameters(), synthNodes())
    QMRISynthLogic.assignMapNodes(p, nodes)
    p.sequence, p.tr, p.te, p.flip, p.n, p.addNoise = "gre", 0.025, 0.003, 7.5, 128, True
    with pytest.raises(ValueError, match=r"tr = 20.0 is outside \[0.001, 10.0\]"):
        p.tr = 20.0
    scene_file = tmp_path / "synth.mrml"
    scene.SetURL(str(scene_file))
    assert scene.Commit() != 0 and scene_file.is_file()
    # what Slicer's parameterNodeWrapper would store: plain strings
    text = scene_file.read_text()
    assert '"tr 0.025"' in text and '"addNoise True"' in text and '"sequence gre"' in text

    fresh = slicer.vtkMRMLScene()
    fresh.SetURL(str(scene_file))
    assert fresh.Connect() != 0
    loaded = fresh.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
    q = ScriptedNodeParameters(loaded, synthParameters(), synthNodes())
    assert (q.sequence, q.tr, q.te, q.flip, q.n, q.addNoise, q.useB1t) == ("gre", 0.025, 0.003, 7.5, 128, True, True)
    assert q.pdVolume is not None and q.pdVolume.GetName() == nodes["pd"].GetName()
    assert q.labelVolume is None


def test_hmri_folder_loads_into_nodes_and_exports_back(scene, tmp_path):
    rng = np.random.default_rng(1)
    maps = make_maps(rng)
    affine = oblique_ijk_to_ras()
    folder = tmp_path / "subject01"
    names = {"pd": "s01_PD.nii.gz", "r1": "s01_R1.nii.gz", "r2s": "s01_R2s_OLS.nii.gz", "mt": "s01_MT.nii.gz"}
    for key, name in names.items():
        write_nifti(folder / name, maps[key].transpose(2, 1, 0), Volume(maps[key].transpose(2, 1, 0), affine))
    # R1 written in 1/ms: the loader converts and says so
    r1 = maps["r1"].transpose(2, 1, 0)
    write_nifti(folder / names["r1"], r1 / 1000, Volume(r1, affine))
    logic = QMRISynthLogic(scene)
    nodes = logic.loadHMRIFolder(folder)
    assert sorted(nodes) == ["mt", "pd", "r1", "r2s"]
    assert any("1/ms" in note for note in logic.lastNotes)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes["r1"]), maps["r1"], rtol=1e-6)
    np.testing.assert_allclose(mrmlio.ijkToRas(nodes["pd"]), affine, atol=1e-6)
    out = logic.simulateVolume(nodes, SimulationSettings("gre", {"tr": 0.02, "te": 0.004, "flip": 25.0}))
    written = logic.exportNifti(out, tmp_path / "export" / "gre.nii.gz")
    back = read_volume(written)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.data, slicer.util.arrayFromVolume(out).transpose(2, 1, 0))
    with pytest.raises(InputError, match="output must end in .nii or .nii.gz"):
        logic.exportNifti(out, tmp_path / "gre.png")


def test_signal_table_and_chart_match_the_equations(scene):
    tissues = {"wm": {"pd": 69.0, "r1": 1.2, "r2s": 20.0, "mt": 1.8},
               "csf": {"pd": 100.0, "r1": 0.23, "r2s": 1.0, "mt": 0.0}}
    settings = SimulationSettings("flair", {"tr": 9.0, "te": 0.1, "ti": 2.5})
    logic = QMRISynthLogic(scene)
    values = [0.5, 1.0, 2.5, 4.0]
    table, chart = logic.signalCurves(settings, "ti", tissues, values)
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == ["TI (s)", "wm", "csf"]
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "TI (s)"), values)
    for name, t in tissues.items():
        r1, pd, r2 = t["r1"], t["pd"], t["r2s"]
        # FLAIR at B1 = 1 (SPEC §4): PD exp(-R2 TE) |1 - 2E(TI) + 2E(TR - TE/2) - E(TR)|
        expected = [pd * np.exp(-r2 * 0.1)
                    * abs(1 - 2 * np.exp(-r1 * ti) + 2 * np.exp(-r1 * (9.0 - 0.05)) - np.exp(-r1 * 9.0))
                    for ti in values]
        np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, name), expected, rtol=1e-10)
    csf = slicer.util.arrayFromTableColumn(table, "csf")
    assert csf[2] < 0.1 * csf[0]  # FLAIR: TI = 2.5 s nulls CSF
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetXColumnName() == "TI (s)" and series.GetTableNode() is table
    # default sweep: slider range, infeasible values dropped, tissues from the qSynth priors
    table2, _ = logic.signalCurves(settings, "ti", makeChart=False)
    ti = slicer.util.arrayFromTableColumn(table2, "TI (s)")
    assert ti.max() + 0.1 < 9.0 and ti.min() >= sequenceParameterRange("ti")[0]
    assert "csf" in [table2.GetColumnName(i) for i in range(table2.GetNumberOfColumns())]
    with pytest.raises(ParameterError, match="flair has no parameter 'flip'"):
        logic.signalCurves(settings, "flip", tissues)


def test_qsynth_label_map_to_seeded_map_nodes(scene):
    qsynth = pytest.importorskip("qmricore.generators.qsynth", reason="qSynth generator not in the library yet")
    labels = np.zeros(SHAPE_KJI, np.int16)
    labels[1:6, 2:7, 2:9] = 2  # WM
    labels[2:5, 3:6, 3:8] = 1  # GM
    labels[3, 4, 4:6] = 4  # CSF
    node = mrmlio.addVolumeNode(scene, labels, oblique_ijk_to_ras(), "labels", "vtkMRMLLabelMapVolumeNode")
    logic = QMRISynthLogic(scene)
    first = logic.synthesizeMaps(node, seed=11)
    again = logic.synthesizeMaps(node, seed=11)
    other = logic.synthesizeMaps(node, seed=12)
    assert {"pd", "r1", "r2s"} <= set(first)
    for key, map_node in first.items():
        np.testing.assert_array_equal(mrmlio.ijkToRas(map_node), mrmlio.ijkToRas(node))
        array = slicer.util.arrayFromVolume(map_node)
        assert array.shape == SHAPE_KJI and np.all(np.isfinite(array))
        np.testing.assert_array_equal(array, slicer.util.arrayFromVolume(again[key]))
        assert map_node.GetAttribute("QMRI.qSynthDraw")
    assert not np.array_equal(slicer.util.arrayFromVolume(first["r1"]), slicer.util.arrayFromVolume(other["r1"]))
    r1 = slicer.util.arrayFromVolume(first["r1"])
    assert r1[labels == 2].mean() > r1[labels == 1].mean() > 0  # WM relaxes faster than GM (priors)
    # the synthesised maps feed the simulator
    out = logic.simulateVolume(first, SimulationSettings("flair", {"tr": 9.0, "te": 0.1, "ti": 2.5}))
    assert np.all(np.isfinite(slicer.util.arrayFromVolume(out)))
    empty = mrmlio.addVolumeNode(scene, np.zeros(SHAPE_KJI, np.int16), np.eye(4), "empty", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="label map is empty"):
        logic.synthesizeMaps(empty, seed=1)
    del qsynth
