"""Baseline (a): a deterministic regression U-Net of dark matter on stars.

The comparison of Ono et al. 2024: the same periodic U-Net as the diffusion
model, asked for one dark-matter map per stellar map. With the reference
objective ("log_mse") it minimises the mean squared error in normalised log
space, so its prediction approximates the posterior mean of `log10 Mcdm`:
it should do well in r(k) and MSE, and poorly in P(k) and the one-point PDF
(a mean is smoother than any sample). With "poisson" it minimises the
Poisson deviance of the linear maps, whose minimiser is the linear-space
posterior mean E[Mcdm | stars]: the estimator whose r(k) no rescaled tracer
beats, where 10^E[log10 Mcdm | stars] falls short of it in the peaks.

The model carries the same `MapTransform` normalisation as
`VariationalDiffusion`, so it takes and returns physical maps in
(Msun/h)/(Mpc/h)^2.
"""

import keras
import numpy as np
from keras import ops

from keras_dmdiff.models.conditional_unet import ConditionalUNet
from keras_dmdiff.models.layers import PACKAGE
from keras_dmdiff.map_checks import validate_maps
from keras_dmdiff.transforms import MapTransform


#: The training objectives of `RegressionUNet`.
OBJECTIVES = ("log_mse", "poisson")


@keras.saving.register_keras_serializable(package=PACKAGE)
class RegressionUNet(keras.Model):
    """Deterministic U-Net regression of log dark matter on stellar mass.

    Wraps a `ConditionalUNet` fed with `z_t = 0` and `gamma = 0`: the network
    then sees only the stellar condition, and its output (`conv_out(h) + z_t`
    = `conv_out(h)`) is the prediction of the normalised `log10 Mcdm`. The
    time-embedding branch receives a constant, so it only adds learned biases.

    Trains with plain `compile()` + `fit(x=stellar_mass, y=dark_matter)` on
    physical maps [B, H, W] (numpy or tf.data); the loss (`compute_loss`) is
    set by `objective`. Call `adapt` first to fit the normalisation on
    training maps.

    Args:
        network: a `ConditionalUNet` or its config; default: the paper's network.
        transform: a `MapTransform` (or its config); default: published TNG moments.
        objective: "log_mse" (the reference): the MSE between the prediction
            and `(log10 Mcdm - mean) / std`. "poisson": the Poisson deviance
            of `Mcdm / c` against the predicted map over `c`, with
            `c = 10**mean` the transform's geometric-mean density; it is
            minimised by the linear-space conditional mean.

    Call arguments:
        stellar_mass: physical maps [B, H, W] (or [B, H, W, 1]).
        training: enables dropout.

    Returns (call):
        The normalised log10 dark-matter prediction [B, H, W, 1]. Use
        `predict_maps` for physical maps.

    Examples:
        >>> from keras_dmdiff.models import network_from_preset  # doctest: +SKIP
        >>> model = RegressionUNet(network=network_from_preset("tiny"))  # doctest: +SKIP
        >>> model.adapt(stars, dm)  # doctest: +SKIP
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))  # doctest: +SKIP
        >>> model.fit(stars, dm, batch_size=8, epochs=5)  # doctest: +SKIP
        >>> model.predict_maps(stars[:2]).shape    # [2, H, W], physical units  # doctest: +SKIP
        >>> model.save("regression.keras")  # doctest: +SKIP
    """

    def __init__(self, network=None, transform=None, objective="log_mse", **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"Unknown RegressionUNet objective {objective!r}; choose one of {OBJECTIVES}.")
        # The loss and the maps' log transform stay float32; the network's policy sets its compute dtype.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.objective = objective
        if network is None:
            network = ConditionalUNet()
        elif isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        self.network = network
        if transform is None:
            transform = MapTransform()
        elif isinstance(transform, dict):
            transform = MapTransform.from_config(transform)
        self.transform = transform

    @property
    def stride(self):
        """H and W of every input must be multiples of this."""
        return self.network.stride

    def adapt(self, stellar_mass, dark_matter=None):
        """Fits the normalisation on training maps (see `MapTransform.adapt`).

        Returns:
            self.
        """
        self.transform.adapt(stellar_mass, dark_matter)
        return self

    def build(self, input_shape=None):
        self.network.build(None)
        self.built = True

    def call(self, stellar_mass, training=False):
        stellar_mass = ops.convert_to_tensor(stellar_mass, "float32")
        if len(stellar_mass.shape) == 3:
            stellar_mass = ops.expand_dims(stellar_mass, -1)
        return self.predict_normalised(self.transform.stellar_to_network(stellar_mass), training=training)

    def predict_normalised(self, condition, training=False):
        """The prediction [B, H, W, 1] for an already normalised condition [B, H, W, 1]."""
        zeros = ops.zeros_like(condition)
        gamma = ops.zeros((ops.shape(condition)[0],), dtype="float32")
        return self.network([zeros, condition, gamma], training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError("RegressionUNet needs the dark-matter maps as `y` in fit/evaluate.")
        if y_pred is None:
            y_pred = self(x, training=training)
        target = ops.convert_to_tensor(y, "float32")
        if len(target.shape) == 3:
            target = ops.expand_dims(target, -1)
        target = self.transform.dark_matter_to_network(target)
        y_pred = ops.cast(y_pred, "float32")
        if self.objective == "poisson":
            loss = ops.mean(self._poisson_deviance(target, y_pred))
        else:
            loss = ops.mean(ops.square(target - y_pred))
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def _poisson_deviance(self, target, prediction):
        """2 (r ln(r / m) - r + m) per pixel, r and m the true and predicted maps over 10**mean."""
        scale = np.log(10.0) * self.transform.dark_matter_std
        log_ratio = scale * target
        # Capped so that an early, wild prediction cannot overflow exp.
        log_prediction = ops.minimum(scale * prediction, 30.0)
        truth = ops.exp(log_ratio)
        return 2.0 * (truth * (log_ratio - log_prediction) - truth + ops.exp(log_prediction))

    def predict_maps(self, stellar_mass, batch_size=16):
        """Predicted physical dark-matter maps.

        Args:
            stellar_mass: [H, W] or [B, H, W] physical stellar mass in
                (Msun/h)/(Mpc/h)^2; H and W multiples of `stride`.
            batch_size: maps per network call.

        Returns:
            numpy float32 [B, H, W] in (Msun/h)/(Mpc/h)^2.

        Examples:
            >>> model.predict_maps(np.full((64, 64), 1e9)).shape  # doctest: +SKIP
            (1, 64, 64)
        """
        maps = validate_maps(
            stellar_mass if isinstance(stellar_mass, np.ndarray) else ops.convert_to_numpy(stellar_mass),
            "stellar_mass",
            stride=self.stride,
        )
        if not self.built:
            self.build()
        outputs = []
        for start in range(0, len(maps), int(batch_size)):
            normalised = self.predict_on_batch(maps[start : start + int(batch_size)])
            physical = self.transform.dark_matter_from_network(ops.convert_to_tensor(normalised))
            outputs.append(ops.convert_to_numpy(physical)[..., 0])
        return np.concatenate(outputs, axis=0).astype(np.float32)

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            transform=self.transform.get_config(),
            objective=self.objective,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
