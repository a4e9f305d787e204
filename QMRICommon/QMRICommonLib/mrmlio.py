"""MRML volume nodes <-> arrays and :class:`qmricore.io.Volume`, without Qt.

Array conventions: ``slicer.util.arrayFromVolume`` gives a view in KJI order (slowest axis K); NIfTI data
(:class:`qmricore.io.Volume`) is in IJK order.  A node's IJK-to-RAS matrix is the NIfTI affine (both map
voxel indices to RAS millimetres), so conversions transpose the array and keep the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

from qmricore.errors import InputError
from qmricore.io import Volume, check_outputs, read_volume, write_nifti

#: Node attribute naming the qMRI quantity a volume node holds (``pd``, ``r1``...), set on loaded maps.
MAP_ATTRIBUTE = "QMRI.Map"
#: Display names of the maps.
MAP_TITLES = {"pd": "PD", "r1": "R1", "r2s": "R2s", "mt": "MT", "r2": "R2", "b1t": "B1t", "b1r": "B1r"}
#: Node attribute holding the file a volume node was read from (headless loads have no storage node).
SOURCE_ATTRIBUTE = "QMRI.SourceFile"

#: Largest difference (mm) between two IJK-to-RAS matrices that still counts as the same grid.
GEOMETRY_TOLERANCE = 1e-4


def sceneOf(node: Any = None) -> Any:
    """The scene of ``node`` (or ``slicer.mrmlScene``)."""
    scene = node.GetScene() if node is not None else None
    return scene if scene is not None else slicer.mrmlScene


def ijkToRas(node: Any) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a 4x4 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def dimensions(node: Any) -> tuple[int, int, int]:
    """Voxel counts (I, J, K); (0, 0, 0) without image data."""
    image = node.GetImageData() if node is not None else None
    return tuple(image.GetDimensions()) if image is not None else (0, 0, 0)


def sameGeometry(a: Any, b: Any) -> bool:
    """Whether two volume nodes share dimensions and IJK-to-RAS (within :data:`GEOMETRY_TOLERANCE` mm)."""
    return dimensions(a) == dimensions(b) and np.allclose(ijkToRas(a), ijkToRas(b), atol=GEOMETRY_TOLERANCE, rtol=0)


def nodeName(node: Any) -> str:
    return node.GetName() or node.GetID() or "volume"


def arrayKJI(node: Any, what: str = "volume") -> np.ndarray:
    """The node's voxels as a numpy view (KJI); a clear error when the node has no image data."""
    if node is None or node.GetImageData() is None:
        raise InputError(f"{what}: no image data", None if node is None else nodeName(node))
    array = slicer.util.arrayFromVolume(node)
    if array.ndim != 3:
        raise InputError(f"{what}: a 3D scalar volume is needed, got an array of shape {array.shape}", nodeName(node))
    return array


def setArrayKJI(node: Any, array: np.ndarray, like: Any | None = None) -> Any:
    """Fill ``node`` with ``array`` (KJI), copying geometry (IJK-to-RAS, parent transform) from ``like``.

    When the node already has image data of the same shape and type, the values are written in place
    (no reallocation: views the display pipeline holds stay valid); otherwise it is reallocated.
    """
    if like is not None:
        node.SetIJKToRASMatrix(_vtkMatrix(ijkToRas(like)))
        node.SetAndObserveTransformNodeID(like.GetTransformNodeID())
    image = node.GetImageData()
    if image is not None and dimensions(node) == tuple(reversed(array.shape)) and \
            slicer.util.arrayFromVolume(node).dtype == array.dtype:
        slicer.util.arrayFromVolume(node)[...] = array
        slicer.util.arrayFromVolumeModified(node)
    else:
        slicer.util.updateVolumeFromArray(node, array)
    return node


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    return slicer.util.vtkMatrixFromArray(np.asarray(array, dtype=float))


def addVolumeNode(scene: Any, array: np.ndarray, ijkToRasMatrix: np.ndarray, name: str,
                  className: str = "vtkMRMLScalarVolumeNode") -> Any:
    """A new volume node in ``scene`` holding ``array`` (KJI) with the given IJK-to-RAS, with display nodes."""
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_vtkMatrix(ijkToRasMatrix))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


def nodeFromVolume(scene: Any, volume: Volume, name: str, className: str = "vtkMRMLScalarVolumeNode",
                   dtype: Any = np.float32) -> Any:
    """A new volume node from a :class:`qmricore.io.Volume` (IJK data, RAS affine)."""
    data = np.asarray(volume.data).astype(dtype, copy=False)
    node = addVolumeNode(scene, np.ascontiguousarray(data.transpose(2, 1, 0)), volume.affine, name, className)
    if volume.path is not None:
        node.SetAttribute(SOURCE_ATTRIBUTE, str(volume.path))  # what exportNifti must never overwrite
    return node


def volumeFromNode(node: Any, what: str = "volume") -> Volume:
    """A :class:`qmricore.io.Volume` copy of a node (float32 unless the node holds integers)."""
    array = arrayKJI(node, what)
    data = np.ascontiguousarray(array.transpose(2, 1, 0))
    if not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32, copy=False)
    storage = node.GetStorageNode()
    path = Path(storage.GetFileName()) if storage is not None and storage.GetFileName() else None
    return Volume(data=data, affine=ijkToRas(node), header=None, path=path)


def loadVolumeFile(scene: Any, path: str | Path, name: str | None = None, labelMap: bool = False) -> Any:
    """Read a NIfTI file into a new node of ``scene`` with :func:`qmricore.io.read_volume` (clear errors)."""
    volume = read_volume(path, what="label map" if labelMap else "volume")
    stem = name or (Path(path).name.split(".")[0])
    if labelMap:
        return nodeFromVolume(scene, volume, stem, "vtkMRMLLabelMapVolumeNode", np.int16)
    return nodeFromVolume(scene, volume, stem)


def sceneSourceFiles(scene: Any) -> list[Path]:
    """Every file a volume node of ``scene`` was loaded from (storage nodes and :data:`SOURCE_ATTRIBUTE`)."""
    files = []
    if scene is None:
        return files
    nodes = scene.GetNodesByClass("vtkMRMLVolumeNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        storage = node.GetStorageNode()
        if storage is not None and storage.GetFileName():
            files.append(Path(storage.GetFileName()))
        if node.GetAttribute(SOURCE_ATTRIBUTE):
            files.append(Path(node.GetAttribute(SOURCE_ATTRIBUTE)))
    return files


def exportNifti(node: Any, path: str | Path) -> Path:
    """Write a volume node to ``.nii``/``.nii.gz`` atomically with its IJK-to-RAS as the affine.

    When the node was loaded from a NIfTI file with the same grid, that file's header (qform/sform codes,
    units) is kept.  A path that is a file any volume of the scene was loaded from is refused
    (:func:`qmricore.io.check_outputs`): an export never overwrites an input.
    """
    check_outputs([path], sceneSourceFiles(node.GetScene()))
    volume = volumeFromNode(node)
    like = volume
    if volume.path is not None and volume.path.is_file():
        try:
            source = read_volume(volume.path)
            if source.shape == volume.shape and np.allclose(source.affine, volume.affine, atol=GEOMETRY_TOLERANCE):
                like = source
        except InputError:
            pass
    return write_nifti(path, volume.data, like)
