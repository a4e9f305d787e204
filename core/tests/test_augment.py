"""Tests of qmricore.generators.augment: geometry against scipy.ndimage, labels follow images, seeded replay."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from qmricore.errors import ParameterError
from qmricore.generators.augment import (
    AugmentConfig,
    AugmentDraw,
    IntensityDraw,
    SpatialDraw,
    apply_intensity,
    apply_spatial,
    apply_spatial_keyed,
    augment,
    bias_field,
    draw_augment,
    sampling_grid,
    smooth_field,
    spatial_matrix,
)


def _labels(shape=(20, 22, 24), seed=0) -> torch.Tensor:
    """A label map of blocky regions (values 0..4) so nearest-neighbour ties are rare."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, (5, 5, 6))
    zoom = [s / c for s, c in zip(shape, coarse.shape, strict=True)]
    lab = ndimage.zoom(coarse, zoom, order=0)[: shape[0], : shape[1], : shape[2]]
    return torch.as_tensor(lab.astype(np.int64))


def _source_coords(m: np.ndarray, shape) -> np.ndarray:
    """Input coordinates (3, X, Y, Z) of every output voxel under the 4x4 voxel map ``m``."""
    return np.einsum("ij,jxyz->ixyz", m[:3, :3], np.indices(shape, dtype=float)) + m[:3, 3, None, None, None]


def _affine_draw(in_shape, out_shape, offset, **kw) -> SpatialDraw:
    return SpatialDraw(tuple(in_shape), tuple(out_shape), tuple(offset), **kw)


def test_pure_flip_and_crop_equal_numpy_slicing():
    lab = _labels()
    draw = _affine_draw(lab.shape, (16, 16, 16), (3, 5, 2), flips=(True, False, True))
    out = apply_spatial(lab, draw)
    expected = np.flip(lab.numpy()[3:19, 5:21, 2:18], axis=(0, 2))
    assert out.dtype == lab.dtype
    np.testing.assert_array_equal(out.numpy(), expected)


def test_rotation_matrix_is_the_textbook_one_about_the_crop_centre():
    theta = 20.0
    draw = _affine_draw((20, 20, 20), (16, 16, 16), (2, 2, 2), rotation_deg=(0.0, 0.0, theta), scale=(1.1, 1.0, 0.9))
    m = spatial_matrix(draw)
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    linear = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.1, 1.0, 0.9])
    centre = np.array([2, 2, 2]) + 7.5
    v = np.array([1.0, 4.0, 9.0])
    np.testing.assert_allclose(m[:3, :3], linear, atol=1e-12)
    expected = centre + linear @ (np.array([2, 2, 2]) + v - centre)
    np.testing.assert_allclose(m[:3, :3] @ v + m[:3, 3], expected, atol=1e-12)


@pytest.mark.parametrize("order", [0, 1])
def test_affine_resampling_matches_scipy_affine_transform(order):
    lab = _labels()
    draw = _affine_draw(lab.shape, (18, 16, 20), (1, 3, 2), flips=(True, False, False), rotation_deg=(7.0, -11.0, 13.0),
                        scale=(1.05, 0.93, 1.1), shear=(0.01, -0.008, 0.0, 0.005, 0.0, -0.01))
    m = spatial_matrix(draw)
    if order == 0:
        ours = apply_spatial(lab, draw).numpy()
        ref = ndimage.affine_transform(lab.numpy(), m[:3, :3], m[:3, 3], output_shape=draw.out_shape, order=0,
                                       mode="constant", cval=0)
        # disagreements are allowed only where the source coordinate sits on a rounding tie
        coords = _source_coords(m, draw.out_shape)
        tie = (np.abs(np.abs(coords - np.floor(coords)) - 0.5) < 1e-3).any(axis=0)
        # scipy's 'constant' mode gives cval beyond the outer voxel centres; grid_sample keeps half a voxel more
        edge = ((coords < 0) | (coords > np.array(lab.shape)[:, None, None, None] - 1)).any(axis=0)
        bad = (ours != ref) & ~tie & ~edge
        assert not bad.any()
        assert (ours == ref).mean() > 0.97
    else:
        img = lab.to(torch.float32) * 10 + torch.linspace(0, 1, lab.shape[2])
        ours = apply_spatial(img, draw).numpy()
        ref = ndimage.affine_transform(img.numpy().astype(np.float64), m[:3, :3], m[:3, 3], output_shape=draw.out_shape,
                                       order=1, mode="constant", cval=0.0)
        coords = _source_coords(m, draw.out_shape)
        inside = ((coords >= 0) & (coords <= np.array(lab.shape)[:, None, None, None] - 1)).all(axis=0)
        np.testing.assert_allclose(ours[inside], ref[inside], atol=2e-4)


def test_hard_labels_stay_in_the_label_set_and_move_with_intensity():
    lab = _labels(seed=3)
    cfg = AugmentConfig(crop=(16, 18, 20), flip_axes=(0, 1, 2), elastic_max_voxels=3.0)
    for seed in range(4):
        draw = draw_augment(lab.shape, cfg, seed).spatial
        out = apply_spatial(lab, draw)
        assert set(out.unique().tolist()) <= set(lab.unique().tolist())
        # the label map as an image, same draw: nearest gives the labels exactly ...
        as_image = apply_spatial(lab.to(torch.float32), draw, mode="nearest")
        torch.testing.assert_close(as_image, out.to(torch.float32), rtol=0, atol=0)
        # ... and trilinear interpolation agrees wherever the neighbourhood is one label
        smooth = apply_spatial(lab.to(torch.float32), draw)
        flat = (smooth - smooth.round()).abs() < 1e-4
        assert flat.float().mean() > 0.4
        assert torch.equal(smooth.round()[flat].long(), out[flat])


def test_soft_labels_are_resampled_trilinearly_per_channel():
    lab = _labels()
    soft = torch.nn.functional.one_hot(lab, 5).permute(3, 0, 1, 2).to(torch.float32)
    draw = draw_augment(lab.shape, AugmentConfig(crop=16), 5).spatial
    out = apply_spatial(soft, draw)
    assert out.shape == (5, 16, 16, 16)
    for c in range(5):
        torch.testing.assert_close(out[c], apply_spatial(soft[c], draw))
    inside = out.sum(0) > 0.999
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(out.sum(0)[inside], torch.ones(int(inside.sum())), atol=1e-5, rtol=0)


def test_crop_pads_centred_when_input_is_smaller():
    lab = _labels((10, 12, 14)) + 1
    cfg = AugmentConfig(crop=16, flip_prob=0, rotation_deg=0, scale=0, shear=0, elastic_prob=0)
    draw = draw_augment(lab.shape, cfg, 0).spatial
    assert draw.offset == (-3, -2, -1) and draw.is_identity
    out = apply_spatial(lab, draw)
    expected = np.zeros((16, 16, 16), np.int64)
    expected[3:13, 2:14, 1:15] = lab.numpy()
    np.testing.assert_array_equal(out.numpy(), expected)


def test_elastic_displacement_has_the_drawn_size():
    draw = SpatialDraw((24, 24, 24), (24, 24, 24), (0, 0, 0), elastic_std=2.0, elastic_nodes=4, elastic_seed=11)
    plain = SpatialDraw((24, 24, 24), (24, 24, 24), (0, 0, 0))
    disp = (sampling_grid(draw) - sampling_grid(plain)) * 23 / 2  # back to voxels
    assert 0.5 < float(disp.std()) < 2.5
    assert torch.equal(sampling_grid(draw), sampling_grid(draw))


def test_draws_are_seeded_and_replay_from_json_bit_exactly():
    lab = _labels()
    img = lab.to(torch.float32) * 30 + 5
    cfg = AugmentConfig(crop=16, bias_prob=1, lowres_prob=1, gibbs_prob=1)
    a, b, c = draw_augment(lab.shape, cfg, 42), draw_augment(lab.shape, cfg, 42), draw_augment(lab.shape, cfg, 43)
    assert a == b and a != c
    replay = AugmentDraw.from_dict(json.loads(json.dumps(a.to_dict())))
    assert replay == a
    i1, l1 = augment(img, lab, a)
    i2, l2 = augment(img, lab, replay)
    assert torch.equal(i1, i2) and torch.equal(l1, l2)
    assert float(i1.min()) == 0.0 and float(i1.max()) == pytest.approx(1.0)


def test_intensity_never_reaches_labels():
    lab = _labels()
    draw = draw_augment(lab.shape, AugmentConfig(crop=16, bias_prob=1, lowres_prob=1, gibbs_prob=1), 7)
    _, l1 = augment(torch.rand(lab.shape), lab, draw)
    _, l2 = augment(torch.zeros(lab.shape), lab, AugmentDraw(draw.spatial, IntensityDraw()))
    assert torch.equal(l1, l2) and torch.equal(l1, apply_spatial(lab, draw.spatial))


def test_keyed_apply_moves_every_volume_with_one_draw():
    lab = _labels()
    img = lab.to(torch.float32) * 30 + 5
    draw = draw_augment(lab.shape, AugmentConfig(crop=16), 4).spatial
    out = apply_spatial_keyed({"image": img, "label": lab, "as_image": lab.to(torch.float32)}, draw,
                              modes={"as_image": "nearest"})
    assert list(out) == ["image", "label", "as_image"]
    assert torch.equal(out["image"], apply_spatial(img, draw)) and torch.equal(out["label"], apply_spatial(lab, draw))
    assert torch.equal(out["as_image"], out["label"].to(torch.float32))  # nearest on floats = the labels
    with pytest.raises(ValueError, match=r"modes given for keys \['labels'\]"):
        apply_spatial_keyed({"label": lab}, draw, modes={"labels": "nearest"})


def test_bias_field_equals_monai_randbiasfield_polynomial():
    from monai.transforms import RandBiasField

    coeffs = list(np.random.default_rng(1).uniform(-0.3, 0.3, 20))
    ref = np.exp(RandBiasField(degree=3)._generate_random_field((6, 7, 9), 3, coeffs))
    np.testing.assert_allclose(bias_field((6, 7, 9), coeffs, 3).numpy(), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="needs 20 coefficients"):
        bias_field((6, 7, 9), coeffs[:5], 3)


def test_smooth_field_is_positive_smooth_and_seeded():
    f = smooth_field((16, 16, 16), 4, 0.3, seed=3)
    assert bool((f > 0).all()) and torch.equal(f, smooth_field((16, 16, 16), 4, 0.3, seed=3))
    # independent: the same control points (same generator) upsampled by scipy (linear, corners aligned)
    coarse = torch.randn((1, 1, 4, 4, 4), generator=torch.Generator().manual_seed(3))[0, 0].numpy() * 0.3
    ref = np.exp(ndimage.zoom(coarse.astype(np.float64), 4, order=1, grid_mode=False))
    np.testing.assert_allclose(f.numpy(), ref, rtol=1e-5)


def test_lowres_keeps_shape_and_loses_detail_along_the_thick_axis():
    x = torch.zeros(16, 16, 16)
    x[:, :, ::2] = 1.0  # a stripe pattern along axis 2 only
    out = apply_intensity(x, IntensityDraw(lowres_factors=(1.0, 1.0, 4.0)))
    assert out.shape == x.shape
    assert float(out[..., 4:12].std()) < 0.05  # stripes averaged away along the thick axis


def test_config_errors_name_the_setting():
    with pytest.raises(ParameterError, match="flip_prob must be in"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ParameterError, match="crop must be"):
        AugmentConfig(crop=(16, 16))
    with pytest.raises(ParameterError, match="snr_range"):
        AugmentConfig(snr_range=(0.0, 10.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_keeps_the_device_and_matches_cpu_geometry():
    lab = _labels()
    draw = draw_augment(lab.shape, AugmentConfig(crop=16), 3)
    img, out = augment(lab.float().cuda(), lab.cuda(), draw)
    assert img.device.type == "cuda" and out.device.type == "cuda"
    cpu = apply_spatial(lab, draw.spatial)
    assert (out.cpu() == cpu).float().mean() > 0.99
