import numpy as np
import pytest
from keras import ops

from keras_dmdiff.transforms import MapTransform

pytestmark = pytest.mark.backend_independent


def physical_pair(seed=0, shape=(4, 32, 32)):
    rng = np.random.default_rng(seed)
    stars = (rng.random(shape) < 0.03) * 10 ** rng.normal(10.5, 0.5, shape)
    dm = 10 ** rng.normal(10.98, 0.5, shape)
    return stars, dm


def test_adapt_fits_moments_and_round_trips():
    stars, dm = physical_pair()
    transform = MapTransform().adapt(stars, dm)
    assert transform.stellar_mean == pytest.approx(np.log10(stars + 1).mean(), rel=1e-6)
    assert transform.dark_matter_std == pytest.approx(np.log10(dm).std(), rel=1e-5)
    y = ops.convert_to_numpy(transform.dark_matter_to_network(dm))
    assert abs(y.mean()) < 1e-4 and abs(y.std() - 1) < 1e-3
    back = ops.convert_to_numpy(transform.dark_matter_from_network(y))
    np.testing.assert_allclose(back, dm, rtol=1e-4)
    again = MapTransform.from_config(transform.get_config())
    assert again.get_config() == transform.get_config()


def test_adapt_accepts_batches_and_rejects_bad_maps():
    stars, dm = physical_pair()
    whole = MapTransform().adapt(stars, dm)
    batched = MapTransform().adapt([(stars[:2], dm[:2]), (stars[2:], dm[2:])], None)
    assert batched.get_config() == pytest.approx(whole.get_config())
    with pytest.raises(ValueError, match="> 0"):
        MapTransform().adapt(stars, np.zeros_like(dm))
    with pytest.raises(ValueError, match="shapes differ"):
        MapTransform().adapt(stars, dm[:2])
    with pytest.raises(ValueError, match="no maps"):
        MapTransform().adapt([], None)
