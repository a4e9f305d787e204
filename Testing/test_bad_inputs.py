"""The bad-input matrix: every sub-command, every way a demanding user can hand it bad or odd input.

Each case runs the real command line (``qmricore.cli.main``, in this process: a subprocess per case would
spend ~3 s importing torch) from a scratch folder and asserts the promise of SPEC §12-13: exit status 2,
exactly one stderr line naming the file or option and the problem, no traceback, and nothing written or
changed anywhere in the scratch folder (not even a temporary file).  A new sub-command adds its rows to
:data:`CASES` (a test fails when a command has none).  Cases that need a non-root user (permissions) run the
command in a subprocess as ``nobody`` and skip with the reason when that user cannot run this interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qmricore.cli import COMMANDS, main
from qmricore.inference.window import WindowConfig
from qmricore.ldm.images import LDMImagesConfig, build_ldm_images
from qmricore.ldm.models import LDMMasksConfig, build_ldm_masks
from qmricore.models.model_file import save_model
from qmricore.models.networks import (
    EstimatorConfig,
    MWFNetConfig,
    SegmenterConfig,
    build_estimator,
    build_mwf_net,
    build_segmenter,
)

SHAPE = (10, 10, 10)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), AFFINE), str(path))
    return path


def _scratch(root: Path) -> Path:
    """A scratch folder: an hMRI map set with labels in ``same/``, masks, models, configs, a plain file."""
    rng = np.random.default_rng(3)
    same = root / "same"
    same.mkdir()
    labels = np.zeros(SHAPE, np.int16)
    labels[2:8, 2:8, 2:8] = 2
    labels[3:7, 3:7, 3:7] = 1
    labels[4:6, 4:6, 4:6] = 4
    labels[0, :, :] = 5
    head = labels > 0
    _nifti(same / "sample_PD.nii.gz", (head * (70 + rng.random(SHAPE))).astype(np.float32))
    _nifti(same / "sample_R1.nii.gz", (head * (0.8 + 0.1 * rng.random(SHAPE))).astype(np.float32))
    _nifti(same / "sample_R2s.nii.gz", (head * (15 + rng.random(SHAPE))).astype(np.float32))
    _nifti(same / "sample_MT.nii.gz", (head * (1 + rng.random(SHAPE))).astype(np.float32))
    _nifti(same / "sample_labels.nii.gz", labels)
    _nifti(same / "flair.nii.gz", rng.random(SHAPE).astype(np.float32))
    echoes = np.exp(-0.01 * np.arange(1, 9) / 0.08).astype(np.float32) * np.ones((*SHAPE, 1), np.float32)
    _nifti(root / "me.nii.gz", echoes)
    echoes[1, 2, 3, 4] = np.nan
    _nifti(root / "me_nan.nii.gz", echoes)
    _nifti(root / "small_mask.nii.gz", np.ones((5, 5, 5), np.uint8))
    _nifti(root / "only_non_brain.nii.gz", np.where(labels > 0, 5, 0).astype(np.int16))
    _nifti(root / "all_zero.nii.gz", np.zeros(SHAPE, np.int16))
    for name, data in {"binary": head.astype(np.uint8), "multi": labels, "soft": rng.random(SHAPE)}.items():
        (root / name).mkdir()
        _nifti(root / name / "s1.nii.gz", data)
    seg, est = SegmenterConfig(channels=(4, 8)), EstimatorConfig(channels=(4, 8))
    window = WindowConfig(patch=(8, 8, 8))
    save_model(root / "M.pt", build_segmenter(seg), seg, inference=window)
    save_model(root / "E.pt", build_estimator(est), est, inference=window)
    for name, n_echoes in (("W.pt", 8), ("W16.pt", 16)):  # CNN MWF models; me.nii.gz has 8 echoes
        config = MWFNetConfig(n_echoes=n_echoes, te=0.01, width=4, context_layers=1, voxel_layers=0)
        save_model(root / name, build_mwf_net(config), config, inference=window)
    ldm = LDMMasksConfig(shape=(8, 8, 8), spacing_mm=4.0, ae_channels=(4, 4), unet_channels=(4, 4),
                         unet_attention=(False, False), num_head_channels=4, norm_num_groups=4, context_dim=4)
    save_model(root / "LDM.pt", build_ldm_masks(ldm), ldm, training={"stage": "diffusion"})
    save_model(root / "LDM_ae.pt", build_ldm_masks(ldm), ldm, training={"stage": "autoencoder"})
    ldmi = LDMImagesConfig(shape=(16, 16, 16), spacing_mm=4.0, ae_channels=(4, 4), unet_channels=(4, 4),
                           unet_attention=(False, False), num_head_channels=4, norm_num_groups=4, spade_channels=4)
    save_model(root / "LDMI.pt", build_ldm_images(ldmi), ldmi, training={"stage": "diffusion"})
    (root / "somefile").write_text("not a folder\n")
    (root / "images").mkdir()
    (root / "reallabels").mkdir()
    (root / "softlabels").mkdir()
    for i in range(2):
        _nifti(root / "images" / f"s{i}.nii.gz", rng.random(SHAPE).astype(np.float32))
        _nifti(root / "reallabels" / f"s{i}.nii.gz", head.astype(np.uint8))
        _nifti(root / "softlabels" / f"s{i}.nii.gz", rng.random(SHAPE).astype(np.float32))
    for name, patch, folder in (("seg", [8, 8, 8], "reallabels"), ("seg_patch", [5, 8, 8], "reallabels"),
                                ("seg_labels", [8, 8, 8], "softlabels")):
        config = {"task": "seg", "network": {"classes": "binary", "channels": [4, 8]},
                  "data": {"mode": "real", "real_images": str(root / "images"), "real_labels": str(root / folder),
                           "patch_size": patch},
                  "loop": {"iterations": 2, "checkpoint_every": 100, "log_every": 1, "seed": 1}}
        (root / f"{name}.json").write_text(json.dumps(config))
    (root / "maps").mkdir()
    shutil.copytree(same, root / "maps" / "s1", ignore=shutil.ignore_patterns("flair*", "*labels*"))
    estimator = {"task": "estimator", "network": {"channels": [4, 8]},
                 "data": {"map_sets": str(root / "maps"), "patch_size": [8, 8, 8]},
                 "loop": {"iterations": 1, "checkpoint_every": 100, "log_every": 1, "seed": 1}}
    (root / "est.json").write_text(json.dumps(estimator))
    mwf = {"task": "mwf", "network": {"n_echoes": 8, "width": 4, "context_layers": 1, "voxel_layers": 0},
           "data": {"labels": str(same / "sample_labels.nii.gz"), "patch_size": [6, 6, 6]},
           "loop": {"iterations": 1, "checkpoint_every": 100, "log_every": 1, "seed": 1}}
    (root / "mwf.json").write_text(json.dumps(mwf))
    (root / "mwf_soft.json").write_text(json.dumps({**mwf, "data": {"labels": str(root / "softlabels")}}))
    ldm_config = {"task": "ldm_masks", "data": {"labels": str(same / "sample_labels.nii.gz")},
                  "network": {"shape": [8, 8, 8], "ae_channels": [4, 4], "unet_channels": [4, 4],
                              "unet_attention": [False, False], "num_head_channels": 4, "norm_num_groups": 4,
                              "context_dim": 4},
                  "loop": {"iterations": 1, "checkpoint_every": 100, "log_every": 1, "seed": 1}}
    (root / "ldm.json").write_text(json.dumps(ldm_config))
    (root / "ldm_diff.json").write_text(json.dumps({**ldm_config, "loss": {"stage": "diffusion"},
                                                    "data": {**ldm_config["data"], "autoencoder": str(root / "M.pt")}}))
    (root / "ldm_nodiff.json").write_text(json.dumps({**ldm_config, "loss": {"stage": "diffusion"}}))
    os.symlink(same / "sample_R1.nii.gz", root / "link_R1.nii.gz")
    return root


@dataclass(frozen=True)
class Case:
    """``argv`` (``{root}`` is the scratch folder) and a piece of the one error line."""

    argv: tuple[str, ...]
    message: str


def _case(line: str, message: str) -> Case:
    import shlex

    return Case(tuple(shlex.split(line)), message)


GRE = "--sequence gre --tr 0.02 --te 0.004"
SIM = "simulate --hmri-folder {root}/same"
#: Per sub-command: the bad inputs of issue 14 (and the ones that already passed), each with its message.
CASES: dict[str, dict[str, Case]] = {
    "simulate": {
        "output = input map": _case(f'{SIM} --preset "T1 SPGR" --output {{root}}/same/sample_R1.nii.gz',
                                    "sample_R1.nii.gz: is an input of this command"),
        "output = input via ..": _case(f'{SIM} --preset "T1 SPGR" --output {{root}}/binary/../same/sample_R1.nii.gz',
                                       "is an input of this command"),
        "output = input via a symlink": _case(f'{SIM} --preset "T1 SPGR" --output {{root}}/link_R1.nii.gz',
                                              "link_R1.nii.gz: is an input of this command"),
        "flip above 180": _case(f"{SIM} {GRE} --flip 181 --out {{root}}/o", "flip angle = 181 degrees is beyond"),
        "flip 360": _case(f"{SIM} {GRE} --flip 360 --out {{root}}/o", "at most 180 degrees"),
        "times in ms": _case(f"{SIM} --sequence gre --tr 20 --te 4 --flip 25 --out {{root}}/o",
                             "looks like milliseconds: times are in seconds (0.004 s)"),
        "TE <= 0": _case(f"{SIM} --sequence gre --tr 0.02 --te 0 --flip 25 --out {{root}}/o", "TE must be > 0 s"),
        "output under a file": _case(f'{SIM} --preset "T1 SPGR" --out {{root}}/somefile/o', "somefile is a file"),
        "missing map": _case("simulate --pd {root}/nope.nii.gz --r1 {root}/same/sample_R1.nii.gz --r2s "
                             f"{{root}}/same/sample_R2s.nii.gz {GRE} --flip 20 --out {{root}}/o",
                             "nope.nii.gz: pd map: no such file"),
    },
    "demo": {
        "output under a file": _case("demo --out {root}/somefile/d", "somefile is a file"),
        "snr <= 0": _case("demo --out {root}/d --snr 0", "--snr must be > 0"),
    },
    "sample-data": {
        "resolution below 1 mm": _case("sample-data --out {root}/sd --resolution 0.5", "resolution"),
    },
    "train-seg": {
        "patch not a stride multiple": _case("train-seg --config {root}/seg_patch.json --out {root}/run",
                                             "must be a multiple of the network's total stride"),
        "float-valued labels": _case("train-seg --config {root}/seg_labels.json --out {root}/run",
                                     "softlabels/s0.nii.gz: label map: has non-integer values"),
        "output under a file": _case("train-seg --config {root}/seg.json --out {root}/somefile/run",
                                     "somefile is a file"),
        "config = OUT/config.json": _case("train-seg --config {root}/same/config.json --out {root}/same",
                                          "is an input of this command"),
    },
    "train-estimator": {
        "output under a file": _case("train-estimator --config {root}/est.json --out {root}/somefile/run",
                                     "somefile is a file"),
        "wrong task": _case("train-estimator --config {root}/seg.json --out {root}/run", "not 'estimator'"),
    },
    "train-mwf": {
        "output under a file": _case("train-mwf --config {root}/mwf.json --out {root}/somefile/run",
                                     "somefile is a file"),
        "wrong task": _case("train-mwf --config {root}/est.json --out {root}/run", "not 'mwf'"),
        "non-integer labels": _case("train-mwf --config {root}/mwf_soft.json --out {root}/run",
                                    "softlabels/s0.nii.gz: label map: has non-integer values"),
    },
    "fit-priors": {
        "output = input labels": _case("fit-priors --maps {root}/same --labels {root}/same/sample_labels.nii.gz "
                                       "--out {root}/same/sample_labels.nii.gz", "is an input of this command"),
        "output = an input map": _case("fit-priors --maps {root}/same --labels {root}/same/sample_labels.nii.gz "
                                       "--out {root}/same/sample_PD.nii.gz", "is an input of this command"),
        "all-zero labels": _case("fit-priors --maps {root}/same --labels {root}/all_zero.nii.gz --out {root}/p.json",
                                 "all_zero.nii.gz: label map has no brain-tissue voxels"),
        "only non-brain labels": _case("fit-priors --maps {root}/same --labels {root}/only_non_brain.nii.gz "
                                       "--out {root}/p.json", "has no brain-tissue voxels"),
        "output under a file": _case("fit-priors --maps {root}/same --labels {root}/same/sample_labels.nii.gz "
                                     "--out {root}/somefile/p.json", "somefile is a file"),
    },
    "synth": {
        "only non-brain labels": _case("synth --labels {root}/only_non_brain.nii.gz --out {root}/s --crop 8",
                                       "only_non_brain.nii.gz: label map has no brain-tissue voxels"),
        "crop 100000": _case("synth --labels {root}/same/sample_labels.nii.gz --out {root}/s --crop 100000",
                             "--crop: crop 100000 is larger than 512 voxels"),
        "output under a file": _case("synth --labels {root}/same/sample_labels.nii.gz --out {root}/somefile/s "
                                     "--crop 8", "somefile is a file"),
    },
    "segment": {
        "output = input image": _case("segment --model {root}/M.pt --input {root}/same/flair.nii.gz "
                                      "--out {root}/same/flair.nii.gz", "flair.nii.gz: is an input of this command"),
        "output = model": _case("segment --model {root}/M.pt --input {root}/same/flair.nii.gz --out {root}/M.pt",
                                "output must end in .nii"),
        "two outputs the same": _case("segment --model {root}/M.pt --input {root}/same/flair.nii.gz --out "
                                      "{root}/m.nii.gz --probabilities {root}/m.nii.gz", "is given twice as an output"),
        "output under a file": _case("segment --model {root}/M.pt --input {root}/same/flair.nii.gz "
                                     "--out {root}/somefile/m.nii.gz", "somefile is a file"),
    },
    "estimate": {
        "output = input image": _case("estimate --model {root}/E.pt --input {root}/same/sample_PD.nii.gz "
                                      "--out {root}/same --prefix sample_", "is an input of this command"),
        "output under a file": _case("estimate --model {root}/E.pt --input {root}/same/flair.nii.gz "
                                     "--out {root}/somefile/e", "somefile is a file"),
    },
    "heads": {
        "only non-brain labels": _case("heads --labels {root}/only_non_brain.nii.gz --out {root}/h -n 1",
                                       "only_non_brain.nii.gz: label map has no brain tissue"),
        "output under a file": _case("heads --labels {root}/same/sample_labels.nii.gz --out {root}/somefile/h -n 1",
                                     "somefile is a file"),
        "n 0": _case("heads --labels {root}/same/sample_labels.nii.gz --out {root}/h -n 0", "-n must be >= 1"),
    },
    "heldout": {
        "output = input labels": _case("heldout make --labels {root}/same/sample_labels.nii.gz "
                                       "--out {root}/same/sample_labels.nii.gz", "is an input of this command"),
        "output under a file": _case("heldout make --labels {root}/same/sample_labels.nii.gz "
                                     "--out {root}/somefile/h.pt", "somefile is a file"),
        "n 0": _case("heldout make --labels {root}/same/sample_labels.nii.gz --out {root}/h.pt --n 0",
                     "--n must be >= 1"),
        "unknown contrast": _case("heldout make --labels {root}/same/sample_labels.nii.gz --out {root}/h.pt "
                                  "--contrasts flair t2", "--contrasts: unknown t2"),
        "missing set file": _case("heldout score --set {root}/nope.pt --model {root}/M.pt --out {root}/s.json",
                                  "nope.pt: held-out set not found"),
        "a model as the set": _case("heldout score --set {root}/M.pt --model {root}/M.pt --out {root}/s.json",
                                    "M.pt: not a held-out set"),
        "output = model": _case("heldout score --set {root}/M.pt --model {root}/M.pt --out {root}/M.pt",
                                "M.pt: is an input of this command"),
    },
    "import-model": {
        "output = input checkpoint": _case("import-model --synthstroke {root}/M.pt --out {root}/M.pt",
                                           "M.pt: is an input of this command"),
        "output under a file": _case("import-model --synthstroke {root}/M.pt --out {root}/somefile/m.pt",
                                     "somefile is a file"),
    },
    "check-model": {
        "lesions 0": _case("check-model --model {root}/M.pt --out {root}/c --lesions 0", "--lesions must be >= 1"),
        "output under a file": _case("check-model --model {root}/M.pt --out {root}/somefile/c", "somefile is a file"),
        "not a model file": _case("check-model --model {root}/same/flair.nii.gz --out {root}/c", "flair.nii.gz"),
    },
    "mwf": {
        "3D input": _case("mwf --input {root}/same/flair.nii.gz --te 0.01 --out {root}/w",
                          "flair.nii.gz: multi-echo series: is 3D (shape (10, 10, 10)); a 4D series"),
        "TE 0": _case("mwf --input {root}/me.nii.gz --te 0 --out {root}/w", "TE must be > 0 s"),
        "TE negative": _case("mwf --input {root}/me.nii.gz --te -0.01 --out {root}/w", "TE must be > 0 s"),
        "TE in ms": _case("mwf --input {root}/me.nii.gz --te 10 --out {root}/w", "times are in seconds"),
        "echo count mismatch": _case("mwf --input {root}/me.nii.gz --te 0.01 --echoes 32 --out {root}/w",
                                     "me.nii.gz: multi-echo series: has 8 echoes, --echoes says 32"),
        "NaN voxels": _case("mwf --input {root}/me_nan.nii.gz --te 0.01 --out {root}/w",
                            "me_nan.nii.gz: multi-echo series: contains 1 NaN/Inf voxel(s)"),
        "missing file": _case("mwf --input {root}/nope.nii.gz --te 0.01 --out {root}/w",
                              "nope.nii.gz: multi-echo series: no such file"),
        "mask off the grid": _case("mwf --input {root}/me.nii.gz --te 0.01 --mask {root}/small_mask.nii.gz "
                                   "--out {root}/w", "small_mask.nii.gz: mask: not on the grid of"),
        "cnn without a model": _case("mwf --input {root}/me.nii.gz --te 0.01 --method cnn --out {root}/w",
                                     "--model is needed with --method cnn"),
        "model with nnls": _case("mwf --input {root}/me.nii.gz --te 0.01 --model {root}/W.pt --out {root}/w",
                                 "--model is needed with --method cnn, and only there"),
        "cnn with spectrum": _case("mwf --input {root}/me.nii.gz --te 0.01 --method cnn --model {root}/W.pt "
                                   "--spectrum --out {root}/w", "--spectrum needs --method nnls"),
        "cnn model of another kind": _case("mwf --input {root}/me.nii.gz --te 0.01 --method cnn --model {root}/M.pt "
                                           "--out {root}/w", "M.pt: holds a 'segmenter' network, not an MWF estimator"),
        "cnn echo count": _case("mwf --input {root}/me.nii.gz --te 0.01 --method cnn --model {root}/W16.pt "
                                "--out {root}/w", "W16.pt: the CNN model serves 16 echoes; the series has 8"),
        "cnn echo spacing": _case("mwf --input {root}/me.nii.gz --te 0.012 --method cnn --model {root}/W.pt "
                                  "--out {root}/w", "W.pt: the CNN model serves an echo spacing of 0.01 s"),
        "output under a file": _case("mwf --input {root}/me.nii.gz --te 0.01 --out {root}/somefile/w",
                                     "somefile is a file"),
        "workers 0": _case("mwf --input {root}/me.nii.gz --te 0.01 --workers 0 --out {root}/w",
                           "--workers must be >= 1, got 0"),
        "workers negative": _case("mwf --input {root}/me.nii.gz --te 0.01 --workers -2 --out {root}/w",
                                  "--workers must be >= 1, got -2"),
    },
    "synthmap": {
        "missing labels file": _case("synthmap --labels {root}/nope.nii.gz --out {root}/sm",
                                     "nope.nii.gz: label map: no such file"),
        "non-integer labels": _case("synthmap --labels {root}/softlabels/s0.nii.gz --out {root}/sm",
                                    "softlabels/s0.nii.gz: label map: has non-integer values"),
        "n 0": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/sm -n 0", "-n must be >= 1"),
        "TE 0": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/sm --te 0",
                      "TE must be > 0 s"),
        "TE in ms": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/sm --te 10",
                          "times are in seconds"),
        "echoes 0": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/sm --echoes 0",
                          "--echoes must be >= 1"),
        "SNR range reversed": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/sm "
                                    "--snr-range 80 30", "--snr-range must satisfy 0 < LO <= HI"),
        "SNR range 0": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/sm --snr-range 0 30",
                             "--snr-range must satisfy 0 < LO <= HI"),
        "4D labels": _case("synthmap --labels {root}/me.nii.gz --out {root}/sm", "me.nii.gz: label map: is 4D"),
        "all-zero labels": _case("synthmap --labels {root}/all_zero.nii.gz --out {root}/sm",
                                 "all_zero.nii.gz: label map is empty (background only)"),
        "output under a file": _case("synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/somefile/sm",
                                     "somefile is a file"),
    },
    "ldm": {
        "missing model file": _case("ldm sample --model {root}/nope.pt --ventricle-ml 30 --out {root}/g",
                                    "nope.pt: model file not found"),
        "wrong model kind": _case("ldm sample --model {root}/M.pt --ventricle-ml 30 --out {root}/g",
                                  "M.pt: a model of kind 'segmenter', not a mask generator ('ldm_masks')"),
        "autoencoder stage only": _case("ldm sample --model {root}/LDM_ae.pt --ventricle-ml 30 --out {root}/g",
                                        "LDM_ae.pt: holds the autoencoder stage only"),
        "ventricle-ml 0": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 0 --out {root}/g",
                                "--ventricle-ml must be > 0 mL"),
        "ventricle-ml negative": _case("ldm sample --model {root}/LDM.pt --ventricle-ml -5 --out {root}/g",
                                       "--ventricle-ml must be > 0 mL"),
        "n 0": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 -n 0 --out {root}/g", "-n must be >= 1"),
        "guidance negative": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 --guidance -1 --out {root}/g",
                                   "--guidance must be >= 0"),
        "steps 0": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 --steps 0 --out {root}/g",
                         "--steps must be >= 1"),
        "unknown preset": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 --render nope --out {root}/g",
                                "unknown preset 'nope'"),
        "output under a file": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 --out {root}/somefile/g",
                                     "somefile is a file"),
        "images of another kind": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 --images {root}/M.pt "
                                        "--out {root}/g", "M.pt: a model of kind 'segmenter', not an image generator"),
        "images on another grid": _case("ldm sample --model {root}/LDM.pt --ventricle-ml 30 --images {root}/LDMI.pt "
                                        "--out {root}/g", "LDMI.pt: image generator's grid [16, 16, 16] x 4 mm"),
        "train-images: wrong task": _case("ldm train-images --config {root}/ldm.json --out {root}/run",
                                          "config is for task 'ldm_masks', not 'ldm_images'"),
        "train: output under a file": _case("ldm train-masks --config {root}/ldm.json --out {root}/somefile/run",
                                            "somefile is a file"),
        "train: wrong task": _case("ldm train-masks --config {root}/mwf.json --out {root}/run", "not 'ldm_masks'"),
        "train: diffusion without autoencoder": _case("ldm train-masks --config {root}/ldm_nodiff.json --out "
                                                      "{root}/run", "stage 'diffusion' needs 'autoencoder'"),
        "train: autoencoder of another kind": _case("ldm train-masks --config {root}/ldm_diff.json --out {root}/run",
                                                    "M.pt: data.autoencoder: a model of kind 'segmenter'"),
    },
    "evaluate": {
        "multi-label masks": _case("evaluate --pred {root}/multi --truth {root}/binary --out {root}/r.csv",
                                   "multi/s1.nii.gz: prediction: not a binary mask (labels 1, 2, 4, 5); pass --label"),
        "float-valued masks": _case("evaluate --pred {root}/soft --truth {root}/binary --out {root}/r.csv",
                                    "soft/s1.nii.gz: prediction: float-valued mask"),
        "label 0": _case("evaluate --pred {root}/multi --truth {root}/multi --label 0 --out {root}/r.csv",
                         "--label 0 is the background"),
        "output under a file": _case("evaluate --pred {root}/binary --truth {root}/binary --out {root}/somefile/r.csv",
                                     "somefile is a file"),
    },
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _scratch(tmp_path_factory.mktemp("bad_inputs"))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    captured = capsys.readouterr()
    return int(status or 0), captured.out, captured.err


def test_every_command_has_rows() -> None:
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("command, name", [(c, n) for c, rows in CASES.items() for n in rows])
def test_bad_input_is_one_line_exit_2_and_nothing_written(command: str, name: str, scratch: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[command][name]
    argv = [a.replace("{root}", str(scratch)) for a in case.argv]
    before = _snapshot(scratch)
    status, out, err = _run(argv, capsys)
    assert status == 2, (status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"qmricore {command}: error:" in lines[0], err
    assert case.message in lines[0], lines[0]
    assert "Traceback" not in err
    assert _snapshot(scratch) == before  # nothing written, changed or left behind


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from qmricore import __version__

    status, out, _ = _run(["--version"], capsys)
    assert status == 0 and out.strip() == f"qmricore {__version__}"


def test_disk_full_while_writing_is_one_line_and_leaves_no_temp(scratch: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = scratch / "full"
    monkeypatch.setattr(os, "fsync", full)
    status, _, err = _run(["fit-priors", "--maps", str(scratch / "same"), "--labels",
                           str(scratch / "same" / "sample_labels.nii.gz"), "--out", str(out / "p.json")], capsys)
    assert status == 2 and err.count("\n") == 1 and "p.json: cannot write the file (No space left on device)" in err
    assert list(out.iterdir()) == []  # the created folder holds no temp file
    out.rmdir()


def test_evaluate_label_k_scores_one_class_and_creates_the_output_folder(scratch: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = scratch / "new" / "deeper" / "r.csv"
    status, stdout, err = _run(["evaluate", "--pred", str(scratch / "multi"), "--truth", str(scratch / "multi"),
                                "--label", "2", "--out", str(out)], capsys)
    assert status == 0, err
    rows = out.read_text().splitlines()
    assert rows[0].startswith("subject,") and float(rows[1].split(",")[3]) == 1.0  # identical masks: Dice 1
    shutil.rmtree(scratch / "new")


def test_fit_priors_reports_classes_without_voxels(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = scratch / "fitted" / "p.json"
    status, _, err = _run(["fit-priors", "--maps", str(scratch / "same"), "--labels",
                           str(scratch / "same" / "sample_labels.nii.gz"), "--out", str(out)], capsys)
    assert status == 0 and out.is_file()
    assert "no voxels in any label map for class(es): gm_wm_pv, lesion" in err
    shutil.rmtree(out.parent)


@pytest.mark.parametrize("command, extra, files", [
    ("synth", ["--crop", "8", "--mode", "synth"],
     ["sample_0000_image.nii.gz", "sample_0000_label.nii.gz", "sample_0000_params.json"]),
    ("synthmap", ["--echoes", "4"],
     ["sample_0000.json", "sample_0000_MWF.nii.gz", "sample_0000_T2.nii.gz", "sample_0000_echoes.nii.gz"]),
])
def test_sample_writers_refuse_a_folder_with_older_samples_unless_replace(
        scratch: Path, capsys: pytest.CaptureFixture[str], command: str, extra: list[str], files: list[str]) -> None:
    out = scratch / command
    base = [command, "--labels", str(scratch / "same" / "sample_labels.nii.gz"), "--out", str(out), *extra]
    assert _run([*base, "-n", "2"], capsys)[0] == 0
    before = _snapshot(out)
    status, _, err = _run([*base, "-n", "1"], capsys)
    older = 2 * len(files)
    assert status == 2 and f"holds {older} file(s) of earlier samples" in err and _snapshot(out) == before
    status, stdout, err = _run([*base, "-n", "1", "--replace"], capsys)
    assert status == 0, err
    assert f"removed {older} file(s) of earlier samples" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    shutil.rmtree(out)


def test_resume_before_the_first_checkpoint_does_not_repeat_log_lines(scratch: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = scratch / "killed"
    out.mkdir()
    shutil.copy(scratch / "seg.json", out / "config.json")
    # what a run killed after two logged steps and before its first checkpoint leaves behind
    (out / "train_log.jsonl").write_text("".join(json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in (1, 2)))
    status, _, err = _run(["train-seg", "--out", str(out), "--resume", "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, err
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log if "event" not in e] == [1, 2]
    assert all(e.get("loss") != 1.0 for e in log)  # the killed run's lines were replaced, not kept
    shutil.rmtree(out)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_temp_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A real writer killed with SIGKILL inside io.atomic_file; the next write into the folder clears its temp."""
    code = ("import sys, time; from qmricore.io import atomic_file\n"
            "with atomic_file(sys.argv[1]) as s:\n    s.write(b'half'); s.flush(); print('in', flush=True); "
            "time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "a.nii.gz")], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "in"
    writer.kill()
    writer.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".a.nii.gz.") and left[0].endswith(f"-{writer.pid}.tmp")
    legacy = tmp_path / ".b.nii.gz.0123456789ab.tmp"  # an older version's name, an hour old
    legacy.write_bytes(b"x")
    os.utime(legacy, (legacy.stat().st_mtime - 3600,) * 2)
    alive = tmp_path / f".c.nii.gz.0123456789ab-{os.getpid()}.tmp"  # a live writer's (this process)
    alive.write_bytes(b"x")
    from qmricore.io import Volume, write_nifti

    write_nifti(tmp_path / "b.nii.gz", np.zeros((2, 2, 2), np.float32), Volume(np.zeros((2, 2, 2)), AFFINE))
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "b.nii.gz"]


def test_previous_checkpoint_is_kept_and_used_when_the_latest_is_corrupt(tmp_path: Path) -> None:
    import torch

    from qmricore.training.checkpoint import PREVIOUS_NAME, load_latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    for iteration in (4, 8):
        save_checkpoint(tmp_path / "checkpoint.pt", model=model, optimizer=optimizer, scheduler=scheduler,
                        iteration=iteration, config={}, meta={})
    assert load_latest_checkpoint(tmp_path)["iteration"] == 8
    assert torch.load(tmp_path / PREVIOUS_NAME, weights_only=True)["iteration"] == 4
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        assert load_latest_checkpoint(tmp_path)["iteration"] == 4
    assert load_latest_checkpoint(tmp_path / "empty") is None


# ------------------------------------------------------------------------------------------------------------
# permissions: as a non-root user (a read-only folder is not read-only to root).  The command runs in this
# process with the effective user switched to 'nobody' (the interpreter itself may not be executable by
# that user, as on machines where Python lives under /root), then switched back.

PERMISSION_CASES = {
    "evaluate": "evaluate --pred {root}/binary --truth {root}/binary --out {root}/ro/res.csv",
    "fit-priors": "fit-priors --maps {root}/same --labels {root}/same/sample_labels.nii.gz --out {root}/ro/p.json",
    "train-seg": "train-seg --config {root}/seg.json --out {root}/ro/run --device cpu --no-progress",
    "train-estimator": "train-estimator --config {root}/est.json --out {root}/ro/run --device cpu --no-progress",
    "train-mwf": "train-mwf --config {root}/mwf.json --out {root}/ro/run --device cpu --no-progress",
    "simulate": 'simulate --hmri-folder {root}/same --preset "T1 SPGR" --out {root}/ro',
    "synth": "synth --labels {root}/same/sample_labels.nii.gz --out {root}/ro/s --crop 8",
    "segment": "segment --model {root}/M.pt --input {root}/same/flair.nii.gz --out {root}/ro/m.nii.gz",
    "estimate": "estimate --model {root}/E.pt --input {root}/same/flair.nii.gz --out {root}/ro/e",
    "demo": "demo --out {root}/ro/d",
    "synthmap": "synthmap --labels {root}/same/sample_labels.nii.gz --out {root}/ro/sm --echoes 4",
    "ldm": "ldm sample --model {root}/LDM.pt --ventricle-ml 30 --steps 1 --out {root}/ro/g",
}


@contextlib.contextmanager
def _non_root():  # noqa: ANN202
    if os.geteuid() != 0:
        yield
        return
    try:
        import pwd

        user = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        pytest.skip("permission cases need a non-root user and there is no 'nobody' here")
    os.setegid(user.pw_gid)
    os.seteuid(user.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture(scope="module")
def shared_scratch() -> Path:
    """A scratch folder every user can read, with a read-only ``ro/`` (pytest's tmp_path is owner-only)."""
    root = Path(tempfile.mkdtemp(prefix="qmri_perm_"))
    try:
        _scratch(root)
        (root / "ro").mkdir()
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "ro").chmod(0o555)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("command", sorted(PERMISSION_CASES))
def test_read_only_output_folder_as_non_root(command: str, shared_scratch: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    argv = [a.replace("{root}", str(shared_scratch)) for a in shlex.split(PERMISSION_CASES[command])]
    before = _snapshot(shared_scratch)
    with _non_root():
        assert not os.access(shared_scratch / "ro", os.W_OK, effective_ids=True)
        status, _, err = _run(argv, capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot write into {shared_scratch}/ro (permission denied)" in lines[0], lines[0]
    assert _snapshot(shared_scratch) == before
