"""Noise schedules gamma(t) = log(sigma_t^2 / alpha_t^2) of a variance-preserving VDM.

Each schedule is a layer mapping t in [0, 1] (any shape) to gamma(t), and has
`derivative(t)` = d gamma / d t, which weights the continuous-time diffusion
loss. Derivatives are written out so that the loss is the same expression on
every backend (no backend-specific autodiff inside a loss).
"""

import keras
from keras import ops

from keras_dmdiff.models.layers import PACKAGE


class NoiseSchedule(keras.layers.Layer):
    """Base of the schedules: checked endpoints gamma(0) < gamma(1) and their config.

    Args:
        gamma_min: gamma(0) (its initial value when learned).
        gamma_max: gamma(1) (its initial value when learned).
    """

    def __init__(self, gamma_min=-13.3, gamma_max=13.3, **kwargs):
        super().__init__(**kwargs)
        if not gamma_max > gamma_min:
            raise ValueError(f"Need gamma_max > gamma_min; got {gamma_min}, {gamma_max}.")
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)

    def _add_endpoint_weights(self):
        """Trainable b = gamma(0) and w, with gamma(1) = b + |w|."""
        self.b = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.gamma_min), name="b")
        self.w = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.gamma_max - self.gamma_min), name="w"
        )

    def get_config(self):
        config = super().get_config()
        config.update(gamma_min=self.gamma_min, gamma_max=self.gamma_max)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FixedLinearSchedule(NoiseSchedule):
    """gamma(t) = gamma_min + (gamma_max - gamma_min) t, not trained.

    Args:
        gamma_min: gamma(0), log-SNR of the least noisy latent (negative).
        gamma_max: gamma(1), log-SNR of the noisiest latent.

    Example:
        >>> FixedLinearSchedule(-13.3, 13.3)(keras.ops.array([0.0, 1.0]))
    """

    def call(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def derivative(self, t):
        return ops.ones_like(t) * (self.gamma_max - self.gamma_min)


@keras.saving.register_keras_serializable(package=PACKAGE)
class LearnedLinearSchedule(NoiseSchedule):
    """gamma(t) = b + |w| t with trainable b and w (the reference schedule).

    Args:
        gamma_min: initial b = gamma(0).
        gamma_max: initial gamma(1) = b + |w|.
    """

    def __init__(self, gamma_min=-13.3, gamma_max=13.3, **kwargs):
        super().__init__(gamma_min, gamma_max, **kwargs)
        self._add_endpoint_weights()

    def call(self, t):
        return self.b + ops.abs(self.w) * t

    def derivative(self, t):
        return ops.ones_like(t) * ops.abs(self.w)


@keras.saving.register_keras_serializable(package=PACKAGE)
class LearnedMonotoneSchedule(NoiseSchedule):
    """A monotone network gamma(t) (Kingma et al. 2021, appendix).

    gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t)))) with non-negative weights (so it
    increases with t), rescaled so that gamma(0) = b and gamma(1) = b + |w|,
    where b and |w| are trainable endpoints as in the linear schedule.

    Args:
        gamma_min, gamma_max: initial endpoints.
        hidden_units: width of the sigmoid layer.
    """

    def __init__(self, gamma_min=-13.3, gamma_max=13.3, hidden_units=1024, **kwargs):
        super().__init__(gamma_min, gamma_max, **kwargs)
        self.hidden_units = int(hidden_units)
        self._add_endpoint_weights()
        positive = keras.initializers.RandomUniform(0.0, 1.0, seed=0)
        self.l1_weight = self.add_weight(shape=(), initializer="ones", name="l1_weight")
        self.l1_bias = self.add_weight(shape=(), initializer="zeros", name="l1_bias")
        self.l2_weight = self.add_weight(shape=(self.hidden_units,), initializer=positive, name="l2_weight")
        self.l2_bias = self.add_weight(shape=(self.hidden_units,), initializer="zeros", name="l2_bias")
        self.l3_weight = self.add_weight(
            shape=(self.hidden_units,),
            initializer=keras.initializers.RandomUniform(0.0, 1.0 / self.hidden_units, seed=1),
            name="l3_weight",
        )

    def _unscaled(self, t):
        """gamma~(t) and d gamma~ / dt, for t of any shape."""
        a1 = ops.abs(self.l1_weight)
        l1 = a1 * t + self.l1_bias
        hidden = ops.sigmoid(ops.expand_dims(l1, -1) * ops.abs(self.l2_weight) + self.l2_bias)
        value = l1 + ops.sum(hidden * ops.abs(self.l3_weight), axis=-1)
        slope = a1 + ops.sum(hidden * (1.0 - hidden) * ops.abs(self.l2_weight) * ops.abs(self.l3_weight), axis=-1) * a1
        return value, slope

    def _scale(self):
        start, _ = self._unscaled(ops.zeros(()))
        end, _ = self._unscaled(ops.ones(()))
        return start, ops.abs(self.w) / (end - start)

    def call(self, t):
        value, _ = self._unscaled(t)
        start, scale = self._scale()
        return self.b + (value - start) * scale

    def derivative(self, t):
        _, slope = self._unscaled(t)
        _, scale = self._scale()
        return slope * scale

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=self.hidden_units)
        return config


SCHEDULES = {
    "fixed_linear": FixedLinearSchedule,
    "learned_linear": LearnedLinearSchedule,
    "learned_monotone": LearnedMonotoneSchedule,
}


def get_schedule(schedule, **kwargs):
    """Returns a schedule layer from a name in `SCHEDULES`, a config dict or a layer."""
    if isinstance(schedule, keras.layers.Layer):
        return schedule
    if isinstance(schedule, dict):
        return keras.saving.deserialize_keras_object(schedule)
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown noise schedule {schedule!r}; choose one of {sorted(SCHEDULES)}.")
    return SCHEDULES[schedule](**kwargs)
