"""The tf.data input pipeline: TFDS CMD maps -> batches of (stellar_mass, dark_matter).

See `keras_dmdiff.data.pipeline` for details. The TFDS builder itself lives in
`keras_dmdiff_datasets.camels_cmd` (the repository folder `datasets/camels_cmd`).
"""

from keras_dmdiff.data.pipeline import (
    NUM_SYMMETRIES,
    apply_symmetry,
    augment_pair,
    crop_box_size,
    load_split,
    make_dataset,
    periodic_crop,
)

__all__ = [
    "NUM_SYMMETRIES",
    "apply_symmetry",
    "augment_pair",
    "crop_box_size",
    "load_split",
    "make_dataset",
    "periodic_crop",
]
