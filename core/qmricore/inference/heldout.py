"""Held-out synthetic evaluation of lesion segmenters (used for the shipped model's card).

A held-out set is made of qSynth images of a label map with synthetic lesions, one group per contrast,
seeded far from any training seed.  Contrasts a model never saw in training (e.g. MPRAGE and MP2RAGE
for a model trained on GRE/FSE/FLAIR) measure generalisation to new contrasts; MP2RAGE (UNI) uses the
"MP2RAGE 3T" preset with its timings and flips drawn around it, since SPEC §5 has no MP2RAGE ranges.

    qmricore heldout make --labels sample_labels.nii.gz --out heldout.pt --n 6
    qmricore heldout score --set heldout.pt --model a.pt --model b.pt --out scores.json

Scores: Dice (:func:`qmricore.inference.metrics.dice`) of the predicted lesion mask against the pasted lesion,
on the label map's grid, per contrast, with medians and Student-t 95 % intervals
(:func:`qmricore.inference.metrics.median_confidence_interval`).  Prediction uses the model's own
preprocessing and sliding-window settings (:func:`qmricore.inference.predict_with_fallback`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONTRASTS = ("flair", "gre", "fse", "mprage", "mp2rage")
SEED_BASE = 10_000_000  # far from training seeds
#: MP2RAGE draws around the "MP2RAGE 3T" preset: parameter -> (low, high).
MP2RAGE_JITTER = {"tr": (4.5, 5.5), "ti": (0.65, 0.9), "ti2": (2.2, 2.8), "flip": (3.0, 6.0), "flip2": (4.0, 7.0)}


def _mp2rage(rng: np.random.Generator) -> dict[str, float]:
    from ..physics import check_parameters
    from ..protocols import preset

    _, base = preset("MP2RAGE 3T")
    for _ in range(1000):
        params = {**base, **{k: float(rng.uniform(*r)) for k, r in MP2RAGE_JITTER.items()}}
        try:
            return check_parameters("mp2rage", params)
        except ValueError:
            continue
    raise RuntimeError("no feasible MP2RAGE draw")  # pragma: no cover


def make_set(labels_path: str | Path, n: int, crop: Sequence[int] | None = None,
             contrasts: Sequence[str] = CONTRASTS, lesion: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate ``n`` images per contrast: ``{"items": [{"contrast", "seed", "image", "truth"}], ...}``."""
    from ..io import read_volume

    volume = read_volume(labels_path, what="label map")
    labels = torch.from_numpy(np.rint(volume.data).astype(np.int64))
    held_out = make_set_from_labels(labels, volume.zooms, n, crop, contrasts, lesion)
    return {"labels": str(labels_path), **held_out}


def make_set_from_labels(labels: torch.Tensor, zooms: Sequence[float], n: int, crop: Sequence[int] | None = None,
                         contrasts: Sequence[str] = CONTRASTS, lesion: dict[str, Any] | None = None,
                         seed_offset: int = 0) -> dict[str, Any]:
    """:func:`make_set` for a label map in memory (voxel size ``zooms`` in mm); seeds start at
    ``SEED_BASE + seed_offset``."""
    from ..generators.pipeline import PipelineConfig, apply_sample, draw_sample, with_voxel_size
    from ..generators.priors import load_priors
    from ..generators.qsynth import SequenceDraw

    lesion_label = load_priors().label_of("lesion")
    items = []
    for c, contrast in enumerate(contrasts):
        options: dict[str, Any] = {"mode": "qsynth", "lesion_prob": 1.0,
                                   "sequences": ["mprage" if contrast == "mp2rage" else contrast],
                                   "augment": {"crop": list(crop) if crop else None}}
        if lesion:
            options["lesion"] = lesion
        config = with_voxel_size(PipelineConfig.from_dict(options), tuple(zooms))
        for i in range(n):
            seed = SEED_BASE + seed_offset + 1000 * c + i
            draw = draw_sample(labels, config, seed)
            if contrast == "mp2rage":
                mp2rage = SequenceDraw("mp2rage", _mp2rage(np.random.default_rng(seed)))
                draw = dataclasses.replace(draw, sequence=mp2rage)
            sample = apply_sample(labels, draw, config)
            truth = (sample.label == lesion_label).to(torch.uint8)
            if truth.any():
                items.append({"contrast": contrast, "seed": seed, "sequence": draw.sequence.to_dict(),
                              "image": sample.image[0].clone(), "truth": truth})
    return {"voxel_size": list(zooms), "items": items}


def save_set(held_out: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a held-out set (:func:`make_set`) atomically as a torch file of plain tensors and lists."""
    from ..io import atomic_torch_save

    return atomic_torch_save(held_out, path)


def read_set(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A held-out set written by :func:`save_set`; anything else is an ``InputError`` naming the file."""
    from ..errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError("held-out set not found" if not path.exists() else "held-out set is not a file", path)
    if not zipfile.is_zipfile(path):
        raise InputError("not a held-out set (not a torch zip archive: corrupt or another format)", path)
    try:
        held_out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for corrupt or unsafe files
        raise InputError(f"corrupt or unsafe held-out set ({type(error).__name__})", path) from error
    if not isinstance(held_out, dict) or not isinstance(held_out.get("items"), list):
        raise InputError("not a held-out set (no 'items'; write one with 'qmricore heldout make')", path)
    return held_out


def score(held_out: dict[str, Any], model_paths: Sequence[str | Path], tta: bool = False) -> dict[str, Any]:
    """Dice per item and model, and per-contrast medians with 95 % intervals."""
    from ..models.model_file import load_model
    from .metrics import dice, median_confidence_interval
    from .preprocess import normalise_intensity
    from .window import predict_with_fallback

    rows = []
    for path in model_paths:
        model = load_model(path, device="cpu")
        lesion = len(model.meta.classes) - 1
        began = time.monotonic()
        for item in held_out["items"]:
            image = normalise_intensity(item["image"].numpy(), model.meta.preprocessing)
            logits = predict_with_fallback(model.network, torch.from_numpy(image)[None, None], model.meta.inference,
                                           tta=tta, device=torch.device("cpu"))
            mask = (logits[0].argmax(0) == lesion).numpy()
            rows.append({"model": Path(path).name, "contrast": item["contrast"], "seed": item["seed"],
                         "dice": dice(mask, item["truth"].numpy()), "truth_voxels": int(item["truth"].sum()),
                         "predicted_voxels": int(mask.sum())})
        seconds = time.monotonic() - began
        print(f"{Path(path).name}: {len(held_out['items'])} images in {seconds:.0f} s", file=sys.stderr)
    summary = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for contrast in dict.fromkeys(r["contrast"] for r in rows):
            values = [r["dice"] for r in rows if r["model"] == model and r["contrast"] == contrast]
            median, low, high = median_confidence_interval(values)
            summary.append({"model": model, "contrast": contrast, "n": len(values), "dice_median": median,
                            "ci_low": max(0.0, low), "ci_high": min(1.0, high), "dice_mean": float(np.mean(values))})
    return {"rows": rows, "summary": summary, "tta": tta}


def markdown(summary: Sequence[dict[str, Any]]) -> str:
    """A contrast × model table of median Dice [95 % CI]."""
    models = list(dict.fromkeys(s["model"] for s in summary))
    contrasts = list(dict.fromkeys(s["contrast"] for s in summary))
    cell = {(s["model"], s["contrast"]): s for s in summary}
    lines = ["| contrast | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for contrast in contrasts:
        values = []
        for model in models:
            s = cell[(model, contrast)]
            values.append(f"{s['dice_median']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (n={s['n']})")
        lines.append(f"| {contrast} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
