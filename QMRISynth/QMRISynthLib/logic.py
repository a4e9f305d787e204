"""QMRISynth computation on MRML nodes, without Qt: map-set nodes in, simulated volume node out.

The Logic converts nodes to arrays, calls :func:`qmricore.physics.simulate` and writes the result into an
output volume node with exactly the IJK-to-RAS geometry of the PD map.  For live slider updates it can
simulate only the voxel planes shown in the slice views (:meth:`QMRISynthLogic.simulatePlanes`) and the
full volume later (:meth:`QMRISynthLogic.simulateVolume`).

Parameters are read by attribute name from any object that has them: the module's ``parameterNodeWrapper``
instance in the app, :class:`~QMRISynthLib.parameters.ScriptedNodeParameters` headless, or a
:class:`SimulationSettings` built directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import slicer.util
import torch

from qmricore import physics, protocols
from qmricore.errors import InputError, ParameterError
from qmricore.io import load_map_set

from . import mrmlio
from .parameters import MAP_NODE_PARAMETERS, SEQUENCE_PARAMETERS, parametersOfSequence

#: Node attribute naming the qMRI quantity a volume node holds (``pd``, ``r1``...), set on loaded maps.
MAP_ATTRIBUTE = "QMRI.Map"
#: Node attribute holding the JSON of the qSynth draw that made a map node (to reproduce it).
DRAW_ATTRIBUTE = "QMRI.qSynthDraw"
#: Display names of the maps.
MAP_TITLES = {"pd": "PD", "r1": "R1", "r2s": "R2s", "mt": "MT", "r2": "R2", "b1t": "B1t", "b1r": "B1r"}
#: Maps that must not hold negative values (SPEC §13: negative rates are an error).
NONNEGATIVE_MAPS = ("pd", "r1", "r2s", "r2", "mt")
#: Number of points along the swept parameter in the signal plot.
CURVE_POINTS = 64


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate: sequence, its parameters (s, degrees), fields to use and noise.

    ``params`` holds only the parameters the sequence takes.  ``snr=None`` means noise-free.
    """

    sequence: str
    params: Mapping[str, float]
    useB1t: bool = True
    useB1r: bool = True
    snr: float | None = None
    seed: int = 0

    @classmethod
    def fromParameters(cls, p: Any) -> SimulationSettings:
        """Read a parameter node (the wrapper or :class:`ScriptedNodeParameters`) by attribute name."""
        sequence = p.sequence
        params = {name: (int(getattr(p, name)) if name == "n" else float(getattr(p, name)))
                  for name in parametersOfSequence(sequence)}
        return cls(sequence, params, bool(p.useB1t), bool(p.useB1r), float(p.snr) if p.addNoise else None,
                   int(p.noiseSeed))

    def checked(self) -> SimulationSettings:
        """Raise :class:`~qmricore.errors.ParameterError` (one line) if the timings are infeasible."""
        physics.check_parameters(self.sequence, dict(self.params))
        return self


@dataclass
class _MapCache:
    """float32 KJI arrays of the map nodes, refreshed when a node or its voxels change."""

    keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class QMRISynthLogic:
    """Simulation, map loading, qSynth and plotting on MRML nodes (headless or in the app)."""

    def __init__(self, scene: Any = None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self._cache = _MapCache()
        self._noise: tuple[tuple[int, ...], int, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ map sets
    @staticmethod
    def mapNodesFromParameters(p: Any) -> dict[str, Any]:
        """The map nodes a parameter node references, by qmricore key (missing ones left out)."""
        nodes = {key: getattr(p, name) for key, name in MAP_NODE_PARAMETERS.items()}
        return {k: v for k, v in nodes.items() if v is not None}

    def mapArrays(self, mapNodes: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """float32 KJI arrays of the maps, checked to share the PD node's grid (cached between calls)."""
        missing = [k for k in physics.REQUIRED_MAPS if mapNodes.get(k) is None]
        if missing:
            names = ", ".join(MAP_TITLES[k] for k in missing)
            raise InputError(f"select the {names} map(s); PD, R1 and R2* are needed")
        reference = mapNodes["pd"]
        arrays = {}
        for key, node in mapNodes.items():
            if node is None:
                continue
            if not mrmlio.sameGeometry(reference, node):
                raise InputError(f"{MAP_TITLES[key]} map is not on the grid of the PD map "
                                 f"({mrmlio.nodeName(reference)}); resample it first", mrmlio.nodeName(node))
            stamp = (node.GetID(), node.GetImageData().GetMTime() + node.GetMTime())
            if self._cache.keys.get(key) != stamp:
                array = mrmlio.arrayKJI(node, f"{MAP_TITLES[key]} map")
                if not np.all(np.isfinite(array)):
                    raise InputError(f"{MAP_TITLES[key]} map holds NaN/Inf voxels", mrmlio.nodeName(node))
                if key in NONNEGATIVE_MAPS and array.size and array.min() < 0:
                    count = int(np.count_nonzero(array < 0))
                    raise InputError(f"{MAP_TITLES[key]} map has {count} negative voxel(s) "
                                     f"(min {float(array.min()):.4g}); it must be >= 0", mrmlio.nodeName(node))
                self._cache.arrays[key] = np.ascontiguousarray(array, dtype=np.float32)
                self._cache.keys[key] = stamp
            arrays[key] = self._cache.arrays[key]
        return arrays

    @staticmethod
    def _selectMaps(arrays: Mapping[str, np.ndarray], settings: SimulationSettings) -> dict[str, np.ndarray]:
        chosen = dict(arrays)
        if not settings.useB1t:
            chosen.pop("b1t", None)
        if not settings.useB1r:
            chosen.pop("b1r", None)
        spec = physics.SEQUENCES[settings.sequence]
        if "mt" not in spec.maps:
            chosen.pop("mt", None)
        if "r2" not in spec.maps:
            chosen.pop("r2", None)
        return chosen

    def loadHMRIFolder(self, folder: str | Path, r1Unit: str = "auto") -> dict[str, Any]:
        """Load an hMRI-toolbox results folder into new volume nodes (units converted, notes logged).

        Returns the nodes by map key; each carries the attribute :data:`MAP_ATTRIBUTE`.
        """
        mapSet = load_map_set(folder=folder, r1_unit=r1Unit)
        nodes = {}
        for key, data in mapSet.maps.items():
            volume = type(mapSet.reference)(data=data, affine=mapSet.reference.affine, path=mapSet.files[key])
            node = mrmlio.nodeFromVolume(self.scene, volume, f"{Path(folder).name}_{MAP_TITLES[key]}")
            node.SetAttribute(MAP_ATTRIBUTE, key)
            nodes[key] = node
        self.lastNotes = list(mapSet.notes)
        return nodes

    @staticmethod
    def assignMapNodes(p: Any, nodes: Mapping[str, Any]) -> None:
        """Put map nodes into a parameter node's map references."""
        for key, node in nodes.items():
            setattr(p, MAP_NODE_PARAMETERS[key], node)

    # ------------------------------------------------------------------ simulation
    def outputNodeFor(self, reference: Any, outputNode: Any | None) -> Any:
        """``outputNode`` (or a new one) on the reference grid, float32, allocated once."""
        if outputNode is None:
            outputNode = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                      self.scene.GenerateUniqueName("Simulated"))
            outputNode.CreateDefaultDisplayNodes()
        if not mrmlio.sameGeometry(reference, outputNode) or \
                slicer.util.arrayFromVolume(outputNode).dtype != np.float32:
            shape = tuple(reversed(mrmlio.dimensions(reference)))
            mrmlio.setArrayKJI(outputNode, np.zeros(shape, np.float32), like=reference)
        return outputNode

    def simulateArray(self, arrays: Mapping[str, np.ndarray], settings: SimulationSettings) -> np.ndarray:
        """:func:`qmricore.physics.simulate` on KJI arrays (the noise draw is that of ``simulate(seed=...)``)."""
        maps = self._selectMaps(arrays, settings)
        return physics.simulate(settings.sequence, maps, snr=settings.snr, seed=settings.seed, **settings.params)

    def simulateVolume(self, mapNodes: Mapping[str, Any], settings: SimulationSettings,
                       outputNode: Any | None = None) -> Any:
        """Simulate the whole volume into ``outputNode`` (created if None) on the PD map's grid.

        Raises
        ------
        InputError, ParameterError
            Missing maps, maps on different grids, infeasible timings (one line each).
        """
        settings.checked()
        arrays = self.mapArrays(mapNodes)
        image = self.simulateArray(arrays, settings)
        outputNode = self.outputNodeFor(mapNodes["pd"], outputNode)
        slicer.util.arrayFromVolume(outputNode)[...] = image
        slicer.util.arrayFromVolumeModified(outputNode)
        self._describe(outputNode, settings)
        return outputNode

    def simulateFromParameters(self, p: Any) -> Any:
        """Full simulation from a parameter node; sets its output reference when it had none."""
        output = self.simulateVolume(self.mapNodesFromParameters(p), SimulationSettings.fromParameters(p),
                                     p.outputVolume)
        if p.outputVolume is None:
            p.outputVolume = output
        return output

    @staticmethod
    def _describe(node: Any, settings: SimulationSettings) -> None:
        node.SetAttribute("QMRI.Sequence", settings.sequence)
        node.SetAttribute("QMRI.Parameters", json.dumps(dict(settings.params), sort_keys=True))
        node.SetAttribute("QMRI.SNR", "" if settings.snr is None else f"{settings.snr:g}")

    # ------------------------------------------------------------------ slice-first live update
    @staticmethod
    def displayedPlanes(referenceNode: Any, sliceNodes: Iterable[Any]) -> list[tuple[int, int]]:
        """Voxel planes of ``referenceNode`` shown by slice views, as ``(axis, index)`` of the KJI array.

        For each slice node, the plane is the voxel plane of the volume axis closest to the view's normal,
        through the view's centre point (``SliceToRAS`` column 3).  When the view is aligned with the volume
        (Slicer's default for a volume shown in it) this is exactly the displayed slice; an oblique view
        gets its closest voxel plane.  Views whose plane misses the volume are left out; duplicates are
        merged.
        """
        ijkToRas = mrmlio.ijkToRas(referenceNode)
        rasToIjk = np.linalg.inv(ijkToRas)
        direction = ijkToRas[:3, :3] / np.linalg.norm(ijkToRas[:3, :3], axis=0)
        dims = mrmlio.dimensions(referenceNode)
        planes: list[tuple[int, int]] = []
        for sliceNode in sliceNodes:
            sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
            normal, centre = sliceToRas[:3, 2], sliceToRas[:, 3]
            ijkAxis = int(np.argmax(np.abs(direction.T @ normal)))
            index = int(np.floor((rasToIjk @ centre)[ijkAxis] + 0.5))
            if 0 <= index < dims[ijkAxis]:
                plane = (2 - ijkAxis, index)  # IJK axis i -> KJI array axis 2 - i
                if plane not in planes:
                    planes.append(plane)
        return planes

    def _noiseFields(self, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The two standard-normal fields :func:`qmricore.physics.rician_noise` draws for ``seed`` (cached)."""
        if self._noise is None or self._noise[:2] != (shape, seed):
            generator = torch.Generator(device="cpu")
            generator.manual_seed(int(seed))
            n1 = torch.randn(shape, generator=generator, dtype=torch.float32).numpy()
            n2 = torch.randn(shape, generator=generator, dtype=torch.float32).numpy()
            self._noise = (shape, seed, n1, n2)
        return self._noise[2], self._noise[3]

    def simulatePlanes(self, mapNodes: Mapping[str, Any], settings: SimulationSettings,
                       planes: Sequence[tuple[int, int]], outputNode: Any | None = None) -> Any:
        """Simulate only the given KJI voxel planes and write them into the output volume, in place.

        Noise-free, each plane equals the same plane of :meth:`simulateVolume`.  With noise, the voxels get
        the same noise draw as the full simulation (same seed) but the noise level is set from the
        displayed planes' signal, not the whole volume's, so it differs slightly until the full update.
        """
        settings.checked()
        arrays = self.mapArrays(mapNodes)
        outputNode = self.outputNodeFor(mapNodes["pd"], outputNode)
        out = slicer.util.arrayFromVolume(outputNode)
        noiseFree = SimulationSettings(settings.sequence, settings.params, settings.useB1t, settings.useB1r)
        maps = self._selectMaps(arrays, settings)
        results = []
        for axis, index in planes:
            cut = (slice(None),) * axis + (index,)
            plane = {k: (v[cut] if getattr(v, "ndim", 0) == 3 else v) for k, v in maps.items()}
            results.append((cut, self.simulateArray(plane, noiseFree)))
        if settings.snr is not None and results:
            n1, n2 = self._noiseFields(out.shape, settings.seed)
            signal = np.concatenate([r.ravel() for _, r in results])
            reference = signal > 0.1 * signal.max()
            level = float(signal[reference].mean()) if reference.any() else 0.0
            sigma = np.float32(level / settings.snr) if level > 0 else np.float32(0)
            results = [(cut, np.hypot(r + n1[cut] * sigma, n2[cut] * sigma)) for cut, r in results]
        for cut, result in results:
            out[cut] = result
        slicer.util.arrayFromVolumeModified(outputNode)
        return outputNode

    # ------------------------------------------------------------------ presets
    @staticmethod
    def applyPreset(p: Any, name: str) -> None:
        """Set the sequence and its parameters of a named preset (:mod:`qmricore.protocols`)."""
        sequence, params = protocols.preset(name)
        p.sequence = sequence
        for key, value in params.items():
            if key in SEQUENCE_PARAMETERS:
                setattr(p, key, int(value) if key == "n" else float(value))

    # ------------------------------------------------------------------ qSynth
    def synthesizeMaps(self, labelNode: Any, seed: int, priorsPath: str | Path | None = None,
                       device: str = "cpu") -> dict[str, Any]:
        """qSynth: draw qMRI maps (PD, R1, R2*, MT) from a label map with the tissue priors, seeded.

        Returns new volume nodes on the label map's grid by key; each holds the draw's JSON in
        :data:`DRAW_ATTRIBUTE` so that the maps can be reproduced.
        """
        from qmricore.generators.priors import load_priors
        from qmricore.generators.qsynth import sample_maps

        labels = mrmlio.arrayKJI(labelNode, "label map")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.equal(np.mod(labels, 1), 0)):
                raise InputError("label map holds non-integer values", mrmlio.nodeName(labelNode))
        if not np.any(labels > 0):
            raise InputError("label map is empty (no label above 0)", mrmlio.nodeName(labelNode))
        priors = load_priors(priorsPath)
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
        tensor = torch.as_tensor(np.ascontiguousarray(labels).astype(np.int64), device=device)
        maps, draw = sample_maps(tensor, priors, generator)
        drawJson = _drawJson(draw)
        nodes = {}
        for key, value in maps.items():
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            array = np.ascontiguousarray(array.reshape(labels.shape), dtype=np.float32)
            node = mrmlio.addVolumeNode(self.scene, array, mrmlio.ijkToRas(labelNode),
                                        f"qSynth_{MAP_TITLES.get(key, key)}_seed{seed}")
            node.SetAndObserveTransformNodeID(labelNode.GetTransformNodeID())
            node.SetAttribute(MAP_ATTRIBUTE, key)
            node.SetAttribute(DRAW_ATTRIBUTE, drawJson)
            nodes[key] = node
        return nodes

    # ------------------------------------------------------------------ export
    @staticmethod
    def exportNifti(node: Any, path: str | Path) -> Path:
        """Write a volume node to NIfTI atomically (its IJK-to-RAS becomes the affine)."""
        return mrmlio.exportNifti(node, path)

    # ------------------------------------------------------------------ signal plot
    @staticmethod
    def tissueValues(priorsPath: str | Path | None = None) -> dict[str, dict[str, float]]:
        """Mean tissue values per class (``pd, r1, r2s, mt``) from the qSynth priors (``mu_mu``)."""
        from qmricore.generators.priors import load_priors

        priors = load_priors(priorsPath)
        return {name: {k: float(v.mu_mu) for k, v in prior.items()}
                for name, prior in zip(priors.names, priors.priors, strict=True) if name != "background"}

    @staticmethod
    def sweepValues(settings: SimulationSettings, swept: str, points: int = CURVE_POINTS) -> np.ndarray:
        """Values of the swept parameter: its slider range (log-spaced for times), feasible ones only."""
        from .parameters import sequenceParameterRange

        if swept not in settings.params:
            raise ParameterError(f"{settings.sequence} has no parameter {swept!r}; it takes "
                                 f"{', '.join(settings.params)}")
        low, high = sequenceParameterRange(swept)
        if swept == "n":
            values = np.unique(np.linspace(low, high, points).round())
        elif swept in ("flip", "flip2"):
            values = np.linspace(low, high, points)
        else:
            values = np.geomspace(max(low, 1e-4), high, points)
        feasible = []
        for value in values:
            try:
                physics.check_parameters(settings.sequence, {**settings.params, swept: value})
            except ParameterError:
                continue
            feasible.append(value)
        return np.asarray(feasible, dtype=np.float64)

    def signalCurves(self, settings: SimulationSettings, swept: str,
                     tissues: Mapping[str, Mapping[str, float]] | None = None,
                     values: Sequence[float] | None = None, tableNode: Any | None = None,
                     makeChart: bool = True) -> tuple[Any, Any]:
        """Noise-free signal of each tissue class versus one swept parameter, as a table (and a chart).

        The table's first column is the swept parameter (seconds or degrees), then one column per tissue.
        With ``makeChart`` a plot chart node with one plot series per tissue is created (or reused).
        Returns ``(tableNode, chartNode)``; ``chartNode`` is None without ``makeChart``.
        """
        tissues = dict(tissues) if tissues is not None else self.tissueValues()
        values = self.sweepValues(settings, swept) if values is None else np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ParameterError(f"no feasible {swept} value with the other parameters as they are")
        names = list(tissues)
        maps = {k: np.array([tissues[t][k] for t in names], dtype=np.float64) for k in ("pd", "r1", "r2s")}
        for key in ("mt", "r2"):  # optional maps, used when every tissue has a value
            if key in physics.SEQUENCES[settings.sequence].maps and all(key in tissues[t] for t in names):
                maps[key] = np.array([tissues[t][key] for t in names], dtype=np.float64)
        columns = [values]
        signals = np.stack([physics.simulate(settings.sequence, maps, **{**settings.params, swept: v})
                            for v in values])  # (values, tissues)
        columns += [signals[:, i] for i in range(len(names))]
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("Signal"))
        label, unit = _axisTitle(swept)
        slicer.util.updateTableFromArray(tableNode, columns, [label] + names)
        tableNode.SetAttribute("QMRI.Sequence", settings.sequence)
        chart = self._chart(tableNode, label, names, settings.sequence) if makeChart else None
        return tableNode, chart

    def _chart(self, tableNode: Any, xColumn: str, names: Sequence[str], sequence: str) -> Any:
        chart = None
        chartId = tableNode.GetAttribute("QMRI.Chart")
        if chartId:
            chart = self.scene.GetNodeByID(chartId)
        if chart is None:
            chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.scene.GenerateUniqueName("Signal chart"))
            tableNode.SetAttribute("QMRI.Chart", chart.GetID())
        chart.RemoveAllPlotSeriesNodeIDs()
        for name in names:
            series = self.scene.GetFirstNodeByName(f"{tableNode.GetName()} {name}")
            if series is None or not series.IsA("vtkMRMLPlotSeriesNode"):
                series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{tableNode.GetName()} {name}")
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName(xColumn)
            series.SetYColumnName(name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetUniqueColor()
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle(f"{sequence.upper()} signal per tissue")
        chart.SetXAxisTitle(xColumn)
        chart.SetYAxisTitle("signal (a.u.)")
        return chart


def _axisTitle(swept: str) -> tuple[str, str]:
    from .parameters import SEQUENCE_PARAMETER_LABELS

    label, unit = SEQUENCE_PARAMETER_LABELS[swept]
    return (f"{label} ({unit})" if unit else label), unit


def _drawJson(draw: Any) -> str:
    """JSON of a qSynth draw (a dataclass, something with ``to_json``/``to_dict``, or a mapping)."""
    for method in ("to_json", "to_dict", "as_dict"):
        if hasattr(draw, method):
            value = getattr(draw, method)()
            return value if isinstance(value, str) else json.dumps(value, default=_plain)
    try:
        return json.dumps(asdict(draw), default=_plain)
    except TypeError:
        return json.dumps(draw, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
