"""Hierarchical tissue priors for qSynth (SPEC §6): per class and per map, (mu_mu, sigma_mu, mu_sigma, sigma_sigma).

For each synthetic subject and each tissue class, qSynth draws a subject-level mean ``mu ~ N(mu_mu, sigma_mu)``
and a within-subject spread ``sigma ~ |N(mu_sigma, sigma_sigma)|`` for every map (:mod:`.qsynth`).  This module
holds those four numbers per (class, map) in :class:`TissuePriors`, reads and writes them as JSON, and fits them
from real map sets with label maps (:func:`fit_priors`, the ``qmricore fit-priors`` command).

Units (SPEC §3): ``pd`` in percent water (p.u., CSF ~ 100), ``r1`` and ``r2s`` in 1/s, ``mt`` in percent units.
The literature defaults ship in ``qmricore/data/priors_3t.json`` with a source for every class and map.

JSON format (``"format": "qmricore-priors/1"``)::

    {"format": "qmricore-priors/1", "field_strength": 3.0, "units": {...},
     "classes": [{"name": "gm", "label": 1,
                  "pd": {"mu_mu": 80, "sigma_mu": 2.5, "mu_sigma": 5, "sigma_sigma": 1, "sources": ["weiskopf2013"]},
                  "r1": {...}, "r2s": {...}, "mt": {...}}, ...],
     "sources": {"weiskopf2013": "Weiskopf N et al. ...", ...}}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

#: Maps every prior covers, in this order everywhere (draws, tensors, JSON).
PARAMETERS = ("pd", "r1", "r2s", "mt")
#: Maps a priors file may add for every class (R2 in 1/s, for spin-echo contrast: without it the simulator
#: falls back to R2*, which makes T2-weighted images far too dark and too textured).
OPTIONAL_PARAMETERS = ("r2",)
UNITS = {"pd": "percent water (p.u.)", "r1": "1/s", "r2s": "1/s", "mt": "percent units (p.u.)", "r2": "1/s"}
#: The four hyper-parameters of one (class, map) prior, in this order.
HYPER = ("mu_mu", "sigma_mu", "mu_sigma", "sigma_sigma")
FORMAT = "qmricore-priors/1"
#: With a single subject the between-subject terms cannot be estimated; :func:`fit_priors` sets
#: ``sigma_mu = sigma_sigma = SINGLE_SUBJECT_FRACTION * (that subject's within-class std)``.
SINGLE_SUBJECT_FRACTION = 0.1


@dataclass(frozen=True)
class ParameterPrior:
    """Hierarchical prior of one map in one class: ``mu ~ N(mu_mu, sigma_mu)``, ``sigma ~ |N(mu_sigma, sigma_sigma)|``.

    All four in the map's unit (p.u. for pd and mt, 1/s for r1 and r2s).  ``sources`` are keys of
    :attr:`TissuePriors.sources`.
    """

    mu_mu: float
    sigma_mu: float
    mu_sigma: float
    sigma_sigma: float
    sources: tuple[str, ...] = ()

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.mu_mu, self.sigma_mu, self.mu_sigma, self.sigma_sigma)


@dataclass(frozen=True)
class TissuePriors:
    """Tissue classes (names and label values) and their per-map hierarchical priors.

    Attributes
    ----------
    names
        Class names in channel order (soft label maps use this order for their channels).
    labels
        Integer label value of each class in hard label maps.
    priors
        ``priors[i][param]`` is the :class:`ParameterPrior` of class ``i`` for ``param`` in :data:`PARAMETERS`.
    field_strength
        Main field (tesla) the relaxation rates refer to.
    sources
        Citation text per source key used by the priors.
    notes
        Free-text remarks (how the numbers were obtained).
    """

    names: tuple[str, ...]
    labels: tuple[int, ...]
    priors: tuple[Mapping[str, ParameterPrior], ...]
    field_strength: float = 3.0
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.labels) == len(self.priors)) or not self.names:
            raise InputError("priors need the same (non-zero) number of class names, label values and priors")
        if len(set(self.names)) != len(self.names):
            raise InputError(f"duplicate class names in priors: {list(self.names)}")
        if len(set(self.labels)) != len(self.labels):
            raise InputError(f"duplicate label values in priors: {list(self.labels)}")
        if any(label < 0 for label in self.labels):
            raise InputError(f"label values must be >= 0, got {list(self.labels)}")

    @property
    def n_classes(self) -> int:
        return len(self.names)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The maps these priors cover: :data:`PARAMETERS`, plus each of :data:`OPTIONAL_PARAMETERS` that every
        class has."""
        return PARAMETERS + tuple(p for p in OPTIONAL_PARAMETERS if all(p in pri for pri in self.priors))

    def index(self, name: str) -> int:
        """Channel index of a class by name."""
        if name not in self.names:
            raise InputError(f"unknown tissue class {name!r}; the priors have {', '.join(self.names)}")
        return self.names.index(name)

    def label_of(self, name: str) -> int:
        """Label value of a class by name."""
        return self.labels[self.index(name)]

    @property
    def background_label(self) -> int:
        """Label value of the class named ``background`` (0 when there is none)."""
        return self.label_of("background") if "background" in self.names else 0

    def prior(self, name: str, parameter: str) -> ParameterPrior:
        return self.priors[self.index(name)][parameter]

    def table(self) -> np.ndarray:
        """All hyper-parameters as a float64 array of shape (classes, len(PARAMETERS), 4) in :data:`HYPER` order."""
        return np.array([[self.priors[c][p].as_tuple() for p in self.parameters] for c in range(self.n_classes)])

    def to_dict(self) -> dict[str, Any]:
        classes = []
        for name, label, pri in zip(self.names, self.labels, self.priors, strict=True):
            entry: dict[str, Any] = {"name": name, "label": int(label)}
            for p in self.parameters:
                pp = pri[p]
                entry[p] = {h: float(v) for h, v in zip(HYPER, pp.as_tuple(), strict=True)}
                if pp.sources:
                    entry[p]["sources"] = list(pp.sources)
            classes.append(entry)
        return {"format": FORMAT, "field_strength": float(self.field_strength),
                "units": {p: UNITS[p] for p in self.parameters},
                "notes": list(self.notes), "classes": classes, "sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, data: Any, path: object | None = None) -> TissuePriors:
        """Validate a parsed priors JSON object; errors name ``path`` and the offending entry."""
        if not isinstance(data, dict):
            raise InputError("a priors file must hold a JSON object", path)
        if data.get("format", FORMAT) != FORMAT:
            raise InputError(f"unsupported priors format {data.get('format')!r} (expected {FORMAT!r})", path)
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes:
            raise InputError("priors lack a non-empty 'classes' list", path)
        sources = data.get("sources", {})
        if not isinstance(sources, dict):
            raise InputError("'sources' must be an object of key -> citation", path)
        names, labels, priors = [], [], []
        for i, entry in enumerate(classes):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise InputError(f"class #{i} lacks a 'name'", path)
            name = entry["name"]
            label = entry.get("label")
            if isinstance(label, bool) or not isinstance(label, (int, float)) or not float(label).is_integer():
                raise InputError(f"class {name!r}: 'label' must be an integer, got {label!r}", path)
            per: dict[str, ParameterPrior] = {}
            for p in PARAMETERS + OPTIONAL_PARAMETERS:
                spec = entry.get(p)
                if spec is None and p in OPTIONAL_PARAMETERS:
                    continue
                if not isinstance(spec, dict):
                    raise InputError(f"class {name!r} lacks the prior for {p!r}", path)
                values = []
                for h in HYPER:
                    v = spec.get(h)
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                        raise InputError(f"class {name!r}, {p}: {h} must be a finite number, got {v!r}", path)
                    values.append(float(v))
                if values[1] < 0 or values[3] < 0 or values[2] < 0:
                    raise InputError(f"class {name!r}, {p}: sigma_mu, mu_sigma and sigma_sigma must be >= 0, "
                                     f"got {values[1]:g}, {values[2]:g}, {values[3]:g}", path)
                src = spec.get("sources", [])
                src = [src] if isinstance(src, str) else list(src)
                missing = [s for s in src if s not in sources]
                if missing:
                    raise InputError(f"class {name!r}, {p}: unknown source key(s) {', '.join(missing)}", path)
                per[p] = ParameterPrior(*values, sources=tuple(src))
            names.append(name)
            labels.append(int(label))
            priors.append(per)
        for p in OPTIONAL_PARAMETERS:
            have = [n for n, per in zip(names, priors, strict=True) if p in per]
            if have and len(have) != len(names):
                lacking = [n for n in names if n not in have]
                raise InputError(f"{p!r} priors are given for some classes but not for {', '.join(lacking)}", path)
        b0 = data.get("field_strength", 3.0)
        if isinstance(b0, bool) or not isinstance(b0, (int, float)) or not b0 > 0:
            raise InputError(f"'field_strength' must be a positive number of tesla, got {b0!r}", path)
        notes = data.get("notes", [])
        try:
            return cls(tuple(names), tuple(labels), tuple(priors), float(b0), dict(sources),
                       tuple(str(n) for n in (notes if isinstance(notes, list) else [notes])))
        except InputError as error:
            raise InputError(error.problem, path) from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the priors as JSON atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        from ..io import atomic_file

        with atomic_file(path, "w") as handle:
            handle.write(text)
        return path


def default_priors_path() -> Path:
    """Path of the shipped literature priors (3 T)."""
    return Path(str(resources.files("qmricore").joinpath("data/priors_3t.json")))


@lru_cache(maxsize=1)
def _default() -> TissuePriors:
    return load_priors(default_priors_path())


def load_priors(path: str | os.PathLike[str] | None = None) -> TissuePriors:
    """Read a priors JSON file; ``None`` gives the shipped 3 T literature priors (cached).

    Raises :class:`~qmricore.errors.InputError` naming the file for a missing/unreadable file, bad JSON,
    a missing class entry or map, non-numeric values or negative sigmas.
    """
    if path is None:
        return _default()
    from ..io import read_json

    path = Path(path)
    return TissuePriors.from_dict(read_json(path, "priors file"), path)


def _class_table(
    class_table: TissuePriors | Mapping[str, int] | None,
) -> tuple[list[str], list[int], TissuePriors | None]:
    if class_table is None:
        class_table = load_priors()
    if isinstance(class_table, TissuePriors):
        return list(class_table.names), list(class_table.labels), class_table
    names = list(class_table)
    labels = [int(class_table[n]) for n in names]
    return names, labels, None


#: Classes that are not brain tissue: a label map needs voxels of some other class to be used (SPEC §13).
NON_BRAIN_CLASSES = ("background", "non_brain")


def brain_labels(names: Iterable[str], values: Iterable[int]) -> list[int]:
    """Label values of the brain-tissue classes (every class but :data:`NON_BRAIN_CLASSES`)."""
    return [int(v) for n, v in zip(names, values, strict=True) if n not in NON_BRAIN_CLASSES]


def check_brain_tissue(labels: np.ndarray, names: Iterable[str], values: Iterable[int], what: object) -> None:
    """Raise :class:`InputError` naming ``what`` when ``labels`` has no voxel of a brain-tissue class."""
    names, values = list(names), list(values)
    brain = brain_labels(names, values)
    if brain and not np.isin(labels, brain).any():
        present = sorted(int(v) for v in np.unique(labels))
        raise InputError(f"label map has no brain-tissue voxels (labels present: {present}; brain classes: "
                         + ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True) if v in brain) + ")",
                         what)


def _label_indices(labels: np.ndarray, values: list[int], what: str) -> np.ndarray:
    """Class index per voxel (int64) from integer label values; unknown values raise InputError."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError("label map has non-integer values", what)
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise InputError(f"label map has negative values (min {arr.min()})", what)
    lut = np.full(max(int(arr.max(initial=0)), max(values)) + 1, -1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    idx = lut[arr]
    if (idx < 0).any():
        unknown = sorted(set(np.unique(arr[idx < 0]).tolist()))
        raise InputError(f"unknown label value(s) {unknown}; known: {values}", what)
    return idx


def fit_priors(
    subjects: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray]],
    class_table: TissuePriors | Mapping[str, int] | None = None,
    *,
    names: Iterable[str] | None = None,
) -> TissuePriors:
    """Fit hierarchical priors from real map sets with hard label maps.

    For each subject and class: the mean and standard deviation (ddof 0) of every map over the
    class's voxels.  Over subjects: ``mu_mu`` = mean of subject means, ``sigma_mu`` = std (ddof 1)
    of subject means, ``mu_sigma`` = mean of subject stds, ``sigma_sigma`` = std (ddof 1) of subject
    stds.  With one subject the between-subject terms are unknown and set to
    ``SINGLE_SUBJECT_FRACTION`` (10 %) of that subject's within-class std (documented floor).

    Parameters
    ----------
    subjects
        ``(maps, labels)`` pairs: ``maps`` holds ``pd, r1, r2s`` (and optionally ``mt``) arrays on the
        labels' grid, in SPEC §3 units; ``labels`` an integer-valued 3D array.
    class_table
        Which label value is which class: a :class:`TissuePriors` (default: the shipped priors) or a
        ``{name: label}`` mapping.  With a :class:`TissuePriors`, (class, map) pairs that no subject has
        data for (e.g. no lesion voxels, no MT map) keep its prior; with a mapping they raise an error.
    names
        Optional subject names used in error messages (file names).

    Returns
    -------
    TissuePriors with the same classes and labels, field strength of ``class_table`` (3 T for a mapping).
    """
    cls_names, values, fallback = _class_table(class_table)
    n_cls = len(values)
    subject_names = list(names) if names is not None else None
    means: dict[str, list[list[float]]] = {p: [[] for _ in range(n_cls)] for p in PARAMETERS}
    stds: dict[str, list[list[float]]] = {p: [[] for _ in range(n_cls)] for p in PARAMETERS}
    count = 0
    total_vox = np.zeros(n_cls, dtype=np.float64)
    for s, (maps, labels) in enumerate(subjects):
        what = subject_names[s] if subject_names and s < len(subject_names) else f"subject {s + 1}"
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise InputError(f"label map must be 3D, got shape {labels.shape}", what)
        idx = _label_indices(labels, values, what).ravel()
        check_brain_tissue(labels, cls_names, values, what)
        n_vox = np.bincount(idx, minlength=n_cls).astype(np.float64)
        total_vox += n_vox
        for p in PARAMETERS:
            if maps.get(p) is None:
                continue
            m = np.asarray(maps[p], dtype=np.float64)
            if m.shape != labels.shape:
                raise InputError(f"map '{p}' has shape {m.shape} but the label map has {labels.shape}", what)
            if not np.all(np.isfinite(m)):
                raise InputError(f"map '{p}' has NaN or infinite values", what)
            m = m.ravel()
            s1 = np.bincount(idx, weights=m, minlength=n_cls)
            s2 = np.bincount(idx, weights=m * m, minlength=n_cls)
            for c in range(n_cls):
                if n_vox[c] > 0:
                    mean = s1[c] / n_vox[c]
                    var = max(s2[c] / n_vox[c] - mean * mean, 0.0)
                    means[p][c].append(mean)
                    stds[p][c].append(math.sqrt(var))
        count += 1
    if count == 0:
        raise InputError("no subjects given to fit priors from")

    priors: list[dict[str, ParameterPrior]] = []
    used_fallback: list[str] = []
    for c, name in enumerate(cls_names):
        per: dict[str, ParameterPrior] = {}
        for p in PARAMETERS:
            mu, sd = np.array(means[p][c]), np.array(stds[p][c])
            if mu.size == 0:
                if fallback is None:
                    raise InputError(f"no subject has voxels of class {name!r} with a '{p}' map; cannot fit its prior")
                per[p] = fallback.priors[c][p]
                used_fallback.append(f"{name}/{p}")
                continue
            if mu.size == 1:
                spread = SINGLE_SUBJECT_FRACTION * float(sd[0])
                per[p] = ParameterPrior(float(mu[0]), spread, float(sd[0]), spread, ("fitted",))
            else:
                per[p] = ParameterPrior(float(mu.mean()), float(mu.std(ddof=1)), float(sd.mean()),
                                        float(sd.std(ddof=1)), ("fitted",))
        priors.append(per)
    sources = {"fitted": f"fitted by qmricore.generators.fit_priors from {count} subject(s)"}
    notes = [f"fitted from {count} subject(s)"]
    empty = [name for name, n in zip(cls_names, total_vox, strict=True) if n == 0]
    if empty:
        notes.append("no voxels in any label map for class(es): " + ", ".join(empty))
    if used_fallback and fallback is not None:
        sources.update(fallback.sources)
        notes.append("kept from the class table's priors (no data): " + ", ".join(used_fallback))
    b0 = fallback.field_strength if fallback is not None else 3.0
    return TissuePriors(tuple(cls_names), tuple(values), tuple(priors), b0, sources, tuple(notes))
