"""QMRISynth computation on MRML nodes, without Qt: map-set nodes in, simulated volume node out.

The Logic converts nodes to arrays, calls :func:`qmricore.physics.simulate` and writes the result into an
output volume node with exactly the IJK-to-RAS geometry of the PD map.  For live slider updates it can
simulate only the voxel planes shown in the slice views (:meth:`QMRISynthLogic.simulatePlanes`) and the
full volume later (:meth:`QMRISynthLogic.simulateVolume`).

The multi-echo spin echo (``"cpmg"``) makes an echo series and shows one echo of it: from the map set with
:func:`qmricore.physics.cpmg` (T2 = 1/R2, T1 = 1/R1; an R2 map is required, R2* is not T2), or from the label map
with SynthMap (:mod:`qmricore.generators.synthmap`: three water pools, B1 field, EPG, Rician noise).  The last
series is kept, so moving the echo slider only copies one echo.

Parameters are read by attribute name from any object that has them: the module's ``parameterNodeWrapper``
instance in the app, :class:`~QMRICommonLib.parameters.ScriptedNodeParameters` headless, or a
:class:`SimulationSettings` built directly.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import slicer.util
import torch
from QMRICommonLib import mrmlio
from QMRICommonLib.headless import LogicBase
from QMRICommonLib.mrmlio import MAP_ATTRIBUTE, MAP_TITLES
from QMRICommonLib.parameters import MS_PER_S
from QMRICommonLib.runner import BackgroundRunner, Event, Job, RunnerEvent, qmricoreCommand
from QMRICommonLib.shipped import chosenOrShipped, unavailableReason

from qmricore import physics, protocols
from qmricore.errors import InputError, ParameterError
from qmricore.io import load_map_set

from .parameters import (
    MAP_NODE_PARAMETERS,
    MULTI_ECHO,
    MULTI_ECHO_SOURCES,
    SEQUENCE_PARAMETERS,
    parametersOfSequence,
)

#: Node attribute holding the JSON of the qSynth draw that made a map node (to reproduce it).
DRAW_ATTRIBUTE = "QMRI.qSynthDraw"
#: Node attribute holding the JSON sidecar of a generated brain (classes, requested and measured ventricle volume).
BRAIN_ATTRIBUTE = "QMRI.GeneratedBrain"
#: The shipped mask generator of "Generate brain" (Resources/Models/); without it a file must be chosen.
DEFAULT_BRAIN_GENERATOR = "ldm_masks.pt"
#: Maps that must not hold negative values (SPEC §13: negative rates are an error).
NONNEGATIVE_MAPS = ("pd", "r1", "r2s", "r2", "mt")
#: Number of points along the swept parameter in the signal plot.
CURVE_POINTS = 64
#: Maps the multi-echo spin echo needs from a map set (T2 = 1/R2 and T1 = 1/R1 of :func:`qmricore.physics.cpmg`).
MULTI_ECHO_MAPS = ("pd", "r1", "r2")
#: Node attribute holding the JSON record of the SynthMap draw behind a simulated echo (replayable).
SYNTHMAP_ATTRIBUTE = "QMRI.SynthMapDraw"
#: Node attribute: the echo (1-based) a multi-echo output shows.
ECHO_ATTRIBUTE = "QMRI.Echo"
#: Multi-echo widget parameter -> (key of ``SimulationSettings.params``, factor from the panel's unit).
MULTI_ECHO_KEYS = {"echoSpacing": ("te", 1.0 / MS_PER_S), "echoCount": ("n_echoes", 1),
                   "refocusAngle": ("refocus", 1.0)}


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate: sequence, its parameters (s, degrees), fields to use and noise.

    ``params`` holds only the parameters the sequence takes; for the multi-echo spin echo (``"cpmg"``) they are
    :func:`qmricore.physics.cpmg`'s ``te`` (s), ``n_echoes`` and ``refocus`` (degrees), and ``echo`` (1-based) is
    the echo shown.  ``snr=None`` means noise-free.
    """

    sequence: str
    params: Mapping[str, float]
    useB1t: bool = True
    useB1r: bool = True
    snr: float | None = None
    seed: int = 0
    echo: int = 1

    @classmethod
    def fromParameters(cls, p: Any) -> SimulationSettings:
        """Read a parameter node (the wrapper or :class:`ScriptedNodeParameters`) by attribute name."""
        sequence = p.sequence
        if sequence == MULTI_ECHO:
            params = {key: (int(getattr(p, name)) if key == "n_echoes" else float(getattr(p, name)) * factor)
                      for name, (key, factor) in MULTI_ECHO_KEYS.items()}
        else:
            params = {name: (int(getattr(p, name)) if name == "n" else float(getattr(p, name)))
                      for name in parametersOfSequence(sequence)}
        return cls(sequence, params, bool(p.useB1t), bool(p.useB1r), float(p.snr) if p.addNoise else None,
                   int(p.noiseSeed), int(p.displayedEcho))

    def withValue(self, name: str, value: float) -> SimulationSettings | None:
        """These settings with one panel parameter changed (a slider being dragged), or None if it is not used."""
        if name == "snr":
            return dataclasses.replace(self, snr=float(value) if self.snr is not None else None)
        if self.sequence == MULTI_ECHO and name in MULTI_ECHO_KEYS:
            key, factor = MULTI_ECHO_KEYS[name]
            return dataclasses.replace(self, params={**self.params, key: float(value) * factor})
        if name in self.params and self.sequence != MULTI_ECHO:
            return dataclasses.replace(self, params={**self.params, name: float(value)})
        return None

    def checked(self) -> SimulationSettings:
        """Raise :class:`~qmricore.errors.ParameterError` (one line) if the timings are infeasible."""
        if self.sequence != MULTI_ECHO:
            physics.check_parameters(self.sequence, dict(self.params))
            return self
        from qmricore.generators.synthmap import SynthMapConfig

        p = self.params
        try:
            SynthMapConfig(te=p["te"], n_echoes=p["n_echoes"], refocus=p["refocus"])  # the library's range checks
        except ParameterError as error:
            raise ParameterError(f"{MULTI_ECHO}: {str(error).removeprefix('synthmap: ')}") from None
        if not 1 <= self.echo <= p["n_echoes"]:
            raise ParameterError(f"{MULTI_ECHO}: the displayed echo {self.echo} is not one of the "
                                 f"{p['n_echoes']} echoes")
        return self

    @property
    def seriesKey(self) -> tuple:
        """Everything that shapes the echo series (all but the echo shown)."""
        return (self.sequence, tuple(sorted(self.params.items())), self.useB1t, self.useB1r, self.snr, self.seed)


def requiredMaps(sequence: str) -> tuple[str, ...]:
    """The maps a sequence cannot do without."""
    return MULTI_ECHO_MAPS if sequence == MULTI_ECHO else physics.REQUIRED_MAPS


@dataclass
class _MapCache:
    """float32 KJI arrays of the map nodes, refreshed when a node or its voxels change."""

    keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class QMRISynthLogic(LogicBase):
    """Simulation, map loading, qSynth and plotting on MRML nodes (headless or in the app): the module's Logic
    (``QMRISynth.py`` hands this class out as ``QMRISynthLogic``)."""

    def __init__(self, scene: Any = None) -> None:
        LogicBase.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        self._cache = _MapCache()
        self._noise: tuple[tuple[int, ...], int, np.ndarray, np.ndarray] | None = None
        #: The last echo series: ``(key, KJI x echoes float32 array, reference node, SynthMap record or None)``.
        self._series: tuple[tuple, np.ndarray, Any, dict | None] | None = None

    # ------------------------------------------------------------------ map sets
    @staticmethod
    def mapNodesFromParameters(p: Any) -> dict[str, Any]:
        """The map nodes a parameter node references, by qmricore key (missing ones left out)."""
        nodes = {key: getattr(p, name) for key, name in MAP_NODE_PARAMETERS.items()}
        return {k: v for k, v in nodes.items() if v is not None}

    def mapArrays(self, mapNodes: Mapping[str, Any], required: Sequence[str] = physics.REQUIRED_MAPS
                  ) -> dict[str, np.ndarray]:
        """float32 KJI arrays of the maps, checked to share the PD node's grid (cached between calls)."""
        missing = [k for k in required if mapNodes.get(k) is None]
        if missing:
            names = ", ".join(MAP_TITLES[k] for k in missing)
            if tuple(required) == MULTI_ECHO_MAPS:
                raise InputError(f"select the {names} map(s): the multi-echo spin echo needs PD, R1 and R2 "
                                 "(T2 = 1/R2; R2* is not T2), or take the echo series from the label map (SynthMap)")
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
        if settings.sequence == MULTI_ECHO:
            return {k: v for k, v in chosen.items() if k in (*MULTI_ECHO_MAPS, "b1t", "b1r")}
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
        """:func:`qmricore.physics.simulate` on KJI arrays (the noise draw is that of ``simulate(seed=...)``);
        the multi-echo spin echo gives the displayed echo of :meth:`echoSeries`."""
        if settings.sequence == MULTI_ECHO:
            return self.echoSeries(arrays, settings)[..., settings.echo - 1]
        maps = self._selectMaps(arrays, settings)
        return physics.simulate(settings.sequence, maps, snr=settings.snr, seed=settings.seed, **settings.params)

    def echoSeries(self, arrays: Mapping[str, np.ndarray], settings: SimulationSettings) -> np.ndarray:
        """The CPMG echo series ``(..., n_echoes)`` float32 of a map set (KJI arrays of one shape).

        Per voxel ``PD · cpmg(1/R2, 1/R1, te, n_echoes, refocus, b1t=B1t) · B1r``
        (:func:`qmricore.physics.cpmg`, excitation ``90°·B1t``); voxels whose PD, R1 or R2 is 0 have no signal.
        With an SNR, Rician noise of sigma = mean first echo of the voxels above 10 % of its maximum / SNR
        (:func:`qmricore.physics.noise_sigma`), drawn with ``settings.seed``.
        """
        maps = self._selectMaps(arrays, settings)
        p = settings.params
        pd, r1, r2 = (np.asarray(maps[k], np.float32) for k in MULTI_ECHO_MAPS)
        inside = (pd > 0) & (r1 > 0) & (r2 > 0)
        b1t = maps.get("b1t")
        trains = physics.cpmg(1.0 / r2[inside], 1.0 / r1[inside], te=p["te"], n_echoes=int(p["n_echoes"]),
                              refocus=p["refocus"], b1t=None if b1t is None else np.asarray(b1t)[inside])
        signal = pd[inside][:, None] * trains
        if maps.get("b1r") is not None:
            signal = signal * np.asarray(maps["b1r"])[inside][:, None]
        series = np.zeros((*pd.shape, int(p["n_echoes"])), np.float32)
        series[inside] = signal
        if settings.snr is not None:
            tensor = torch.from_numpy(series)
            sigma = physics.noise_sigma(tensor[..., 0], settings.snr)
            generator = torch.Generator(device="cpu")
            generator.manual_seed(int(settings.seed))
            series = physics.rician_noise(tensor, sigma, generator).numpy()
        return series

    def _showEcho(self, series: np.ndarray, reference: Any, settings: SimulationSettings, outputNode: Any,
                  key: tuple, record: dict | None) -> Any:
        self._series = (key, series, reference, record)
        outputNode = self.outputNodeFor(reference, outputNode)
        slicer.util.arrayFromVolume(outputNode)[...] = series[..., settings.echo - 1]
        slicer.util.arrayFromVolumeModified(outputNode)
        self._describe(outputNode, settings)
        outputNode.SetAttribute(SYNTHMAP_ATTRIBUTE, json.dumps(record) if record is not None else "")
        return outputNode

    def _cachedSeries(self, key: tuple) -> np.ndarray | None:
        return self._series[1] if self._series is not None and self._series[0] == key else None

    def simulateSynthMap(self, labelNode: Any, settings: SimulationSettings, seed: int,
                         outputNode: Any | None = None) -> Any:
        """Multi-echo spin echo from a label map with SynthMap; shows ``settings.echo`` on the label map's grid.

        The subject is ``draw_synthmap`` of a generator seeded with ``seed`` under SynthMap's defaults with this
        echo spacing, echo count and refocusing angle; with an SNR the noise is Rician at exactly that SNR
        (SynthMap's reference: mean first echo in white matter), without one the series is noise-free.  The
        label map is used in IJK order, as ``qmricore synthmap`` reads the same map from NIfTI.  The draw's JSON
        record (:func:`qmricore.generators.synthmap.sidecar`) is stored in :data:`SYNTHMAP_ATTRIBUTE`.
        """
        from qmricore.generators.synthmap import (
            DEFAULT_CONFIG,
            apply_synthmap,
            draw_synthmap,
            load_synthmap_priors,
            sidecar,
        )

        settings.checked()
        if labelNode is None:
            raise InputError("select a label map: the multi-echo series comes from it (SynthMap)")
        labels = mrmlio.arrayKJI(labelNode, "label map")
        key = (settings.seriesKey, "labels", labelNode.GetID(), labelNode.GetImageData().GetMTime(), int(seed))
        series = self._cachedSeries(key)
        record = self._series[3] if series is not None else None
        if series is None:
            if not np.all(np.equal(np.mod(labels, 1), 0)):
                raise InputError("label map holds non-integer values", mrmlio.nodeName(labelNode))
            p = settings.params
            config = dataclasses.replace(DEFAULT_CONFIG, te=p["te"], n_echoes=int(p["n_echoes"]), refocus=p["refocus"],
                                         snr_range=DEFAULT_CONFIG.snr_range if settings.snr is None else
                                         (settings.snr, settings.snr))
            priors = load_synthmap_priors()
            generator = torch.Generator().manual_seed(int(seed))
            draw = draw_synthmap(priors, generator, config)
            try:
                sample = apply_synthmap(np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.int64), draw,
                                        priors, config, noise=settings.snr is not None)
            except InputError as error:
                raise InputError(str(error), mrmlio.nodeName(labelNode)) from None
            series = np.ascontiguousarray(sample.echoes.transpose(2, 1, 0, 3))
            record = sidecar(draw, config, seed=int(seed), noise_sigma=sample.sigma)
        return self._showEcho(series, labelNode, settings, outputNode, key, record)

    def simulateVolume(self, mapNodes: Mapping[str, Any], settings: SimulationSettings,
                       outputNode: Any | None = None) -> Any:
        """Simulate the whole volume into ``outputNode`` (created if None) on the PD map's grid.

        Raises
        ------
        InputError, ParameterError
            Missing maps, maps on different grids, infeasible timings (one line each).
        """
        settings.checked()
        arrays = self.mapArrays(mapNodes, requiredMaps(settings.sequence))
        if settings.sequence == MULTI_ECHO:
            stamps = tuple(sorted(self._cache.keys.items()))
            key = (settings.seriesKey, "maps", stamps)
            series = self._cachedSeries(key)
            if series is None:
                series = self.echoSeries(arrays, settings)
            return self._showEcho(series, mapNodes["pd"], settings, outputNode, key, None)
        image = self.simulateArray(arrays, settings)
        outputNode = self.outputNodeFor(mapNodes["pd"], outputNode)
        slicer.util.arrayFromVolume(outputNode)[...] = image
        slicer.util.arrayFromVolumeModified(outputNode)
        self._describe(outputNode, settings)
        return outputNode

    @staticmethod
    def fromLabels(p: Any) -> bool:
        """Whether a parameter node asks for the multi-echo series from the label map (SynthMap)."""
        return p.sequence == MULTI_ECHO and p.multiEchoSource == MULTI_ECHO_SOURCES[1]

    def missingInputs(self, p: Any) -> str:
        """What a parameter node still lacks before it can simulate ("" when nothing)."""
        if self.fromLabels(p):
            return "" if p.labelVolume is not None else "Select a label map (the echo series comes from SynthMap)"
        nodes = self.mapNodesFromParameters(p)
        missing = [MAP_TITLES[k] for k in requiredMaps(p.sequence) if k not in nodes]
        if not missing:
            return ""
        if p.sequence == MULTI_ECHO:
            return (f"Select the {', '.join(missing)} map(s): the multi-echo spin echo needs PD, R1 and R2 "
                    "(R2* is not T2), or take the echo series from the label map")
        return f"Select the {', '.join(missing)} map(s) first"

    def simulateFromParameters(self, p: Any) -> Any:
        """Full simulation from a parameter node; sets its output reference when it had none."""
        settings = SimulationSettings.fromParameters(p)
        if self.fromLabels(p):
            output = self.simulateSynthMap(p.labelVolume, settings, p.qsynthSeed, p.outputVolume)
        else:
            output = self.simulateVolume(self.mapNodesFromParameters(p), settings, p.outputVolume)
        if p.outputVolume is None:
            p.outputVolume = output
        return output

    @staticmethod
    def _describe(node: Any, settings: SimulationSettings) -> None:
        node.SetAttribute("QMRI.Sequence", settings.sequence)
        node.SetAttribute("QMRI.Parameters", json.dumps(dict(settings.params), sort_keys=True))
        node.SetAttribute("QMRI.SNR", "" if settings.snr is None else f"{settings.snr:g}")
        node.SetAttribute(ECHO_ATTRIBUTE, str(settings.echo) if settings.sequence == MULTI_ECHO else "")

    def echoSeriesSequence(self, sequenceNode: Any | None = None) -> Any:
        """The last simulated echo series as a volume sequence node (one scalar volume per echo, on the output's
        grid, index "echo time" in ms): what QMRISegment's *Estimate MWF* takes, like a loaded 4D NIfTI."""
        if self._series is None:
            raise InputError("simulate the multi-echo spin echo first: there is no echo series yet")
        key, series, reference, _ = self._series
        te = dict(key[0][1])["te"]
        if sequenceNode is None:
            sequenceNode = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                        self.scene.GenerateUniqueName("Echo series"))
        sequenceNode.RemoveAllDataNodes()
        sequenceNode.SetIndexName("echo time")
        sequenceNode.SetIndexUnit("ms")
        sequenceNode.SetIndexType(sequenceNode.NumericIndex)
        for k in range(series.shape[-1]):
            echo = slicer.vtkMRMLScalarVolumeNode()
            echo.SetName(f"echo {k + 1}")
            echo.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(mrmlio.ijkToRas(reference)))
            slicer.util.updateVolumeFromArray(echo, np.ascontiguousarray(series[..., k]))
            sequenceNode.SetDataNodeAtValue(echo, f"{(k + 1) * te * MS_PER_S:g}")  # stores a copy
        return sequenceNode

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
        noiseFree = dataclasses.replace(settings, snr=None)
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

    # ------------------------------------------------------------------ generate a brain (latent diffusion)
    def brainGenerator(self, path: Any = None) -> Path | None:
        """The mask generator file: ``path`` when given (it must exist), else the shipped one, else None."""
        return chosenOrShipped(path, DEFAULT_BRAIN_GENERATOR, "mask generator file")

    def brainUnavailableReason(self, path: Any = None) -> str:
        """Why "Generate brain" cannot run now ("" when it can): no generator chosen and none shipped."""
        return unavailableReason(path, DEFAULT_BRAIN_GENERATOR, "mask generator file", "Mask generator")

    @staticmethod
    def brainCommand(model: Path, ventricleMl: float, seed: int, out: Path, device: str = "cpu") -> list[str]:
        """``python -m qmricore ldm sample ... -n 1 --progress-lines``: one labelled brain into ``out``."""
        return qmricoreCommand("ldm", "sample", "--model", model, "--ventricle-ml", repr(float(ventricleMl)),
                               "-n", 1, "--seed", int(seed), "--out", out, "--device", device)

    def startBrainGeneration(self, ventricleMl: float, seed: int, model: Any = None, device: str = "cpu") -> Job:
        """Start sampling one label map with the requested ventricle volume (mL) in a background process."""
        modelPath = self.brainGenerator(model)
        if modelPath is None:
            raise InputError(self.brainUnavailableReason(model))
        folder = Path(tempfile.mkdtemp(prefix="qmribrain-"))
        try:
            runner = BackgroundRunner(self.brainCommand(modelPath, ventricleMl, seed, folder / "brain", device))
            runner.start()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Job("brain", runner, folder, model=modelPath)

    def startBrainFromParameters(self, p: Any) -> Job:
        return self.startBrainGeneration(p.ventricleMl, p.brainSeed, p.brainModelPath)

    def finishBrainGeneration(self, job: Job, event: Event) -> dict[str, Any]:
        """A finished brain job as a new label map node (``{"labels", "requested_ml", "measured_ml"}``); the
        sample's sidecar (classes, condition, measured volume) is on the node as :data:`BRAIN_ATTRIBUTE`.  A FAILED
        event raises ``RuntimeError`` with the run's last error line; the temporary folder is removed either way."""
        try:
            if event.kind is RunnerEvent.FAILED:
                raise RuntimeError(event.message)
            if event.kind is RunnerEvent.CANCELLED:
                return {}
            sample = event.result["samples"][0]
            info = json.loads(Path(sample["sidecar"]).read_text())
            requested = info["condition"]["ventricle_ml"]
            node = mrmlio.loadVolumeFile(self.scene, sample["labels"], labelMap=True,
                                         name=f"brain_seed{info['seed']}_{requested:g}mL")
            node.SetAttribute(BRAIN_ATTRIBUTE, json.dumps(info))
            return {"labels": node, "requested_ml": requested, "measured_ml": info["measured_ventricle_ml"]}
        finally:
            job.cleanup()

    def generateBrain(self, p: Any, timeout: float | None = None) -> Any:
        """Generate a brain with a parameter node's settings and wait (batch use); it becomes ``p.labelVolume``."""
        job = self.startBrainFromParameters(p)
        nodes = self.finishBrainGeneration(job, job.runner.wait(timeout)[-1])
        p.labelVolume = nodes["labels"]
        return nodes["labels"]

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
