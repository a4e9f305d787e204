"""Tests of the generator pipeline (qmricore.generators.pipeline): stages, replay, labels vs intensities."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from qmricore.errors import InputError, ParameterError
from qmricore.generators.augment import AugmentConfig, apply_spatial
from qmricore.generators.gmm import GMMConfig
from qmricore.generators.lesions import LesionConfig
from qmricore.generators.pipeline import (
    PipelineConfig,
    SampleDraw,
    apply_sample,
    crop_affine,
    draw_sample,
    generate,
    generate_batch,
    regenerate,
)
from qmricore.generators.priors import load_priors
from qmricore.generators.qsynth import apply_maps
from qmricore.physics import simulate

N_CLASSES = load_priors().n_classes

#: Augmentation with every intensity stage off (min-max normalisation only).
NO_INTENSITY = dict(bias_prob=0.0, noise_prob=0.0, lowres_prob=0.0, gibbs_prob=0.0, gamma_prob=0.0)
#: ... and no geometric change either (crop only).
NO_SPATIAL = dict(flip_prob=0.0, rotation_deg=0.0, scale=0.0, shear=0.0, elastic_prob=0.0)


def head(shape=(26, 28, 24)) -> torch.Tensor:
    """A small 'head': non-brain shell, CSF, GM, WM with a GM/WM partial-volume rim (labels 0-5)."""
    idx = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt((((idx - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] / 2)) ** 2).sum(0))
    lab = np.zeros(shape, np.int64)
    for radius, value in ((0.95, 5), (0.8, 4), (0.7, 1), (0.5, 3), (0.45, 2)):
        lab[r < radius] = value
    return torch.as_tensor(lab)


def cfg(mode="qsynth", crop=16, **augment) -> PipelineConfig:
    return PipelineConfig(mode=mode, augment=AugmentConfig(crop=crop, **augment))


@pytest.mark.parametrize("mode", ["qsynth", "synth"])
def test_sample_shapes_values_and_bit_reproducibility(mode):
    lab = head()
    a = generate(lab, cfg(mode), seed=11)
    b = generate(lab, cfg(mode), seed=11)
    c = generate(lab, cfg(mode), seed=12)
    assert a.image.shape == (1, 16, 16, 16) and a.image.dtype == torch.float32
    assert a.label.shape == (16, 16, 16) and a.label.dtype == torch.int64
    assert float(a.image.min()) == 0.0 and float(a.image.max()) == pytest.approx(1.0)
    assert set(a.label.unique().tolist()) <= set(lab.unique().tolist())
    assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label) and a.params == b.params
    assert not torch.equal(a.image, c.image)
    assert a.params["mode"] == mode and a.params["seed"] == 11


@pytest.mark.parametrize("mode", ["qsynth", "synth"])
def test_regenerate_from_the_json_sidecar_is_bit_exact(mode):
    lab = head()
    config = dataclasses.replace(cfg(mode, bias_prob=1.0, lowres_prob=1.0, gibbs_prob=1.0), lesion_prob=1.0)
    sample = generate(lab, config, seed=5)
    assert sample.params["lesion_source"] == "synth" and 6 in sample.label.unique().tolist()
    params = json.loads(json.dumps(sample.params))
    again = regenerate(lab, params)
    assert torch.equal(again.image, sample.image) and torch.equal(again.label, sample.label)
    assert SampleDraw.from_dict(params) == draw_sample(lab, config, 5)


def test_given_lesion_is_pasted_and_must_be_given_again_to_regenerate():
    lab = head()
    mask = torch.zeros(lab.shape)
    mask[11:15, 12:16, 10:14] = 1.0
    config = cfg("synth", crop=None, **NO_SPATIAL)
    sample = generate(lab, config, seed=1, lesion=mask)
    assert sample.params["lesion_source"] == "given"
    assert torch.equal(sample.label == 6, mask > 0.5)
    assert torch.equal(regenerate(lab, sample.params, lesion=mask).image, sample.image)
    with pytest.raises(InputError, match="pass the same mask"):
        regenerate(lab, sample.params)
    with pytest.raises(InputError, match="grid"):
        generate(lab, config, seed=1, lesion=torch.zeros(5, 5, 5))


def test_lesion_focus_puts_the_lesion_in_small_crops():
    """With lesion_focus_prob 1 every small crop of a big head holds the (small) lesion, synthetic or given,
    at varying places in the crop; with 0 most crops miss it.  The focus is drawn from the lesion stream:
    other draws do not change."""
    lab = head((48, 48, 48))
    base = dataclasses.replace(cfg("synth", crop=12, **NO_SPATIAL, **NO_INTENSITY), lesion_prob=1.0,
                               lesion=LesionConfig(volume_ml=(0.01, 0.03), blobs=(1, 2)))
    focused = dataclasses.replace(base, lesion_focus_prob=1.0)
    hits = {name: [bool((generate(lab, config, seed=s).label == 6).any()) for s in range(20)]
            for name, config in (("random", base), ("focused", focused))}
    assert all(hits["focused"]) and sum(hits["random"]) < 10, hits
    # ... but not always in the crop's middle (a network would learn that position)
    where = np.array([np.argwhere((generate(lab, focused, seed=s).label == 6).numpy()).mean(0) for s in range(20)])
    assert (where.std(0) > 1.5).all(), where.std(0)
    a, b = draw_sample(lab, base, 3), draw_sample(lab, focused, 3)
    assert a.lesion == b.lesion and a.gmm == b.gmm
    mask = torch.zeros(lab.shape)
    mask[30:33, 14:17, 31:34] = 1.0
    given = dataclasses.replace(focused, lesion_prob=0.0)
    assert all(bool((generate(lab, given, seed=s, lesion=mask).label == 6).any()) for s in range(5))
    with pytest.raises(ParameterError, match="lesion_focus_prob"):
        PipelineConfig(lesion_focus_prob=1.5)


def test_qsynth_stages_compose_as_documented():
    """Crop-only geometry, no intensity augmentation, no receive field: the image is the min-max normalised
    physics simulation of qSynth maps painted on the cropped labels (an independent chain of calls)."""
    lab = head()
    config = dataclasses.replace(cfg("qsynth", **NO_SPATIAL, **NO_INTENSITY), receive_max_std=0.0)
    sample = generate(lab, config, seed=3)
    off = sample.params["augment"]["spatial"]["offset"]
    crop = lab[off[0]:off[0] + 16, off[1]:off[1] + 16, off[2]:off[2] + 16]
    assert torch.equal(sample.label, crop)
    draw = SampleDraw.from_dict(sample.params)
    maps = apply_maps(crop, load_priors(), draw.maps)
    image = simulate(draw.sequence.sequence, maps, **draw.sequence.params).abs()
    expected = (image - image.min()) / (image.max() - image.min())
    torch.testing.assert_close(sample.image[0], expected, rtol=0, atol=2e-6)


def test_labels_move_with_the_intensities():
    """GMM with zero class spread and no blur or intensity augmentation: after any geometric draw each
    output label region has exactly one intensity, and labels are identical in both modes."""
    lab = head()
    gmm_cfg = dataclasses.replace(cfg("synth", flip_axes=(0, 1, 2), elastic_max_voxels=3.0, **NO_INTENSITY),
                                  gmm=GMMConfig(std_range=(0.0, 0.0), blur_sigma_range=(0.0, 0.0)))
    for seed in range(3):
        s = generate(lab, gmm_cfg, seed=seed)
        for value in s.label.unique().tolist():
            region = s.image[0][s.label == value]
            assert float(region.max() - region.min()) < 1e-6
        q = generate(lab, dataclasses.replace(gmm_cfg, mode="qsynth"), seed=seed)
        assert torch.equal(q.label, s.label)  # intensity never leaks into the labels
        spatial = SampleDraw.from_dict(s.params).augment.spatial
        assert torch.equal(s.label, apply_spatial(lab, spatial))


def test_soft_labels_stay_soft_and_normalised():
    lab = head()
    soft = torch.nn.functional.one_hot(lab, N_CLASSES).permute(3, 0, 1, 2).to(torch.float32)
    soft = 0.9 * soft + 0.1 / N_CLASSES
    sample = generate(soft, cfg("qsynth"), seed=2)
    assert sample.label.shape == (N_CLASSES, 16, 16, 16) and sample.label.dtype == torch.float32
    torch.testing.assert_close(sample.label.sum(0), torch.ones(16, 16, 16), atol=1e-5, rtol=0)
    assert torch.equal(regenerate(soft, json.loads(json.dumps(sample.params))).image, sample.image)


def test_batch_is_the_stack_of_single_samples():
    lab = head()
    images, labels, params = generate_batch(lab, cfg("synth"), seeds=(3, 4))
    assert images.shape == (2, 1, 16, 16, 16) and labels.shape == (2, 16, 16, 16)
    for i, seed in enumerate((3, 4)):
        single = generate(lab, cfg("synth"), seed)
        assert torch.equal(images[i], single.image) and torch.equal(labels[i], single.label)
        assert params[i] == single.params


def test_crop_affine_moves_the_origin_to_the_crop_offset():
    affine = np.array([[-1.5, 0.1, 0, 40], [0, 1.2, 0, -20], [0.05, 0, 1, -10], [0, 0, 0, 1]])
    params = {"augment": {"spatial": {"offset": [3, -2, 5]}}}
    new = crop_affine(affine, params)
    np.testing.assert_allclose(new[:, 3], affine @ np.array([3, -2, 5, 1.0]))
    np.testing.assert_array_equal(new[:3, :3], affine[:3, :3])


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(InputError, match="empty"):
        generate(torch.zeros(10, 10, 10, dtype=torch.int64), cfg())
    bad = head()
    bad[0, 0, 0] = 99
    with pytest.raises(InputError, match=r"unknown label value\(s\) \[99\]"):
        generate(bad, cfg())
    with pytest.raises(ParameterError, match="unknown mode"):
        PipelineConfig(mode="diffusion")
    with pytest.raises(ParameterError, match="seed must be a non-negative integer"):
        generate(head(), cfg(), seed=-1)
    with pytest.raises(InputError, match="draw was made for"):
        apply_sample(head((20, 20, 20)), draw_sample(head(), cfg(), 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_generation_keeps_the_device():
    for mode in ("qsynth", "synth"):
        sample = generate(head(), cfg(mode), seed=4, device="cuda")
        assert sample.image.device.type == "cuda" and sample.label.device.type == "cuda"
        cpu = generate(head(), cfg(mode), seed=4)
        assert (sample.label.cpu() == cpu.label).float().mean() > 0.99
