"""Guided latent diffusion of brain label maps with a chosen ventricle volume (SPEC §14, seed 002; docs/ldm.md).

labels   the ``ventricles`` label derived from the anatomy's CSF, the LDM class set, the training set of label
         maps with a broad, known distribution of ventricle volumes (draw, then apply)
models   :class:`LDMMasksConfig` and :class:`LDMMasks` (MONAI ``AutoencoderKL`` + conditioned
         ``DiffusionModelUNet`` + DDIM settings + latent scale factor in one module: the ``ldm_masks`` model kind)
sample   classifier-free guided DDIM sampling, measured ventricle volume, sidecars, optional qSynth rendering

Nothing heavy is imported with the package.
"""
