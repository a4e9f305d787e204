"""Shared test inputs: a small oblique, anisotropic grid."""

from __future__ import annotations

import numpy as np

SHAPE_KJI = (7, 9, 11)  # K, J, I: three different sizes catch any axis mix-up


def oblique_ijk_to_ras() -> np.ndarray:
    """Anisotropic voxels (0.9, 1.3, 2.5 mm) rotated about an oblique axis, with an offset origin."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    angle = 0.4
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.9, 1.3, 2.5])
    matrix[:3, 3] = [12.5, -30.25, 7.0]
    return matrix
