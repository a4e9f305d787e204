"""A sample quantitative map set built from real anatomy that ships offline (SPEC §2 ``Resources/``).

The anatomy is the MNI ICBM 2009a nonlinear symmetric template (Fonov et al. 2009, 2011) as nilearn's
wheel ships it: a skull-stripped T1-weighted average and grey- and white-matter probability maps, 1 mm,
197 x 233 x 189 voxels.  :func:`build_sample` turns it into a map set in SPEC §3 units:

1. **Tissue probabilities** (:func:`tissue_probabilities`, at 1 mm).  GM and WM are the template's maps.
   The brain mask is ``GM + WM > 0.5``, closed with a 3 mm ball and hole-filled (this takes in the sulci
   and the ventricles), then dilated by 3 mm for the subarachnoid CSF around the brain (the template's
   GM probability tails reach ~3 mm beyond the closed mask; without the layer they would mix with air
   and leave a ring of pure-GM rates around the cortex).  Inside this intracranial mask, CSF is what GM
   and WM leave.  Outside it, the part of a voxel that is neither GM nor WM is split by its T1-weighted
   intensity ``t``: ``non_brain = clip((t - t_csf) / (t_gm - t_csf), 0, 1)`` and the rest is CSF, where
   ``t_csf`` and ``t_gm`` are the median intensities of sure CSF and sure GM; voxels where the T1
   template is zero are background.  nilearn's template is skull-stripped: its intensity ends within
   ~2 mm of the brain surface, inside the CSF layer, so the non-brain class is all but empty (3 voxels at
   2 mm).  The code path is kept for templates with a head, and the label exists so other code sees the
   full class set.
2. **Resampling** (:func:`resample_probabilities`) of the probabilities, not of the maps, so that partial
   volume is mixed correctly: a Gaussian pre-filter whose variance makes up a box of the new voxel size
   (``sigma^2 = (f^2 - 1) / 12`` source voxels for a zoom factor ``f``), then linear interpolation at the
   new voxel centres.  The new affine is ``A @ [[f, 0, 0, (f-1)/2], ...]``: voxel 0 of the new grid is
   centred on the first ``f`` source voxels, so world coordinates stay exact.
3. **Maps** (:func:`mix_maps`): literature tissue values at 3 T (:data:`TISSUES`) mixed per voxel.  PD is
   the probability-weighted sum (background holds no water).  R1, R2*, R2 and MT are averaged with
   weights ``p_c PD_c`` (the fraction of the voxel's water in each tissue: fast exchange), so a voxel half
   air and half GM has GM's rates and half GM's PD.  Voxels without tissue hold 0 in every map.
4. **Labels** (:func:`label_map`) with the project's classes (:data:`LABELS`): GM/WM partial volume (3)
   where both GM and WM probabilities are at least :data:`PARTIAL_VOLUME_MIN` (0.3); otherwise the most
   probable of background, GM, WM, CSF and non-brain tissue.  No lesion (6) in this healthy sample.

Tissue values at 3 T (PD in percent water, rates in 1/s, MT in hMRI MTsat percent units)
--------------------------------------------------------------------------------------
PD, R1, R2* and MT are the population means (``mu_mu``) of the shipped qSynth priors,
``qmricore/data/priors_3t.json``, which cite their sources; this module reads them from there so the
two never drift apart.  At the time of writing: GM 80 / 0.63 / 16 / 0.85, WM 69 / 1.0 / 21 / 1.7,
CSF 100 / 0.23 / 2.0 / 0.1, non-brain 60 / 1.4 / 30 / 1.0.  R2 is not part of the priors and lives in
:data:`R2`: GM 9.09 (T2 110 ms) and WM 12.56 (T2 79.6 ms) [W]; CSF 0.5 (T2 2 s) [S18]; non-brain
24.6 [B], a 50/50 mixture of the rates of subcutaneous fat (T2 68 ms) and skeletal muscle (T2 29 ms).
Other 3 T measurements span GM T1 1.33-1.82 s, WM T1 0.83-1.08 s, GM T2 99-110 ms, WM T2 69-80 ms
([W], [St]); the plausible ranges in :data:`RANGES` span them.  Values were taken from the papers as
remembered, not re-read for this file: check them against the originals before quoting them elsewhere.

[T]   Tofts P (ed.). Quantitative MRI of the Brain. Wiley, 2003; ch. 4 (PD) and ch. 5-6 (T1, T2).
[H13] Weiskopf N et al. Quantitative multi-parameter mapping of R1, PD*, MT, and R2* at 3T: a multi-center
      validation. Front Neurosci 2013;7:95.
[H08] Helms G et al. High-resolution maps of magnetization transfer with inherent correction for RF
      inhomogeneity and T1 relaxation obtained from 3D FLASH MRI. Magn Reson Med 2008;60:1396-1407.
[W]   Wansapura JP et al. NMR relaxation times in the human brain at 3.0 tesla. J Magn Reson Imaging
      1999;9:531-538.
[St]  Stanisz GJ et al. T1, T2 relaxation and magnetization transfer in tissue at 3T. Magn Reson Med
      2005;54:507-512.
[R]   Rooney WD et al. Magnetic field and tissue dependencies of human brain longitudinal 1H2O relaxation
      in vivo. Magn Reson Med 2007;57:308-318.
[P]   Peters AM et al. T2* measurements in human brain at 1.5, 3 and 7 T. Magn Reson Imaging
      2007;25:748-753.
[S18] Spijkerman JM et al. T2 mapping of cerebrospinal fluid: 3 T versus 7 T. MAGMA 2018;31:415-424.
[B]   de Bazelaire CMJ et al. MR imaging relaxation times of abdominal and pelvic tissues measured in vivo
      at 3.0 T. Radiology 2004;230:652-659.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ParameterError, QMRIError
from .generators.priors import PARAMETERS, load_priors

__all__ = ["TISSUES", "RANGES", "LABELS", "PARTIAL_VOLUME_MIN", "MAP_FILES", "LABEL_FILE", "ENV_VAR",
           "template_paths", "tissue_probabilities", "resample_probabilities", "mix_maps", "label_map",
           "build_sample", "sample_dir"]

#: R2 (1/s) at 3 T per tissue (sources in the module docstring): the qSynth priors hold no R2, so it lives here.
R2: dict[str, float] = {"gm": 1 / 0.110, "wm": 1 / 0.0796, "csf": 0.5, "non_brain": (1 / 0.068 + 1 / 0.029) / 2}


def _literature_values() -> dict[str, dict[str, float]]:
    """Tissue values at 3 T: the population means (mu_mu) of the shipped qSynth priors, plus :data:`R2`."""
    priors = load_priors()
    return {name: {**{p: priors.prior(name, p).mu_mu for p in PARAMETERS}, "r2": r2} for name, r2 in R2.items()}


#: Literature tissue values at 3 T, taken from the one place they live (``qmricore/data/priors_3t.json``):
#: PD in percent water, R1/R2/R2* in 1/s, MT in hMRI MTsat percent units.
TISSUES: dict[str, dict[str, float]] = _literature_values()

#: Plausible ranges at 3 T per tissue and parameter (the spread of the cited sources, with some margin);
#: the tests check pure-tissue voxels against them.
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "gm": {"pd": (75, 85), "r1": (1 / 1.9, 1 / 1.2), "r2s": (12, 20), "mt": (0.6, 1.2), "r2": (1 / 0.12, 1 / 0.09)},
    "wm": {"pd": (65, 74), "r1": (1 / 1.15, 1 / 0.75), "r2s": (16, 25), "mt": (1.3, 2.5), "r2": (1 / 0.085, 1 / 0.06)},
    "csf": {"pd": (95, 100), "r1": (1 / 4.6, 1 / 3.5), "r2s": (0.3, 3), "mt": (0, 0.3), "r2": (1 / 2.5, 1 / 1.0)},
}

#: Label values of the project's tissue classes (SPEC §6, §8), as the shipped priors define them.
LABELS: dict[str, int] = dict(zip(load_priors().names, load_priors().labels, strict=True))
#: A voxel is GM/WM partial volume when both its GM and its WM probabilities are at least this.
PARTIAL_VOLUME_MIN = 0.3
#: Output file names (hMRI-style, so :func:`qmricore.io.load_map_set` finds them in the folder).
MAP_FILES: dict[str, str] = {"pd": "sample_PD.nii.gz", "r1": "sample_R1.nii.gz", "r2s": "sample_R2s.nii.gz",
                             "mt": "sample_MT.nii.gz", "r2": "sample_R2.nii.gz"}
LABEL_FILE = "sample_labels.nii.gz"
#: Environment variable that points :func:`sample_dir` at another copy of the sample.
ENV_VAR = "QMRI_SAMPLE_DATA"

_CLASSES = ("gm", "wm", "csf", "non_brain")  # tissue classes mixed by mix_maps, in this order
_MASK_THRESHOLD = 0.5  # GM + WM probability that seeds the brain mask
_CLOSING_RADIUS_MM = 3.0  # ball radius of the morphological closing of the brain mask
_CSF_LAYER_MM = 3.0  # thickness of the subarachnoid CSF layer added around the brain mask
_SURE = 0.9  # probability above which a voxel is "sure" GM/CSF for the intensity references
_TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def template_paths() -> dict[str, Path]:
    """Paths of the T1, GM and WM templates shipped inside nilearn's package (no download).

    Raises
    ------
    QMRIError
        nilearn is not installed or its wheel lacks the files.
    """
    try:
        root = resources.files("nilearn.datasets") / "data"
    except ModuleNotFoundError as error:
        raise QMRIError("the sample data is built from nilearn's MNI template; install nilearn") from error
    paths = {kind: Path(str(root / _TEMPLATE_NAME.format(kind))) for kind in ("t1", "gm", "wm")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise QMRIError(f"nilearn's MNI ICBM152 template files are missing: {', '.join(missing)}")
    return paths


def _ball(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    z, y, x = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (x * x + y * y + z * z) <= radius * radius


def tissue_probabilities(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray,
                         voxel_mm: float = 1.0) -> dict[str, np.ndarray]:
    """Per-voxel probabilities of GM, WM, CSF, non-brain tissue and background (summing to 1).

    Parameters
    ----------
    t1
        T1-weighted intensity (any scale, 0 outside the head).
    gm, wm
        Grey- and white-matter probabilities in [0, 1].
    voxel_mm
        Voxel size in mm (sets the closing radius in voxels).

    Returns
    -------
    dict
        float32 arrays ``gm, wm, csf, non_brain, background``.
    """
    from scipy import ndimage

    gm = np.clip(np.asarray(gm, dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(wm, dtype=np.float32), 0, 1)
    t1 = np.asarray(t1, dtype=np.float32)
    tissue = np.minimum(gm + wm, 1.0)
    # Brain mask: threshold, close (sulci), fill (ventricles).  Padding keeps the closing off the border.
    ball = _ball(_CLOSING_RADIUS_MM / voxel_mm)
    pad = ball.shape[0]
    seed = np.pad(tissue > _MASK_THRESHOLD, pad)
    closed = ndimage.binary_closing(seed, structure=ball)[pad:-pad, pad:-pad, pad:-pad]
    brain = ndimage.binary_fill_holes(closed)
    # Intracranial mask: the brain and a layer of subarachnoid CSF around it.
    layer = _ball(_CSF_LAYER_MM / voxel_mm)
    pad = layer.shape[0]
    intracranial = ndimage.binary_dilation(np.pad(brain, pad), structure=layer)[pad:-pad, pad:-pad, pad:-pad]
    # GM/WM probability tails beyond the CSF layer, where the template has no intensity, are dropped
    # (a fraction of a percent of the tissue; they would be tissue floating in air).
    stray = ~intracranial & (t1 <= 0)
    gm = np.where(stray, 0.0, gm).astype(np.float32)
    wm = np.where(stray, 0.0, wm).astype(np.float32)
    tissue = np.minimum(gm + wm, 1.0)
    rest = (1.0 - tissue).astype(np.float32)
    csf = np.where(intracranial, rest, 0.0).astype(np.float32)
    # Outside it: the T1-weighted intensity tells non-brain tissue (bright) from fluid (dark).
    t_csf = float(np.median(t1[csf > _SURE])) if np.any(csf > _SURE) else 0.0
    t_gm = float(np.median(t1[gm > _SURE])) if np.any(gm > _SURE) else float(t1.max())
    outside = ~intracranial & (t1 > 0)
    bright = np.clip((t1 - t_csf) / max(t_gm - t_csf, 1e-6), 0.0, 1.0)
    non_brain = np.where(outside, rest * bright, 0.0).astype(np.float32)
    csf = csf + np.where(outside, rest * (1.0 - bright), 0.0).astype(np.float32)
    background = np.clip(1.0 - gm - wm - csf - non_brain, 0.0, 1.0).astype(np.float32)
    return {"gm": gm, "wm": wm, "csf": csf, "non_brain": non_brain, "background": background}


def resample_probabilities(probs: dict[str, np.ndarray], affine: np.ndarray,
                           resolution_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Probabilities on a coarser isotropic grid of ``resolution_mm`` with its exact affine.

    Parameters
    ----------
    probs
        Arrays of one shape on the grid of ``affine``.
    affine
        4x4 voxel-to-world matrix (mm) of the source grid.
    resolution_mm
        Target voxel size in mm; at least the source voxel size on every axis.

    Returns
    -------
    (dict, ndarray)
        The resampled arrays (float32, clipped to [0, 1]) and the new affine.
    """
    from scipy import ndimage

    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = resolution_mm / zooms
    if np.any(factors < 1 - 1e-6):
        raise ParameterError(f"resolution {resolution_mm:g} mm is finer than the source grid's "
                             f"{zooms.max():g} mm voxels")
    if np.allclose(factors, 1.0):
        return {k: v.astype(np.float32) for k, v in probs.items()}, affine.copy()
    shape = next(iter(probs.values())).shape
    new_shape = tuple(int(s // f) for s, f in zip(shape, factors, strict=True))
    if min(new_shape) < 2:
        raise ParameterError(f"resolution {resolution_mm:g} mm leaves fewer than 2 voxels along an axis")
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (factors - 1) / 2
    new_affine = affine @ scale
    sigma = np.sqrt((factors ** 2 - 1) / 12)
    centres = [f * np.arange(n) + (f - 1) / 2 for f, n in zip(factors, new_shape, strict=True)]
    grid = np.meshgrid(*centres, indexing="ij")
    out = {}
    for key, value in probs.items():
        smooth = ndimage.gaussian_filter(np.asarray(value, dtype=np.float32), sigma, mode="constant")
        sampled = ndimage.map_coordinates(smooth, grid, order=1, mode="constant")
        out[key] = np.clip(sampled, 0.0, 1.0).astype(np.float32)
    return out, new_affine


def mix_maps(probs: dict[str, np.ndarray], tissues: dict[str, dict[str, float]] | None = None) -> dict[str, np.ndarray]:
    """Quantitative maps mixed from tissue probabilities (see the module docstring, step 3).

    Parameters
    ----------
    probs
        Probabilities ``gm, wm, csf, non_brain`` (background is what they leave).
    tissues
        Tissue values (default :data:`TISSUES`): ``pd`` in percent, ``r1, r2s, r2`` in 1/s, ``mt`` in p.u.

    Returns
    -------
    dict
        float32 maps ``pd, r1, r2s, mt, r2``; 0 where there is no tissue.
    """
    tissues = TISSUES if tissues is None else tissues
    water = {c: probs[c].astype(np.float64) * tissues[c]["pd"] for c in _CLASSES}
    pd = sum(water.values())
    maps = {"pd": pd.astype(np.float32)}
    safe = np.where(pd > 0, pd, 1.0)
    for key in ("r1", "r2s", "mt", "r2"):
        weighted = sum(water[c] * tissues[c][key] for c in _CLASSES)
        maps[key] = np.where(pd > 0, weighted / safe, 0.0).astype(np.float32)
    return maps


def label_map(probs: dict[str, np.ndarray]) -> np.ndarray:
    """Hard labels (:data:`LABELS`) from tissue probabilities (see the module docstring, step 4), uint8."""
    order = ("background", "gm", "wm", "csf", "non_brain")
    stack = np.stack([probs[k] for k in order])
    values = np.array([LABELS[k] for k in order], dtype=np.uint8)
    labels = values[np.argmax(stack, axis=0)]
    partial = (probs["gm"] >= PARTIAL_VOLUME_MIN) & (probs["wm"] >= PARTIAL_VOLUME_MIN)
    return np.where(partial, np.uint8(LABELS["gm_wm_pv"]), labels).astype(np.uint8)


def build_sample(out_dir: str | os.PathLike[str], resolution_mm: float = 2.0) -> dict[str, Path]:
    """Build the sample map set from nilearn's MNI ICBM152 2009a template and write it to ``out_dir``.

    Parameters
    ----------
    out_dir
        Output folder (created if needed).  Files: ``sample_PD, sample_R1, sample_R2s, sample_MT,
        sample_R2`` (float32) and ``sample_labels`` (int16), all ``.nii.gz`` on one grid.
    resolution_mm
        Isotropic voxel size in mm, >= 1 (the template's).

    Returns
    -------
    dict
        Paths by key: ``pd, r1, r2s, mt, r2, labels``.
    """
    import nibabel as nib

    from .io import Volume, write_nifti

    if not (isinstance(resolution_mm, (int, float)) and np.isfinite(resolution_mm) and resolution_mm > 0):
        raise ParameterError(f"resolution must be a positive number of mm, got {resolution_mm!r}")
    paths = template_paths()
    images = {k: nib.load(str(p)) for k, p in paths.items()}  # headers only; the data are read below
    affine = np.asarray(images["t1"].affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if resolution_mm < zooms.max() - 1e-6:
        raise ParameterError(f"resolution {resolution_mm:g} mm is finer than the template's {zooms.max():g} mm voxels")
    # The files hold uint8 without a scale factor: probabilities are value / 255.
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    probs = tissue_probabilities(t1, gm, wm, voxel_mm=float(zooms.mean()))
    probs, new_affine = resample_probabilities(probs, affine, float(resolution_mm))
    maps = mix_maps(probs)
    labels = label_map(probs)

    like = Volume(data=labels, affine=new_affine)
    out = Path(out_dir)
    written = {key: write_nifti(out / MAP_FILES[key], maps[key], like) for key in MAP_FILES}
    written["labels"] = write_nifti(out / LABEL_FILE, labels, like)
    return written


def _repo_sample_dir() -> Path:
    """``<repo>/Resources/SampleData``, two levels above this package (``core/qmricore``)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "SampleData"


def sample_dir() -> Path:
    """The folder of the shipped sample map set.

    ``$QMRI_SAMPLE_DATA`` when set, else ``<repo>/Resources/SampleData``.

    Raises
    ------
    QMRIError
        The folder does not exist or lacks a sample file; the message says how to build one.
    """
    override = os.environ.get(ENV_VAR)
    folder = Path(override) if override else _repo_sample_dir()
    how = f"build one with: qmricore sample-data --out {folder}"
    if not folder.is_dir():
        source = f"${ENV_VAR}" if override else "the shipped sample data folder"
        raise QMRIError(f"{folder}: {source} does not exist; {how}")
    missing = [name for name in (*MAP_FILES.values(), LABEL_FILE) if not (folder / name).is_file()]
    if missing:
        raise QMRIError(f"{folder}: sample data incomplete, missing {', '.join(missing)}; {how}")
    return folder

