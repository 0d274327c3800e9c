"""Tests of the numpy baselines: periodic smoothing, conditional mean, stellar tracer."""

import json

import numpy as np
import pytest

from keras_dmdiff.baselines import ConditionalMeanBaseline
from keras_dmdiff.baselines import periodic_gaussian_smooth
from keras_dmdiff.baselines import stellar_tracer
from keras_dmdiff.stats import cross_correlation
from keras_dmdiff.stats import power_spectrum

pytestmark = pytest.mark.backend_independent

L = 25.0


def sparse_stars(rng, shape, fill=0.03):
    """CMD-like stellar maps: ~3 % of pixels non-zero, log-normal masses."""
    mask = rng.uniform(size=shape) < fill
    return np.where(mask, 10 ** rng.normal(9.5, 0.7, size=shape), 0.0)


def test_periodic_smoothing_preserves_total_mass():
    rng = np.random.default_rng(0)
    stars = sparse_stars(rng, (3, 64, 64))
    for scale in (0.2, 1.0, 5.0):
        smoothed = periodic_gaussian_smooth(stars, scale, L)
        np.testing.assert_allclose(smoothed.sum(axis=(-2, -1)), stars.sum(axis=(-2, -1)))
        assert smoothed.min() > -1e-9 * stars.max()
    np.testing.assert_array_equal(periodic_gaussian_smooth(stars, 0.0, L), stars)


def test_periodic_smoothing_wraps_and_has_the_right_width():
    n = 128
    dx = L / n
    point = np.zeros((n, n))
    point[0, 0] = 1.0  # on the corner: half of the kernel must wrap around
    sigma = 1.0
    s = periodic_gaussian_smooth(point, sigma, L)
    centred = np.roll(s, (n // 2, n // 2), axis=(0, 1))
    # Translation equivariance: smoothing a centred point gives the rolled result.
    p2 = np.roll(point, (n // 2, n // 2), axis=(0, 1))
    np.testing.assert_allclose(periodic_gaussian_smooth(p2, sigma, L), centred, atol=1e-15)
    # Second moment along each axis is sigma^2 (Mpc/h)^2.
    r = (np.arange(n) - n // 2) * dx
    var_y = np.sum(centred.sum(axis=1) * r**2)
    var_x = np.sum(centred.sum(axis=0) * r**2)
    assert var_y == pytest.approx(sigma**2, rel=1e-3)
    assert var_x == pytest.approx(sigma**2, rel=1e-3)


def test_smoothing_errors():
    with pytest.raises(ValueError, match="scale"):
        periodic_gaussian_smooth(np.ones((8, 8)), -1.0)
    with pytest.raises(ValueError, match="box_size"):
        periodic_gaussian_smooth(np.ones((8, 8)), 1.0, box_size=0.0)
    with pytest.raises(ValueError, match="square"):
        periodic_gaussian_smooth(np.ones((8, 6)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        periodic_gaussian_smooth(np.full((8, 8), np.nan), 1.0)


def true_relation(x):
    """A known monotone, non-linear map from smoothed stars to log10 Mcdm."""
    return 10.6 + 0.25 * x + 0.6 * np.tanh(x - 7.0)


def synthetic_pairs(seed, num_maps=6, n=64, scale=1.0, noise=0.05):
    rng = np.random.default_rng(seed)
    stars = sparse_stars(rng, (num_maps, n, n))
    x = ConditionalMeanBaseline(scale, L).features(stars)
    log_dm = true_relation(x) + noise * rng.normal(size=x.shape)
    return stars, 10**log_dm, x


def test_conditional_mean_recovers_known_monotone_relation():
    stars, dm, _ = synthetic_pairs(seed=1)
    model = ConditionalMeanBaseline(smoothing_scale=1.0, box_size=L, num_bins=40).fit(stars, dm)
    assert np.all(np.diff(model.x_means) > 0)
    assert np.all(np.diff(model.y_means) > 0)  # the monotone trend is recovered
    # On fresh maps, the prediction matches the noiseless relation.
    test_stars, _, x_test = synthetic_pairs(seed=2, num_maps=2)
    pred = model.predict_log10(test_stars)
    assert pred.shape == test_stars.shape
    err = pred - true_relation(x_test)
    assert np.sqrt(np.mean(err**2)) < 0.02
    # Within the populated range the pointwise error stays small too.
    inside = (x_test > model.x_means[0]) & (x_test < model.x_means[-1])
    assert np.max(np.abs(err[inside])) < 0.06
    np.testing.assert_allclose(model.predict(test_stars), 10**pred)
    # The residual scatter per bin is the injected noise (0.05 dex).
    assert np.median(model.y_stds) == pytest.approx(0.05, abs=0.01)


def test_conditional_mean_round_trips_through_json():
    stars, dm, _ = synthetic_pairs(seed=3, num_maps=2, n=32)
    model = ConditionalMeanBaseline(0.5, L, num_bins=10).fit(stars, dm)
    state = json.loads(json.dumps(model.to_dict()))
    restored = ConditionalMeanBaseline.from_dict(state)
    assert restored.smoothing_scale == 0.5 and restored.num_bins == 10
    np.testing.assert_allclose(restored.predict(stars), model.predict(stars))
    unfitted = ConditionalMeanBaseline.from_dict(ConditionalMeanBaseline(2.0).to_dict())
    assert not unfitted.is_fitted


def test_conditional_mean_errors():
    model = ConditionalMeanBaseline(1.0)
    with pytest.raises(ValueError, match="fit"):
        model.predict(np.ones((8, 8)))
    with pytest.raises(ValueError, match="differ"):
        model.fit(np.ones((2, 8, 8)), np.ones((3, 8, 8)))
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(-np.ones((8, 8)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="positive"):
        model.fit(np.ones((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.full((8, 8), np.nan), np.ones((8, 8)))
    with pytest.raises(ValueError):
        ConditionalMeanBaseline(-1.0)
    with pytest.raises(ValueError, match="box_size"):
        ConditionalMeanBaseline(1.0, box_size=-25.0)


def test_stellar_tracer_has_target_mean_and_the_stars_statistics():
    rng = np.random.default_rng(4)
    stars = sparse_stars(rng, (3, 64, 64))
    tracer = stellar_tracer(stars, 1e11)
    np.testing.assert_allclose(tracer.mean(axis=(-2, -1)), 1e11)
    # Rescaling leaves P(k) of the overdensity and r(k) untouched.
    _, pk_t, _ = power_spectrum(tracer)
    _, pk_s, _ = power_spectrum(stars)
    np.testing.assert_allclose(pk_t, pk_s)
    _, r, _ = cross_correlation(tracer, stars)
    np.testing.assert_allclose(r, 1.0)
    # Per-map target means (e.g. those of the true dark-matter maps) broadcast.
    targets = np.array([1e10, 2e10, 3e10])
    np.testing.assert_allclose(stellar_tracer(stars, targets).mean(axis=(-2, -1)), targets)
    smooth = stellar_tracer(stars, 1e11, smoothing_scale=1.0)
    assert np.all(smooth >= 0)
    np.testing.assert_allclose(smooth.mean(axis=(-2, -1)), 1e11)


def test_stellar_tracer_errors():
    stars = np.zeros((2, 8, 8))
    stars[0, 1, 1] = 1.0
    with pytest.raises(ValueError, match="no stars"):
        stellar_tracer(stars, 1e10)
    with pytest.raises(ValueError, match="target_mean"):
        stellar_tracer(stars[:1], -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        stellar_tracer(-stars, 1.0)


def test_docstring_examples_run():
    import doctest

    from keras_dmdiff import baselines

    assert doctest.testmod(baselines, extraglobs={"np": np}).failed == 0
