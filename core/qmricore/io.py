"""Reading, validating and atomically writing NIfTI volumes and quantitative map sets (SPEC §3, §13).

* :func:`read_volume` reads one 3D NIfTI volume (float32, ``scl_slope``/``scl_inter`` applied) and turns
  every way a file can be wrong into one :class:`~qmricore.errors.InputError` line naming the file.
* :func:`load_map_set` reads a map set (explicit files and/or an hMRI-toolbox results folder), checks that
  the maps share one grid and hold plausible values, and converts units it can recognise by range
  (R1 in 1/ms, T1 in ms or s, R2* in 1/ms, B1 in percent), listing every conversion in ``notes``.
* :func:`write_nifti` writes an image on the grid of a reference volume atomically (temporary file in
  the target folder, then :func:`os.replace`), so a failure never leaves a half-written file.
* :func:`nifti_files`, :func:`paired_files` (image/label pairs by file name), :func:`map_set_folders` and
  :func:`label_file` find training inputs in folders, with one :class:`~qmricore.errors.InputError` naming
  the folder when there are none.
* :func:`check_outputs` is the one output guard every command calls before it reads or computes anything
  heavy: an output that is (resolves to) one of the command's inputs, an output named twice, and an output
  whose folder cannot be created or written are refused with one line naming the path.

Unit rules of :func:`load_map_set` (``median`` = median over the map's positive voxels)
-------------------------------------------------------------------------------------
=========  =================================================  ==========================================
map        file looks like a rate (``*_R1``, any other name)  file named as a time (``*_T1``, ``T1map``)
=========  =================================================  ==========================================
``r1``     median < 0.01: R1 in 1/ms, x1000;                  median > 10: T1 in ms, R1 = 1000/T1;
           0.01-10: R1 in 1/s; 10-100: error (ambiguous);     else T1 in s, R1 = 1/T1
           > 100: T1 in ms, R1 = 1000/T1
``r2s``,   median < 0.5: rate in 1/ms, x1000;                 (``*_T2s``, ``T2star``; ``*_T2`` for r2)
``r2``     0.5-1000: rate in 1/s; > 1000: error               median > 1: T2(*) in ms, R = 1000/T;
                                                              else T2(*) in s, R = 1/T
``b1t``,   median > 10: percent (hMRI ``*_B1map``), /100;     --
``b1r``    else a ratio (1 = nominal)
=========  =================================================  ==========================================

An explicit unit (``r1_unit``: ``"1/s", "1/ms", "T1_ms", "T1_s"``; ``r2s_unit``: ``"1/s", "1/ms",
"T2s_ms", "T2s_s"``; ``r2_unit``: ``"1/s", "1/ms", "T2_ms", "T2_s"``) overrides the rule.  Times
converted to rates map zero (background) voxels to a rate of 0.  A T1 map in seconds that is not named
as one cannot be told from R1 in 1/s by range: name it ``*_T1`` or pass ``r1_unit="T1_s"``.

Negative values: in ``pd``, ``r1``, ``r2s``, ``r2``, ``mt``, ``b1t``, ``b1r`` a few negative voxels
(at most 1 % of the non-zero voxels; fitting noise in the background) are clipped to 0 with a note;
more is an error naming the map and the file.  MT above 100 percent units is an error.
"""

from __future__ import annotations

import gzip
import os
import re
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np

from .errors import InputError
from .physics import MAP_KEYS, REQUIRED_MAPS

__all__ = ["Volume", "MapSet", "read_volume", "write_nifti", "load_map_set", "find_hmri_maps", "nifti_stem",
           "nifti_files", "map_set_folders", "label_file", "paired_files",
           "atomic_file", "atomic_torch_save", "clear_stale_temps", "ensure_folder", "check_outputs",
           "check_output_location", "same_file", "os_error_text",
           "MAP_KEYS", "REQUIRED_MAPS", "R1_UNITS", "R2S_UNITS", "R2_UNITS", "NEGATIVE_TOLERANCE"]

R1_UNITS = ("auto", "1/s", "1/ms", "T1_ms", "T1_s")
R2S_UNITS = ("auto", "1/s", "1/ms", "T2s_ms", "T2s_s")
R2_UNITS = ("auto", "1/s", "1/ms", "T2_ms", "T2_s")
#: Largest fraction of the non-zero voxels of a map that may be negative (then clipped to 0).
NEGATIVE_TOLERANCE = 0.01
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_GZIP_LEVEL = 1  # nibabel's default: fast, most of the gain

#: hMRI-toolbox file-name suffixes per map key, in order of preference (the first group that matches wins).
HMRI_PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "pd": (("PD",),),
    "r1": (("R1",),),
    "r2s": (("R2s_OLS",), ("R2s",)),
    "mt": (("MT", "MTsat"),),
    "r2": (("R2",),),
    "b1t": (("B1map", "B1t"),),
    "b1r": (("B1r",),),
}


@dataclass(frozen=True, eq=False)
class Volume:
    """One 3D image with its geometry.

    Attributes
    ----------
    data
        float32 array of 3 dimensions (``scl_slope``/``scl_inter`` already applied).
    affine
        4x4 voxel-to-world (RAS, mm) matrix, nibabel's best affine of the file (sform, else qform).
    header
        The NIfTI header it came from (geometry, codes, units), or ``None`` for a volume made in memory.
    path
        The file it was read from, or ``None``.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def zooms(self) -> tuple[float, ...]:
        """Voxel size in mm."""
        if self.header is not None:
            return tuple(float(z) for z in self.header.get_zooms()[:3])
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


@dataclass(frozen=True, eq=False)
class MapSet:
    """A validated map set in SPEC §3 units: ``pd``, ``r1`` (1/s), ``r2s`` (1/s), optional ``mt`` (percent),
    ``r2`` (1/s), ``b1t``, ``b1r`` (ratios), all float32 on the grid of ``reference`` (the ``pd`` volume).

    ``notes`` lists, one line each, every unit conversion and clipping that was applied; ``files`` the
    file each map came from.
    """

    maps: dict[str, np.ndarray]
    reference: Volume
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def nifti_stem(path: str | os.PathLike[str]) -> str | None:
    """The file name without ``.nii``/``.nii.gz`` (any case), or ``None`` if it is not a NIfTI name."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The JSON in ``path``; a missing, unreadable or invalid file is one ``InputError`` naming it and ``what``."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {what} ({error.__class__.__name__})", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{what} is not valid JSON (line {error.lineno}: {error.msg})", path) from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def read_volume(path: str | os.PathLike[str], *, what: str = "volume", ndim: int = 3) -> Volume:
    """Read a 3D NIfTI volume (``.nii`` or ``.nii.gz``) as float32; a 4D series with ``ndim=4``.

    A 4D file whose extra dimensions are all 1 is squeezed to 3D (``ndim=3`` only).

    Parameters
    ----------
    path
        The file.
    what
        What the file is meant to be (``"r1 map"``), used in error messages.
    ndim
        3 for a volume, 4 for a series of volumes on one grid (echoes, ...).

    Raises
    ------
    InputError
        One line naming the file: missing, a folder, not a NIfTI file, unreadable or corrupt, not 3D,
        or holding NaN/Inf values.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what}: no such file", path)
    if path.is_dir():
        raise InputError(f"{what}: is a folder, not a NIfTI file", path)
    if nifti_stem(path) is None:
        raise InputError(f"{what}: not a NIfTI file (expected .nii or .nii.gz)", path)
    if not os.access(path, os.R_OK):
        raise InputError(f"{what}: cannot read the file (permission denied)", path)
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many kinds for corrupt files
        raise InputError(f"{what}: not a readable NIfTI file ({_one_line(error)})", path) from error
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(f"{what}: not a NIfTI file ({type(image).__name__})", path)
    shape = tuple(int(s) for s in image.shape)
    if ndim == 3 and len(shape) > 3 and all(s == 1 for s in shape[3:]):
        shape = shape[:3]
    if len(shape) != ndim:
        kind = f"{len(shape)}D" if len(shape) > 1 else "1D"
        if ndim == 3:
            needed = "a 3D volume is needed" + (" (split the series first)" if len(shape) > 3 else "")
        else:
            needed = "a 4D series (x, y, z, echoes) is needed"
        raise InputError(f"{what}: is {kind} (shape {shape}); {needed}", path)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32).reshape(shape)
    except Exception as error:
        raise InputError(f"{what}: cannot read the image data ({_one_line(error)})", path) from error
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InputError(f"{what}: contains {bad} NaN/Inf voxel(s)", path)
    return Volume(data=data, affine=np.array(image.affine, dtype=np.float64), header=image.header.copy(),
                  path=path)


def _output_dtype(data: np.ndarray) -> np.dtype:
    if data.dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        if data.size == 0 or (data.min() >= np.iinfo(np.int16).min and data.max() <= np.iinfo(np.int16).max):
            return np.dtype(np.int16)
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def _image_like(data: np.ndarray, like: Volume) -> nib.Nifti1Image:
    """A NIfTI image of ``data`` with ``like``'s geometry (qform, sform, codes, zooms, units) unchanged."""
    dtype = _output_dtype(data)
    array = data.astype(dtype, copy=False)
    if like.header is not None and isinstance(like.header, nib.Nifti1Header):
        klass = nib.Nifti2Image if isinstance(like.header, nib.Nifti2Header) else nib.Nifti1Image
        header = like.header.copy()
        header.set_data_shape(array.shape)
        image = klass(array, None, header=header)  # affine None: qform/sform fields are kept verbatim
    else:
        image = nib.Nifti1Image(array, np.asarray(like.affine, dtype=np.float64))
        image.header.set_qform(like.affine, code=1)
        image.header.set_sform(like.affine, code=1)
    image.set_data_dtype(dtype)
    image.header.set_slope_inter(None, None)  # data are written as they are: no scaling
    image.header["cal_min"] = 0
    image.header["cal_max"] = 0
    return image


def write_nifti(path: str | os.PathLike[str], data: Any, like: Volume) -> Path:
    """Write ``data`` as a NIfTI file on the grid of ``like``, atomically.

    The image is serialised in memory, written to a hidden temporary file in the target folder, flushed
    to disk and moved into place with :func:`os.replace`; on any failure the temporary file (and any
    folder this call created) is removed, so the target is either the complete new file or untouched.

    Parameters
    ----------
    path
        Target file, ``.nii`` or ``.nii.gz``; missing parent folders are created.
    data
        Array (numpy or torch) of exactly ``like``'s shape.  Written as float32, or uint8 for booleans
        and int16 for integers (int32 when the values do not fit int16).
    like
        Reference volume: its qform and sform (with their codes), zooms and units are copied exactly.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    if nifti_stem(path) is None:
        raise InputError("output must end in .nii or .nii.gz", path)
    if hasattr(data, "detach"):  # a torch tensor
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if data.shape != like.shape:
        raise InputError(f"cannot write an image of shape {data.shape} on the grid of "
                         f"{like.path or 'the reference'} (shape {like.shape})", path)
    if np.iscomplexobj(data) or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise InputError(f"cannot write {data.dtype} data (real numbers or booleans only)", path)
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InputError("refusing to write an image with NaN/Inf values", path)

    created = _make_parents(path.parent)
    try:
        payload = _image_like(data, like).to_bytes()
        if path.name.lower().endswith(".gz"):
            payload = gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0)
        with atomic_file(path) as stream:
            stream.write(payload)
    except BaseException as error:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(error, OSError):
            raise InputError(f"cannot write the file ({error.strerror or _one_line(error)})", path) from error
        raise
    return path


#: Temporary files of :func:`atomic_file`: ``.<name>.<12 hex>-<pid>.tmp`` (``.<name>.<12 hex>.tmp`` before).
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}(?:-(\d+))?\.tmp$")
#: Age after which a temporary file without a process id (older versions) counts as abandoned.
_LEGACY_TEMP_AGE_S = 600.0


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists but belongs to someone else
        return True
    return True


def clear_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed :func:`atomic_file` writes left in ``folder``.

    A temporary file carries the id of the process writing it; it is abandoned when that process no longer
    exists on this machine (files of older versions, without an id, after :data:`_LEGACY_TEMP_AGE_S`).
    Returns the files removed.  (On a folder shared by several machines a live writer elsewhere looks dead
    here; its rename then fails with a clear error and the run can be repeated.)
    """
    import time

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            pid = match.group(1)
            stale = (not _process_alive(int(pid))) if pid else now - entry.stat().st_mtime > _LEGACY_TEMP_AGE_S
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def os_error_text(error: OSError) -> str:
    """``strerror`` of an OS error (``"Permission denied"``), else its one-line text."""
    return error.strerror or _one_line(error)


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """Write ``path`` atomically: yield a hidden temporary file in the same folder, then flush, fsync and
    :func:`os.replace` it onto ``path`` (and fsync the folder, so the rename survives a crash).

    On any exception ``path`` is untouched and the temporary file is removed; a process killed mid-write
    leaves ``.<name>.<hex>-<pid>.tmp``, which the next write into that folder removes
    (:func:`clear_stale_temps`).  Every OS error (permission, read-only file system, disk full) becomes an
    :class:`~qmricore.errors.InputError` naming ``path``.  The file gets the usual permissions (umask),
    unlike :func:`tempfile.mkstemp`'s owner-only 0600.  The folder must exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError("output folder does not exist", path.parent)
    clear_stale_temps(path.parent)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}-{os.getpid()}.tmp"
    try:
        with open(temp, mode.replace("w", "x"), **open_args) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException as error:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise InputError(f"cannot write the file ({os_error_text(error)})", path) from error
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:  # pragma: no cover - folders cannot be opened on Windows
        pass


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_file`); model files and checkpoints use it."""
    import torch  # here, so that reading NIfTI files needs no torch

    with atomic_file(path) as handle:
        torch.save(obj, handle)
    return Path(path)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: equal after resolving symlinks and ``..`` (and case, where the file
    system ignores it), or the same existing file (hard links, case-insensitive file systems)."""
    a, b = Path(a), Path(b)
    if os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b)):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_location(path: str | os.PathLike[str], *, folder: bool = False) -> None:
    """Refuse an output that cannot be written, before any work: ``path`` (a file, or with ``folder=True``
    an output folder) must not be a folder (a file), and its nearest existing parent must be a writable
    folder (not a file, not read-only).

    Raises
    ------
    InputError
        One line naming the path and the reason.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise InputError("output folder exists and is not a folder", path)
        if not folder and path.is_dir():
            raise InputError("output is a folder; give a file name", path)
    target = path if folder else path.parent
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create the output there: {existing} is a file, not a folder", path)
    effective = os.access in os.supports_effective_ids  # the user the process acts as (setuid, seteuid)
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        reason = "read-only file system" if _read_only_mount(existing) else "permission denied"
        raise InputError(f"cannot write into {existing} ({reason})", path)


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs on Windows
        return False


def check_outputs(outputs: Iterable[str | os.PathLike[str] | None],
                  inputs: Iterable[str | os.PathLike[str] | None], *,
                  folders: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """The output guard of every command (call it before reading data or computing).

    Parameters
    ----------
    outputs
        Every file the command will write (``None`` entries are ignored).
    inputs
        Every file the command reads, including those it finds in input folders by name.
    folders
        Output folders the command creates or writes into.

    Raises
    ------
    InputError
        An output is one of the inputs (after resolving symlinks, ``..`` and case), an output is named twice,
        or an output cannot be written there (see :func:`check_output_location`).  Nothing is written.
    """
    sources = [Path(p) for p in inputs if p is not None]
    seen: list[Path] = []
    for folder in folders:
        if folder is not None:
            check_output_location(folder, folder=True)
    for out in (Path(p) for p in outputs if p is not None):
        for source in sources:
            if same_file(out, source):
                shown = "" if str(source) == str(out) else f" ({source})"
                raise InputError(f"is an input of this command{shown}; refusing to overwrite it: choose another "
                                 "output", out)
        for other in seen:
            if same_file(out, other):
                raise InputError(f"is given twice as an output (also as {other})", out)
        seen.append(out)
        check_output_location(out)


def ensure_folder(folder: str | os.PathLike[str]) -> Path:
    """Create an output folder and its missing parents; an OS error is one :class:`InputError` line."""
    folder = Path(folder)
    _make_parents(folder)
    return folder


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest first."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the folder ({os_error_text(error)})", folder) from error
    return missing


# ---------------------------------------------------------------------------------------------------------
# map sets


def find_hmri_maps(folder: str | os.PathLike[str], *, skip: Collection[str] = ()) -> dict[str, Path]:
    """Map files of an hMRI-toolbox results folder, by key (see :data:`HMRI_PATTERNS`).

    Looks in ``folder`` and, when nothing matches there, in its ``Results`` sub-folder.  ``*_R2s_OLS``
    is preferred over ``*_R2s``; hidden files are ignored.  Keys without a match, and those in ``skip``
    (given explicitly elsewhere, so an ambiguity there does not matter), are left out.

    Raises
    ------
    InputError
        The folder does not exist, or several files match one key (they are listed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("hMRI folder: no such folder" if not folder.exists() else "hMRI folder: not a folder", folder)
    found = _match_hmri(folder, set(skip))
    if not found and (folder / "Results").is_dir():
        found = _match_hmri(folder / "Results", set(skip))
    return found


def _match_hmri(folder: Path, skip: set[str]) -> dict[str, Path]:
    stems = {}
    for entry in sorted(folder.iterdir()):
        stem = nifti_stem(entry)
        if stem is not None and not entry.name.startswith(".") and entry.is_file():
            stems[entry] = stem.lower()
    found: dict[str, Path] = {}
    for key, groups in HMRI_PATTERNS.items():
        if key in skip:
            continue
        for group in groups:
            hits = [p for p, stem in stems.items()
                    if any(stem.endswith("_" + s.lower()) or stem == s.lower() for s in group)]
            if len(hits) > 1:
                patterns = " or ".join(f"*_{s}.nii[.gz]" for s in group)
                raise InputError(f"{len(hits)} files match {patterns} for the {key} map: "
                                 f"{', '.join(p.name for p in hits)}; name the one to use explicitly "
                                 f"(--{key.replace('_', '-')} FILE)", folder)
            if hits:
                found[key] = hits[0]
                break
    return found


def nifti_files(folder: str | os.PathLike[str], what: str) -> list[Path]:
    """Sorted ``*.nii``/``*.nii.gz`` files in ``folder`` (none, or no folder: ``InputError``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found", folder)
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))
    if not files:
        raise InputError(f"no NIfTI files (*.nii, *.nii.gz) in the {what} folder", folder)
    return files


def map_set_folders(root: str | os.PathLike[str]) -> list[Path]:
    """Map-set folders under ``root``: its sub-folders, or ``root`` itself when it holds the maps."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("map-set folder not found", root)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        return subfolders
    if find_hmri_maps(root):
        return [root]
    raise InputError("no map sets (sub-folders with *_PD, *_R1, *_R2s, *_MT maps) found", root)


def label_file(folder: Path) -> Path:
    """The label map of a map-set folder: ``labels.nii(.gz)`` or ``*_labels.nii(.gz)``."""
    hits = sorted(p for p in folder.iterdir() if (nifti_stem(p) or "").lower().split("_")[-1] == "labels")
    if len(hits) != 1:
        raise InputError(f"map-set folder needs exactly one labels.nii.gz or *_labels.nii.gz, found {len(hits)}",
                         folder)
    return hits[0]


def paired_files(images: str | os.PathLike[str], labels: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """Image/label pairs matched by file name; an image without a label (or vice versa) is an error."""
    image_files = {p.name: p for p in nifti_files(images, "real_images")}
    label_files = {p.name: p for p in nifti_files(labels, "real_labels")}
    unmatched = sorted(set(image_files) ^ set(label_files))
    if unmatched:
        raise InputError(f"images and labels are paired by file name; unmatched: {', '.join(unmatched[:5])}",
                         Path(images))
    return [(image_files[name], label_files[name]) for name in sorted(image_files)]


def _tokens(path: Path) -> list[str]:
    stem = nifti_stem(path) or path.name
    return [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]


def _named_as_time(path: Path, key: str) -> bool:
    """Whether the file name says the map is a time (T1, T2*, T2) rather than a rate."""
    tokens = _tokens(path)
    last = tokens[-1] if tokens else ""
    names = {"r1": ("t1", "t1map"), "r2s": ("t2s", "t2star", "t2smap", "t2starmap"), "r2": ("t2", "t2map")}[key]
    return last in names or (key == "r2s" and tokens[-2:] == ["t2s", "ols"])


def _median_positive(data: np.ndarray) -> float:
    positive = data[data > 0]
    return float(np.median(positive)) if positive.size else 0.0


def _to_rate(data: np.ndarray, scale: float) -> np.ndarray:
    """``scale / T`` where ``T > 0``, else 0 (background)."""
    out = np.zeros_like(data, dtype=np.float32)
    np.divide(np.float32(scale), data, out=out, where=data > 0)
    return out


def _convert_rate(key: str, data: np.ndarray, path: Path, unit: str, notes: list[str]) -> np.ndarray:
    """Rate map ``key`` ("r1", "r2s", "r2") in 1/s, converting from the given or detected unit."""
    label = {"r1": "R1", "r2s": "R2*", "r2": "R2"}[key]
    time_label = {"r1": "T1", "r2s": "T2*", "r2": "T2"}[key]
    flag = f"--{key}-unit"
    median = _median_positive(data)
    if unit == "auto":
        as_time = _named_as_time(path, key)
        if key == "r1":
            if as_time:
                unit = "T_ms" if median > 10 else "T_s"
            elif median < 0.01:
                unit = "1/ms"
            elif median <= 10:
                unit = "1/s"
            elif median > 100:
                unit = "T_ms"
            else:
                raise InputError(f"r1 map: median {median:.4g} fits neither R1 in 1/s nor T1 in ms; "
                                 f"give the unit with {flag}", path)
        else:
            if as_time:
                unit = "T_ms" if median > 1 else "T_s"
            elif median < 0.5:
                unit = "1/ms"
            elif median <= 1000:
                unit = "1/s"
            else:
                raise InputError(f"{key} map: median {median:.4g} is implausible for {label} in 1/s; "
                                 f"give the unit with {flag}", path)
        how = "detected"
    else:
        unit = {"T1_ms": "T_ms", "T1_s": "T_s", "T2s_ms": "T_ms", "T2s_s": "T_s", "T2_ms": "T_ms",
                "T2_s": "T_s"}.get(unit, unit)
        how = "given"
    if unit == "1/s":
        return data
    if unit == "1/ms":
        notes.append(f"{key}: {path.name}: {label} in 1/ms ({how}; median {median:.4g}), multiplied by 1000 to 1/s")
        return (data * np.float32(1000.0)).astype(np.float32)
    if unit == "T_ms":
        notes.append(f"{key}: {path.name}: {time_label} in ms ({how}; median {median:.4g}), "
                     f"converted to {label} = 1000/{time_label} in 1/s")
        return _to_rate(data, 1000.0)
    if unit == "T_s":
        notes.append(f"{key}: {path.name}: {time_label} in s ({how}; median {median:.4g}), "
                     f"converted to {label} = 1/{time_label} in 1/s")
        return _to_rate(data, 1.0)
    raise InputError(f"unknown unit {unit!r} for {key}")


def _clip_negatives(key: str, data: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    negative = int(np.count_nonzero(data < 0))
    if not negative:
        return data
    nonzero = int(np.count_nonzero(data))
    fraction = negative / nonzero
    if fraction > NEGATIVE_TOLERANCE:
        raise InputError(f"{key} map: {negative} negative voxel(s) ({100 * fraction:.1f}% of the non-zero "
                         f"voxels, min {float(data.min()):.4g}); {key} must be >= 0", path)
    notes.append(f"{key}: {path.name}: {negative} negative voxel(s) ({100 * fraction:.2f}% of the non-zero "
                 f"voxels, min {float(data.min()):.4g}) clipped to 0")
    return np.maximum(data, np.float32(0.0))


def same_grid(a: Volume, b: Volume) -> bool:
    """Same shape and affine (to 1e-5 mm) — voxel for voxel the same place."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, rtol=1e-5, atol=1e-5)


def grid_difference(a: Volume, b: Volume) -> str:
    """How two grids differ, for an error message."""
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    return f"affines differ by up to {float(np.abs(a.affine - b.affine).max()):.3g} mm"


def load_map_set(
    files: Mapping[str, str | os.PathLike[str] | None] | None = None,
    folder: str | os.PathLike[str] | None = None,
    r1_unit: str = "auto",
    *,
    r2s_unit: str = "auto",
    r2_unit: str = "auto",
) -> MapSet:
    """Load and validate a quantitative map set (SPEC §3).

    Parameters
    ----------
    files
        Map files by key (``pd, r1, r2s, mt, r2, b1t, b1r``); ``None`` values are ignored.  They override
        the same keys found in ``folder``.
    folder
        An hMRI-toolbox results folder (``*_PD``, ``*_R1``, ``*_R2s_OLS`` or ``*_R2s``, ``*_MT`` or
        ``*_MTsat``, optionally ``*_R2``, ``*_B1map``/``*_B1t``, ``*_B1r``; ``.nii`` or ``.nii.gz``).
    r1_unit
        ``"auto"`` (detect by range and file name, see the module docstring), ``"1/s"``, ``"1/ms"``,
        ``"T1_ms"`` or ``"T1_s"``.
    r2s_unit, r2_unit
        ``"auto"``, ``"1/s"``, ``"1/ms"``, ``"T2s_ms"`` or ``"T2s_s"`` (for ``r2`` also ``"T2_ms"``,
        ``"T2_s"``).

    Returns
    -------
    MapSet
        Maps in 1/s / percent / ratio units, float32, with ``notes`` listing each conversion.

    Raises
    ------
    InputError
        Missing required maps, bad files (see :func:`read_volume`), maps on different grids, negative
        values beyond the tolerance, MT above 100, or a unit that cannot be told.
    """
    if r1_unit not in R1_UNITS:
        raise InputError(f"unknown R1 unit {r1_unit!r}; choose one of {', '.join(R1_UNITS)}")
    if r2s_unit not in R2S_UNITS:
        raise InputError(f"unknown R2* unit {r2s_unit!r}; choose one of {', '.join(R2S_UNITS)}")
    if r2_unit not in R2_UNITS:
        raise InputError(f"unknown R2 unit {r2_unit!r}; choose one of {', '.join(R2_UNITS)}")
    explicit = {k: Path(v) for k, v in (files or {}).items() if v is not None}
    unknown = sorted(set(explicit) - set(MAP_KEYS))
    if unknown:
        raise InputError(f"unknown map key(s) {', '.join(unknown)}; known: {', '.join(MAP_KEYS)}")
    paths: dict[str, Path] = {}
    if folder is not None:
        paths.update(find_hmri_maps(folder, skip=explicit))
    paths.update(explicit)
    missing = [k for k in REQUIRED_MAPS if k not in paths]
    if missing:
        where = f" in {folder} (looked for *_PD, *_R1, *_R2s_OLS/*_R2s .nii[.gz])" if folder is not None else ""
        raise InputError(f"missing required map(s) {', '.join(missing)}{where}; pd, r1 and r2s are needed")

    volumes = {key: read_volume(paths[key], what=f"{key} map") for key in MAP_KEYS if key in paths}
    reference = volumes["pd"]
    for volume in volumes.values():
        if not same_grid(reference, volume):
            raise InputError(f"maps on different grids: {reference.path} vs {volume.path} "
                             f"({grid_difference(reference, volume)})")

    notes: list[str] = []
    maps: dict[str, np.ndarray] = {}
    for key, volume in volumes.items():
        data = _clip_negatives(key, volume.data, paths[key], notes)
        if key == "r1":
            data = _convert_rate(key, data, paths[key], r1_unit, notes)
        elif key in ("r2s", "r2"):
            data = _convert_rate(key, data, paths[key], r2s_unit if key == "r2s" else r2_unit, notes)
        elif key == "mt":
            high = int(np.count_nonzero(data > 100))
            if high:
                raise InputError(f"mt map: {high} voxel(s) above 100 (max {float(data.max()):.4g}); MT must be "
                                 "in percent units, 0-100", paths[key])
        elif key in ("b1t", "b1r"):
            median = _median_positive(data)
            if median > 10:
                notes.append(f"{key}: {paths[key].name}: in percent (median {median:.4g}), divided by 100")
                data = (data / np.float32(100.0)).astype(np.float32)
        if key == "pd" and not np.any(data > 0):
            raise InputError("pd map: no positive voxel", paths[key])
        maps[key] = data
    return MapSet(maps=maps, reference=reference, notes=notes, files=paths)

