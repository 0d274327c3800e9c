"""A physically motivated mock of the CAMELS Multifield Dataset (pure numpy/scipy).

Particle-mesh N-body from 2LPT initial conditions, CMD-style projections of
stellar and dark-matter mass, three mock galaxy-formation suites calibrated to
the published CMD moments, driven by the real CAMELS parameter tables.
Known weakness: the small-scale power of the mock maps is below that of the
real CMD maps (PM force resolution of one mesh cell).

Public API:
    write_cmd_files: write the exact CMD files (parallel, resumable).
    generate_simulation: one simulation -> (Mstar, Mcdm) maps [15, H, W].
    MockSettings: the resolution of a simulation and its maps (`for_box`: a large box at CMD's).
    load_params: the real CAMELS parameter tables (LH, CV, 1P).
    SUITES, PUBLISHED_MOMENTS: the mock suites and their calibration targets.
"""

from keras_dmdiff.mock.generate import MockSettings, generate_simulation, paint_simulation, run_nbody
from keras_dmdiff.mock.suites import PUBLISHED_MOMENTS, SETS, SUITES, get_suite, load_params
from keras_dmdiff.mock.writer import cmd_file_names, simulation_seed, write_cmd_files, write_cmd_files_from_fields

__all__ = [
    "write_cmd_files",
    "write_cmd_files_from_fields",
    "generate_simulation",
    "run_nbody",
    "paint_simulation",
    "MockSettings",
    "load_params",
    "get_suite",
    "cmd_file_names",
    "simulation_seed",
    "SUITES",
    "SETS",
    "PUBLISHED_MOMENTS",
]
