"""qmricore: physics-based MRI synthesis from quantitative maps.

Sub-packages
------------
physics     signal equations (GRE, FSE, FLAIR, MPRAGE, MP2RAGE), fields, noise, field strength
io          map-set loading and validation, atomic NIfTI writing
protocols   sequence presets and acquisition-parameter sampling ranges (one place for defaults)
cli         the ``qmricore`` command line
"""

from __future__ import annotations

__version__ = "0.1.0"
