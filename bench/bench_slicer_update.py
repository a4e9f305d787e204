"""Live-update latency of QMRISynth on a real MRML scene (slicer-core), 1 mm brain.

Times, for a parameter change (TI of the 3T FLAIR preset, stepped through several values):

* ``slices``  parameter node write -> the three displayed voxel planes (axial, coronal, sagittal through
  the centre) simulated and written into the output volume node (``simulatePlanes``), event sent;
* ``volume``  parameter node write -> the whole output volume node updated (``simulateVolume``);
* ``library`` :func:`qmricore.physics.simulate` alone on the same arrays (the reference).

Goal (issue 5): slices < 50 ms; volume within 2x the library's time.

    python bench/bench_slicer_update.py [--repeats 7] [--sample-dir out/bench_sample_1mm] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "QMRICommon"), str(ROOT / "QMRISynth"), str(ROOT / "QMRISegment")]


def sliceNode(scene, name: str, normal, point) -> object:
    """A slice node whose plane has the given RAS normal through ``point`` (as Slicer's Red/Yellow/Green)."""
    import slicer

    normal = np.asarray(normal, float)
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, normal)
    x /= np.linalg.norm(x)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = x, np.cross(normal, x), normal, point
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
    node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(matrix))
    node.UpdateMatrices()
    return node


def timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample-dir", type=Path, default=ROOT / "out" / "bench_sample_1mm")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch
    from QMRICommonLib import headless, mrmlio
    from QMRICommonLib.parameters import ScriptedNodeParameters
    from QMRISynthLib import QMRISynthLogic, SimulationSettings
    from QMRISynthLib.parameters import synthNodes, synthParameters

    from qmricore import physics
    from qmricore.sample_data import MAP_FILES, build_sample

    if args.threads:
        torch.set_num_threads(args.threads)
    if not all((args.sample_dir / name).is_file() for name in MAP_FILES.values()):
        start = time.perf_counter()
        build_sample(args.sample_dir, 1.0)
        print(f"built the 1 mm sample in {time.perf_counter() - start:.1f} s: {args.sample_dir}")

    scene = headless.newScene()
    logic = QMRISynthLogic(scene)
    nodes = logic.loadHMRIFolder(args.sample_dir)
    holder = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "QMRISynth")
    p = ScriptedNodeParameters(holder, synthParameters(), synthNodes())
    logic.assignMapNodes(p, nodes)
    logic.applyPreset(p, "3T FLAIR")
    dims = mrmlio.dimensions(nodes["pd"])
    centre = mrmlio.ijkToRas(nodes["pd"]) @ np.array([(d - 1) / 2 for d in dims] + [1.0])
    views = [sliceNode(scene, name, normal, centre[:3])
             for name, normal in (("Red", (0, 0, 1)), ("Green", (0, 1, 0)), ("Yellow", (1, 0, 0)))]
    output = logic.simulateFromParameters(p)  # allocate the output once, as the module does on first use
    tis = np.linspace(1.5, 2.9, args.repeats)

    def slices(i: int) -> None:
        p.ti = float(tis[i])
        planes = logic.displayedPlanes(p.pdVolume, views)
        logic.simulatePlanes(logic.mapNodesFromParameters(p), SimulationSettings.fromParameters(p), planes, output)

    def volume(i: int) -> None:
        p.ti = float(tis[i])
        logic.simulateVolume(logic.mapNodesFromParameters(p), SimulationSettings.fromParameters(p), output)

    arrays = logic.mapArrays(logic.mapNodesFromParameters(p))

    def library(i: int) -> None:
        physics.simulate("flair", arrays, tr=p.tr, te=p.te, ti=float(tis[i]))

    for fn in (slices, volume, library):  # warm-up
        fn(0)
    results = {"slices": timed(slices, args.repeats), "volume": timed(volume, args.repeats),
               "library": timed(library, args.repeats)}
    planes = logic.displayedPlanes(p.pdVolume, views)
    voxels = sum(int(np.prod([d for a, d in enumerate(reversed(dims)) if a != axis])) for axis, _ in planes)
    spacing = "x".join(f"{s:g}" for s in nodes["pd"].GetSpacing())
    print(f"grid {dims[0]}x{dims[1]}x{dims[2]} ({spacing} mm, {np.prod(dims) / 1e6:.2f} M voxels); planes {planes} "
          f"({voxels} voxels); torch threads {torch.get_num_threads()}; {args.repeats} repeats")
    lib = statistics.median(results["library"])
    print(f"{'step':<10}{'median ms':>11}{'min ms':>9}{'x library':>11}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<10}{1000 * median:>11.1f}{1000 * min(values):>9.1f}{median / lib:>11.2f}")
    ok_slices = statistics.median(results["slices"]) < 0.050
    ok_volume = statistics.median(results["volume"]) <= 2 * lib
    print(f"goal slices < 50 ms: {'met' if ok_slices else 'MISSED'}; volume <= 2x library: "
          f"{'met' if ok_volume else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
