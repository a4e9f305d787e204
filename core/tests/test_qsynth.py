"""qSynth label -> maps generator and training-sequence sampler (SPEC §5, §6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from qmricore import protocols
from qmricore.errors import InputError, ParameterError
from qmricore.generators import (
    PARAMETERS,
    MapDraw,
    ParameterPrior,
    QSynthConfig,
    SequenceDraw,
    TissuePriors,
    apply_maps,
    draw_maps,
    draw_qatlas_mprage,
    draw_sequence,
    load_priors,
    mprage_readouts,
    sample_maps,
)
from qmricore.physics import check_parameters
from qmricore.physics.sequences import centre_index


@pytest.fixture(autouse=True)
def one_thread():
    """Run like a DataLoader worker (one intra-op thread): small FFTs on an oversubscribed shared CPU
    otherwise spend most of their time waiting for the thread pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_priors(rows: dict[str, tuple[float, float, float, float]], names=("background", "a", "b")) -> TissuePriors:
    """Priors where every map of every non-background class uses ``rows[param]``."""
    bg = {p: ParameterPrior(0.0 if p == "pd" else 1.0, 0.0, 0.0, 0.0) for p in PARAMETERS}
    per = [bg] + [{p: ParameterPrior(*rows[p]) for p in PARAMETERS} for _ in names[1:]]
    return TissuePriors(tuple(names), tuple(range(len(names))), tuple(per))


def phantom(n: int = 24) -> torch.Tensor:
    """Concentric spheres with the default class labels (0 bg, 5 non-brain, 1 GM, 3 PV, 2 WM, 4 CSF)."""
    x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
    r = (x.view(-1, 1, 1) ** 2 + x.view(1, -1, 1) ** 2 + x.view(1, 1, -1) ** 2).sqrt()
    lab = torch.zeros((n, n, n), dtype=torch.long)
    for radius, value in ((0.48, 5), (0.4, 1), (0.33, 3), (0.3, 2), (0.1, 4)):
        lab[r < radius * n] = value
    return lab


# ------------------------------------------------------------------------------------------------ draw_maps


def test_draw_maps_subject_means_and_sigmas_follow_the_hierarchy():
    rows = {"pd": (70.0, 4.0, 0.5, 1.0), "r1": (1.0, 0.1, 0.05, 0.02), "r2s": (20.0, 2.0, 3.0, 1.0),
            "mt": (1.5, 0.2, 0.3, 0.1)}
    priors = make_priors(rows)
    g = gen(0)
    n = 2000
    draws = [draw_maps(priors, g) for _ in range(n)]
    mu = np.array([d.mu for d in draws])  # (n, C, P)
    sigma = np.array([d.sigma for d in draws])
    for p, name in enumerate(PARAMETERS):
        mu_mu, sigma_mu, mu_sigma, sigma_sigma = rows[name]
        m = mu[:, 1, p]
        # subject means ~ N(mu_mu, sigma_mu): KS test on the standardised values, and moment checks
        assert stats.kstest((m - mu_mu) / sigma_mu, "norm").pvalue > 1e-4
        assert abs(m.mean() - mu_mu) < 5 * sigma_mu / math.sqrt(n)
        assert abs(m.std(ddof=1) / sigma_mu - 1) < 5 / math.sqrt(2 * n)
        # sigmas ~ |N(mu_sigma, sigma_sigma)|: folded-normal mean (fails for clamp-at-zero or no folding)
        s = sigma[:, 1, p]
        assert (s >= 0).all()
        a = mu_sigma / sigma_sigma
        folded_mean = (sigma_sigma * math.sqrt(2 / math.pi) * math.exp(-a * a / 2)
                       + mu_sigma * (1 - 2 * stats.norm.cdf(-a)))
        folded_var = mu_sigma**2 + sigma_sigma**2 - folded_mean**2
        assert abs(s.mean() - folded_mean) < 5 * math.sqrt(folded_var / n)
        assert stats.kstest(s, stats.foldnorm(c=a, scale=sigma_sigma).cdf).pvalue > 1e-4
    # the background (all spreads 0) is exact
    assert np.all(mu[:, 0, 0] == 0.0) and np.all(sigma[:, 0] == 0.0)
    fwhm = np.array([d.fwhm for d in draws])
    lo, hi = QSynthConfig().fwhm_range
    assert fwhm.min() >= lo and fwhm.max() <= hi and abs(fwhm.mean() - (lo + hi) / 2) < 0.1


def test_the_spread_of_class_means_across_subjects_is_sigma_mu_not_sigma_over_sqrt_n():
    # fails if the hierarchy is collapsed (every subject at mu_mu): then the spread is ~ sigma / sqrt(n_vox)
    rows = {"pd": (60.0, 5.0, 2.0, 0.2), "r1": (1.0, 0.1, 0.05, 0.01), "r2s": (20.0, 2.0, 1.0, 0.1),
            "mt": (2.0, 0.3, 0.1, 0.01)}
    priors = make_priors(rows)
    lab = torch.zeros((12, 12, 12), dtype=torch.long)
    lab[2:10, 2:10, 2:10] = 1
    lab[4:8, 4:8, 4:8] = 2
    g = gen(1)
    n = 200
    means = np.array([[float(m[p][lab == 1].mean()) for p in PARAMETERS]
                      for m, _ in (sample_maps(lab, priors, g, QSynthConfig(fwhm_range=(1.0, 1.0))) for _ in range(n))])
    for p, name in enumerate(PARAMETERS):
        ratio = means[:, p].std(ddof=1) / rows[name][1]
        assert 0.8 < ratio < 1.2, (name, ratio)


def test_apply_maps_class_statistics_match_the_draw():
    priors = load_priors()
    lab = torch.zeros((32, 32, 32), dtype=torch.long)
    lab[:, :16] = 1  # GM
    lab[:, 16:] = 2  # WM
    lab[0] = 0
    draw = draw_maps(priors, gen(3), QSynthConfig(fwhm_range=(1.0, 1.0)))
    maps = apply_maps(lab, priors, draw)
    for c in (1, 2):
        for p, name in enumerate(PARAMETERS):
            v = maps[name][lab == c].double()
            mu, sigma = draw.mu[c][p], draw.sigma[c][p]
            assert abs(float(v.mean()) - mu) < 0.1 * sigma, (c, name)
            assert abs(float(v.std()) / sigma - 1) < 0.1, (c, name)
    assert torch.all(maps["pd"][lab == 0] == 0)
    for m in maps.values():
        assert m.dtype == torch.float32 and m.shape == lab.shape


def test_voxel_values_are_physical():
    # priors that would give negative PD and rates and MT outside [0, 100] without the floors
    rows = {"pd": (-5.0, 1.0, 10.0, 1.0), "r1": (0.0, 0.1, 1.0, 0.1), "r2s": (0.0, 1.0, 5.0, 1.0),
            "mt": (50.0, 10.0, 60.0, 5.0)}
    cfg = QSynthConfig()
    maps, _ = sample_maps(phantom(16).clamp(max=2), make_priors(rows), gen(4), cfg)
    assert float(maps["pd"].min()) == cfg.pd_min
    assert float(maps["r1"].min()) == pytest.approx(cfg.r1_min)
    assert float(maps["r2s"].min()) == pytest.approx(cfg.r2s_min)
    assert float(maps["mt"].min()) == 0.0 and float(maps["mt"].max()) == 100.0
    # and the shipped priors over many subjects
    priors, lab = load_priors(), phantom(16)
    g = gen(5)
    for _ in range(20):
        maps, _ = sample_maps(lab, priors, g)
        assert float(maps["pd"].min()) >= 0 and float(maps["r1"].min()) > 0 and float(maps["r2s"].min()) > 0
        assert 0 <= float(maps["mt"].min()) and float(maps["mt"].max()) <= 100
        assert all(bool(torch.isfinite(m).all()) for m in maps.values())


def test_texture_is_spatially_smooth():
    rows = {"pd": (60.0, 0.0, 5.0, 0.0), "r1": (1.0, 0.0, 0.1, 0.0), "r2s": (20.0, 0.0, 2.0, 0.0),
            "mt": (2.0, 0.0, 0.2, 0.0)}
    priors = make_priors(rows, names=("background", "a"))
    lab = torch.ones((32, 32, 32), dtype=torch.long)
    for fwhm in (0.0, 3.0):
        draw = draw_maps(priors, gen(6), QSynthConfig(fwhm_range=(fwhm, fwhm)))
        z = (apply_maps(lab, priors, draw)["pd"] - 60.0) / 5.0
        corr = float((z[1:] * z[:-1]).mean() / (z * z).mean())
        s = fwhm / math.sqrt(8 * math.log(2))
        expected = math.exp(-1 / (4 * s * s)) if fwhm > 0 else 0.0  # Gaussian autocorrelation at one voxel
        assert abs(corr - expected) < 0.08, (fwhm, corr, expected)


def test_seeded_reproducibility_is_bit_exact():
    priors, lab = load_priors(), phantom(20)
    a, da = sample_maps(lab, priors, gen(7))
    b, db = sample_maps(lab, priors, gen(7))
    c, _ = sample_maps(lab, priors, gen(8))
    assert da == db
    assert all(torch.equal(a[k], b[k]) for k in PARAMETERS)
    assert not torch.equal(a["r1"], c["r1"])


def test_map_draw_json_round_trip_regenerates_identical_maps():
    priors, lab = load_priors(), phantom(20)
    maps, draw = sample_maps(lab, priors, gen(9))
    text = json.dumps(draw.to_dict())
    again = MapDraw.from_dict(json.loads(text))
    assert again == draw
    replay = apply_maps(lab.numpy(), priors, again)  # numpy labels work too
    assert all(torch.equal(maps[k], replay[k]) for k in PARAMETERS)


def test_soft_labels_mix_classes_per_voxel():
    rows = {"pd": (60.0, 5.0, 3.0, 0.5), "r1": (1.0, 0.2, 0.05, 0.01), "r2s": (20.0, 3.0, 1.0, 0.1),
            "mt": (2.0, 0.5, 0.1, 0.01)}
    priors = make_priors(rows)
    draw = draw_maps(priors, gen(10))
    shape = (10, 10, 10)
    ones = torch.ones(shape, dtype=torch.long)
    v1, v2 = apply_maps(ones, priors, draw), apply_maps(2 * ones, priors, draw)
    soft = torch.zeros((3, *shape))
    soft[1], soft[2] = 0.5, 0.5
    mixed = apply_maps(soft, priors, draw)
    onehot = torch.nn.functional.one_hot(ones, 3).permute(3, 0, 1, 2).float()
    same = apply_maps(onehot, priors, draw)
    for k in PARAMETERS:
        assert torch.allclose(mixed[k], 0.5 * (v1[k] + v2[k]), rtol=1e-5, atol=1e-5)
        lo, hi = torch.minimum(v1[k], v2[k]), torch.maximum(v1[k], v2[k])
        assert bool(((mixed[k] >= lo - 1e-4) & (mixed[k] <= hi + 1e-4)).all())
        assert torch.allclose(same[k], v1[k], rtol=1e-6, atol=1e-6)


def test_sliced_and_whole_volume_painting_agree():
    # one intra-op thread paints hard labels slice by slice; several threads use whole-volume gathers
    priors, lab = load_priors(), phantom(40)  # 64000 voxels: several slices
    draw = draw_maps(priors, gen(16))
    sliced = apply_maps(lab, priors, draw)
    torch.set_num_threads(2)
    whole = apply_maps(lab, priors, draw)
    torch.set_num_threads(1)
    for k in PARAMETERS:
        torch.testing.assert_close(sliced[k], whole[k], rtol=1e-6, atol=1e-6)


def test_integral_float_hard_labels_are_accepted():
    priors, lab = load_priors(), phantom(12)
    draw = draw_maps(priors, gen(11))
    a = apply_maps(lab, priors, draw)
    b = apply_maps(lab.float().numpy(), priors, draw)
    assert all(torch.equal(a[k], b[k]) for k in PARAMETERS)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros((8, 8, 8), dtype=torch.long), "label map is empty"),
        (torch.full((8, 8, 8), 99, dtype=torch.long), "unknown label value(s) [99]"),
        (torch.full((8, 8, 8), 0.5), "non-integer values"),
        (torch.full((load_priors().n_classes, 8, 8, 8), 0.2), "soft label map does not sum to one"),
        (torch.full((3, 8, 8, 8), 1 / 3), "soft label map has 3 channels"),
        (torch.zeros((8, 8), dtype=torch.long), "must be 3D integer labels"),
        (-torch.ones((8, 8, 8), dtype=torch.long), "negative values"),
    ],
)
def test_bad_label_maps_are_rejected_by_message(labels, message):
    priors = load_priors()
    with pytest.raises(InputError) as info:
        apply_maps(labels, priors, draw_maps(priors, gen(0)))
    assert message in str(info.value)


def test_unknown_labels_are_listed_together():
    lab = phantom(12)
    lab[0, 0, 0], lab[0, 0, 1] = 17, 42
    with pytest.raises(InputError, match=r"unknown label value\(s\) \[17, 42\]"):
        sample_maps(lab, load_priors(), gen(0))


def test_bad_draws_are_rejected():
    priors = load_priors()
    with pytest.raises(InputError, match="not a qSynth map draw"):
        MapDraw.from_dict({"classes": ["gm"], "mu": {}})
    data = draw_maps(priors, gen(0)).to_dict()
    data["sigma"]["gm"]["pd"] = -1.0
    with pytest.raises(InputError, match="sigma and fwhm must be >= 0"):
        MapDraw.from_dict(data)
    other = make_priors({p: (1.0, 0.0, 0.0, 0.0) for p in PARAMETERS})
    with pytest.raises(ParameterError, match="classes"):
        apply_maps(phantom(8), priors, draw_maps(other, gen(0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_apply_maps_on_the_gpu():
    priors, lab = load_priors(), phantom(24).cuda()
    draw = draw_maps(priors, gen(12))
    a, b = apply_maps(lab, priors, draw), apply_maps(lab, priors, draw)
    cpu = apply_maps(lab.cpu(), priors, draw)
    for k in PARAMETERS:
        assert a[k].is_cuda and torch.equal(a[k], b[k])
        # same means per class (texture noise differs between devices)
        for c in (1, 2):
            assert float(a[k][lab == c].mean()) == pytest.approx(float(cpu[k][lab.cpu() == c].mean()),
                                                                rel=0.05, abs=0.5 * max(draw.sigma[c]))


# ------------------------------------------------------------------------------------------- sequences


def test_sequence_sampler_draws_only_feasible_parameters_with_the_spec_distributions():
    g = gen(13)
    n = 5000
    draws = [draw_sequence(g) for _ in range(n)]
    by_seq: dict[str, list[dict]] = {}
    for d in draws:
        check_parameters(d.sequence, d.params)  # raises if infeasible
        by_seq.setdefault(d.sequence, []).append(dict(d.params))
    assert set(by_seq) == {"gre", "fse", "flair", "mprage"}
    for s, rows in by_seq.items():  # uniform choice: 1250 +- 5 sd
        assert abs(len(rows) - n / 4) < 5 * math.sqrt(n * 0.25 * 0.75), s
    flair = np.log10([r["te"] for r in by_seq["flair"]])
    assert abs(flair.mean() - math.log10(0.02)) < 0.01 and abs(flair.std() - 0.1) < 0.01
    assert all(r["ti"] + r["te"] < r["tr"] for r in by_seq["flair"])
    assert all(r["te"] < r["tr"] for s in ("gre", "fse") for r in by_seq[s])
    gre = np.array([r["flip"] for r in by_seq["gre"]])
    assert gre.min() >= 5 and gre.max() <= 50 and abs(gre.mean() - 27.5) < 1.5
    gre_te = np.log([r["te"] for r in by_seq["gre"]])
    assert gre_te.min() >= math.log(0.002) - 1e-9 and gre_te.max() <= math.log(0.08) + 1e-9
    mprage = by_seq["mprage"]
    tr = np.array([r["tr"] for r in mprage])
    assert abs(tr.mean() - 2.3) < 0.03 and abs(tr.std() - 0.23) < 0.03
    for r in mprage:
        n_, tx, ti = r["n"], r["tx"], r["ti"]
        assert isinstance(n_, int) and n_ % 2 == 0 and 2 <= n_ <= 256
        k = centre_index(n_)
        assert ti - (k - 1) * tx >= 0 and r["tr"] - ti - (n_ - k + 1) * tx >= 0
        # the largest feasible even count
        assert n_ == 256 or ti - n_ / 2 * tx - tx < 0 or r["tr"] - ti - (n_ / 2 + 1) * tx < 0


def test_sequence_subset_and_draw_round_trip():
    g = gen(14)
    draws = [draw_sequence(g, sequences=("flair",)) for _ in range(50)]
    assert {d.sequence for d in draws} == {"flair"}
    d = draws[0]
    assert SequenceDraw.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(ParameterError, match="TE"):
        SequenceDraw.from_dict({"sequence": "gre", "params": {"tr": 0.01, "te": 0.02, "flip": 10}})
    with pytest.raises(ParameterError):
        draw_sequence(g, sequences=())


def test_qatlas_mprage_draws():
    g = gen(15)
    ranges = protocols.sampling_ranges("qatlas_mprage")
    for _ in range(500):
        draw, b0 = draw_qatlas_mprage(g)
        p = draw.params
        assert draw.sequence == "mprage"
        check_parameters("mprage", p)
        assert ranges["b0"]["low"] <= b0 <= ranges["b0"]["high"]
        assert ranges["ti"]["low"] <= p["ti"] <= ranges["ti"]["high"]
        assert ranges["tr"]["low"] <= p["tr"] <= ranges["tr"]["high"]
        assert p["n"] == mprage_readouts(p["tr"], p["ti"], p["tx"])


def test_mprage_readouts():
    assert mprage_readouts(2.3, 0.9, 0.007) == 256
    assert mprage_readouts(2.0, 0.5, 0.01) == 100  # n/2 <= 0.5/0.01
    assert mprage_readouts(1.0, 0.9, 0.01) == 20  # n/2 <= (1.0-0.9)/0.01
    assert mprage_readouts(1.0, 0.995, 0.01) == 0


def test_clinical_draws_are_jittered_shipped_presets():
    from qmricore.generators.qsynth import draw_clinical_sequence
    from qmricore.physics import check_parameters
    from qmricore.protocols import preset

    flair = preset("3T FLAIR")[1]
    logs = []
    for seed in range(300):
        draw = draw_clinical_sequence(seed, ("flair",), jitter_decades=0.05)
        assert draw.sequence == "flair" and set(draw.params) == set(flair)
        check_parameters("flair", dict(draw.params))
        logs += [math.log10(draw.params[k] / flair[k]) for k in flair]
    assert draw_clinical_sequence(7, ("flair",)) == draw_clinical_sequence(7, ("flair",))
    # log10 jitter ~ N(0, 0.05): the mean within 4 standard errors, the SD within 10 %
    assert abs(np.mean(logs)) < 4 * 0.05 / math.sqrt(len(logs))
    assert 0.045 < np.std(logs) < 0.055


def test_pipeline_clinical_prob_switches_the_acquisition_and_keeps_the_old_stream_at_zero():
    from qmricore.generators.pipeline import PipelineConfig, draw_sample
    from qmricore.generators.qsynth import draw_sequence

    labels = torch.zeros((12, 12, 12), dtype=torch.int64)
    labels[2:10, 2:10, 2:10] = 2
    labels[4:8, 4:8, 4:8] = 1
    base = PipelineConfig(sequences=("flair",))
    clinical = PipelineConfig(sequences=("flair",), clinical_prob=1.0)
    tes = [draw_sample(labels, clinical, s).sequence.params["te"] for s in range(20)]
    assert min(tes) > 0.07  # the 3T FLAIR preset's 100 ms, jittered
    spec = [draw_sample(labels, base, s).sequence.params["te"] for s in range(20)]
    assert max(spec) < 0.05  # SPEC §5's FLAIR TE ~ logN(20 ms, 0.1 decade)
    # clinical_prob 0 draws no extra number: the sequence of seed s is what it always was
    from qmricore.generators.pipeline import _streams, _torch_generator

    expected = draw_sequence(_torch_generator(_streams(3)["sequence"]), ("flair",))
    assert draw_sample(labels, base, 3).sequence == expected
