"""SynthMap: label map -> multi-echo spin-echo (CPMG) series with a known myelin water fraction (SPEC §14).

Tissue model: every brain voxel holds three water pools, myelin water (``my``, T2 ~10-40 ms),
intra/extracellular water (``ie``, ~50-200 ms) and free water/CSF (``fw``, ~1-2 s).  Each pool's T2 spectrum
is a Gaussian in natural-log T2 (centre ``t2_<pool>``, the spectrum's geometric mean, and standard deviation
``width`` in ln units) carrying the pool fraction; fractions sum to one.  Head tissues outside the brain get one
pool (from qSynth's R2/R1 priors) and background gets no signal.  The priors live in
``data/synthmap_priors.json`` (:func:`load_synthmap_priors`); label values and PD come from qSynth's class table
``data/priors_3t.json``.

Draw, then apply (STYLE §2):

1. :func:`draw_synthmap` draws one synthetic subject and acquisition -> :class:`SynthMapDraw` (JSON-safe): per
   class and quantity (:data:`QUANTITIES`) ``mu ~ N(mu_mu, sigma_mu)``, ``sigma ~ |N(mu_sigma, sigma_sigma)|``;
   per class and pool a width; a texture FWHM per quantity and a texture seed; a B1 field; echo spacing and
   count; an SNR and a noise seed.
2. :func:`apply_synthmap` paints the label map (voxel value ``mu + sigma * T``, ``T`` smooth unit-variance
   noise, one field per quantity shared by all classes, as qSynth), builds the B1 field, sums the pools' echo
   trains and adds Rician noise -> :class:`SynthMapSample`.

Signal per voxel: ``PD * sum_pool f_pool * sum_k w_k cpmg(t2_pool * exp(width * z_k), t1_pool, b1t=B1)``, the
spectrum integral done by Gauss-Hermite quadrature (:attr:`SynthMapConfig.nodes` nodes ``z_k``, weights
``w_k``).  ``method="exact"`` evaluates that per voxel; the default ``"table"`` evaluates it per class and pool
on a small grid of (centre, B1) values spanning the sample's range and interpolates bilinearly in (ln centre,
B1), which is what makes a 2 mm head take seconds (the tables' error is measured in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ParameterError
from ..physics import cpmg
from ..physics.noise import rician_noise
from ..serialise import JSONDraw, from_plain, to_plain
from ._random import torch_generator
from ._texture import smooth_noise
from .priors import TissuePriors, load_priors
from .qsynth import class_weights

#: Per-voxel quantities with a hierarchical prior and a texture field: PD (p.u.), myelin and free-water
#: fractions (0-1), pool T2 centres (s).  Head tissues use ``t2_ie`` for their single pool.
QUANTITIES = ("pd", "mwf", "fwf", "t2_my", "t2_ie", "t2_fw")
POOLS = ("my", "ie", "fw")
#: Physical limits applied to painted values (PD p.u., fractions, T2 in s).
LIMITS = {"pd": (0.0, 100.0), "mwf": (0.0, 0.5), "fwf": (0.0, 1.0), "t2_my": (1e-3, 5.0), "t2_ie": (1e-3, 5.0),
          "t2_fw": (1e-3, 5.0)}
#: B1 field basis: the nine non-constant monomials of degree <= 2 in normalised coordinates.
B1_TERMS = 9
#: Voxels interpolated at once (keeps the (voxels, echoes) temporaries cache-friendly).
CHUNK_VOXELS = 1 << 15
SIDECAR_FORMAT = "qmricore-synthmap-sample-1"


@dataclass(frozen=True)
class SynthMapConfig:
    """Options of SynthMap generation (the one place their defaults live; times in seconds).

    Attributes
    ----------
    te, n_echoes
        Echo spacing (s) and echo count; ``None`` draws them from ``te_range`` (uniform) and ``echoes_range``
        (uniform integers, both ends included).
    refocus
        Nominal refocusing angle, degrees.
    snr_range
        SNR drawn uniformly here: mean noise-free first echo in white matter (all tissue when the map has
        none) over the Rician noise sigma.
    b1_mean_range, b1_amplitude_max
        B1 field ``mean + amplitude * p / max|p|``, ``p`` a random quadratic polynomial over the grid, mean
        ~ U(b1_mean_range), amplitude ~ U(0, b1_amplitude_max): always within [0.8, 1.2] by default.
    fwhm_range
        Texture FWHM (voxels), one per quantity, uniform.
    nodes
        Gauss-Hermite nodes per pool spectrum.
    table_t2, table_b1
        Grid sizes of the ``"table"`` method along ln T2 centre and B1.
    method
        ``"table"`` (interpolated, default) or ``"exact"`` (every voxel through :func:`cpmg`).
    """

    te: float | None = 0.010
    te_range: tuple[float, float] = (0.005, 0.015)
    n_echoes: int | None = 32
    echoes_range: tuple[int, int] = (8, 48)
    refocus: float = 180.0
    snr_range: tuple[float, float] = (30.0, 80.0)
    b1_mean_range: tuple[float, float] = (0.95, 1.05)
    b1_amplitude_max: float = 0.15
    fwhm_range: tuple[float, float] = (1.0, 5.0)
    nodes: int = 7
    table_t2: int = 48
    table_b1: int = 17
    method: str = "table"

    def __post_init__(self) -> None:
        if self.te is not None and not (math.isfinite(self.te) and self.te > 0):
            raise ParameterError(f"synthmap: the echo spacing TE must be > 0 s, got {self.te!r}")
        if self.te is not None and self.te > 1.0:
            raise ParameterError(f"synthmap: TE = {self.te:g} s is beyond an echo spacing; times are in seconds")
        if not 0 < self.te_range[0] <= self.te_range[1] <= 1.0:
            raise ParameterError(f"synthmap: te_range must satisfy 0 < low <= high <= 1 s, got {self.te_range}")
        if self.n_echoes is not None and (isinstance(self.n_echoes, bool) or int(self.n_echoes) != self.n_echoes
                                          or self.n_echoes < 1):
            raise ParameterError(f"synthmap: the number of echoes must be an integer >= 1, got {self.n_echoes!r}")
        if not 1 <= self.echoes_range[0] <= self.echoes_range[1]:
            raise ParameterError(f"synthmap: echoes_range must satisfy 1 <= low <= high, got {self.echoes_range}")
        lo, hi = self.snr_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ParameterError(f"synthmap: the SNR range must satisfy 0 < low <= high, got {lo:g} {hi:g}")
        if not 0 < self.refocus <= 360:
            raise ParameterError(f"synthmap: the refocusing angle must be in (0, 360] degrees, got {self.refocus}")
        if not (0 < self.b1_mean_range[0] <= self.b1_mean_range[1] and self.b1_amplitude_max >= 0
                and self.b1_mean_range[0] - self.b1_amplitude_max > 0):
            raise ParameterError("synthmap: the B1 field must stay > 0 (check b1_mean_range and b1_amplitude_max)")
        if not 0 <= self.fwhm_range[0] <= self.fwhm_range[1]:
            raise ParameterError(f"synthmap: fwhm_range must satisfy 0 <= low <= high voxels, got {self.fwhm_range}")
        if self.nodes < 1 or self.table_t2 < 2 or self.table_b1 < 2:
            raise ParameterError("synthmap: need nodes >= 1, table_t2 >= 2 and table_b1 >= 2")
        if self.method not in ("table", "exact"):
            raise ParameterError(f"synthmap: method must be 'table' or 'exact', got {self.method!r}")

    def replay_fields(self) -> dict[str, Any]:
        """The options that shape a sample beyond its draw (saved in the sidecar)."""
        return {"nodes": self.nodes, "table_t2": self.table_t2, "table_b1": self.table_b1, "method": self.method}


DEFAULT_CONFIG = SynthMapConfig()


# ---------------------------------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthMapPriors:
    """Per-class hyperpriors of the SynthMap tissue model, on qSynth's class table.

    Attributes
    ----------
    tissue
        qSynth's priors: class names, label values and PD (and R2/R1 of the single-pool head tissues).
    kinds
        Per class ``"background"``, ``"pools"`` (three pools, from the SynthMap file) or ``"single"``.
    table
        ``(classes, len(QUANTITIES), 4)``: ``mu_mu, sigma_mu, mu_sigma, sigma_sigma`` per quantity.
    width
        ``(classes, 3, 2)``: mean and sd of each pool's ln-T2 width.
    t1
        ``(classes, 3)``: pool T1, s.
    """

    tissue: TissuePriors
    kinds: tuple[str, ...]
    table: np.ndarray
    width: np.ndarray
    t1: np.ndarray

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.tissue.names)


def default_synthmap_priors_path() -> Path:
    """Path of the shipped SynthMap literature priors."""
    return Path(str(resources.files("qmricore").joinpath("data/synthmap_priors.json")))


def _hyper(entry: Any, where: str) -> list[float]:
    try:
        values = [float(entry[k]) for k in ("mu_mu", "sigma_mu", "mu_sigma", "sigma_sigma")]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{where}: missing or bad hyperprior entry {error}") from None
    if not all(math.isfinite(v) for v in values) or values[1] < 0 or values[3] < 0:
        raise InputError(f"{where}: hyperpriors must be finite with sigma_mu, sigma_sigma >= 0")
    return values


def synthmap_priors_from_dict(data: Mapping[str, Any], tissue: TissuePriors, path: object = None) -> SynthMapPriors:
    """Combine a SynthMap priors mapping (the JSON file's content) with qSynth's class table."""
    where = str(path) if path is not None else "synthmap priors"
    try:
        classes, pool_t1, single = data["classes"], data["t1"], data["single_pool"]
        t1_default = [float(pool_t1[p]) for p in POOLS]
        single_width = float(single["width"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{where}: missing or bad entry {error}") from None
    unknown = sorted(set(classes) - set(tissue.names))
    if unknown:
        raise InputError(f"{where}: classes {unknown} are not in the class table ({', '.join(tissue.names)})")
    background = tissue.names[tissue.index("background")] if "background" in tissue.names else None
    n = tissue.n_classes
    table = np.zeros((n, len(QUANTITIES), 4))
    width = np.zeros((n, len(POOLS), 2))
    t1 = np.ones((n, len(POOLS)))
    kinds = []
    for c, name in enumerate(tissue.names):
        table[c, 0] = tissue.prior(name, "pd").as_tuple()
        if name == background:
            kinds.append("background")
            table[c, 0] = 0.0
            table[c, 3:, 0] = (0.02, 0.08, 1.5)  # placeholders: no signal
            width[c, :, 0] = single_width
            continue
        if name in classes:
            kinds.append("pools")
            entry = classes[name]
            if not isinstance(entry, Mapping):
                raise InputError(f"{where}: class {name!r} must be a mapping of quantities")
            for q, quantity in enumerate(QUANTITIES[1:], start=1):
                table[c, q] = _hyper(entry.get(quantity), f"{where}: {name}.{quantity}")
            try:
                width[c] = [[float(v) for v in entry["width"][p]] for p in POOLS]
            except (KeyError, TypeError, ValueError) as error:
                raise InputError(f"{where}: {name}.width: missing or bad entry {error}") from None
            t1[c] = t1_default
            continue
        kinds.append("single")
        if "r2" not in tissue.parameters:
            raise InputError(f"{where}: head tissue {name!r} needs an r2 prior in the class table for its T2")
        r2 = np.array(tissue.prior(name, "r2").as_tuple())
        scale = r2[0] ** 2
        table[c, 3:, 0] = (0.02, 0.0, 1.5)
        table[c, 4] = (1.0 / r2[0], r2[1] / scale, r2[2] / scale, r2[3] / scale)  # delta method: T2 = 1/R2
        width[c, :, 0] = single_width
        t1[c] = 1.0 / tissue.prior(name, "r1").mu_mu
    if np.any(width < 0) or np.any(t1 <= 0):
        raise InputError(f"{where}: widths must be >= 0 and T1 > 0")
    return SynthMapPriors(tissue, tuple(kinds), table, width, t1)


@lru_cache(maxsize=1)
def _default_priors() -> SynthMapPriors:
    return load_synthmap_priors(default_synthmap_priors_path(), load_priors())


def load_synthmap_priors(path: str | Path | None = None, tissue: TissuePriors | None = None) -> SynthMapPriors:
    """Read SynthMap priors (default: the shipped ``synthmap_priors.json`` on the shipped class table)."""
    if path is None and tissue is None:
        return _default_priors()
    from ..io import read_json

    path = default_synthmap_priors_path() if path is None else Path(path)
    return synthmap_priors_from_dict(read_json(path, "SynthMap priors file"), tissue or load_priors(), path)


# ---------------------------------------------------------------------------------------------------------------
# Draw
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthMapDraw(JSONDraw):
    """Every random number of one SynthMap sample (replayable with :func:`apply_synthmap`).

    Attributes
    ----------
    classes
        Class names, in the class table's order.
    mu, sigma
        ``(classes, QUANTITIES)``: subject mean and within-subject std (p.u., fraction, s).
    width
        ``(classes, POOLS)``: sd of ln T2 within each pool.
    t1
        ``(classes, POOLS)``: pool T1, s.
    fwhm
        Texture FWHM per quantity, voxels.
    texture_seed, noise_seed
        Seeds of the texture and noise generators.
    b1_mean, b1_amplitude, b1_coefficients
        The B1 field (see :class:`SynthMapConfig`); ``B1_TERMS`` coefficients.
    te, n_echoes, refocus
        Echo spacing (s), echo count, nominal refocusing angle (degrees).
    snr
        First-echo reference signal over the noise sigma.
    """

    classes: tuple[str, ...]
    mu: tuple[tuple[float, ...], ...]
    sigma: tuple[tuple[float, ...], ...]
    width: tuple[tuple[float, ...], ...]
    t1: tuple[tuple[float, ...], ...]
    fwhm: tuple[float, ...]
    texture_seed: int
    b1_mean: float
    b1_amplitude: float
    b1_coefficients: tuple[float, ...]
    te: float
    n_echoes: int
    refocus: float
    snr: float
    noise_seed: int

    def to_dict(self) -> dict[str, Any]:
        """:func:`~qmricore.serialise.to_plain` plus the ``quantities`` and ``pools`` names, so that a sidecar
        says what the columns of ``mu``/``sigma``/``width``/``t1`` are."""
        return {**to_plain(self), "quantities": list(QUANTITIES), "pools": list(POOLS)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SynthMapDraw:
        """:func:`~qmricore.serialise.from_plain` (the column names are skipped), then the checks the field types
        cannot say: table shapes, finite numbers, the config's ranges, snr and t1 > 0."""
        if not isinstance(data, Mapping):
            raise InputError(f"not a SynthMap draw (a {type(data).__name__}, not a JSON object)")
        own = {k: v for k, v in data.items() if k not in ("quantities", "pools")}
        draw = from_plain(cls, own, error=lambda problem: InputError(f"not a SynthMap draw ({problem})"))
        values = {f.name: getattr(draw, f.name) for f in fields(cls)}
        n = len(values["classes"])
        shapes = {"mu": (n, len(QUANTITIES)), "sigma": (n, len(QUANTITIES)), "width": (n, len(POOLS)),
                  "t1": (n, len(POOLS)), "fwhm": (len(QUANTITIES),), "b1_coefficients": (B1_TERMS,)}
        for key, shape in shapes.items():
            if np.shape(values[key]) != shape:
                raise InputError(f"SynthMap draw: {key} has shape {np.shape(values[key])}, expected {shape}")
        numbers = np.concatenate([np.ravel(values[k]) for k in shapes] + [[values["te"], values["snr"]]])
        if not np.all(np.isfinite(numbers)):
            raise InputError("SynthMap draw holds non-finite numbers")
        SynthMapConfig(te=values["te"], n_echoes=values["n_echoes"], refocus=values["refocus"])  # range checks
        if not values["snr"] > 0 or min(np.ravel(values["t1"])) <= 0:
            raise InputError("SynthMap draw: snr and t1 must be > 0")
        return draw


def draw_synthmap(priors: SynthMapPriors, generator: torch.Generator | int,
                  config: SynthMapConfig | None = None) -> SynthMapDraw:
    """Draw one subject's tissue statistics, B1 field, echo timing, SNR and seeds (no volume work).

    Every number is always drawn in the same order (echo timing too, even when the config fixes it), so a
    seed gives the same subject whatever the config.  ``generator``: a torch generator, or an int seed for a
    CPU one.
    """
    config = config or DEFAULT_CONFIG
    generator = torch_generator(generator, "draw_synthmap")
    dev = generator.device
    n_cls, n_q = priors.table.shape[:2]
    z = torch.randn((2, n_cls, n_q), generator=generator, dtype=torch.float64, device=dev).cpu().numpy()
    zw = torch.randn((n_cls, len(POOLS)), generator=generator, dtype=torch.float64, device=dev).cpu().numpy()
    u = torch.rand(n_q + 5, generator=generator, dtype=torch.float64, device=dev).cpu().numpy()
    coefficients = torch.randn(B1_TERMS, generator=generator, dtype=torch.float64, device=dev).cpu().numpy()
    seeds = torch.randint(0, 2**31 - 1, (2,), generator=generator, device=dev).tolist()
    table = priors.table
    mu = table[..., 0] + table[..., 1] * z[0]
    sigma = np.abs(table[..., 2] + table[..., 3] * z[1])
    width = np.maximum(priors.width[..., 0] + priors.width[..., 1] * zw, 0.0)
    lo, hi = config.fwhm_range
    fwhm = lo + (hi - lo) * u[:n_q]
    u_b1_mean, u_b1_amp, u_te, u_echoes, u_snr = u[n_q:]
    b1_mean = config.b1_mean_range[0] + (config.b1_mean_range[1] - config.b1_mean_range[0]) * u_b1_mean
    te = config.te if config.te is not None else config.te_range[0] + (config.te_range[1] - config.te_range[0]) * u_te
    e_lo, e_hi = config.echoes_range
    n_echoes = config.n_echoes if config.n_echoes is not None else min(e_hi, e_lo + int(u_echoes * (e_hi - e_lo + 1)))
    snr = config.snr_range[0] + (config.snr_range[1] - config.snr_range[0]) * u_snr
    rows = lambda a: tuple(tuple(float(v) for v in r) for r in a)  # noqa: E731
    return SynthMapDraw(priors.names, rows(mu), rows(sigma), rows(width), rows(priors.t1),
                        tuple(float(v) for v in fwhm), int(seeds[0]), float(b1_mean),
                        float(config.b1_amplitude_max * u_b1_amp), tuple(float(v) for v in coefficients),
                        float(te), int(n_echoes), float(config.refocus), float(snr), int(seeds[1]))


# ---------------------------------------------------------------------------------------------------------------
# Apply
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthMapSample:
    """One generated sample (numpy, on the label map's grid).

    Attributes
    ----------
    echoes
        ``(X, Y, Z, n_echoes)`` float32 magnitude echo series (PD p.u. units; noisy unless asked otherwise).
    mwf
        True myelin water fraction (the myelin pool's fraction, 0-1), float32.
    t2
        Geometric-mean T2 of the voxel's true spectrum, ``exp(sum_pool f ln t2_pool)``, s (0 in background).
    b1
        Transmit field scale, float32.
    pd, fwf
        PD (p.u.) and free-water fraction, float32.
    sigma
        Rician noise sigma (0 without noise).
    """

    echoes: np.ndarray
    mwf: np.ndarray
    t2: np.ndarray
    b1: np.ndarray
    pd: np.ndarray
    fwf: np.ndarray
    sigma: float


def b1_field(shape: tuple[int, int, int], draw: SynthMapDraw) -> np.ndarray:
    """The draw's B1 field (float64): ``mean + amplitude * p / max|p|``, ``p`` quadratic in [-1, 1]³ coordinates."""
    x, y, z = (np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    p = np.zeros(shape)
    for c, term in zip(draw.b1_coefficients, terms, strict=True):
        p = p + c * term
    peak = float(np.abs(p).max())
    if peak > 0:
        p /= peak
    return draw.b1_mean + draw.b1_amplitude * p


def _quadrature(width: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite factors ``exp(width z_k)`` and weights (sum 1) of a Gaussian in ln T2 (one node at width 0)."""
    if width <= 0 or nodes == 1:
        return np.ones(1), np.ones(1)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return np.exp(width * z), w / w.sum()


def _trains(centre: np.ndarray, b1: np.ndarray, width: float, t1: float, draw: SynthMapDraw,
            nodes: int) -> np.ndarray:
    """``sum_k w_k cpmg(centre exp(width z_k), t1, b1t=b1)`` for broadcastable ``centre``, ``b1``: ``(..., n)``."""
    factors, weights = _quadrature(width, nodes)
    trains = cpmg(np.asarray(centre)[..., None] * factors, t1, te=draw.te, n_echoes=draw.n_echoes,
                  refocus=draw.refocus, b1t=np.asarray(b1)[..., None])
    return np.tensordot(weights, np.moveaxis(trains, -2, 0), axes=1)


def _axis(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ``n``-point grid over ``values``' range, each value's lower grid index and fraction to the next."""
    lo, hi = float(values.min()), float(values.max())
    grid = np.linspace(lo, hi, n)
    if hi <= lo:
        return grid, np.zeros(values.shape, np.int64), np.zeros(values.shape)
    t = (values - lo) * ((n - 1) / (hi - lo))
    i0 = np.clip(np.floor(t).astype(np.int64), 0, n - 2)
    return grid, i0, t - i0


def _pool_signal(centre: np.ndarray, b1: np.ndarray, width: float, t1: float, draw: SynthMapDraw,
                 config: SynthMapConfig) -> np.ndarray:
    """Echo trains ``(voxels, n)`` of one pool's spectrum for 1-D ``centre`` (s) and ``b1``."""
    if config.method == "exact":
        return _trains(centre, b1, width, t1, draw, config.nodes)
    log_grid, i, a = _axis(np.log(centre), config.table_t2)
    b1_grid, j, b = _axis(b1, config.table_b1)
    table = _trains(np.exp(log_grid)[:, None], b1_grid[None, :], width, t1, draw, config.nodes)  # (T, B, n)
    out = np.empty((centre.size, draw.n_echoes))
    for lo in range(0, centre.size, CHUNK_VOXELS):
        s = slice(lo, lo + CHUNK_VOXELS)
        ii, jj, aa, bb = i[s], j[s], a[s, None], b[s, None]
        out[s] = ((1 - aa) * ((1 - bb) * table[ii, jj] + bb * table[ii, jj + 1])
                  + aa * ((1 - bb) * table[ii + 1, jj] + bb * table[ii + 1, jj + 1]))
    return out


def class_index(labels: Any, priors: SynthMapPriors) -> np.ndarray:
    """Class index (int64) of every voxel of a hard label map, validated against the class table."""
    kind, index = class_weights(labels, priors.tissue)
    if kind != "hard":
        raise InputError("SynthMap needs a hard label map (integer labels, X,Y,Z), not class probabilities")
    return index.cpu().numpy()


def apply_synthmap(labels: Any, draw: SynthMapDraw, priors: SynthMapPriors | None = None,
                   config: SynthMapConfig | None = None, *, noise: bool = True) -> SynthMapSample:
    """Paint pools, B1 and the echo series of one :class:`SynthMapDraw` on a hard label map.

    Parameters
    ----------
    labels
        Integer labels (X, Y, Z) with the class table's values (numpy or torch; not modified).
    draw
        From :func:`draw_synthmap` or :meth:`SynthMapDraw.from_dict`.
    priors
        Only its class table is used (label values, class kinds); default: the shipped priors.
    config
        ``nodes``, ``table_t2``, ``table_b1`` and ``method`` (the draw holds everything else).
    noise
        Add Rician noise (``False``: the noise-free series, ``sigma`` = 0).

    Returns
    -------
    :class:`SynthMapSample`.  The same draw and labels give bit-identical arrays on the CPU.
    """
    priors = priors or _default_priors()
    config = config or DEFAULT_CONFIG
    if tuple(draw.classes) != priors.names:
        raise ParameterError(f"the draw's classes {list(draw.classes)} differ from the priors' {list(priors.names)}")
    index = class_index(labels, priors)
    shape = tuple(index.shape)
    flat = index.reshape(-1)

    # tissue: hierarchical values with smooth texture, kept physical
    generator = torch.Generator().manual_seed(int(draw.texture_seed))
    texture = smooth_noise(shape, draw.fwhm, generator, dtype=torch.float64).reshape(len(QUANTITIES), -1).numpy()
    mu, sigma = np.asarray(draw.mu), np.asarray(draw.sigma)
    values = {q: np.clip(mu[flat, k] + sigma[flat, k] * texture[k], *LIMITS[q]) for k, q in enumerate(QUANTITIES)}
    ie = np.clip(1.0 - values["mwf"] - values["fwf"], 0.0, None)
    total = values["mwf"] + values["fwf"] + ie
    fractions = (values["mwf"] / total, ie / total, values["fwf"] / total)
    centres = (values["t2_my"], values["t2_ie"], values["t2_fw"])
    is_background = np.array([k == "background" for k in priors.kinds])[flat]
    pd = np.where(is_background, 0.0, values["pd"])

    # B1 field
    b1 = b1_field(shape, draw).reshape(-1)

    # echo series: the pools' spectra through the EPG, class by class
    signal = np.zeros((flat.size, draw.n_echoes))
    counts = np.bincount(flat, minlength=len(priors.kinds))
    for c, kind in enumerate(priors.kinds):
        if kind == "background" or counts[c] == 0:
            continue
        voxels = np.flatnonzero(flat == c)
        for p in range(len(POOLS)):
            amplitude = pd[voxels] * fractions[p][voxels]
            if not amplitude.any():
                continue
            trains = _pool_signal(centres[p][voxels], b1[voxels], draw.width[c][p], draw.t1[c][p], draw, config)
            signal[voxels] += amplitude[:, None] * trains

    # true maps
    log_t2 = sum(f * np.log(t) for f, t in zip(fractions, centres, strict=True))
    t2 = np.where(is_background, 0.0, np.exp(log_t2))
    mwf = np.where(is_background, 0.0, fractions[0])

    # Rician noise at the drawn SNR (reference: white matter, else all tissue)
    noise_sigma = 0.0
    if noise:
        wm = priors.names.index("wm") if "wm" in priors.names else -1
        reference = (flat == wm) & (signal[:, 0] > 0)
        if not reference.any():
            reference = signal[:, 0] > 0
        if not reference.any():
            raise InputError("label map has no voxels with signal; cannot set the noise level from an SNR")
        noise_sigma = float(signal[reference, 0].mean()) / draw.snr
        noise_gen = torch.Generator().manual_seed(int(draw.noise_seed))
        signal = rician_noise(torch.from_numpy(signal.astype(np.float32)), noise_sigma, noise_gen).numpy()

    as_volume = lambda a: np.ascontiguousarray(a.reshape(shape), dtype=np.float32)  # noqa: E731
    return SynthMapSample(echoes=signal.reshape(*shape, draw.n_echoes).astype(np.float32), mwf=as_volume(mwf),
                          t2=as_volume(t2), b1=as_volume(b1), pd=as_volume(pd), fwf=as_volume(fractions[2]),
                          sigma=noise_sigma)


def generate_synthmap(labels: Any, generator: torch.Generator | int, priors: SynthMapPriors | None = None,
                      config: SynthMapConfig | None = None) -> tuple[SynthMapSample, SynthMapDraw]:
    """:func:`draw_synthmap` then :func:`apply_synthmap`; returns the sample and its draw."""
    priors = priors or _default_priors()
    config = config or DEFAULT_CONFIG
    draw = draw_synthmap(priors, generator, config)
    return apply_synthmap(labels, draw, priors, config), draw


def sidecar(draw: SynthMapDraw, config: SynthMapConfig | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON-safe record of a sample: format, draw, the config fields that shape it, and ``extra``."""
    config = config or DEFAULT_CONFIG
    return {"format": SIDECAR_FORMAT, **extra, "config": config.replay_fields(), "draw": draw.to_dict()}


def regenerate(labels: Any, record: Mapping[str, Any], priors: SynthMapPriors | None = None) -> SynthMapSample:
    """Replay a sample from its :func:`sidecar` record (bit-exact on the CPU)."""
    if not isinstance(record, Mapping) or record.get("format") != SIDECAR_FORMAT:
        raise InputError(f"not a SynthMap sample record (format is not {SIDECAR_FORMAT!r})")
    try:
        config = SynthMapConfig(**dict(record["config"]))
    except (KeyError, TypeError) as error:
        raise InputError(f"SynthMap sample record: bad config ({error})") from None
    return apply_synthmap(labels, SynthMapDraw.from_dict(record["draw"]), priors, config)
