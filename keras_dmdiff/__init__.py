"""keras_dmdiff: probabilistic dark-matter maps from stellar-mass maps.

A conditional variational diffusion model (Ono et al. 2024, arXiv 2403.10648)
in Keras 3, on TensorFlow or JAX. Importing the package registers the
`camels_cmd` TFDS dataset builder. Keras is imported only when a model class
is first used, so the numpy-only parts (`keras_dmdiff.mock`,
`keras_dmdiff.stats`) and the CLI start fast and spawn light workers.
"""

import importlib

__version__ = "0.1.0"

# Registers the TFDS builder `camels_cmd` (datasets/camels_cmd); it imports
# neither TensorFlow nor Keras.
import keras_dmdiff_datasets.camels_cmd  # noqa: E402,F401

_LAZY_ATTRIBUTES = {
    "ConditionalUNet": "keras_dmdiff.models",
    "VariationalDiffusion": "keras_dmdiff.models",
    "network_from_preset": "keras_dmdiff.models",
    "MapTransform": "keras_dmdiff.transforms",
    "validate_maps": "keras_dmdiff.transforms",
}

__all__ = ["__version__", *_LAZY_ATTRIBUTES]


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_dmdiff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_ATTRIBUTES))
