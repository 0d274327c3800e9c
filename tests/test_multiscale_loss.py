"""The multiscale squared error against fields whose scales are known exactly."""

import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models.multiscale_loss import multiscale_squared_error


def _value(field, weight):
    return np.asarray(ops.convert_to_numpy(multiscale_squared_error(field.astype("float32"), weight)))


def test_the_map_mean_gains_the_weight_once_per_level_and_the_pixel_scale_nothing():
    ones = np.ones((2, 16, 16, 1))
    # 16 -> 8 -> 4 -> 2 -> 1: four levels, each holding the whole energy of a constant field.
    np.testing.assert_allclose(_value(ones, 0.25), 256 * (1 + 0.25 * 4), rtol=1e-6)
    chequer = (np.indices((16, 16)).sum(0) % 2 * 2.0 - 1.0)[None, :, :, None]
    np.testing.assert_allclose(_value(chequer, 0.25), 256, rtol=1e-6)
    # A mode of period 4 survives the 2x2 pooling (at half its energy, a box filter's response) only.
    wave = np.cos(2 * np.pi * np.arange(16) / 4)[None, :, None, None] * np.ones((1, 16, 16, 1))
    pooled = wave.reshape(1, 8, 2, 8, 2, 1).mean(axis=(2, 4))
    assert 4 * (pooled ** 2).sum() == pytest.approx(0.5 * (wave ** 2).sum())
    np.testing.assert_allclose(_value(wave, 1.0), 1.5 * (wave ** 2).sum(), rtol=1e-5)


def test_without_a_weight_it_is_the_plain_sum_of_squares():
    field = np.random.default_rng(0).normal(size=(3, 8, 24, 2))
    np.testing.assert_allclose(_value(field, 0.0), (field ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)


def test_sides_with_an_odd_factor_end_on_the_map_mean():
    field = np.random.default_rng(1).normal(size=(2, 12, 12, 1))
    # 12 -> 6 -> 3 by pooling, then the map mean over its 144 pixels.
    six = field.reshape(2, 6, 2, 6, 2, 1).mean(axis=(2, 4))
    three = six.reshape(2, 3, 2, 3, 2, 1).mean(axis=(2, 4))
    expected = ((field ** 2).sum(axis=(1, 2, 3)) + 4 * (six ** 2).sum(axis=(1, 2, 3))
                + 16 * (three ** 2).sum(axis=(1, 2, 3)) + 144 * field.mean(axis=(1, 2, 3)) ** 2)
    np.testing.assert_allclose(_value(field, 1.0), expected, rtol=1e-5)
