"""Synthetic training data on the fly (SPEC §6): a seeded, worker-safe dataset over a folder of label maps.

Sample ``i`` of epoch ``e`` is generated with the seed :func:`sample_seed` ``(base_seed, e, i)``; the
DataLoader worker that happens to build it plays no part, so ``num_workers=0`` and ``num_workers=4``
give the same samples (bit-exact on the CPU), and ``qmricore synth`` writes the same samples as
``SyntheticDataset(...)[i]`` with epoch 0.

>>> ds = SyntheticDataset("labels/", PipelineConfig(mode="qsynth"), length=1000, base_seed=1)
>>> loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
>>> for image, label in loader: ...            # image (B, 1, X, Y, Z) float32, label (B, X, Y, Z) int64
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .devices import resolve_device
from .errors import InputError, ParameterError
from .generators.pipeline import PipelineConfig, Sample, crop_affine, generate, with_voxel_size
from .io import Volume, atomic_file, nifti_stem, read_volume

__all__ = ["SyntheticDataset", "LabelMap", "sample_seed", "label_files", "read_label_map", "write_sample",
           "sample_paths"]


def sample_seed(base_seed: int, index: int, epoch: int = 0) -> int:
    """Seed of sample ``index`` in ``epoch``: a 63-bit hash of ``(base_seed, index)``, and of ``epoch`` too when it
    is not 0 (independent streams per index; never the worker id).

    The one sample-seed function of the package: ``qmricore synth``/``synthmap`` sample ``i`` and training sample
    ``k`` of every trainer (:mod:`qmricore.training.loop`) are seeded with it.
    """
    words = [int(base_seed) % 2**63, int(index)] + ([int(epoch)] if epoch else [])
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def label_files(path: str | os.PathLike[str]) -> list[Path]:
    """A NIfTI file, or the ``.nii``/``.nii.gz`` files of a folder (sorted by name); InputError when none."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", p)
    if p.is_file():
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and nifti_stem(f) is not None and not f.name.startswith("."))
    if not files:
        raise InputError("folder holds no NIfTI files (.nii, .nii.gz)", p)
    return files


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Hard labels (int64 numpy, X×Y×Z) with the volume they came from (affine, header, path)."""

    labels: np.ndarray
    volume: Volume


def read_label_map(path: str | os.PathLike[str], priors: Any | None = None) -> LabelMap:
    """Read and validate a hard label map: 3D, integer values, not empty, only the priors' labels, and some
    brain-tissue voxels (a class other than background and non-brain).

    Errors are :class:`~qmricore.errors.InputError` naming the file and the problem.
    """
    from .generators.priors import check_brain_tissue, load_priors
    from .generators.qsynth import class_weights

    priors = priors or load_priors()
    volume = read_volume(path, what="label map")
    data = volume.data
    if not np.array_equal(data, np.round(data)):
        raise InputError("label map: has non-integer values (labels must be integers)", path)
    labels = np.round(data).astype(np.int64)
    try:
        class_weights(labels, priors)
    except InputError as error:
        raise InputError(error.problem, path) from None
    check_brain_tissue(labels, priors.names, priors.labels, path)
    return LabelMap(labels, volume)


def _read_mask(path: Path, like: LabelMap) -> np.ndarray:
    volume = read_volume(path, what="lesion mask")
    if volume.shape != like.volume.shape or not np.allclose(volume.affine, like.volume.affine, atol=1e-4):
        raise InputError(f"lesion mask is on a different grid from the label map {like.volume.path} "
                         f"(shape {volume.shape} vs {like.volume.shape}, or different affine)", path)
    data = volume.data
    if float(data.min()) < 0 or float(data.max()) > 1:
        if np.array_equal(data, np.round(data)):
            data = (data > 0).astype(np.float32)  # an integer mask: any non-zero value is lesion
        else:
            raise InputError("lesion mask: values must be 0/1 or probabilities in [0, 1]", path)
    return data.astype(np.float32)


class SyntheticDataset(torch.utils.data.Dataset):
    """Map-style dataset of synthetic (image, label) pairs generated on the fly from label maps.

    Parameters
    ----------
    labels
        A label-map NIfTI file, a folder of them, or a list of files.  Sample ``i`` uses file ``i % n``.
    config
        :class:`~qmricore.generators.pipeline.PipelineConfig` (mode, crop, priors...).
    length
        Number of samples per epoch (default: one per label file).
    base_seed
        Seed of the whole dataset; sample seeds are :func:`sample_seed` ``(base_seed, index, epoch)``.
    device
        ``"cpu"`` or ``"cuda"``; with ``"cuda"`` samples are generated on the GPU (use ``num_workers=0``).
    lesions
        Optional lesion masks (file, folder or list) on the label maps' grids; sample ``i`` pastes mask
        ``i % m``.
    cache
        Label maps kept in memory per process.
    priors
        A :class:`~qmricore.generators.priors.TissuePriors` overriding ``config.priors``.

    Each item is ``(image (1, X, Y, Z) float32, label (X, Y, Z) int64)``; :meth:`sample` also returns the
    sidecar parameters.
    """

    def __init__(self, labels: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 config: PipelineConfig | None = None, *, length: int | None = None, base_seed: int = 0,
                 device: str | torch.device = "cpu", lesions: Any | None = None, cache: int = 8,
                 priors: Any | None = None) -> None:
        self.files = _files(labels)
        self.lesion_files = _files(lesions) if lesions is not None else []
        self.config = config or PipelineConfig()
        self.length = len(self.files) if length is None else int(length)
        if self.length < 1:
            raise ParameterError(f"length must be >= 1, got {self.length}")
        self.base_seed = int(base_seed)
        self.device = resolve_device(device)
        self.epoch = 0
        self.cache = int(cache)
        self._maps: OrderedDict[Path, LabelMap] = OrderedDict()
        self._priors = priors

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Use the seeds of another epoch (call it in every worker's copy through the sampler, or before iterating)."""
        self.epoch = int(epoch)

    def seed(self, index: int) -> int:
        return sample_seed(self.base_seed, index, self.epoch)

    def _priors_obj(self) -> Any:
        if self._priors is None:
            from .generators.priors import load_priors

            self._priors = load_priors(self.config.priors)
        return self._priors

    def _label_map(self, path: Path) -> LabelMap:
        if path in self._maps:
            self._maps.move_to_end(path)
            return self._maps[path]
        lm = read_label_map(path, self._priors_obj())
        self._maps[path] = lm
        while len(self._maps) > max(self.cache, 1):
            self._maps.popitem(last=False)
        return lm

    def check_inputs(self) -> None:
        """Read every label map and every (label map, lesion mask) pair this dataset will use, raising the
        first :class:`~qmricore.errors.InputError`; the label maps stay cached (used by ``qmricore synth``
        to refuse bad input before writing anything)."""
        self.cache = max(self.cache, len(self.files))
        for path in self.files:
            self._label_map(path)
        if self.lesion_files:
            pairs = {(i % len(self.files), i % len(self.lesion_files)) for i in range(self.length)}
            for li, ki in sorted(pairs):
                _read_mask(self.lesion_files[ki], self._label_map(self.files[li]))

    def sample(self, index: int) -> tuple[Sample, LabelMap]:
        """The full :class:`~qmricore.generators.pipeline.Sample` of ``index`` and its source label map."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        if self.device.type == "cuda" and torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("generation on the GPU needs num_workers=0 in the DataLoader")
        lm = self._label_map(self.files[index % len(self.files)])
        lesion = None
        if self.lesion_files:
            lesion = _read_mask(self.lesion_files[index % len(self.lesion_files)], lm)
        config = with_voxel_size(self.config, lm.volume.zooms)
        sample = generate(torch.from_numpy(lm.labels), config, self.seed(index), self.device, lesion=lesion,
                          priors=self._priors_obj())
        return sample, lm

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample, _ = self.sample(index)
        return sample.image, sample.label


def _files(spec: Any) -> list[Path]:
    if isinstance(spec, (str, os.PathLike)):
        return label_files(spec)
    files = [Path(p) for p in spec]
    if not files:
        raise InputError("no label files given")
    return files


def sample_paths(out_dir: str | os.PathLike[str], index: int) -> dict[str, Path]:
    """``sample_0000_image.nii.gz``, ``_label.nii.gz`` and ``_params.json`` paths of sample ``index``."""
    stem = Path(out_dir) / f"sample_{index:04d}"
    return {"image": Path(f"{stem}_image.nii.gz"), "label": Path(f"{stem}_label.nii.gz"),
            "params": Path(f"{stem}_params.json")}


def _cropped_like(volume: Volume, data: np.ndarray, affine: np.ndarray) -> Volume:
    """A reference volume for writing ``data`` on the crop grid: the header's qform/sform moved with the crop."""
    import nibabel as nib

    header = volume.header.copy() if isinstance(volume.header, nib.Nifti1Header) else None
    if header is not None:
        shift = np.linalg.solve(volume.affine, affine)  # crop translation in input voxels
        coded = False
        for kind in ("qform", "sform"):
            matrix, code = getattr(header, f"get_{kind}")(coded=True)
            if matrix is not None and int(code) > 0:
                getattr(header, f"set_{kind}")(matrix @ shift, code=int(code))
                coded = True
        if not coded:
            header.set_sform(affine, code=1)
        header.set_data_shape(data.shape)
    return Volume(data=data, affine=affine, header=header, path=None)


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as stream:
        json.dump(data, stream, indent=1)
        stream.write("\n")
    return path


def write_sample(out_dir: str | os.PathLike[str], index: int, sample: Sample, source: Volume,
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write one sample atomically: image (float32), label (int16, or float32 soft channels are not written
    here) and the JSON sidecar.  The grid is the source's, moved to the crop origin (:func:`crop_affine`)."""
    paths = sample_paths(out_dir, index)
    image = sample.image[0].detach().cpu().numpy().astype(np.float32)
    label = sample.label.detach().cpu().numpy()
    if label.ndim != 3:
        raise InputError("only hard label maps can be written as one NIfTI label file")
    affine = crop_affine(source.affine, sample.params)
    like = _cropped_like(source, image, affine)
    from .io import write_nifti

    write_nifti(paths["image"], image, like)
    write_nifti(paths["label"], label.astype(np.int16), like)
    _write_json(paths["params"], {**sample.params, **(extra or {})})
    return paths
