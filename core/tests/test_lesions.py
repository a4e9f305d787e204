"""Synthetic lesions and pasting lesions into hard and soft label maps (SPEC §6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qmricore.errors import InputError
from qmricore.generators import (
    LesionConfig,
    LesionDraw,
    draw_lesion,
    load_priors,
    paste_lesion,
    render_lesion,
    synth_lesion,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brain(n: int = 32) -> torch.Tensor:
    """A box 'head': non-brain shell, GM layer, WM core, CSF in the middle (default labels)."""
    lab = torch.zeros((n, n, n), dtype=torch.long)
    lab[1:-1, 1:-1, 1:-1] = 5
    lab[3:-3, 3:-3, 3:-3] = 1
    lab[6:-6, 6:-6, 6:-6] = 2
    lab[n // 2 - 2:n // 2 + 2, n // 2 - 2:n // 2 + 2, n // 2 - 2:n // 2 + 2] = 4
    return lab


def test_synthetic_lesion_is_soft_confined_to_tissue_and_in_one_hemisphere():
    lab = brain()
    priors = load_priors()
    g = gen(0)
    for _ in range(10):
        draw = draw_lesion(lab, g)
        p = render_lesion(lab, draw)
        assert p.dtype == torch.float32 and p.shape == lab.shape
        assert float(p.min()) >= 0 and float(p.max()) <= 1
        assert float(p.max()) > 0.5
        # soft edge: some voxels strictly between 0.05 and 0.95
        assert bool(((p > 0.05) & (p < 0.95)).any())
        allowed = (lab == 1) | (lab == 2) | (lab == 3)
        assert float(p[~allowed].max()) == 0.0
        # the first ellipsoid's centre is a territory voxel on the drawn side of the midline
        c = [round(v) for v in draw.centres[0]]
        assert int(lab[c[0], c[1], c[2]]) in (priors.label_of("wm"), priors.label_of("gm"), priors.label_of("gm_wm_pv"))
        assert (c[0] >= 15.5) == bool(draw.hemisphere)


def test_lesion_volume_follows_the_config_and_the_voxel_size():
    lab = torch.full((40, 40, 40), 2, dtype=torch.long)  # all white matter
    lab[0] = 0
    for voxel, target in (((1.0, 1.0, 1.0), 4.0), ((2.0, 2.0, 2.0), 30.0)):
        cfg = LesionConfig(volume_ml=(target, target), blobs=(1, 1), roughness=(0.0, 0.0), voxel_size=voxel)
        vols = []
        for seed in range(3):
            draw = draw_lesion(lab, gen(seed), cfg)
            # keep it away from the border for the volume check
            draw = LesionDraw.from_dict({**draw.to_dict(), "centres": [[20.0, 20.0, 20.0]]})
            p = render_lesion(lab, draw, cfg)
            vols.append(float((p > 0.5).sum()) * np.prod(voxel) / 1000.0)  # the hard lesion
        assert np.allclose(vols, target, rtol=0.08), (voxel, vols)


def test_lesion_sizes_span_the_configured_range():
    cfg = LesionConfig()
    g = gen(1)
    vols = [draw_lesion(brain(16), g, cfg).volume_ml for _ in range(300)]
    assert min(vols) >= cfg.volume_ml[0] and max(vols) <= cfg.volume_ml[1]
    # log-uniform: median near the geometric mean of the bounds
    assert abs(np.log(np.median(vols)) - np.log(np.sqrt(cfg.volume_ml[0] * cfg.volume_ml[1]))) < 0.5


def test_lesion_draws_replay_bit_exactly_from_json():
    lab = brain()
    a = synth_lesion(lab, gen(5))
    draw = draw_lesion(lab, gen(5))
    b = render_lesion(lab, LesionDraw.from_dict(json.loads(json.dumps(draw.to_dict()))))
    assert torch.equal(a, b)
    assert not torch.equal(a, synth_lesion(lab, gen(6)))


def test_soft_label_maps_get_lesions_too():
    lab = brain(24)
    soft = torch.nn.functional.one_hot(lab, load_priors().n_classes).permute(3, 0, 1, 2).float()
    p_soft = synth_lesion(soft, gen(2))
    p_hard = synth_lesion(lab, gen(2))
    assert torch.allclose(p_soft, p_hard, atol=1e-6)


def test_paste_lesion_into_hard_labels():
    lab = brain(24)
    before = lab.clone()
    p = synth_lesion(lab, gen(3))
    out = paste_lesion(lab, p)
    assert torch.equal(lab, before)  # input untouched
    assert bool((out[p > 0.5] == 6).all())
    assert torch.equal(out[p <= 0.5], lab[p <= 0.5])
    # numpy in, numpy out; a given binary mask works
    mask = np.zeros(lab.shape, dtype=bool)
    mask[10:12, 10:12, 10:12] = True
    out_np = paste_lesion(lab.numpy(), mask)
    assert isinstance(out_np, np.ndarray) and (out_np[mask] == 6).all() and (out_np[~mask] == lab.numpy()[~mask]).all()


def test_paste_lesion_into_soft_labels():
    lab = brain(24)
    soft = torch.nn.functional.one_hot(lab, load_priors().n_classes).permute(3, 0, 1, 2).float()
    soft[1], soft[2] = 0.5 * (soft[1] + soft[2]), 0.5 * (soft[1] + soft[2])  # mixed GM/WM voxels
    p = synth_lesion(lab, gen(4))
    out = paste_lesion(soft, p)
    assert torch.allclose(out.sum(0), torch.ones(lab.shape), atol=1e-5)
    assert torch.allclose(out[6], p, atol=1e-6)  # no lesion before: lesion channel = p
    for c in range(6):
        assert torch.allclose(out[c], soft[c] * (1 - p), atol=1e-6)


def test_lesion_errors():
    no_brain = torch.zeros((16, 16, 16), dtype=torch.long)
    no_brain[4:8] = 4  # CSF only
    with pytest.raises(InputError, match="none of the lesion territory classes"):
        synth_lesion(no_brain, gen(0))
    with pytest.raises(InputError, match="label map is empty"):
        synth_lesion(torch.zeros((8, 8, 8), dtype=torch.long), gen(0))
    lab = brain(16)
    with pytest.raises(InputError, match="lesion map has shape"):
        paste_lesion(lab, torch.zeros((8, 8, 8)))
    with pytest.raises(InputError, match=r"probabilities in \[0, 1\]"):
        paste_lesion(lab, torch.full(lab.shape, 2.0))
    with pytest.raises(InputError, match="not a lesion draw"):
        LesionDraw.from_dict({"centres": []})
    with pytest.raises(ValueError, match="volume_ml"):
        LesionConfig(volume_ml=(0.0, 1.0))


def test_lesion_contrast_is_the_lesion_shell_difference_in_shell_spreads() -> None:
    from qmricore.generators.lesions import lesion_contrast

    g = torch.Generator().manual_seed(0)
    image = 1.0 + 0.1 * torch.randn(40, 40, 40, generator=g)
    grid = torch.stack(torch.meshgrid(*[torch.arange(40)] * 3, indexing="ij"))
    lesion = ((grid - 20) ** 2).sum(0) <= 25
    brain = torch.ones_like(lesion)
    image[lesion] += 0.3
    assert lesion_contrast(image, lesion, brain) == pytest.approx(3.0, rel=0.1)  # 0.3 / 0.1
    image[lesion] -= 0.6  # hypointense: the same magnitude
    assert lesion_contrast(image[None], lesion, brain) == pytest.approx(3.0, rel=0.1)
    assert lesion_contrast(image, lesion, torch.zeros_like(lesion)) is None  # no brain around it
    tiny = torch.zeros_like(lesion)
    tiny[20, 20, 20:23] = True
    assert lesion_contrast(image, tiny, brain) is None
