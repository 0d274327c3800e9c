import doctest

import numpy as np
import pytest

from keras_dmdiff import posterior_metrics
from keras_dmdiff.posterior_metrics import MAX_PIXEL_FEATURES, MeasurePlan, MeasureSettings, measure

pytestmark = pytest.mark.backend_independent


def _truth(n=3, size=32, seed=0):
    return 10.0 ** np.random.default_rng(seed).normal(0.0, 0.3, (n, size, size))


def test_plan_caps_pixels_and_clips_the_example():
    plan = MeasurePlan.for_maps(1000, 64, num_samples=4, box_size=25.0, seed=0,
                                settings=MeasureSettings(example_index=5000))
    assert plan.pixels == MAX_PIXEL_FEATURES // 1000
    assert plan.example_index == 999
    assert plan.aperture_radius == 1.0
    small = MeasurePlan.for_maps(2, 8, num_samples=4, box_size=4.0, seed=0)
    assert small.pixels == 64  # never more than the map has
    assert small.aperture_radius == 0.5  # box / 8
    np.testing.assert_allclose(small.k_edges, posterior_metrics.stats.k_bin_edges(8, 4.0, bins="log"))


def test_samples_with_twice_the_contrast_have_exact_metrics():
    truth = 10.0 ** np.random.default_rng(0).normal(0.0, 0.05, (3, 32, 32))
    mean = truth.mean(axis=(1, 2), keepdims=True)
    doubled = mean + 2.0 * (truth - mean)  # the overdensity doubled, still > 0
    assert doubled.min() > 0
    samples = np.repeat(doubled[:, None], 4, axis=1)
    plan = MeasurePlan.for_maps(3, 32, num_samples=4, box_size=25.0, seed=0, settings=MeasureSettings(num_apertures=2))
    metrics = measure(lambda i: samples[i], truth, truth, plan, predictions={"perfect": (truth, truth)})
    summary = metrics["summary"]
    # P(k) of the overdensity: every ratio is 4, and r(k) does not see the factor.
    assert summary["power_ratio_error_k_lt_10"]["diffusion_samples"] == pytest.approx(3.0)
    assert summary["power_ratio_error_k_lt_10"]["perfect"] == pytest.approx(0.0, abs=1e-12)
    assert summary["cross_correlation_1_k_5"]["diffusion_posterior_mean"] == pytest.approx(1.0)
    assert summary["cross_correlation_1_k_5"]["diffusion_samples"] == pytest.approx(1.0)
    assert summary["mse_dex2"]["perfect"] == pytest.approx(0.0, abs=1e-12)
    assert summary["mse_dex2"]["diffusion_samples"] == pytest.approx(np.mean(np.log10(doubled / truth) ** 2))
    # Identical samples put each truth at the top or bottom rank of 4: its
    # randomised PIT is uniform on [0.8, 1] (or [0, 0.2]), inside the central
    # interval of level l with probability max(0, (l / 2 - 0.3) / 0.2).
    coverage = [summary["coverage"][level] for level in ("50%", "68%", "90%", "95%")]
    np.testing.assert_allclose(coverage, [0.0, 0.2, 0.75, 0.875], atol=0.01)
    assert metrics["_example"]["map_index"] == 0


def test_calibration_split_by_stars_finds_a_bias_where_the_stars_are():
    # A calibrated posterior in log space, shifted up by 1 sigma in the pixels that hold stars only.
    rng = np.random.default_rng(3)
    n, size, s = 4, 32, 32
    stars = np.where(rng.uniform(size=(n, size, size)) < 0.3, 10.0 ** rng.normal(8.0, 0.5, (n, size, size)), 0.0)
    centre = rng.normal(0.0, 0.3, (n, size, size))
    truth = 10.0 ** (centre + 0.1 * rng.normal(size=(n, size, size)))
    shift = np.where(stars > 0, 0.1, 0.0)
    samples = 10.0 ** (centre + shift + 0.1 * rng.normal(size=(s, n, size, size)))
    plan = MeasurePlan.for_maps(n, size, num_samples=s, box_size=25.0, seed=0, settings=MeasureSettings(num_apertures=0))
    summary = measure(lambda i: samples[:, i], stars, truth, plan, predictions={})["summary"]
    empty, starry = summary["pixels_by_stars"]["no_stars"], summary["pixels_by_stars"]["stars"]
    assert empty["fraction"] + starry["fraction"] == pytest.approx(1.0)
    assert starry["fraction"] == pytest.approx(0.3, abs=0.03)
    assert empty["verdict"] == "calibrated" and abs(empty["rank_bias"]) < 0.02
    assert empty["coverage"]["68%"] == pytest.approx(0.68, abs=0.03)
    # One sigma too high: the truth's mean PIT is P(e2 - e1 < -1) = Phi(-1 / sqrt 2) = 0.240.
    assert starry["verdict"] == "biased" and starry["rank_bias"] == pytest.approx(0.240 - 0.5, abs=0.03)


def test_map_mass_calibration_finds_draws_too_sure_of_each_maps_mass():
    # Each map's truth has a mass offset of 0.2 dex that the draws share at 1/4 of its spread only.
    rng = np.random.default_rng(5)
    n, size, s = 64, 16, 16
    local = rng.normal(0.0, 0.3, (n, size, size))
    truth = 10.0 ** (local + rng.normal(0.0, 0.2, (n, 1, 1)))
    calibrated = 10.0 ** (local + rng.normal(0.0, 0.2, (s, n, 1, 1)))
    too_sure = 10.0 ** (local + rng.normal(0.0, 0.05, (s, n, 1, 1)))
    plan = MeasurePlan.for_maps(n, size, num_samples=s, box_size=25.0, seed=0, settings=MeasureSettings(num_apertures=0))
    good = measure(lambda i: calibrated[:, i], truth, truth, plan, predictions={})["summary"]["map_mass"]
    bad = measure(lambda i: too_sure[:, i], truth, truth, plan, predictions={})["summary"]["map_mass"]
    assert good["error_to_spread"] == pytest.approx(1.0, abs=0.2) and good["coverage"]["68%"] == pytest.approx(0.68, abs=0.15)
    # sqrt((0.2^2 + 0.05^2 / 16) / (0.05^2 (1 + 1/16))) = 3.9
    assert bad["error_to_spread"] == pytest.approx(3.9, abs=0.6)
    assert bad["coverage"]["68%"] < 0.4 and bad["verdict"] != "calibrated"


def test_one_sample_has_no_calibration():
    truth = _truth(n=2)
    plan = MeasurePlan.for_maps(2, 32, num_samples=1, box_size=25.0, seed=0)
    metrics = measure(lambda i: truth[i][None], truth, truth, plan, predictions={})
    assert metrics["calibration"] == {}
    assert metrics["summary"]["verdict"] is None
    assert metrics["summary"]["cross_correlation_1_k_5"]["diffusion_samples"] == pytest.approx(1.0)


def test_docstring_example_runs():
    result = doctest.testmod(posterior_metrics)
    assert result.attempted > 0 and result.failed == 0
