"""The `camels_cmd` TFDS dataset: CAMELS CMD stellar-mass and dark-matter maps.

Importing this package registers the builder under the name `camels_cmd` (so does
`import keras_dmdiff`). The folder `datasets/` installs as `keras_dmdiff_datasets`; the
imports below are absolute so that the builder module is only ever loaded under that name,
even when a tool imports this folder under another one (e.g. pytest's rootdir import).
"""

from keras_dmdiff_datasets.camels_cmd.camels_cmd_dataset_builder import (
    CMD_MAPS_PER_SIMULATION,
    MAP_SIZE,
    PARAM_NAMES,
    SETS,
    SUITES,
    Builder,
    CamelsCmdConfig,
    CmdFiles,
    CmdFilesFormatError,
    CmdFilesNotFoundError,
    cmd_file_names,
    read_cmd_files,
    set_mock_writer,
    split_simulations,
)

__all__ = [
    "Builder",
    "CamelsCmdConfig",
    "CmdFiles",
    "CmdFilesFormatError",
    "CmdFilesNotFoundError",
    "CMD_MAPS_PER_SIMULATION",
    "MAP_SIZE",
    "PARAM_NAMES",
    "SETS",
    "SUITES",
    "cmd_file_names",
    "read_cmd_files",
    "set_mock_writer",
    "split_simulations",
]
