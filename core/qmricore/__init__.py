"""qmricore: physics-based MRI synthesis from quantitative maps.

Modules
-------
physics       signal equations (GRE, FSE, FLAIR, MPRAGE, MP2RAGE), fields, noise, field strength
io            map-set loading and validation, atomic NIfTI writing
protocols     sequence presets and acquisition-parameter sampling ranges (one place for these defaults)
sample_data   the sample map set built from the MNI152 template that ships in nilearn's wheel
generators    qSynth (priors, label -> maps, sequence draws, lesions), the Synth GMM baseline, the pipeline
augment       spatial and intensity augmentation (draw, then apply)
datasets      on-the-fly synthetic (image, label) datasets, seeded per sample
networks      qMRI estimator and lesion segmenter (MONAI building blocks); model_file: their file format
preprocess    orientation, reslicing and intensity normalisation; inference: sliding window, TTA, ensembles
metrics       Dice, HD95, medians with Student-t confidence intervals
training      headless training loop, checkpoints with exact resume, DDP
cli           the ``qmricore`` command line
"""

from __future__ import annotations

__version__ = "0.1.0"
