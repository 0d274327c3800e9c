"""`tfds.testing.DatasetBuilderTestCase` of the camels_cmd builder on `dummy_data/`.

The dummy data (written by `fake_cmd.write_dummy_data`) holds CMD-format IllustrisTNG files
with 2 maps per simulation: LH 3 simulations (one per split), CV 2, 1P 1.
"""

import pytest
import tensorflow_datasets as tfds

# Absolute import: the builder must be loaded under its installed name only.
from keras_dmdiff_datasets.camels_cmd import camels_cmd_dataset_builder

pytestmark = pytest.mark.backend_independent


class _CamelsCmdSettings:
    """Settings shared by the test cases (a mixin, so it is not collected as a test)."""

    DATASET_CLASS = camels_cmd_dataset_builder.Builder
    # Nothing is fetched by URL (manual download): no checksums to record.
    SKIP_CHECKSUMS = True
    # The builder memory-maps the local .npy files (`np.load(path, mmap_mode="r")`), which
    # needs a path, not the file object that the default mock of `np.load` insists on.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False


class CamelsCmdLHTest(_CamelsCmdSettings, tfds.testing.DatasetBuilderTestCase):
    """LH: 3 simulations x 2 maps, split 1 / 1 / 1 simulation."""

    BUILDER_CONFIG_NAMES_TO_TEST = ["IllustrisTNG_LH"]
    SPLITS = {"train": 2, "validation": 2, "test": 2}


class CamelsCmdCVTest(_CamelsCmdSettings, tfds.testing.DatasetBuilderTestCase):
    """CV: 2 simulations x 2 maps, all in `test`."""

    BUILDER_CONFIG_NAMES_TO_TEST = ["IllustrisTNG_CV"]
    SPLITS = {"test": 4}


class CamelsCmd1PTest(_CamelsCmdSettings, tfds.testing.DatasetBuilderTestCase):
    """1P: 1 simulation x 2 maps, all in `test`."""

    BUILDER_CONFIG_NAMES_TO_TEST = ["IllustrisTNG_1P"]
    SPLITS = {"test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
