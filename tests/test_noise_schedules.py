import keras
import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models.noise_schedules import (
    FixedLinearSchedule,
    LearnedLinearSchedule,
    LearnedMonotoneSchedule,
    get_schedule,
)

SCHEDULES = [FixedLinearSchedule, LearnedLinearSchedule, LearnedMonotoneSchedule]


@pytest.mark.parametrize("cls", SCHEDULES)
def test_endpoints_monotonicity_and_derivative(cls):
    schedule = cls(-13.3, 5.0)
    t = np.linspace(0.0, 1.0, 101).astype("float32")
    gamma = ops.convert_to_numpy(schedule(t))
    assert gamma[0] == pytest.approx(-13.3, abs=1e-3)
    assert gamma[-1] == pytest.approx(5.0, abs=1e-3)
    assert np.all(np.diff(gamma) > 0)
    # Central finite differences in float64 of the float32 schedule.
    h = 1e-3
    inner = t[5:-5]
    numeric = (ops.convert_to_numpy(schedule(inner + h)) - ops.convert_to_numpy(schedule(inner - h))) / (2 * h)
    analytic = ops.convert_to_numpy(schedule.derivative(inner))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


@pytest.mark.parametrize("cls", SCHEDULES)
def test_schedule_config_round_trips(cls):
    schedule = cls(-10.0, 8.0)
    config = keras.saving.serialize_keras_object(schedule)
    again = keras.saving.deserialize_keras_object(config)
    np.testing.assert_allclose(ops.convert_to_numpy(again(np.float32(0.3))), ops.convert_to_numpy(schedule(np.float32(0.3))), rtol=1e-5)


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="gamma_max > gamma_min"):
        LearnedLinearSchedule(1.0, -1.0)
    with pytest.raises(ValueError, match="Unknown noise schedule"):
        get_schedule("cosine")
