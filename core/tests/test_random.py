"""The random source of the draws (qmricore.generators._random): a generator of the stage's kind or an int seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmricore.errors import ParameterError
from qmricore.generators.anatomy import draw_head
from qmricore.generators.augment import AugmentConfig, draw_augment, draw_intensity, draw_spatial
from qmricore.generators.gmm import draw_gmm
from qmricore.generators.lesions import draw_lesion
from qmricore.generators.priors import load_priors
from qmricore.generators.qsynth import draw_maps, draw_qatlas_mprage, draw_sequence
from qmricore.generators.synthmap import draw_synthmap, load_synthmap_priors

PRIORS = load_priors()


def _labels() -> torch.Tensor:
    lab = torch.full((10, 10, 10), PRIORS.label_of("background"))
    lab[2:8, 2:8, 2:8] = PRIORS.label_of("wm")
    return lab


NUMPY = {
    "draw_head": lambda g: draw_head(g),
    "draw_gmm": lambda g: draw_gmm(4, g),
    "draw_spatial": lambda g: draw_spatial((12, 12, 12), AugmentConfig(crop=8), g),
    "draw_intensity": lambda g: draw_intensity(AugmentConfig(), g),
    "draw_augment": lambda g: draw_augment((12, 12, 12), AugmentConfig(crop=8), g),
}
TORCH = {
    "draw_maps": lambda g: draw_maps(PRIORS, g),
    "draw_sequence": lambda g: draw_sequence(g),
    "draw_qatlas_mprage": lambda g: draw_qatlas_mprage(g),
    "draw_lesion": lambda g: draw_lesion(_labels(), g),
    "draw_synthmap": lambda g: draw_synthmap(load_synthmap_priors(), g),
}


@pytest.mark.parametrize("name", list(NUMPY))
def test_numpy_draws_take_a_generator_or_its_seed(name: str) -> None:
    draw = NUMPY[name]
    assert draw(7) == draw(np.random.default_rng(7)) == draw(np.int64(7))
    assert draw(7) != draw(8)
    with pytest.raises(ParameterError, match=f"{name} needs a numpy.random.Generator or an int seed, got torch"):
        draw(torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", list(TORCH))
def test_torch_draws_take_a_generator_or_its_seed(name: str) -> None:
    draw = TORCH[name]
    assert draw(7) == draw(torch.Generator().manual_seed(7))  # the generator every caller builds
    assert draw(7) != draw(8)
    with pytest.raises(ParameterError, match=f"{name} needs a torch.Generator or an int seed, got numpy"):
        draw(np.random.default_rng(7))
    with pytest.raises(ParameterError, match=f"{name} needs a torch.Generator or an int seed, got builtins.float"):
        draw(7.0)
