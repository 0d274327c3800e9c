"""Physical maps <-> the network's normalised space.

The network sees ``x = (log10(Mstar + 1) - mean_x) / std_x`` as its condition and
``y = (log10(Mcdm) - mean_y) / std_y`` as the field it diffuses. The four numbers
are fitted on a training split (`MapTransform.adapt`) and stored in the model's
config, so a saved model takes and returns physical maps in
(Msun/h)/(Mpc/h)^2 without its user knowing the constants.

Validation of user input is `map_checks.validate_maps`, numpy code that runs
before anything enters a model.
"""

import math

import numpy as np
from keras import ops


class MapTransform:
    """Fitted map normalisation, physical units <-> network space.

    Args:
        stellar_mean, stellar_std: moments of log10(Mstar + 1) on the training split.
        dark_matter_mean, dark_matter_std: moments of log10(Mcdm) on the training split.

    The defaults are the published IllustrisTNG LH moments of the CMD maps;
    `adapt` replaces them with moments of the user's own training maps.

    Example:
        >>> transform = MapTransform()
        >>> transform.adapt(stellar_maps, dark_matter_maps)
        >>> y = transform.dark_matter_to_network(dm)        # keras tensor
        >>> dm_again = transform.dark_matter_from_network(y)
    """

    def __init__(
        self,
        stellar_mean=0.1207,
        stellar_std=1.0849,
        dark_matter_mean=10.984,
        dark_matter_std=0.508,
    ):
        self.stellar_mean = float(stellar_mean)
        self.stellar_std = float(stellar_std)
        self.dark_matter_mean = float(dark_matter_mean)
        self.dark_matter_std = float(dark_matter_std)
        for key, value in self.get_config().items():
            if not math.isfinite(value):
                raise ValueError(f"MapTransform `{key}` must be finite; got {value}.")
        if self.stellar_std <= 0 or self.dark_matter_std <= 0:
            raise ValueError("MapTransform standard deviations must be > 0.")

    def adapt(self, stellar_mass, dark_matter):
        """Fits the four moments on training maps.

        Args:
            stellar_mass: iterable of physical maps or one array [..., H, W]. An
                iterable of (stellar_mass, dark_matter) batches is also accepted
                when `dark_matter` is None (e.g. a tf.data.Dataset).
            dark_matter: physical maps paired with `stellar_mass`, or None.

        Returns:
            self, for chaining.
        """
        sums = np.zeros(4)  # sum x, sum x^2, sum y, sum y^2 in float64
        count = 0
        if dark_matter is None:
            batches = stellar_mass
        else:
            batches = [(stellar_mass, dark_matter)]
        for stars, dm in batches:
            stars = np.asarray(stars, dtype=np.float64)
            dm = np.asarray(dm, dtype=np.float64)
            if stars.shape != dm.shape:
                raise ValueError(
                    f"stellar_mass {stars.shape} and dark_matter {dm.shape} shapes differ."
                )
            if stars.min() < 0 or not np.all(np.isfinite(stars)):
                raise ValueError("stellar_mass must be finite and >= 0 to adapt a transform.")
            if dm.min() <= 0 or not np.all(np.isfinite(dm)):
                raise ValueError("dark_matter must be finite and > 0 to adapt a transform.")
            x = np.log10(stars + 1.0)
            y = np.log10(dm)
            sums += [x.sum(), (x * x).sum(), y.sum(), (y * y).sum()]
            count += x.size
        if count == 0:
            raise ValueError("MapTransform.adapt received no maps.")
        mean_x, mean_y = sums[0] / count, sums[2] / count
        self.stellar_mean = float(mean_x)
        self.stellar_std = float(np.sqrt(max(sums[1] / count - mean_x**2, 1e-12)))
        self.dark_matter_mean = float(mean_y)
        self.dark_matter_std = float(np.sqrt(max(sums[3] / count - mean_y**2, 1e-12)))
        return self

    # keras.ops versions: used inside models, the sampler and the export.
    def stellar_to_network(self, stellar_mass):
        x = ops.log10(ops.convert_to_tensor(stellar_mass, "float32") + 1.0)
        return (x - self.stellar_mean) / self.stellar_std

    def dark_matter_to_network(self, dark_matter):
        y = ops.log10(ops.convert_to_tensor(dark_matter, "float32"))
        return (y - self.dark_matter_mean) / self.dark_matter_std

    def dark_matter_from_network(self, y):
        log_dm = y * self.dark_matter_std + self.dark_matter_mean
        return ops.power(10.0, log_dm)

    def get_config(self):
        return {
            "stellar_mean": self.stellar_mean,
            "stellar_std": self.stellar_std,
            "dark_matter_mean": self.dark_matter_mean,
            "dark_matter_std": self.dark_matter_std,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        items = ", ".join(f"{k}={v:.4g}" for k, v in self.get_config().items())
        return f"MapTransform({items})"
