import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models import loss_weightings

pytestmark = pytest.mark.backend_independent

CASES = [("elbo", 0.0), ("sigmoid", 2.0), ("sigmoid", -1.0), ("min_snr", 5.0), ("min_snr", 1.0)]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


@pytest.mark.parametrize("name, bias", CASES)
def test_integral_is_an_antiderivative_and_inverse_inverts_it(name, bias):
    gamma = np.linspace(-13.0, 13.0, 2001).astype("float32")
    w = _np(loss_weightings.weight(name, ops.array(gamma), bias))
    integral = _np(loss_weightings.integral(name, ops.array(gamma), bias))
    # Central differences of W recover w (W is continuous at min_snr's knee too).
    slope = np.gradient(integral, gamma.astype(np.float64))
    np.testing.assert_allclose(slope[1:-1], w[1:-1], rtol=2e-2, atol=1e-4)
    assert np.all(np.diff(integral) >= 0)
    back = _np(loss_weightings.inverse_integral(name, ops.array(integral.astype("float32")), bias))
    # Where w is tiny W is flat, and float32 cannot resolve gamma from W there.
    resolved = w > 1e-3
    np.testing.assert_allclose(back[resolved], gamma[resolved], atol=2e-3)


@pytest.mark.parametrize("name, bias", CASES)
def test_importance_sampling_reproduces_the_weighted_integral(name, bias):
    """E over gamma ~ w / Z of Z f(gamma) is the integral of w f over [gamma_0, gamma_1]."""
    gamma_0, gamma_1 = -13.3, 13.3
    f = lambda g: np.cos(0.3 * g) + 0.01 * g**2  # noqa: E731
    grid = np.linspace(gamma_0, gamma_1, 200_001)
    w = _np(loss_weightings.weight(name, ops.array(grid.astype("float32")), bias))
    exact = np.trapezoid(w * f(grid), grid)
    low = _np(loss_weightings.integral(name, ops.array(gamma_0), bias))
    total = _np(loss_weightings.integral(name, ops.array(gamma_1), bias)) - low
    u = (np.arange(20_000) + 0.5) / 20_000  # stratified, like the antithetic batch
    drawn = _np(loss_weightings.inverse_integral(name, ops.array((low + u * total).astype("float32")), bias))
    assert drawn.min() >= gamma_0 - 1e-3 and drawn.max() <= gamma_1 + 1e-3
    np.testing.assert_allclose(total * f(drawn).mean(), exact, rtol=2e-3)


def test_known_values():
    assert float(loss_weightings.weight("sigmoid", ops.array(-2.0), 2.0)) == pytest.approx(0.5)
    assert float(loss_weightings.weight("min_snr", ops.array(0.0), 5.0)) == 1.0
    # min(SNR, 5) / SNR with SNR = e^-gamma = 10: 0.5.
    assert float(loss_weightings.weight("min_snr", ops.array(-np.log(10.0)), 5.0)) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("name, bias, message", [("snr", 0.0, "Unknown loss weighting"), ("min_snr", 0.0, "positive")])
def test_bad_weightings_are_refused(name, bias, message):
    with pytest.raises(ValueError, match=message):
        loss_weightings.check_weighting(name, bias)
