"""The training-step profile adds up and sorts TensorFlow's ops into classes."""

import keras
import pytest

from keras_dmdiff.step_profile import OP_CLASSES, ProfileConfig, format_profile, profile_training_step


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="reads TensorFlow's profiler")
def test_profile_of_a_tiny_step_adds_up_by_class():
    profile = profile_training_step(ProfileConfig(preset="tiny", crop_size=32, batch_size=2, steps=1))
    classes = profile["classes"]
    assert list(classes) == [*OP_CLASSES, "other"]
    assert classes["convolution forward"] > 0 and classes["convolution gradient (filter)"] > 0
    assert profile["step_seconds"] > 0 and 0 < profile["fraction_of_peak"] < 1
    # Every op lands in exactly one class, and one inter-op thread makes the
    # self-times add up to about the step (the profiler's own cost aside).
    assert sum(classes.values()) == pytest.approx(profile["total_ms"], rel=1e-9)
    assert 0.3 < profile["total_ms"] / 1e3 / profile["step_seconds"] < 3
    table = format_profile(profile)
    assert "| convolution forward |" in table and "of the matmul peak" in table


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="the refusal of other backends")
def test_other_backends_are_refused_by_name():
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        profile_training_step(ProfileConfig(preset="tiny", crop_size=32, batch_size=2, steps=1))
