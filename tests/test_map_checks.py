import doctest

import numpy as np
import pytest

from keras_dmdiff import map_checks
from keras_dmdiff.map_checks import validate_maps

pytestmark = pytest.mark.backend_independent


def stellar_maps(shape=(4, 32, 32)):
    rng = np.random.default_rng(0)
    return (rng.random(shape) < 0.03) * 10 ** rng.normal(10.5, 0.5, shape)


def test_validate_accepts_single_map_and_batch():
    stars = stellar_maps()
    assert validate_maps(stars[0], "stellar_mass").shape == (1, 32, 32)
    assert validate_maps(stars, "stellar_mass", stride=16).dtype == np.float32


@pytest.mark.parametrize(
    "maps, kwargs, message",
    [
        (np.full((2, 2, 32, 32), 1e10), {}, "shape"),
        (np.full((32,), 1e10), {}, "shape"),
        (np.zeros((0, 32, 32)), {}, "empty"),
        (np.full((1, 30, 32), 1e10), {"stride": 16}, "multiples of the network stride 16"),
        (np.where(np.eye(32) > 0, np.nan, 1e10), {}, "NaN"),
        (np.where(np.eye(32) > 0, -1.0, 1e10), {}, "negative"),
        (np.full((32, 32), 0.0), {"strictly_positive": True}, "strictly positive"),
        (np.full((32, 32), 11.0), {}, "log10-scaled"),
    ],
)
def test_validate_rejects_bad_maps(maps, kwargs, message):
    with pytest.raises(ValueError, match=message):
        validate_maps(maps, "stellar_mass", **kwargs)


def test_empty_stellar_map_is_valid():
    # A region without galaxies is a legitimate input.
    assert validate_maps(np.zeros((32, 32)), "stellar_mass").max() == 0



def test_docstring_example_runs():
    result = doctest.testmod(map_checks)
    assert result.attempted > 0 and result.failed == 0
