"""The model list of QMRISegment: shipped models and the ones the user imported, without Qt.

Like SlicerMONAIAuto3DSeg's model list, each entry says what a model is before it is used: name, classes,
expected input, source and size.  Entries are read from the model files themselves
(:func:`qmricore.models.model_file.read_meta`: the stored network, preprocessing and ``origin``), so there is no
separate catalogue to drift out of date.

* shipped models: ``*.pt`` in the repository's / the module's ``Resources/Models``;
* imported models: ``*.pt`` in the user model folder (:func:`userModelFolder`), where
  :func:`importSynthStroke` writes the SynthStroke models a user downloaded (their weights keep the
  authors' licence; this project ships none of them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from QMRICommonLib.shipped import MODEL_FOLDERS

from qmricore.errors import InputError, QMRIError

#: Environment variable that overrides the user model folder.
USER_MODEL_FOLDER_ENV = "QMRISEGMENT_MODEL_FOLDER"
#: Columns of the model table, in order (the widget's header; :meth:`ModelInfo.row` fills them).
MODEL_TABLE_COLUMNS = ("Name", "Classes", "Expected input", "Source", "Size")
#: Display names of the class keys of :data:`qmricore.models.networks.CLASS_SETS`.
CLASS_TITLES = {"background": "background", "gm": "GM", "wm": "WM", "gm_wm_pv": "GM/WM PV", "csf": "CSF",
                "lesion": "lesion"}
NORMALISATION_TITLES = {"percentile": "percentile-normalised", "histogram": "histogram-normalised",
                        "none": "raw intensities"}


def userModelFolder() -> Path:
    """Folder of imported models: ``$QMRISEGMENT_MODEL_FOLDER``, else ``~/.qmricore/models``."""
    return Path(os.environ.get(USER_MODEL_FOLDER_ENV) or Path.home() / ".qmricore" / "models")


@dataclass(frozen=True)
class ModelInfo:
    """One model file as the model list shows it."""

    name: str
    path: Path
    kind: str
    classes: tuple[str, ...]
    expectedInput: str
    source: str
    licence: str
    sizeBytes: int
    shipped: bool

    @property
    def classesText(self) -> str:
        return f"{len(self.classes)}: " + ", ".join(CLASS_TITLES.get(c, c) for c in self.classes)

    @property
    def sizeText(self) -> str:
        return f"{self.sizeBytes / 1e6:.1f} MB"

    def row(self) -> tuple[str, ...]:
        """Cell texts in :data:`MODEL_TABLE_COLUMNS` order."""
        return (self.name, self.classesText, self.expectedInput, self.source, self.sizeText)

    @property
    def toolTip(self) -> str:
        return f"{self.path}\nlicence: {self.licence}"


def describeModel(path: str | os.PathLike[str], shipped: bool = False) -> ModelInfo:
    """A :class:`ModelInfo` from a model file (raises InputError for a file that is not a model)."""
    from qmricore.models.model_file import read_meta

    path = Path(path)
    meta = read_meta(path)
    origin = meta.origin
    prep = meta.preprocessing
    if meta.kind == "mwf":  # a multi-echo series on its own grid, normalised per voxel
        expected = f"{meta.network.n_echoes}-echo series, TE {meta.network.te * 1000:g} ms"
    else:
        channels = getattr(meta.network, "in_channels", 1)
        expected = (f"{channels} image{'s' if channels > 1 else ''}, RAS {prep.spacing:g} mm, "
                    f"{NORMALISATION_TITLES.get(prep.normalisation, prep.normalisation)}")
    if shipped:
        mode = meta.training.get("mode")
        source = "shipped with qmricore" + (f" (trained on {mode} data)" if mode else "")
        licence = "this project's licence"
    else:
        source = str(origin.get("source") or "imported")
        licence = str(origin.get("licence") or "unknown: see where the file came from")
    return ModelInfo(name=str(origin.get("name") or path.stem), path=path, kind=meta.kind, classes=meta.classes,
                     expectedInput=expected, source=source, licence=licence, sizeBytes=path.stat().st_size,
                     shipped=shipped)


def listModels(kind: str = "segmenter", userFolder: Path | None = None,
               shippedFolders: Sequence[Path] = MODEL_FOLDERS) -> tuple[list[ModelInfo], list[str]]:
    """The models of ``kind`` (shipped first, then imported, each by file name) and one line per unreadable file.

    A file that is not a readable model is not listed; its one-line problem is returned so the module can
    show it (not swallow it).
    """
    folders = [(folder, True) for folder in shippedFolders] + [(userFolder or userModelFolder(), False)]
    models, problems, seen = [], [], set()
    for folder, shipped in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.pt")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                info = describeModel(path, shipped)
            except QMRIError as error:
                problems.append(str(error))
                continue
            if info.kind == kind:
                models.append(info)
    return models, problems


def _fileStem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def importSynthStroke(source: str | os.PathLike[str], config: str | os.PathLike[str] | None = None,
                      spacing: float | None = None, name: str | None = None,
                      folder: Path | None = None) -> ModelInfo:
    """Import SynthStroke weights (folder, ``model.safetensors`` or ``{"net": ...}`` checkpoint) into the user
    model folder; never overwrites a model there (``name_2.pt``, ...).  One-line InputError on bad files,
    and then nothing is written."""
    from qmricore.models.synthstroke import import_synthstroke

    folder = folder or userModelFolder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the model folder ({error.strerror})", folder) from error
    stem = _fileStem(name or _defaultStem(source))
    out, number = folder / f"{stem}.pt", 1
    while out.exists():
        number += 1
        out = folder / f"{stem}_{number}.pt"
    imported = import_synthstroke(source, out, config=config, spacing=spacing, name=name)
    return describeModel(imported.path)


def _defaultStem(source: str | os.PathLike[str]) -> str:
    path = Path(source)
    base = path.parent.name if path.name == "model.safetensors" else path.stem if path.is_file() else path.name
    return f"synthstroke_{base}"
