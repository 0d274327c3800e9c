"""keras_dmdiff: probabilistic dark-matter maps from stellar-mass maps.

A conditional variational diffusion model (Ono et al. 2024, arXiv 2403.10648)
in Keras 3, on TensorFlow or JAX. Importing the package registers the
`camels_cmd` TFDS dataset builder and the model classes with Keras, so
`keras.saving.load_model("model.keras")` works after `import keras_dmdiff`.
"""

import os

__version__ = "0.1.0"

# Set in numpy-only worker processes (the mock's simulation pool), which need
# neither Keras nor TensorFlow: it skips their import, and several seconds.
LIGHT_IMPORT_VARIABLE = "KERAS_DMDIFF_LIGHT_IMPORT"

# Registers the TFDS builder `camels_cmd` (datasets/camels_cmd); it imports
# neither TensorFlow nor Keras, nor this package.
import keras_dmdiff_datasets.camels_cmd  # noqa: E402


def _write_mock_cmd_files(out_dir, suite, **fields):
    # Imported when a mock config is built, not with the package.
    from keras_dmdiff.mock import write_cmd_files_from_fields

    return write_cmd_files_from_fields(out_dir, suite, **fields)


keras_dmdiff_datasets.camels_cmd.set_mock_writer(_write_mock_cmd_files)

if os.environ.get(LIGHT_IMPORT_VARIABLE) != "1":
    from keras_dmdiff.models import ConditionalUNet, VariationalDiffusion, network_from_preset  # noqa: E402,F401
    from keras_dmdiff.map_checks import validate_maps  # noqa: E402,F401
    from keras_dmdiff.transforms import MapTransform  # noqa: E402,F401
