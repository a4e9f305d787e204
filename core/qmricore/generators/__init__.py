"""Synthetic training data generators (SPEC §6).

- :mod:`.priors`: hierarchical tissue priors (:class:`TissuePriors`), the shipped 3 T literature priors,
  fitting priors from real map sets (:func:`fit_priors`).
- :mod:`.qsynth`: label map -> qMRI maps (:func:`draw_maps` / :func:`apply_maps` / :func:`sample_maps`) and
  training-sequence sampling (:func:`draw_sequence`, :func:`draw_qatlas_mprage`).
- :mod:`.lesions`: synthetic lesion shapes and pasting lesions into label maps.
- :mod:`.gmm`: the SynthSeg-style GMM baseline; :mod:`.pipeline`: label map -> augmented training sample.
- :mod:`.synthmap`: label map -> multi-echo spin-echo series with true MWF and T2 maps (SynthMap, SPEC §14).
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
