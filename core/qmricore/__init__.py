"""qmricore: physics-based MRI synthesis from quantitative maps.

Modules
-------
physics       signal equations (GRE, FSE, FLAIR, MPRAGE, MP2RAGE), fields, noise, field strength
io            map-set loading and validation, atomic NIfTI writing, the output guard, finding input files
protocols     sequence presets and acquisition-parameter sampling ranges (one place for these defaults)
sample_data   the sample map set built from the MNI152 template that ships in nilearn's wheel
generators    qSynth (priors, label -> maps, sequence draws, lesions), the Synth GMM baseline, whole heads,
              augmentation (``generators.augment``: draw, then apply), the pipeline
datasets      on-the-fly synthetic (image, label) datasets, seeded per sample
models        networks (qMRI estimator, lesion segmenter), the model file, the SynthStroke importer
training      headless training loop, checkpoints with exact resume, DDP
inference     preprocessing, sliding window with TTA, segmentation / estimation, metrics, held-out scoring
checks        checks of a shipped model on real anatomy and held-out heads (``qmricore check-model``)
cli           the ``qmricore`` command line
"""

from __future__ import annotations

__version__ = "0.1.0"
