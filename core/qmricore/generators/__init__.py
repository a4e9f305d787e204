"""Synthetic training data generators (SPEC §6).

- :mod:`.priors`: hierarchical tissue priors (:class:`TissuePriors`), the shipped 3 T literature priors,
  fitting priors from real map sets (:func:`fit_priors`).
- :mod:`.qsynth`: label map -> qMRI maps (:func:`draw_maps` / :func:`apply_maps` / :func:`sample_maps`) and
  training-sequence sampling (:func:`draw_sequence`, :func:`draw_qatlas_mprage`).
- :mod:`.lesions`: synthetic lesion shapes and pasting lesions into label maps.
- :mod:`.gmm`: the SynthSeg-style GMM baseline; :mod:`.pipeline`: label map -> augmented training sample.
- :mod:`.synthmap`: label map -> multi-echo spin-echo series with true MWF and T2 maps (SynthMap, SPEC §14).
- :mod:`.anatomy`: whole training heads around a brain label map.

Draw, then apply (STYLE §2): every random stage draws into a small frozen dataclass (``*Draw``, JSON through
``to_dict``/``from_dict``, :mod:`qmricore.serialise`) and applies it.  The random source of every ``draw_*``
is its ``generator`` argument, right after what it draws for (after the config in the augmentation draws,
see below), and an ``int`` seed is accepted in its place (:mod:`._random`):

====================================================  =====================  ============================
draw                                                  generator              int seed gives
====================================================  =====================  ============================
``draw_head(generator, config)``                      numpy ``Generator``    ``np.random.default_rng``
``draw_gmm(n_classes, generator, config)``            numpy ``Generator``    ``np.random.default_rng``
``draw_maps(priors, generator, config)``              ``torch.Generator``    CPU ``torch.Generator``
``draw_sequence(generator, sequences)``               ``torch.Generator``    CPU ``torch.Generator``
``draw_qatlas_mprage(generator)``                     ``torch.Generator``    CPU ``torch.Generator``
``draw_lesion(labels, generator, config, priors)``    ``torch.Generator``    CPU ``torch.Generator``
``draw_synthmap(priors, generator, config)``          ``torch.Generator``    CPU ``torch.Generator``
``draw_spatial(in_shape, config, generator)``         numpy ``Generator``    ``np.random.default_rng``
``draw_intensity(config, generator)``                 numpy ``Generator``    ``np.random.default_rng``
``draw_augment(in_shape, config, generator)``         numpy ``Generator``    ``np.random.default_rng``
``draw_sample(labels, config, seed)``                 ``int`` only           six ``SeedSequence`` streams
====================================================  =====================  ============================

Exceptions, kept so that no existing sample, head or model changes:

- **Two kinds.**  The torch stages draw on the generator's device (a GPU caller keeps its stream there); the
  numpy ones are the augmentation and head stages and the GMM.  Moving a stage to the other kind would give
  every seed a different sample: training runs would not resume to the same batches and shipped heads and
  sidecars could no longer be re-drawn from their seeds (replay from a sidecar's numbers would still work).
- **Config before the generator** in ``draw_spatial``/``draw_intensity``/``draw_augment``: the config is
  required there and every caller passes it positionally (the tests too); swapping would break them all.
- **draw_sample takes a seed, not a generator**: the seed is recorded in the sidecar (``SampleDraw.seed``) and
  spawns the independent streams of its stages (:mod:`.pipeline`), which a generator object cannot be.
"""

from __future__ import annotations

from .gmm import GMMConfig, GMMDraw, apply_gmm, draw_gmm
from .lesions import (
    LesionConfig,
    LesionDraw,
    draw_lesion,
    lesion_contrast,
    paste_lesion,
    render_lesion,
    synth_lesion,
)
from .pipeline import PipelineConfig, Sample, SampleDraw, generate, generate_batch, regenerate
from .priors import HYPER, PARAMETERS, ParameterPrior, TissuePriors, default_priors_path, fit_priors, load_priors
from .qsynth import (
    MapDraw,
    QSynthConfig,
    SequenceDraw,
    apply_maps,
    class_weights,
    draw_maps,
    draw_qatlas_mprage,
    draw_sequence,
    mprage_readouts,
    sample_maps,
)
from .synthmap import (
    SynthMapConfig,
    SynthMapDraw,
    SynthMapPriors,
    SynthMapSample,
    apply_synthmap,
    draw_synthmap,
    generate_synthmap,
    load_synthmap_priors,
)

__all__ = [
    "HYPER", "PARAMETERS", "ParameterPrior", "TissuePriors", "default_priors_path", "fit_priors", "load_priors",
    "MapDraw", "QSynthConfig", "SequenceDraw", "apply_maps", "class_weights", "draw_maps", "draw_qatlas_mprage",
    "draw_sequence", "mprage_readouts", "sample_maps",
    "LesionConfig", "LesionDraw", "draw_lesion", "lesion_contrast", "paste_lesion", "render_lesion", "synth_lesion",
    "GMMConfig", "GMMDraw", "apply_gmm", "draw_gmm",
    "PipelineConfig", "Sample", "SampleDraw", "generate", "generate_batch", "regenerate",
    "SynthMapConfig", "SynthMapDraw", "SynthMapPriors", "SynthMapSample", "apply_synthmap", "draw_synthmap",
    "generate_synthmap", "load_synthmap_priors",
]
