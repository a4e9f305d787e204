"""Tests of the SynthSeg-style GMM baseline (qmricore.generators.gmm)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from qmricore.errors import ParameterError
from qmricore.generators.gmm import GMMConfig, GMMDraw, apply_gmm, draw_gmm, gaussian_blur


def _labels() -> torch.Tensor:
    lab = torch.zeros(24, 24, 24, dtype=torch.int64)
    lab[4:20, 4:20, 4:20] = 1
    lab[8:16, 8:16, 8:16] = 2
    lab[10:14, 10:14, 10:14] = 3
    return lab


def test_class_means_and_stds_follow_the_uniform_priors():
    draws = [draw_gmm(7, seed) for seed in range(600)]
    means = np.array([d.means for d in draws]).ravel()
    stds = np.array([d.stds for d in draws]).ravel()
    blur = np.array([d.blur_sigma for d in draws])
    assert stats.kstest(means, stats.uniform(0, 255).cdf).pvalue > 1e-3
    assert stats.kstest(stds, stats.uniform(0, 35).cdf).pvalue > 1e-3
    assert stats.kstest(blur, stats.uniform(0, 1).cdf).pvalue > 1e-3
    # and they really are not something else (the test can fail)
    assert stats.kstest(means, stats.uniform(0, 200).cdf).pvalue < 1e-6


def test_voxel_intensities_are_the_drawn_gaussians_per_class():
    lab = _labels()
    draw = GMMDraw(means=(10.0, 100.0, 200.0, 50.0), stds=(1.0, 5.0, 20.0, 0.0), blur_sigma=0.0, seed=4)
    image = apply_gmm(lab, draw)
    assert image.dtype == torch.float32 and image.shape == lab.shape
    for c in range(4):
        v = image[lab == c].double()
        n = v.numel()
        assert abs(float(v.mean()) - draw.means[c]) < 4 * max(draw.stds[c], 1e-6) / np.sqrt(n) + 1e-4
        if draw.stds[c] > 0:
            assert float(v.std()) == pytest.approx(draw.stds[c], rel=5 / np.sqrt(n) + 0.02)
        else:
            assert float(v.std()) == 0.0


def test_soft_one_hot_labels_equal_hard_labels():
    lab = _labels()
    soft = torch.nn.functional.one_hot(lab, 4).permute(3, 0, 1, 2).to(torch.float32)
    draw = draw_gmm(4, 9, GMMConfig(blur_sigma_range=(0.0, 0.0)))
    torch.testing.assert_close(apply_gmm(soft, draw), apply_gmm(lab, draw), rtol=1e-5, atol=1e-4)


def test_seeded_and_replayable_from_json():
    lab = _labels()
    a = draw_gmm(4, 5)
    b = GMMDraw.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b
    assert torch.equal(apply_gmm(lab, a), apply_gmm(lab, b))
    assert not torch.equal(apply_gmm(lab, a), apply_gmm(lab, draw_gmm(4, 6)))


def test_blur_matches_scipy_gaussian_filter():
    x = torch.zeros(21, 21, 21)
    x[10, 10, 10] = 1.0
    ours = gaussian_blur(x, 1.5).numpy()
    ref = ndimage.gaussian_filter(x.numpy().astype(np.float64), 1.5, truncate=3.0, mode="constant")
    assert ours.sum() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_errors_name_the_problem():
    with pytest.raises(ParameterError, match=r"label values must be in 0..3, found 0..7"):
        apply_gmm(torch.tensor([[[0, 7]]]), draw_gmm(4, 0))
    with pytest.raises(ParameterError, match="std_range must be >= 0"):
        GMMConfig(std_range=(-1.0, 3.0))
    with pytest.raises(ParameterError, match="low <= high"):
        GMMConfig(mean_range=(5.0, 1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_keeps_device():
    image = apply_gmm(_labels().cuda(), draw_gmm(4, 1))
    assert image.device.type == "cuda"
