"""Re-simulate relaxation rates measured at one main field B0 at another (SPEC §4, beyond the seeds).

T1 lengthens with B0 roughly as a power law, ``T1 = A B0^beta``; Rooney et al. (2007) fitted
beta = 0.382 (white matter), 0.376 (cortical grey matter) and ~0.38-0.41 for deep grey matter
between 0.2 and 7 T, while CSF T1 (~4.3 s) does not depend on B0 [1].  We use one tissue exponent
``BETA_TISSUE = 0.38``; voxels with R1 at or below ``FLUID_R1`` (CSF, R1 0.23-0.3 1/s) keep their R1,
and the exponent rises linearly to ``BETA_TISSUE`` at ``TISSUE_R1`` (partial volume of fluid and tissue):
``R1(B0) = R1_ref (B0 / B0_ref)^(-beta(R1_ref))``.  Inside that fade band the mapping is not exactly
invertible (a round trip 1.5 T -> 3 T -> 1.5 T moves R1 by up to ~18 %); outside it, it is.

R2* grows about linearly with B0 because its reversible part R2' (static dephasing by
susceptibility differences) is proportional to B0 [2, 3]; Peters et al. (2007) measured grey- and
white-matter R2* at 1.5, 3 and 7 T consistent with ``R2* = R2*_0 + k B0``, with the
field-independent part close to R2 at low field [3].  We keep a field-independent floor
``R2_FLOOR`` (≈ R2 of brain tissue at low field, 1/s) and scale the rest linearly:
``R2*(B0) = min(R2*_ref, R2_FLOOR) + max(R2*_ref - R2_FLOOR, 0) B0 / B0_ref``.

[1] Rooney WD et al. Magnetic field and tissue dependencies of human brain longitudinal 1H2O
    relaxation in vivo. Magn Reson Med 2007;57:308-318.
[2] Yablonskiy DA, Haacke EM. Theory of NMR signal behavior in magnetically inhomogeneous tissues:
    the static dephasing regime. Magn Reson Med 1994;32:749-763.
[3] Peters AM et al. T2* measurements in human brain at 1.5, 3 and 7 T. Magn Reson Imaging
    2007;25:748-753.
"""

from __future__ import annotations

import torch

from ..errors import ParameterError
from ._backend import ArrayLike, compute_dtype, like_input, to_tensor

BETA_TISSUE = 0.38  # Rooney 2007, WM 0.382 / cortical GM 0.376
FLUID_R1 = 0.35  # 1/s: R1 of CSF at any field is ~0.23-0.3 1/s
TISSUE_R1 = 0.5  # 1/s: grey matter at 7 T (T1 ~2 s) and every tissue at lower fields are above this
R2_FLOOR = 10.0  # 1/s: field-independent part of R2* (~R2 of GM/WM, T2 ~ 80-100 ms)


def rescale_field_strength(r1: ArrayLike, r2s: ArrayLike, b0_ref: float, b0: float) -> tuple[ArrayLike, ArrayLike]:
    """R1 and R2* maps measured at ``b0_ref`` tesla, re-expressed at ``b0`` tesla.

    Parameters
    ----------
    r1, r2s
        Relaxation-rate maps in 1/s (numpy or torch; the same kind is returned).
    b0_ref, b0
        Field strengths in tesla, > 0.
    """
    if not (b0_ref > 0 and b0 > 0):
        raise ParameterError(f"field strengths must be > 0 T, got b0_ref={b0_ref}, b0={b0}")
    dtype = compute_dtype(r1, r2s)
    r1_t = to_tensor(r1, dtype, None)
    r2s_t = to_tensor(r2s, dtype, r1_t.device)
    ratio = b0 / b0_ref
    beta = BETA_TISSUE * torch.clamp((r1_t - FLUID_R1) / (TISSUE_R1 - FLUID_R1), 0.0, 1.0)
    r1_new = r1_t * torch.pow(torch.as_tensor(ratio, dtype=dtype), -beta)
    floor = torch.clamp(r2s_t, max=R2_FLOOR)
    r2s_new = floor + torch.clamp(r2s_t - R2_FLOOR, min=0.0) * ratio
    return like_input(r1_new, r1), like_input(r2s_new, r2s)
