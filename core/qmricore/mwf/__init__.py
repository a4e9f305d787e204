"""Myelin water imaging from multi-echo spin-echo (CPMG) trains.

:mod:`.nnls` is the DECAES-style baseline: per voxel a regularised non-negative T2 spectrum on an EPG
dictionary with a fitted refocusing angle, from which the myelin water fraction (MWF) and the geometric-mean
T2 follow.
"""

from __future__ import annotations

from .nnls import NNLSConfig, NNLSResult, fit_nnls, t2_bins

__all__ = ["NNLSConfig", "NNLSResult", "fit_nnls", "t2_bins"]
