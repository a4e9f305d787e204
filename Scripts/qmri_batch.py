"""Batch simulation (and segmentation) over a folder with the QMRISynth / QMRISegment Logic, no GUI.

In Slicer::

    Slicer --no-main-window --python-script Scripts/qmri_batch.py -- --input DIR --out DIR --preset "3T FLAIR" \
        [--snr 30 --seed 0] [--segment --model MODEL.pt --device auto --no-tta]

With plain Python and slicer-core (a real MRML scene, no app)::

    python Scripts/qmri_batch.py --input DIR --out DIR --preset "3T FLAIR" [--segment --model MODEL.pt]

``DIR`` is one map set (hMRI-toolbox names: ``*_PD``, ``*_R1``, ``*_R2s[_OLS]``, optional ``*_MT``...) or a
folder of subject sub-folders, each one map set.  For each subject the preset is simulated on the PD
map's grid and written to ``OUT/<subject>/<subject>_<preset>.nii.gz``; with ``--segment`` the simulated
image is segmented and ``OUT/<subject>/<subject>_<preset>_lesion.nii.gz`` plus a row of
``OUT/lesion_volumes.csv`` are written.  When ``DIR`` holds no map set, ``--segment`` segments every NIfTI
image in it instead (loaded with ``slicer.util.loadVolume`` in the app, :mod:`qmricore.io` outside).
Map sets are always read with :func:`qmricore.io.load_map_set` (also in the app) because that is where
unit detection (R1 in 1/ms, T1 in ms...) and the map-set checks live.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _module in ("QMRICommon", "QMRISynth", "QMRISegment"):
    if str(ROOT / _module) not in sys.path:
        sys.path.insert(0, str(ROOT / _module))

#: Modality tag of a simulated image, by sequence (what the segmentation model is told).
MODALITY_OF_SEQUENCE = {"flair": "FLAIR", "fse": "T2w", "gre": "T1w", "mprage": "MPRAGE", "mp2rage": "T1w"}


def parseArguments(argv: list[str]) -> argparse.Namespace:
    from QMRISynthLib.parameters import DEFAULT_PRESET

    from qmricore import protocols

    parser = argparse.ArgumentParser(prog="qmri_batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="map-set folder, or a folder of them")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=protocols.preset_names(), help="sequence preset")
    parser.add_argument("--snr", type=float, default=None, help="add Rician noise at this SNR")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--segment", action="store_true", help="segment lesions in each simulated image")
    parser.add_argument("--model", type=Path, default=None, help="segmentation model (default: the shipped one)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")
    if argv and argv[0] == "--":
        argv = argv[1:]
    return parser.parse_args(argv)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def mapSetFolders(folder: Path) -> list[Path]:
    """``folder`` itself when it holds a map set, else its sub-folders that do (sorted)."""
    from qmricore.io import find_hmri_maps

    def isMapSet(path: Path) -> bool:
        found = find_hmri_maps(path)
        return all(key in found for key in ("pd", "r1", "r2s"))

    if not folder.is_dir():
        from qmricore.errors import InputError

        raise InputError("input: no such folder", folder)
    if isMapSet(folder):
        return [folder]
    return [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".") and isMapSet(sub)]


def loadImage(scene, path: Path):
    """A scalar volume node from a NIfTI file: Slicer's reader in the app, qmricore.io outside."""
    import slicer
    from QMRICommonLib import headless, mrmlio

    if headless.inApp():
        return slicer.util.loadVolume(str(path))
    return mrmlio.loadVolumeFile(scene, path)


def segmentAndWrite(segmentLogic, node, modality: str, args: argparse.Namespace, stem: Path) -> tuple[float, int]:
    """Segment one image node; write ``<stem>_lesion.nii.gz``; return (lesion mL, voxels)."""
    import numpy as np
    import slicer.util
    from QMRICommonLib import mrmlio

    from qmricore.io import write_nifti

    job = segmentLogic.startSegmentation([(node, modality)], args.model, args.tta, args.device)
    result = segmentLogic.run(job)
    segmentation = result["segmentation"]
    segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, node)
    write_nifti(Path(f"{stem}_lesion.nii.gz"), mask.transpose(2, 1, 0).astype(np.uint8), mrmlio.volumeFromNode(node))
    voxels = int(np.count_nonzero(mask))
    return voxels * abs(float(np.linalg.det(mrmlio.ijkToRas(node)[:3, :3]))) / 1000.0, voxels


def run(args: argparse.Namespace) -> int:
    from QMRICommonLib import headless
    from QMRISegmentLib.logic import QMRISegmentLogic
    from QMRISynthLib import QMRISynthLogic, SimulationSettings

    from qmricore import protocols

    scene = headless.newScene()
    synth = QMRISynthLogic(scene)
    segmentLogic = QMRISegmentLogic(scene)
    sequence, params = protocols.preset(args.preset)
    settings = SimulationSettings(sequence, params, snr=args.snr, seed=args.seed)
    from qmricore.io import atomic_file, check_outputs, ensure_folder, find_hmri_maps, nifti_stem

    rows = []
    subjects = mapSetFolders(args.input)
    # every file the batch reads: never an output (checked before anything is written)
    inputs = [p for folder in subjects for p in find_hmri_maps(folder).values()]
    if not subjects:
        inputs = [p for p in args.input.iterdir() if nifti_stem(p) and not p.name.startswith(".")]
    check_outputs([args.out / "lesion_volumes.csv"] if args.segment else [], inputs, folders=[args.out])
    if not subjects and not args.segment:
        print(f"qmri_batch: error: {args.input}: no map set found (needs *_PD, *_R1, *_R2s .nii[.gz])", file=sys.stderr)
        return 2
    for folder in subjects:
        name = folder.name
        nodes = synth.loadHMRIFolder(folder)
        for note in synth.lastNotes:
            print(f"{name}: {note}")
        output = synth.simulateVolume(nodes, settings)
        output.SetName(f"{name}_{slug(args.preset)}")
        stem = args.out / name / f"{name}_{slug(args.preset)}"
        check_outputs([Path(f"{stem}.nii.gz"), Path(f"{stem}_lesion.nii.gz") if args.segment else None],
                      [*inputs, args.model])
        written = synth.exportNifti(output, Path(f"{stem}.nii.gz"))
        print(f"{name}: {args.preset} -> {written}")
        if args.segment:
            ml, voxels = segmentAndWrite(segmentLogic, output, MODALITY_OF_SEQUENCE[sequence], args, stem)
            rows.append((name, written.name, f"{ml:.4f}", voxels))
            print(f"{name}: lesion {ml:.3f} mL ({voxels} voxels)")
        for node in (*nodes.values(), output):
            scene.RemoveNode(node)
    if not subjects:  # plain images: segment each
        for path in sorted(inputs):
            node = loadImage(scene, path)
            stem = args.out / nifti_stem(path)
            check_outputs([Path(f"{stem}_lesion.nii.gz")], [*inputs, args.model])
            ml, voxels = segmentAndWrite(segmentLogic, node, "FLAIR", args, stem)
            rows.append((nifti_stem(path), path.name, f"{ml:.4f}", voxels))
            print(f"{path.name}: lesion {ml:.3f} mL ({voxels} voxels)")
            scene.RemoveNode(node)
    if rows:
        ensure_folder(args.out)
        with atomic_file(args.out / "lesion_volumes.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("subject", "image", "lesion_ml", "lesion_voxels"))
            writer.writerows(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    from qmricore.errors import QMRIError

    args = parseArguments(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (QMRIError, RuntimeError) as error:  # one line for the user; RuntimeError: a failed worker
        print(f"qmri_batch: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"qmri_batch: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    status = main()
    from QMRICommonLib import headless

    if headless.inApp():
        import slicer

        slicer.util.exit(status)
    else:
        sys.exit(status)
