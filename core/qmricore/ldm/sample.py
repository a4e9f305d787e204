"""Sampling the mask generator: classifier-free guided DDIM, measured volumes, sidecars, qSynth rendering.

Sample ``i`` of a call with ``seed`` starts from the latent noise of ``torch.Generator().manual_seed(sample_seed(
seed, i))``, so it is the same whatever ``n`` is and can be reproduced alone.  DDIM runs with ``eta = 0``
(deterministic given the start noise).  Each step evaluates the UNet on the conditional and the null condition in
one batch and combines them: ``eps = eps_null + guidance · (eps_cond − eps_null)`` (guidance 0: unconditional;
1: conditional; above 1: pushed towards the condition).  The decoded logits are turned into classes by argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ParameterError
from .labels import LDM_CLASSES, class_table, grid_affine, to_labels, ventricle_ml
from .models import LDMMasks

DEFAULT_GUIDANCE = 4.0
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class SampleRequest:
    """What to generate: the condition and the sampler settings (the one place their defaults live)."""

    ventricle_ml: float
    n: int = 1
    seed: int = 0
    guidance: float = DEFAULT_GUIDANCE
    steps: int = DEFAULT_STEPS

    def __post_init__(self) -> None:
        if not (np.isfinite(self.ventricle_ml) and self.ventricle_ml > 0):
            raise ParameterError(f"--ventricle-ml must be > 0 mL, got {self.ventricle_ml:g}")
        if self.n < 1:
            raise ParameterError(f"-n must be >= 1, got {self.n}")
        if self.seed < 0:
            raise ParameterError(f"--seed must be >= 0, got {self.seed}")
        if not (np.isfinite(self.guidance) and self.guidance >= 0):
            raise ParameterError(f"--guidance must be >= 0, got {self.guidance:g}")
        if self.steps < 1:
            raise ParameterError(f"--steps must be >= 1, got {self.steps}")


def start_noise(model: LDMMasks, seed: int, index: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The start latent ``(1, *latent_shape)`` of sample ``index`` of a call with ``seed``."""
    from ..datasets import sample_seed

    generator = torch.Generator().manual_seed(sample_seed(seed, index))
    return torch.randn((1, *model.config.latent_shape), generator=generator).to(device)


def denoising_steps(model: LDMMasks, request: SampleRequest) -> int:
    """How many DDIM steps a sample takes: the request's, at most the training schedule's length."""
    return min(request.steps, model.config.timesteps)


@torch.no_grad()
def sample_classes(model: LDMMasks, request: SampleRequest, first: int = 0,
                   progress: Callable[[int], object] | None = None) -> np.ndarray:
    """``request.n`` class maps ``(n, X, Y, Z)`` (LDM class indices), samples ``first … first + n − 1``;
    ``progress(1)`` after each denoising step."""
    from .models import make_scheduler

    device = model.scale_factor.device
    scheduler = make_scheduler(model.config)
    scheduler.set_timesteps(denoising_steps(model, request), device=device)
    z = torch.cat([start_noise(model, request.seed, first + i, device) for i in range(request.n)])
    volume = torch.full((request.n,), float(request.ventricle_ml), device=device)
    cond = model.condition_vector(volume)
    for t in scheduler.timesteps:
        steps = torch.full((request.n,), int(t), device=device, dtype=torch.long)
        eps = model.guided_eps(z, steps, cond, request.guidance)
        z, _ = scheduler.step(eps, int(t), z)
        if progress is not None:
            progress(1)
    return model.decode(z).argmax(1).cpu().numpy()


def sidecar(classes: np.ndarray, affine: np.ndarray, request: SampleRequest, index: int, priors: Any,
            model_path: Any, reference_ml: float) -> dict[str, Any]:
    """The JSON written next to a sample: classes (name → label), the request, the measured ventricle volume."""
    return {"index": index, "classes": class_table(priors),
            "condition": {"ventricle_ml": request.ventricle_ml, "relative": request.ventricle_ml / reference_ml},
            "measured_ventricle_ml": round(ventricle_ml(classes, affine), 4),
            "voxel_mm": round(float(abs(np.linalg.det(affine[:3, :3])) ** (1 / 3)), 6),
            "seed": request.seed, "guidance": request.guidance, "steps": request.steps, "model": str(model_path)}


def render(labels: np.ndarray, preset_name: str, seed: int, priors: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """A qSynth image of a generated label map (priors' label values): maps drawn from the priors, painted, and
    the preset's sequence simulated (noise-free).  Returns the image and what was drawn (for the sidecar)."""
    from ..generators.qsynth import apply_maps, draw_maps
    from ..physics import simulate
    from ..protocols import preset

    sequence, params = preset(preset_name)
    draw = draw_maps(priors, torch.Generator().manual_seed(int(seed)))
    maps = apply_maps(torch.from_numpy(labels.astype(np.int64)), priors, draw)
    image = simulate(sequence, maps, **params)
    image = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return image.astype(np.float32), {"preset": preset_name, "sequence": sequence, "parameters": params,
                                      "map_seed": int(seed)}


def labels_of(classes: np.ndarray, priors: Any) -> np.ndarray:
    """Generated classes as a label map with the priors' values (what is written)."""
    return to_labels(classes, priors)


__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_STEPS", "LDM_CLASSES", "SampleRequest", "grid_affine", "labels_of", "render",
           "sample_classes", "sidecar", "start_noise"]
