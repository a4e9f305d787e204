"""The shipped lesion models: size, what the files carry, and ``qmricore segment`` on the sample anatomy."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import run_qmricore as qmricore

from qmricore.models.model_file import read_meta

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "Resources" / "Models"
SAMPLE = ROOT / "Resources" / "SampleData"
SHIPPED = ("lesion_seg_qsynth.pt",)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_small_and_self_describing(name: str) -> None:
    path = MODELS / name
    assert path.stat().st_size <= 20 * 2**20
    meta = read_meta(path)
    assert meta.kind == "segmenter" and meta.classes[0] == "background" and meta.classes[-1] == "lesion"
    assert meta.classes in (("background", "lesion"), ("background", "gm", "wm", "gm_wm_pv", "csf", "lesion"))
    # the file was trained by the config shipped next to it
    config = json.loads(path.with_suffix(".json").read_text())
    assert meta.network.classes == config["network"]["classes"]
    assert meta.inference.patch == tuple(config["data"]["patch_size"])
    assert meta.preprocessing.spacing == config["data"]["preprocessing"]["spacing"]
    assert meta.training["config"]["data"]["generator"] == config["data"]["generator"]
    assert meta.training["config"]["loop"]["iterations"] >= config["loop"]["iterations"]  # + resumed steps
    card = (MODELS / "lesion_seg_qsynth.md").read_text()
    assert name in card and "not clinically validated" in card.lower()


def test_segment_sample_anatomy_writes_a_mask_on_the_input_grid(tmp_path: Path) -> None:
    simulated = qmricore("simulate", "--hmri-folder", SAMPLE, "--preset", "3T FLAIR", "--out", tmp_path / "sim")
    assert simulated.returncode == 0, simulated.stderr
    (flair,) = sorted((tmp_path / "sim").glob("*.nii*"))
    out = tmp_path / "lesion.nii.gz"
    result = qmricore("segment", "--model", MODELS / SHIPPED[0], "--input", flair, "--modality", "FLAIR",
                      "--out", out, "--no-tta", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "lesion volume:" in result.stdout
    image, mask = nib.load(str(flair)), nib.load(str(out))
    assert mask.shape == image.shape
    np.testing.assert_array_equal(mask.affine, image.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}


def test_shipped_mwf_cnn_beats_nnls_on_a_held_out_block() -> None:
    """The shipped CNN MWF model: small, trained by its config, and on a brain block of a held-out head at SNR 40
    its median absolute MWF error is below the NNLS baseline's on the same voxels (SynthMap's claim, in small)."""
    import dataclasses

    import torch

    from qmricore.checks import heldout_heads
    from qmricore.generators.synthmap import SynthMapConfig, apply_synthmap, draw_synthmap, load_synthmap_priors
    from qmricore.models.model_file import load_model
    from qmricore.mwf.cnn import estimate_mwf
    from qmricore.mwf.nnls import fit_nnls

    path = MODELS / "mwf_cnn.pt"
    assert path.stat().st_size <= 20 * 2**20
    model = load_model(path)
    config = json.loads(path.with_suffix(".json").read_text())
    assert model.meta.kind == "mwf" and model.meta.network.to_dict() == {**model.meta.network.to_dict(),
                                                                         **config["network"]}
    card = (MODELS / "mwf_cnn.md").read_text()
    assert "mwf_cnn.pt" in card and "not clinically validated" in card.lower()

    priors = load_synthmap_priors()
    labels, _ = heldout_heads(1)[0]
    centre = np.argwhere(labels == priors.tissue.label_of("wm")).mean(0).astype(int)  # a WM-centred 24^3 block
    block = labels[tuple(slice(c - 12, c + 12) for c in centre)]
    net = model.meta.network
    synthmap = SynthMapConfig(te=net.te, n_echoes=net.n_echoes)
    draw = dataclasses.replace(draw_synthmap(priors, torch.Generator().manual_seed(2024), synthmap), snr=40.0)
    sample = apply_synthmap(block, draw, priors, synthmap)
    brain = np.isin(block, [priors.tissue.label_of(t) for t in ("gm", "wm", "gm_wm_pv")])
    mask = np.zeros_like(brain)
    mask.flat[np.random.default_rng(0).choice(np.flatnonzero(brain), 400, replace=False)] = True
    nnls = np.median(np.abs(fit_nnls(sample.echoes, net.te, mask=mask).mwf[mask] - sample.mwf[mask]))
    cnn = np.median(np.abs(estimate_mwf(sample.echoes, net.te, model)[mask] - sample.mwf[mask]))
    assert cnn < nnls, (cnn, nnls)
