"""qSynth: label map -> quantitative maps (PD, R1, R2*, MT) from hierarchical priors, and sequence sampling.

Draw, then apply (STYLE §2):

1. :func:`draw_maps` draws one synthetic subject from :class:`~.priors.TissuePriors`: per class and
   map a mean ``mu ~ N(mu_mu, sigma_mu)`` and a spread ``sigma ~ |N(mu_sigma, sigma_sigma)|``, a
   texture FWHM per map and a texture seed -> :class:`MapDraw` (JSON-safe, replayable).
2. :func:`apply_maps` paints a label map with those numbers: voxel value ``mu + sigma * T`` where ``T``
   is smooth Gaussian noise (FWHM from the draw) re-normalised to unit std, one field per map shared
   by all classes; soft label maps mix ``mu`` and ``sigma`` per voxel with the class probabilities.
   Values are kept physical (:class:`QSynthConfig` floors).

:func:`draw_sequence` draws a training sequence and its parameters (SPEC §5) from the ranges in
``data/protocols.json`` (:func:`qmricore.protocols.sampling_ranges`), only feasible timings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch

from .. import protocols
from ..errors import InputError, ParameterError
from ..physics import PARAMETER_BOUNDS, check_parameters
from ..serialise import JSONDataclass, JSONDraw, from_plain
from ._random import torch_generator
from ._texture import smooth_noise
from .priors import PARAMETERS, TissuePriors

Tensor = torch.Tensor

#: Tolerance on the per-voxel sum of a soft label map.
SOFT_TOLERANCE = 1e-3
#: Voxels per slice when painting hard labels on one CPU thread (cache-sized).
CPU_CHUNK_VOXELS = 1 << 14


@dataclass(frozen=True)
class QSynthConfig(JSONDataclass):
    """Options of qSynth map generation (the one place their defaults live).

    Attributes
    ----------
    fwhm_range
        Texture FWHM drawn uniformly in this range, in voxels (one per map).
    pd_min
        Lowest PD (p.u.); PD is never negative.
    r1_min, r2s_min
        Floors of the relaxation rates (1/s); 0.05 1/s is T1 = 20 s, 0.3 1/s is T2* = 3.3 s, both
        longer than pure water at body temperature; ``r2s_min`` is also the floor of R2 (when the priors have R2).
    mt_range
        MT saturation is clipped to this range (percent units).
    """

    fwhm_range: tuple[float, float] = (1.0, 5.0)
    pd_min: float = 0.0
    r1_min: float = 0.05
    r2s_min: float = 0.3
    mt_range: tuple[float, float] = (0.0, 100.0)

    def __post_init__(self) -> None:
        lo, hi = self.fwhm_range
        if not (0 <= lo <= hi):
            raise ParameterError(f"fwhm_range must satisfy 0 <= low <= high voxels, got {self.fwhm_range}")
        if not (self.r1_min > 0 and self.r2s_min > 0 and self.pd_min >= 0):
            raise ParameterError("r1_min and r2s_min must be > 0 and pd_min >= 0")
        if not (0 <= self.mt_range[0] <= self.mt_range[1] <= 100):
            raise ParameterError(f"mt_range must lie within [0, 100] percent units, got {self.mt_range}")

    def limits(self, parameter: str) -> tuple[float | None, float | None]:
        return {"pd": (self.pd_min, None), "r1": (self.r1_min, None), "r2s": (self.r2s_min, None),
                "r2": (self.r2s_min, None), "mt": self.mt_range}[parameter]


DEFAULT_CONFIG = QSynthConfig()


@dataclass(frozen=True)
class MapDraw(JSONDraw):
    """The random numbers of one qSynth subject (replayable with :func:`apply_maps`).

    ``to_dict``/``from_dict`` are its own, not :mod:`qmricore.serialise`'s: the sidecar form is keyed by class
    and map name (``mu["wm"]["r1"]``), readable and robust to a reordered class table, and every sidecar
    written so far has it; ``from_dict`` also checks finiteness, signs and the parameter order.

    Attributes
    ----------
    classes
        Class names, in the priors' order.
    mu, sigma
        ``mu[c][p]``, ``sigma[c][p]``: subject-level mean and within-subject std of class ``c`` and map
        ``PARAMETERS[p]`` (p.u. for pd and mt, 1/s for r1 and r2s).
    fwhm
        Texture FWHM per map (voxels), in ``PARAMETERS`` order.
    texture_seed
        Seed of the texture noise generator.
    """

    classes: tuple[str, ...]
    mu: tuple[tuple[float, ...], ...]
    sigma: tuple[tuple[float, ...], ...]
    fwhm: tuple[float, ...]
    texture_seed: int
    parameters: tuple[str, ...] = PARAMETERS

    def to_dict(self) -> dict[str, Any]:
        par = self.parameters
        return {
            "classes": list(self.classes),
            "parameters": list(par),
            "mu": {c: dict(zip(par, r, strict=True)) for c, r in zip(self.classes, self.mu, strict=True)},
            "sigma": {c: dict(zip(par, r, strict=True)) for c, r in zip(self.classes, self.sigma, strict=True)},
            "fwhm": dict(zip(par, self.fwhm, strict=True)),
            "texture_seed": int(self.texture_seed),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MapDraw:
        try:
            classes = tuple(str(c) for c in data["classes"])
            par = tuple(str(p) for p in data.get("parameters", PARAMETERS))
            mu = tuple(tuple(float(data["mu"][c][p]) for p in par) for c in classes)
            sigma = tuple(tuple(float(data["sigma"][c][p]) for p in par) for c in classes)
            fwhm = tuple(float(data["fwhm"][p]) for p in par)
            seed = data["texture_seed"]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"not a qSynth map draw (missing or bad entry {error})") from None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"qSynth map draw: texture_seed must be an integer, got {seed!r}")
        values = [v for row in mu + sigma for v in row] + list(fwhm)
        if not all(math.isfinite(v) for v in values):
            raise InputError("qSynth map draw holds non-finite numbers")
        if any(v < 0 for row in sigma for v in row) or any(v < 0 for v in fwhm):
            raise InputError("qSynth map draw: sigma and fwhm must be >= 0")
        if par[:len(PARAMETERS)] != PARAMETERS:
            raise InputError(f"qSynth map draw: parameters must start with {', '.join(PARAMETERS)}, got {list(par)}")
        return cls(classes, mu, sigma, fwhm, seed, par)


def draw_maps(priors: TissuePriors, generator: torch.Generator | int, config: QSynthConfig | None = None) -> MapDraw:
    """Draw one synthetic subject's per-class map statistics and texture (no volume work).

    ``mu ~ N(mu_mu, sigma_mu)`` and ``sigma ~ |N(mu_sigma, sigma_sigma)|`` per class and map, texture
    FWHM ~ U(config.fwhm_range) per map, and a texture seed; all from ``generator`` (any device, or an int
    seed for a CPU one).
    """
    config = config or DEFAULT_CONFIG
    generator = torch_generator(generator, "draw_maps")
    table = torch.as_tensor(priors.table(), dtype=torch.float64)  # (C, P, 4)
    n_cls, n_par = table.shape[:2]
    dev = generator.device
    z = torch.randn((2, n_cls, n_par), generator=generator, dtype=torch.float64, device=dev).cpu()
    u = torch.rand(n_par, generator=generator, dtype=torch.float64, device=dev).cpu()
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=dev).item())
    mu = table[..., 0] + table[..., 1] * z[0]
    sigma = (table[..., 2] + table[..., 3] * z[1]).abs()
    lo, hi = config.fwhm_range
    fwhm = lo + (hi - lo) * u
    return MapDraw(tuple(priors.names), tuple(tuple(r) for r in mu.tolist()), tuple(tuple(r) for r in sigma.tolist()),
                   tuple(fwhm.tolist()), seed, priors.parameters)


def _as_tensor(labels: Any, device: torch.device | str | None) -> Tensor:
    if isinstance(labels, Tensor):
        return labels if device is None else labels.to(device)
    arr = np.asarray(labels)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32:
        arr = arr.astype(np.int64)
    return torch.as_tensor(arr, device=device)


def class_weights(labels: Any, priors: TissuePriors, device: torch.device | str | None = None) -> tuple[str, Tensor]:
    """Validate a label map against the priors' classes.

    Returns ``("hard", index)`` with the class index (int64, X×Y×Z) of every voxel, or ``("soft", probs)``
    with class probabilities (float32, C×X×Y×Z, channels in the priors' class order).

    Raises :class:`~qmricore.errors.InputError` for a wrong shape, non-integer or negative hard labels,
    unknown label values (listed), soft maps that do not sum to one or have the wrong channel count,
    and empty label maps (background only).
    """
    t = _as_tensor(labels, device)
    if t.dim() == 3:
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()) or bool((t != torch.round(t)).any()):
                raise InputError("hard label map has non-integer values (a soft map needs a channel axis: C,X,Y,Z)")
        t = t.long()
        lo = int(t.min())
        if lo < 0:
            raise InputError(f"label map has negative values (min {lo})")
        hi = int(t.max())
        counts = torch.bincount(t.reshape(-1), minlength=max(hi, max(priors.labels)) + 1)
        lut = torch.full((counts.numel(),), -1, dtype=torch.long, device=t.device)
        lut[list(priors.labels)] = torch.arange(priors.n_classes, device=t.device)
        unknown = torch.nonzero((counts > 0) & (lut < 0)).view(-1).tolist()
        if unknown:
            raise InputError(f"unknown label value(s) {unknown}; the priors know {list(priors.labels)} "
                             f"({', '.join(priors.names)})")
        background = priors.background_label
        if int(counts[background]) == t.numel():
            raise InputError("label map is empty (background only)")
        return "hard", lut[t]
    if t.dim() == 4:
        if not t.is_floating_point():
            raise InputError("a 4D label map must hold class probabilities (float, C,X,Y,Z)")
        if t.shape[0] != priors.n_classes:
            raise InputError(f"soft label map has {t.shape[0]} channels but the priors have {priors.n_classes} "
                             f"classes ({', '.join(priors.names)})")
        probs = t.float()
        if not bool(torch.isfinite(probs).all()):
            raise InputError("soft label map has NaN or infinite values")
        if float(probs.min()) < -SOFT_TOLERANCE:
            raise InputError("soft label map has negative probabilities")
        deviation = float((probs.sum(0) - 1.0).abs().max())
        if deviation > SOFT_TOLERANCE:
            raise InputError(f"soft label map does not sum to one over classes (max deviation {deviation:.3g})")
        if "background" in priors.names:
            rest = 1.0 - probs[priors.index("background")]
            if float(rest.max()) < SOFT_TOLERANCE:
                raise InputError("label map is empty (background only)")
        return "soft", probs
    raise InputError(f"label map must be 3D integer labels (X,Y,Z) or 4D probabilities (C,X,Y,Z), "
                     f"got shape {tuple(t.shape)}")


def apply_maps(
    labels: Any,
    priors: TissuePriors,
    draw: MapDraw,
    config: QSynthConfig | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Paint quantitative maps on a label map with the numbers of one :class:`MapDraw`.

    Parameters
    ----------
    labels
        Hard labels (X,Y,Z) with the priors' label values (integers; integral floats accepted) or
        soft class probabilities (C,X,Y,Z) in the priors' class order; numpy or torch.
    priors
        Class table (names, label values); must list the draw's classes in the same order.
    draw
        From :func:`draw_maps` (or :meth:`MapDraw.from_dict`).
    config
        Physical limits (the draw's FWHM is used, not ``config.fwhm_range``).
    device
        Where to compute; default: where ``labels`` lives (numpy: CPU).

    Returns
    -------
    ``{"pd", "r1", "r2s", "mt"}`` (plus ``"r2"`` when the priors have it) float32 tensors of shape (X,Y,Z):
    p.u., 1/s, 1/s, p.u. (1/s).  Identical
    draw and labels give bit-identical maps on the CPU (for one torch thread count; across thread counts
    they agree to float rounding).
    """
    config = config or DEFAULT_CONFIG
    if tuple(draw.classes) != tuple(priors.names):
        raise ParameterError(f"the draw's classes {list(draw.classes)} differ from the priors' {list(priors.names)}")
    kind, weights = class_weights(labels, priors, device)
    dev = weights.device
    shape = tuple(weights.shape[-3:])
    texture_gen = torch.Generator(device=dev)
    texture_gen.manual_seed(int(draw.texture_seed))
    texture = smooth_noise(shape, draw.fwhm, texture_gen)
    mu = torch.tensor(draw.mu, dtype=torch.float32, device=dev)  # (C, P)
    sigma = torch.tensor(draw.sigma, dtype=torch.float32, device=dev)
    names = draw.parameters
    limits = [config.limits(name) for name in names]
    with torch.no_grad():
        if kind == "hard" and dev.type == "cpu" and torch.get_num_threads() == 1:
            # single-threaded (DataLoader workers): cache-sized slices; with several threads the whole-volume
            # gathers below parallelise, while sliced gathers would pay a thread-pool wake-up each
            return _paint_hard_chunked(weights, mu, sigma, texture, limits, names)
        out: dict[str, Tensor] = {}
        for p, name in enumerate(names):
            if kind == "hard":
                m, s = mu[:, p][weights], sigma[:, p][weights]
            else:
                m = torch.tensordot(mu[:, p], weights, dims=1)
                s = torch.tensordot(sigma[:, p], weights, dims=1)
            lo, hi = limits[p]
            out[name] = torch.addcmul(m, s, texture[p]).clamp_(min=lo, max=hi)
    return out


def _paint_hard_chunked(index: Tensor, mu: Tensor, sigma: Tensor, texture: Tensor,
                        limits: list[tuple[float | None, float | None]], names: Sequence[str]) -> dict[str, Tensor]:
    """``clamp(mu[index] + sigma[index] * texture)`` per map, on cache-sized slices (~40 % less CPU time than
    whole-volume gathers)."""
    flat = index.reshape(-1)
    tex = texture.reshape(len(names), -1)
    mus = [mu[:, p].contiguous() for p in range(len(names))]
    sigmas = [sigma[:, p].contiguous() for p in range(len(names))]
    outs = [torch.empty(flat.numel(), dtype=torch.float32) for _ in names]
    for start in range(0, flat.numel(), CPU_CHUNK_VOXELS):
        stop = min(start + CPU_CHUNK_VOXELS, flat.numel())
        part = flat[start:stop]
        for p, (lo, hi) in enumerate(limits):
            o = outs[p][start:stop]
            torch.addcmul(mus[p][part], sigmas[p][part], tex[p, start:stop], out=o)
            o.clamp_(min=lo, max=hi)
    return {name: outs[p].view(index.shape) for p, name in enumerate(names)}


def sample_maps(
    labels: Any,
    priors: TissuePriors,
    generator: torch.Generator | int,
    config: QSynthConfig | None = None,
    device: torch.device | str | None = None,
) -> tuple[dict[str, Tensor], MapDraw]:
    """:func:`draw_maps` then :func:`apply_maps`; returns the maps and the draw (save it to replay)."""
    draw = draw_maps(priors, generator, config)
    return apply_maps(labels, priors, draw, config, device), draw


# ---------------------------------------------------------------------------------------------------------------
# Sequence sampling (SPEC §5)
# ---------------------------------------------------------------------------------------------------------------

#: Most readout pulses an MPRAGE draw may use.
MPRAGE_MAX_N = 256
_MAX_TRIES = 10_000


@dataclass(frozen=True)
class SequenceDraw(JSONDraw):
    """One training acquisition: sequence name and parameters (seconds, degrees; ``n`` an integer)."""

    sequence: str
    params: Mapping[str, int | float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequenceDraw:
        """:func:`~qmricore.serialise.from_plain`, then :func:`qmricore.physics.check_parameters`: a hand-edited
        sidecar with infeasible timings fails here, not inside the simulator."""
        draw = from_plain(cls, data, error=lambda problem: InputError(f"not a sequence draw ({problem})"))
        check_parameters(draw.sequence, dict(draw.params))
        return draw


@cache
def _ranges(name: str) -> tuple[tuple[str, str, float, float], ...]:
    """Sampling ranges of one sampler as ``(parameter, kind, a, b)`` tuples (validated once)."""
    out = []
    for key, spec in protocols.sampling_ranges(name).items():
        kind = spec.get("dist")
        fields = {"uniform": ("low", "high"), "loguniform": ("low", "high"),
                  "lognormal": ("median", "sigma_decades"), "normal": ("mean", "std")}.get(kind)
        if fields is None:
            raise ParameterError(f"sampling range {name}.{key}: unknown distribution {kind!r}")
        a, b = (float(spec[f]) for f in fields)
        if kind in ("uniform", "loguniform") and key in PARAMETER_BOUNDS:
            low, high, unit = PARAMETER_BOUNDS[key]
            if not (a > low and b <= high):
                raise ParameterError(f"sampling range {name}.{key}: [{a:g}, {b:g}] leaves the scanner bounds "
                                     f"({low:g}, {high:g}] {unit} of qmricore.physics.PARAMETER_BOUNDS")
        if kind == "loguniform" and not (0 < a <= b):
            raise ParameterError(f"sampling range {name}.{key}: loguniform needs 0 < low <= high")
        if kind == "lognormal" and not (a > 0 and b >= 0):
            raise ParameterError(f"sampling range {name}.{key}: lognormal needs median > 0, sigma_decades >= 0")
        out.append((key, kind, a, b))
    return tuple(out)


def _draw_ranges(name: str, generator: torch.Generator) -> dict[str, float]:
    """One draw of every parameter of sampler ``name``: absolute values (SPEC §5)."""
    ranges = _ranges(name)
    uz = torch.rand((2, len(ranges)), generator=generator, dtype=torch.float64, device=generator.device)
    uz[1] = torch.randn(len(ranges), generator=generator, dtype=torch.float64, device=generator.device)
    u, z = uz.tolist()
    params = {}
    for i, (key, kind, a, b) in enumerate(ranges):
        if kind == "uniform":
            v = a + (b - a) * u[i]
        elif kind == "loguniform":
            v = math.exp(math.log(a) + (math.log(b) - math.log(a)) * u[i])
        elif kind == "lognormal":
            v = 10.0 ** (math.log10(a) + b * z[i])
        else:
            v = a + b * z[i]
        params[key] = abs(v)
    return params


def mprage_readouts(tr: float, ti: float, tx: float, max_n: int = MPRAGE_MAX_N) -> int:
    """Largest even readout count ``n <= max_n`` with TA >= 0 and TD >= 0 (0 when none).

    With ``k = n // 2 + 1`` (SPEC §4) and even ``n``: ``TA = TI - (n/2) TX`` and ``TD = TR - TI - (n/2) TX``.
    (A count exactly at the limit may still be refused by ``check_parameters`` for rounding; samplers then
    take two fewer.)
    """
    half = math.floor(min(ti, tr - ti) / tx * (1 + 1e-12)) if tx > 0 else 0  # 0.1/0.01 is 9.999...
    return max(0, min(max_n, 2 * half))


def _feasible_mprage(params: dict[str, float]) -> dict[str, float] | None:
    n = mprage_readouts(params["tr"], params["ti"], params["tx"])
    while n >= 2:
        try:
            check_parameters("mprage", {**params, "n": n})
            return {**params, "n": n}
        except ParameterError:
            n -= 2  # rounding at the boundary: one pair fewer
    return None


def _draw_feasible(name: str, sequence: str, generator: torch.Generator) -> dict[str, float]:
    for _ in range(_MAX_TRIES):
        params = _draw_ranges(name, generator)
        if sequence == "mprage":
            fitted = _feasible_mprage({k: v for k, v in params.items() if k != "b0"})
            if fitted is not None:
                if "b0" in params:
                    fitted["b0"] = params["b0"]
                return fitted
            continue
        try:
            check_parameters(sequence, params)
            return params
        except ParameterError:
            continue
    raise ParameterError(f"{name}: no feasible parameters in {_MAX_TRIES} draws; check the sampling ranges")


#: Sequences drawn for training images by default (SPEC §5); MP2RAGE is kept unseen for held-out tests.
TRAINING_SEQUENCES: tuple[str, ...] = ("gre", "fse", "flair", "mprage")


def draw_sequence(generator: torch.Generator | int, sequences: Sequence[str] = TRAINING_SEQUENCES) -> SequenceDraw:
    """Draw a sequence uniformly from ``sequences`` and its parameters from the SPEC §5 ranges (``generator``: a
    torch generator or an int seed).

    Draws are redrawn (all parameters together) until :func:`qmricore.physics.check_parameters` accepts
    them (FLAIR TI + TE < TR, GRE/FSE TE < TR); MPRAGE takes the largest even ``n <= 256`` with
    TA >= 0 and TD >= 0 and is redrawn when there is none.
    """
    if not sequences:
        raise ParameterError("draw_sequence needs at least one sequence name")
    generator = torch_generator(generator, "draw_sequence")
    i = int(torch.randint(0, len(sequences), (1,), generator=generator, device=generator.device).item())
    sequence = sequences[i]
    return SequenceDraw(sequence, _draw_feasible(sequence, sequence, generator))


def draw_clinical_sequence(generator: torch.Generator | int, sequences: Sequence[str] = TRAINING_SEQUENCES,
                           jitter_decades: float = 0.05) -> SequenceDraw:
    """Draw a sequence uniformly from ``sequences``, then one of its shipped clinical presets
    (:func:`qmricore.protocols.preset_names`), every time and angle multiplied by ``10^N(0, jitter_decades)``
    (``n`` kept); redrawn until :func:`qmricore.physics.check_parameters` accepts it.

    The SPEC §5 ranges are domain randomisation: their FLAIR has TE ≈ 20 ms, so a lesion whose contrast is its
    long T2 is almost never hyperintense in a training FLAIR, while the FLAIRs and T2s a clinician segments have
    TE ≈ 80-120 ms.  Mixing these draws in (``PipelineConfig.clinical_prob``) shows the network the contrasts it
    is used on.
    """
    from ..protocols import preset, preset_names

    if not sequences:
        raise ParameterError("draw_clinical_sequence needs at least one sequence name")
    generator = torch_generator(generator, "draw_clinical_sequence")
    i = int(torch.randint(0, len(sequences), (1,), generator=generator, device=generator.device).item())
    sequence = sequences[i]
    presets = [dict(p) for s, p in map(preset, preset_names()) if s == sequence]
    if not presets:
        raise ParameterError(f"draw_clinical_sequence: no clinical preset of {sequence!r} ships")
    for _ in range(_MAX_TRIES):
        j = int(torch.randint(0, len(presets), (1,), generator=generator, device=generator.device).item())
        z = torch.randn(len(presets[j]), generator=generator, dtype=torch.float64, device=generator.device).tolist()
        params = {k: v if k == "n" else float(v) * 10.0 ** (jitter_decades * dz)
                  for (k, v), dz in zip(presets[j].items(), z, strict=True)}
        try:
            check_parameters(sequence, params)
            return SequenceDraw(sequence, params)
        except ParameterError:
            continue
    raise ParameterError(f"draw_clinical_sequence: no feasible {sequence} in {_MAX_TRIES} draws")


def draw_qatlas_mprage(generator: torch.Generator | int) -> tuple[SequenceDraw, float]:
    """Draw an MPRAGE from the qATLAS ranges (SPEC §5/§7); returns ``(draw, b0)`` with B0 in tesla."""
    params = _draw_feasible("qatlas_mprage", "mprage", torch_generator(generator, "draw_qatlas_mprage"))
    b0 = params.pop("b0")
    return SequenceDraw("mprage", params), b0
