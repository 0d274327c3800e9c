"""keras_dmdiff: probabilistic dark-matter maps from stellar-mass maps.

A conditional variational diffusion model (Ono et al. 2024, arXiv 2403.10648)
in Keras 3, on TensorFlow or JAX. Importing the package also registers the
`camels_cmd` TFDS dataset builder.
"""

__version__ = "0.1.0"

from keras_dmdiff.models import ConditionalUNet, VariationalDiffusion, network_from_preset
from keras_dmdiff.transforms import MapTransform, validate_maps

try:  # Registers the TFDS builder `camels_cmd` (datasets/camels_cmd).
    import keras_dmdiff_datasets.camels_cmd  # noqa: F401
except ImportError as error:  # pragma: no cover - only when installed without the builder
    if "keras_dmdiff_datasets" not in str(error):
        raise
