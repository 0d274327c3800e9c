"""Calibration tests on a toy Gaussian problem whose posterior is known exactly.

Prior mu ~ N(0, 1), observation y = mu + N(0, 1) => posterior N(y / 2, 1 / 2).
The correct sampler draws from it; the "over-dispersed" one doubles its std,
the "under-dispersed" one halves it, the "biased" one shifts it by 0.5.
"""

import json

import numpy as np
import pytest

from keras_dmdiff.stats import aperture_mass_ranks
from keras_dmdiff.stats import calibration_verdict
from keras_dmdiff.stats import coverage_curve
from keras_dmdiff.stats import interval_coverage
from keras_dmdiff.stats import normalized_rank
from keras_dmdiff.stats import pixel_ranks
from keras_dmdiff.stats import power_spectrum_ranks
from keras_dmdiff.stats import rank_histogram
from keras_dmdiff.stats import rank_statistic
from keras_dmdiff.stats import rank_uniformity_pvalue
from keras_dmdiff.stats import tarp_coverage

pytestmark = pytest.mark.backend_independent

NUM_PROBLEMS = 3000
NUM_DIMS = 3
NUM_SAMPLES = 99


def toy_problem(seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(NUM_PROBLEMS, NUM_DIMS))
    y = mu + rng.normal(size=mu.shape)
    return rng, mu, y / 2.0, np.sqrt(0.5)


def toy_samples(kind, seed=0):
    rng, truth, post_mean, post_std = toy_problem(seed)
    scale = {"correct": 1.0, "over": 2.0, "under": 0.5, "biased": 1.0}[kind]
    shift = 0.5 if kind == "biased" else 0.0
    noise = rng.normal(size=(NUM_SAMPLES,) + truth.shape)
    return post_mean + shift + scale * post_std * noise, truth


@pytest.mark.parametrize(
    "kind,verdict",
    [
        ("correct", "calibrated"),
        ("over", "over-dispersed"),
        ("under", "under-dispersed"),
        ("biased", "biased"),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_verdict_flags_each_sampler(kind, verdict, seed):
    samples, truth = toy_samples(kind, seed)
    out = calibration_verdict(samples, truth)
    assert out["verdict"] == verdict
    json.dumps(out)  # goes straight into the metrics file
    if kind == "correct":
        assert out["coverage_error"] < 0.02
    if kind in ("over", "under"):
        assert out["coverage_error"] > 0.15  # far beyond the 0.05 tolerance


def test_coverage_of_correct_sampler_matches_levels():
    samples, truth = toy_samples("correct", seed=2)
    out = interval_coverage(samples, truth)
    np.testing.assert_allclose(out["levels"], [0.5, 0.68, 0.9, 0.95])
    np.testing.assert_allclose(out["coverage"], out["levels"], atol=0.02)
    over = interval_coverage(*toy_samples("over", seed=2))["coverage"]
    under = interval_coverage(*toy_samples("under", seed=2))["coverage"]
    assert np.all(over > out["levels"] + 0.04)
    assert np.all(under < out["levels"] - 0.1)
    # Known values: a 2x too wide interval of level l covers P(|z| < 2 z_l).
    # (with 99 draws the noisy empirical CDF lowers the first by ~0.01).
    assert over[1] == pytest.approx(0.9534, abs=0.02)  # 68 % -> |z| < 1.99
    assert under[1] == pytest.approx(0.3829, abs=0.02)  # 68 % -> |z| < 0.497


def test_coverage_curve_is_diagonal_for_correct_sampler():
    samples, truth = toy_samples("correct", seed=3)
    curve = coverage_curve(samples, truth, num_levels=9)
    assert curve["levels"].shape == (9,)
    np.testing.assert_allclose(curve["coverage"], curve["levels"], atol=0.025)


def test_sample_axis_and_coverage_are_transform_invariant():
    samples, truth = toy_samples("correct", seed=4)
    cov = interval_coverage(samples, truth)["coverage"]
    moved = interval_coverage(np.moveaxis(samples, 0, -1), truth, sample_axis=-1)["coverage"]
    expd = interval_coverage(np.exp(samples), np.exp(truth))["coverage"]  # monotone map
    np.testing.assert_allclose(moved, cov)
    np.testing.assert_allclose(expd, cov)


def test_rank_histograms_shape_by_sampler():
    results = {}
    for kind in ("correct", "over", "under"):
        samples, truth = toy_samples(kind, seed=5)
        ranks = rank_statistic(samples, truth)
        assert ranks.shape == truth.shape and ranks.min() >= 0 and ranks.max() <= NUM_SAMPLES
        counts, expected = rank_histogram(ranks, NUM_SAMPLES, num_bins=10)
        assert counts.sum() == ranks.size
        np.testing.assert_allclose(expected, ranks.size / 10)
        results[kind] = (counts, expected)
    counts, expected = results["correct"]
    assert rank_uniformity_pvalue(counts, expected) > 1e-3
    # Over-dispersed: truths pile up in the middle ranks; under-dispersed: at both ends.
    c, e = results["over"]
    assert c[4:6].sum() > 1.5 * e[4:6].sum() and c[[0, -1]].sum() < 0.3 * e[[0, -1]].sum()
    c, e = results["under"]
    assert c[[0, -1]].sum() > 2 * e[[0, -1]].sum()
    assert rank_uniformity_pvalue(c, e) < 1e-10


def test_rank_histogram_per_feature_and_uneven_bins():
    ranks = np.tile(np.arange(11), (3, 1)).T  # [11, 3]: each rank 0..10 once per feature
    counts, expected = rank_histogram(ranks, 10, num_bins=4, feature_axis=-1)
    assert counts.shape == expected.shape == (3, 4)
    # 11 rank values over 4 bins: 3, 3, 3, 2 values per bin (floor(v * 4 / 11)).
    np.testing.assert_array_equal(counts[0], [3, 3, 3, 2])
    np.testing.assert_allclose(expected[0], [3, 3, 3, 2])
    with pytest.raises(ValueError, match="Ranks"):
        rank_histogram(np.array([11]), 10)


def test_ties_are_broken_uniformly():
    # Discrete draws in {0, 1, 2}: truth == some draws often. Ranks must stay uniform.
    rng = np.random.default_rng(6)
    samples = rng.integers(0, 3, size=(9, 20000)).astype(float)
    truth = rng.integers(0, 3, size=20000).astype(float)
    ranks = rank_statistic(samples, truth, seed=1)
    counts, expected = rank_histogram(ranks, 9)
    assert rank_uniformity_pvalue(counts, expected) > 1e-3
    u = normalized_rank(samples, truth)
    assert abs(u.mean() - 0.5) < 0.01


def test_rank_statistic_exact_small_case():
    samples = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
    np.testing.assert_array_equal(rank_statistic(samples, np.array([1.5, -1.0])), [2, 0])
    np.testing.assert_allclose(normalized_rank(samples, np.array([1.5, 8.0])), [2.5 / 4, 3.5 / 4])


def test_tarp_flags_miscalibration():
    out = {}
    for kind in ("correct", "over", "under"):
        samples, truth = toy_samples(kind, seed=7)
        out[kind] = tarp_coverage(samples, truth, num_references=2, seed=0)
    ok = out["correct"]
    assert ok["levels"][0] == 0.0 and ok["levels"][-1] == 1.0
    assert ok["coverage"][0] == 0.0 and ok["coverage"][-1] == 1.0
    assert ok["max_error"] < 0.04
    assert out["over"]["max_error"] > 0.15
    assert out["under"]["max_error"] > 0.15
    # Over-dispersed: the truth is typical, f concentrates at mid values (ECP
    # below the diagonal at small alpha); under-dispersed: f piles at 0 and 1.
    assert np.var(out["over"]["f"]) < 1 / 12 - 0.02
    assert np.var(out["under"]["f"]) > 1 / 12 + 0.02


def test_tarp_input_errors():
    with pytest.raises(ValueError, match="TARP"):
        tarp_coverage(np.zeros((5, 4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="n >= 2"):
        tarp_coverage(np.zeros((5, 1, 2)), np.zeros((1, 2)))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: rank_statistic(np.zeros((5, 3)), np.zeros(4)), "shape"),
        (lambda: rank_statistic(np.zeros((1, 3)), np.zeros(3)), "at least 2"),
        (lambda: rank_statistic(np.full((5, 3), np.nan), np.zeros(3)), "finite"),
        (lambda: interval_coverage(np.zeros((5, 3)), np.zeros(3), levels=(0.5, 1.0)), "levels"),
    ],
)
def test_calibration_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- map features: pixels, P(k) bins, aperture masses --------------------------


def smooth_fields(rng, shape, n=32):
    """Positive, spatially correlated maps (a lognormal of a smoothed field)."""
    white = rng.normal(size=shape + (n, n))
    k = np.fft.fftfreq(n)
    kr = np.fft.rfftfreq(n)
    kernel = np.exp(-((k[:, None] ** 2 + kr[None, :] ** 2) / 0.01))
    g = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(n, n))
    return np.exp(g / g.std())


def test_map_feature_ranks_for_exchangeable_and_too_narrow_samplers():
    # Truth and samples drawn from the same distribution (a "posterior" equal to
    # the prior is calibrated); then samples with a 3x smaller log-amplitude.
    rng = np.random.default_rng(8)
    num_maps, num_samples = 60, 19
    truth = smooth_fields(rng, (num_maps,))
    samples = smooth_fields(rng, (num_samples, num_maps))
    k, pk_ranks = power_spectrum_ranks(samples, truth, bins="log", num_bins=6)
    assert pk_ranks.shape == (num_maps, k.size)
    counts, expected = rank_histogram(pk_ranks, num_samples, num_bins=5)
    assert rank_uniformity_pvalue(counts, expected) > 1e-3
    centres = [[5.0, 5.0], [12.5, 20.0], [20.0, 10.0]]
    ap = aperture_mass_ranks(samples, truth, centres, radius=2.0, box_size=25.0)
    assert ap.shape == (num_maps, 3)
    counts, expected = rank_histogram(ap, num_samples, num_bins=5)
    assert rank_uniformity_pvalue(counts, expected) > 1e-3
    px = pixel_ranks(samples, truth, max_pixels=5000, seed=0)
    assert px.shape == (5000,)
    assert calibration_verdict(samples, truth)["verdict"] == "calibrated"
    # Too narrow: the same maps with log-amplitude / 3 (less power, narrower PDF).
    narrow = np.exp(np.log(samples) / 3.0)
    _, narrow_ranks = power_spectrum_ranks(narrow, truth, bins="log", num_bins=6)
    assert np.mean(narrow_ranks == num_samples) > 0.9  # truth has more power than all draws
    assert calibration_verdict(narrow, truth)["verdict"] == "under-dispersed"


# ---------------------------------------------------------------- Fourier calibration
def _gaussian_posterior_fields(num_maps=24, num_samples=4, size=64, seed=0):
    """Truth and samples of an exactly known Gaussian posterior, one field per map.

    truth = m + e and sample = m + e' with m, e, e' independent white fields of
    variances 1, v, v: every sample is a draw of p(truth | m).
    """
    from keras_dmdiff.stats import cross_correlation

    rng = np.random.default_rng(seed)
    v = 0.6
    r_single, r_mean = [], []
    for _ in range(num_maps):
        m = rng.normal(size=(size, size))
        truth = 10 + m + np.sqrt(v) * rng.normal(size=(size, size))
        samples = 10 + m + np.sqrt(v) * rng.normal(size=(num_samples, size, size))
        k, r_each, _ = cross_correlation(samples, truth, 25.0, bins="log")
        r_single.append(r_each.mean(axis=0))
        r_mean.append(cross_correlation(samples.mean(axis=0), truth, 25.0, bins="log")[1])
    return k, np.nanmean(r_single, axis=0), np.nanmean(r_mean, axis=0), v


def test_fourier_calibration_passes_an_exact_posterior_and_flags_a_collapsed_one():
    from keras_dmdiff.stats import fourier_calibration, predicted_mean_correlation

    k, r_single, r_mean, v = _gaussian_posterior_fields()
    # rho = 1 / (1 + v) for these fields; the formula's prediction for N = 4:
    rho = 1 / (1 + v)
    expected = rho / np.sqrt(rho + (1 - rho) / 4)
    np.testing.assert_allclose(predicted_mean_correlation(rho, 4), expected)
    assert float(predicted_mean_correlation(rho, 1)) == pytest.approx(rho)
    good = fourier_calibration(k, r_single, r_mean, 4, k_max=40.0)
    assert good["verdict"] == "calibrated" and good["max_difference"] < 0.05
    # Samples that all equal their mean (no spread): r of the mean = r of one sample < prediction.
    collapsed = fourier_calibration(k, r_single, r_single, 4, k_max=40.0)
    assert collapsed["verdict"] == "under-dispersed"
    assert collapsed["max_difference"] == pytest.approx(np.max(np.abs(predicted_mean_correlation(r_single, 4) - r_single)))


def test_grid_edge_ratio_sees_blocks_and_not_smooth_noise():
    from keras_dmdiff.stats import grid_edge_ratio

    rng = np.random.default_rng(1)
    noise = 10 ** (11 + 0.1 * rng.normal(size=(3, 64, 64)))
    assert grid_edge_ratio(noise, 16) == pytest.approx(1.0, abs=0.05)
    # A step of 0.3 dex at every 16-pixel block boundary on top of the noise.
    blocks = np.kron(rng.normal(size=(3, 4, 4)), np.ones((16, 16))) * 0.3
    blocky = noise * 10**blocks
    assert grid_edge_ratio(blocky, 16) > 2.0
    with pytest.raises(ValueError, match="divide"):
        grid_edge_ratio(noise, 24)
