"""TFDS builder for the CAMELS Multifield Dataset (CMD) 2-D maps: stellar mass and dark matter.

The builder reads exactly the CMD files of one suite and one set from a manual directory
(`Maps_Mstar_{suite}_{set}_z=0.00.npy`, `Maps_Mcdm_{suite}_{set}_z=0.00.npy`,
`params_{set}_{suite}.txt`), memory-mapping the map files so that a 3.75 GB file is never held
whole in memory. The `mock_*` configs first write files in exactly the same format with
`keras_dmdiff.mock.write_cmd_files` and then read them through the same code.

Splits are by simulation (never by map): the LH set gives `train` / `validation` / `test`
with 80 / 10 / 10 % of the simulations, chosen by a fixed hash rule (see `split_simulations`);
the CV and 1P sets give a single `test` split with every map.

Examples:

```python
import tensorflow_datasets as tfds
import keras_dmdiff_datasets.camels_cmd  # registers "camels_cmd" (so does `import keras_dmdiff`)

builder = tfds.builder("camels_cmd/IllustrisTNG_LH", data_dir="~/tensorflow_datasets")
builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir="/data/CMD/2D_maps/data"))
ds = builder.as_dataset(split="train")
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

logger = logging.getLogger(__name__)

SUITES = ("IllustrisTNG", "SIMBA", "Astrid")
SETS = ("LH", "CV", "1P")
MAP_SIZE = 256
PARAM_NAMES = ("Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")
NUM_PARAMS = len(PARAM_NAMES)
# 5 slabs of 5 Mpc/h along each of the 3 axes.
CMD_MAPS_PER_SIMULATION = 15
# LH split fractions (train, validation, test) of the simulations.
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SPLIT_SALT = "camels_cmd/LH/v1"
# Default number of simulations of the mock configs (small on purpose: ~12 s per simulation
# per core at the default resolution). Make a custom `CamelsCmdConfig` for more.
MOCK_DEFAULT_NUM_SIMULATIONS = {"LH": 10, "CV": 3, "1P": 6}

_CMD_DOC_URL = "https://camels-multifield-dataset.readthedocs.io"
_STELLAR_PREFIX = "Mstar"
_DARK_MATTER_PREFIX = "Mcdm"

# Facts of the CMD format used to check units: maps of 5 Mpc/h slabs of a 25 Mpc/h box, in
# (Msun/h)/(Mpc/h)^2, with Omega_b = 0.049 in every CAMELS simulation. The mean of a dark-matter
# map is then close to (Omega_m - Omega_b) rho_crit x 5 Mpc/h (exactly so over the 15 maps of a
# simulation, which tile its box three times); single slabs scatter by up to ~3x.
CMD_SLAB_DEPTH = 5.0  # Mpc/h
CMD_OMEGA_B = 0.049
CRITICAL_DENSITY = 2.77536627e11  # (Msun/h) / (Mpc/h)^3
# A map in Msun per pixel is 105x below its surface density, one per (kpc/h)^2 1e6x.
_UNIT_TOLERANCE = 5.0


class CmdFilesNotFoundError(FileNotFoundError):
    """The CMD files of a config are missing from the folder searched."""


class CmdFilesFormatError(ValueError):
    """The CMD files exist but are inconsistent (shapes, parameter table, NaNs)."""


def cmd_file_names(suite: str, set_name: str) -> dict[str, str]:
    """Return the exact CMD file names of one suite and set.

    Args:
        suite: One of `"IllustrisTNG"`, `"SIMBA"`, `"Astrid"`.
        set_name: One of `"LH"`, `"CV"`, `"1P"` (other CMD sets follow the same naming).

    Returns:
        A dict with the keys `"stellar_mass"`, `"dark_matter"` and `"params"` mapping to file
        names (no folder).

    Examples:

    >>> cmd_file_names("IllustrisTNG", "LH")["params"]
    'params_LH_IllustrisTNG.txt'
    """
    return {
        "stellar_mass": f"Maps_{_STELLAR_PREFIX}_{suite}_{set_name}_z=0.00.npy",
        "dark_matter": f"Maps_{_DARK_MATTER_PREFIX}_{suite}_{set_name}_z=0.00.npy",
        "params": f"params_{set_name}_{suite}.txt",
    }


def _files_message(folder, suite: str, set_name: str, problem: str) -> str:
    names = cmd_file_names(suite, set_name)
    lines = [problem] + ([f"Folder searched: {folder}"] if folder is not None else [])
    lines.append(f"Files expected for {suite} {set_name}:")
    for name in names.values():
        present = folder is not None and (pathlib.Path(os.fspath(folder)) / name).is_file()
        lines.append(f"  {name}  [{'found' if present else 'MISSING'}]")
    lines.append(
        "Get them from the CAMELS Multifield Dataset (2D maps, "
        f"{_CMD_DOC_URL}) or generate mock files with "
        "`dmdiff mock --suite SUITE --set SET --num-sims N --out DIR`."
    )
    return "\n".join(lines)


@dataclasses.dataclass
class CmdFiles:
    """The opened, validated CMD files of one suite and set.

    Attributes:
        folder: The folder holding the files.
        suite: The suite name.
        set_name: The set name.
        stellar_mass: Memory-mapped array [n_maps, 256, 256] of stellar mass.
        dark_matter: Memory-mapped array [n_maps, 256, 256] of dark matter mass.
        params: Array [n_simulations, 6] float32 of the parameters (Omega_m, sigma_8, A_SN1,
            A_AGN1, A_SN2, A_AGN2).
        maps_per_simulation: n_maps // n_simulations (15 for CMD).
    """

    folder: pathlib.Path
    suite: str
    set_name: str
    stellar_mass: np.ndarray
    dark_matter: np.ndarray
    params: np.ndarray
    maps_per_simulation: int

    @property
    def num_maps(self) -> int:
        return int(self.stellar_mass.shape[0])

    @property
    def num_simulations(self) -> int:
        return int(self.params.shape[0])

    def path(self, field: str) -> pathlib.Path:
        return self.folder / cmd_file_names(self.suite, self.set_name)[field]


def read_cmd_files(folder, suite: str, set_name: str) -> CmdFiles:
    """Open and validate the CMD files of one suite and set, memory-mapping the maps.

    Nothing but the headers of the map files and the small parameter table is read: the maps
    stay on disk (`np.load(..., mmap_mode="r")`).

    Args:
        folder: Folder holding the files (str or path-like).
        suite: One of `SUITES`.
        set_name: A CMD set name, e.g. `"LH"`, `"CV"`, `"1P"`.

    Returns:
        A `CmdFiles`.

    Raises:
        CmdFilesNotFoundError: The folder or a file is missing; the message lists the exact
            files expected and the folder searched.
        CmdFilesFormatError: Maps that are not [n, 256, 256] floats, fields with different
            shapes, a parameter table without 6 columns or with non-finite values, or a
            number of maps that is not a multiple of the number of parameter rows.

    Examples:

    >>> files = read_cmd_files("/data/CMD", "IllustrisTNG", "LH")  # doctest: +SKIP
    >>> files.maps_per_simulation  # doctest: +SKIP
    15
    """
    if folder is None or not pathlib.Path(os.fspath(folder)).is_dir():
        raise CmdFilesNotFoundError(
            _files_message(folder, suite, set_name, "The CMD folder does not exist.")
        )
    folder = pathlib.Path(os.fspath(folder))
    names = cmd_file_names(suite, set_name)
    missing = [n for n in names.values() if not (folder / n).is_file()]
    if missing:
        raise CmdFilesNotFoundError(
            _files_message(folder, suite, set_name, f"Missing CMD file(s): {', '.join(missing)}.")
        )

    def fail(problem):
        raise CmdFilesFormatError(_files_message(folder, suite, set_name, problem))

    maps = {}
    for field in ("stellar_mass", "dark_matter"):
        path = folder / names[field]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            fail(f"{path.name} is not a readable .npy array: {e}")
        if array.ndim != 3 or array.shape[1:] != (MAP_SIZE, MAP_SIZE):
            fail(
                f"{path.name} has shape {array.shape}; expected [n_maps, {MAP_SIZE}, {MAP_SIZE}]."
            )
        if not np.issubdtype(array.dtype, np.floating):
            fail(f"{path.name} has dtype {array.dtype}; expected float32.")
        maps[field] = array
    if maps["stellar_mass"].shape != maps["dark_matter"].shape:
        fail(
            f"{names['stellar_mass']} has shape {maps['stellar_mass'].shape} but "
            f"{names['dark_matter']} has shape {maps['dark_matter'].shape}; "
            "the two fields must hold the same maps."
        )

    params_path = folder / names["params"]
    try:
        params = np.loadtxt(params_path, ndmin=2, dtype=np.float64)
    except ValueError as e:
        fail(f"{params_path.name} is not a numeric table: {e}")
    if params.shape[0] == 0 or params.shape[1] != NUM_PARAMS:
        fail(
            f"{params_path.name} has shape {params.shape}; expected one row per simulation "
            f"and {NUM_PARAMS} columns ({', '.join(PARAM_NAMES)})."
        )
    if not np.all(np.isfinite(params)):
        bad = sorted(set(np.nonzero(~np.isfinite(params))[0].tolist()))
        fail(f"{params_path.name} has non-finite values in row(s) {bad[:10]}.")

    num_maps = maps["stellar_mass"].shape[0]
    num_sims = params.shape[0]
    if num_maps == 0 or num_maps % num_sims:
        fail(
            f"{num_maps} maps cannot be split evenly over the {num_sims} simulations of "
            f"{params_path.name} (CMD has {CMD_MAPS_PER_SIMULATION} maps per simulation)."
        )
    maps_per_sim = num_maps // num_sims
    if maps_per_sim != CMD_MAPS_PER_SIMULATION:
        logger.info(
            "%s %s: %d maps per simulation (CMD has %d).",
            suite, set_name, maps_per_sim, CMD_MAPS_PER_SIMULATION,
        )
    return CmdFiles(
        folder=folder,
        suite=suite,
        set_name=set_name,
        stellar_mass=maps["stellar_mass"],
        dark_matter=maps["dark_matter"],
        params=params.astype(np.float32),
        maps_per_simulation=maps_per_sim,
    )


def split_simulations(num_simulations: int, set_name: str) -> dict[str, np.ndarray]:
    """Assign whole simulations to splits, deterministically.

    For LH, simulations are ordered by the SHA-256 hash of `"camels_cmd/LH/v1:{index}"`; the
    first `n_train` go to `train`, the next `n_validation` to `validation`, the rest to `test`,
    with `n_validation = n_test = max(1, floor(0.1 * n + 0.5))` and `n_train` the rest
    (1000 simulations: 800 / 100 / 100; 10: 8 / 1 / 1; 3: 1 / 1 / 1). The rule depends on
    nothing but the simulation index and the count (no RNG, no library version), and the same
    indices are held out in every suite. LH needs at least 3 simulations. Every other set gives
    a single `test` split with all simulations.

    Args:
        num_simulations: Number of simulations (rows of the parameter table).
        set_name: CMD set name.

    Returns:
        Dict split name -> sorted int array of simulation indices; the splits are disjoint and
        cover every simulation.

    Examples:

    >>> {k: len(v) for k, v in split_simulations(1000, "LH").items()}
    {'train': 800, 'validation': 100, 'test': 100}
    """
    sims = np.arange(num_simulations)
    if set_name != "LH":
        return {"test": sims}
    if num_simulations < 3:
        raise ValueError(
            f"The LH split (train/validation/test by simulation) needs at least 3 simulations; "
            f"got {num_simulations}."
        )
    n_held = max(1, int(np.floor(SPLIT_FRACTIONS["test"] * num_simulations + 0.5)))
    n_train = num_simulations - 2 * n_held
    order = sorted(
        sims.tolist(), key=lambda s: hashlib.sha256(f"{SPLIT_SALT}:{s}".encode()).digest()
    )
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train : n_train + n_held]),
        "test": np.sort(order[n_train + n_held :]),
    }


@dataclasses.dataclass(eq=False)
class CamelsCmdConfig(tfds.core.BuilderConfig):
    """Config of one CMD suite and set, real (manual files) or mock (generated).

    Attributes:
        suite: `"IllustrisTNG"`, `"SIMBA"` or `"Astrid"` (for mocks: the mock suite).
        set_name: `"LH"`, `"CV"` or `"1P"`.
        mock: If True, write mock CMD files with `keras_dmdiff.mock.write_cmd_files` during the
            build (under the download dir) instead of reading a manual dir.
        num_simulations: Mock only: number of simulations (the first rows of the real CAMELS
            parameter table of the set); None = the whole table.
        mock_grid_size: Mock only: particles per side (128 for 25 Mpc/h).
        mock_num_steps: Mock only: particle-mesh steps.
        mock_seed: Mock only: random seed.
        mock_workers: Mock only: worker processes; None = all CPUs.

    Examples (a mock with more simulations, under its own name):

    ```python
    cfg = CamelsCmdConfig(name="mock_IllustrisTNG_LH_n100", suite="IllustrisTNG",
                          set_name="LH", mock=True, num_simulations=100)
    builder = tfds.builder("camels_cmd", config=cfg, data_dir=D)
    ```
    """

    suite: str = "IllustrisTNG"
    set_name: str = "LH"
    mock: bool = False
    num_simulations: int | None = None
    mock_grid_size: int = 128
    mock_num_steps: int = 10
    mock_seed: int = 0
    mock_workers: int | None = None

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"Unknown suite {self.suite!r}; expected one of {SUITES}.")
        if not self.set_name or "_" in self.set_name:
            raise ValueError(f"Invalid set name {self.set_name!r}.")
        if self.mock and self.set_name == "LH" and self.num_simulations is not None:
            if self.num_simulations < 3:
                raise ValueError("A mock LH config needs num_simulations >= 3 (train/validation/test).")


def _make_configs():
    configs = []
    for suite in SUITES:
        for set_name in SETS:
            configs.append(
                CamelsCmdConfig(
                    name=f"{suite}_{set_name}",
                    suite=suite,
                    set_name=set_name,
                    description=f"CMD {suite} {set_name} maps read from the manual directory.",
                )
            )
    for suite in SUITES:
        for set_name in SETS:
            n = MOCK_DEFAULT_NUM_SIMULATIONS[set_name]
            configs.append(
                CamelsCmdConfig(
                    name=f"mock_{suite}_{set_name}",
                    suite=suite,
                    set_name=set_name,
                    mock=True,
                    num_simulations=n,
                    description=(
                        f"Mock {suite} {set_name}: {n} particle-mesh simulations generated "
                        "during the build (no manual files needed)."
                    ),
                )
            )
    return configs


def _already_registered(name: str) -> bool:
    # The module may be imported twice under two names (e.g. pytest's rootdir import of
    # `datasets/camels_cmd` as `camels_cmd`): register only the first copy.
    return name in tfds.list_builders(with_community_datasets=False)


# The mock configs' writer, set by the package that provides it (`import keras_dmdiff`
# sets `keras_dmdiff.mock.write_cmd_files`), so this builder imports nothing of it.
_mock_writer = None


def set_mock_writer(writer) -> None:
    """Sets the function the `mock_*` configs write their CMD files with.

    Args:
        writer: called as `writer(folder, suite, set_name=..., num_sims=..., grid_size=...,
            map_size=..., box_size=..., num_steps=..., workers=..., seed=..., progress=...)`,
            writing the three CMD files of `suite` and `set_name` into `folder`.
    """
    global _mock_writer
    _mock_writer = writer


class Builder(
    tfds.core.GeneratorBasedBuilder, skip_registration=_already_registered("camels_cmd")
):
    """CAMELS CMD 2-D maps: stellar mass (input) and dark matter (target) pairs."""

    # This file and its folder (README.md, CITATIONS.bib, checksums.tsv, dummy_data/). Set
    # explicitly: TFDS would otherwise resolve them through the top-level package
    # `keras_dmdiff_datasets`, a namespace package (no `__init__.py`) that
    # `importlib.resources` cannot handle in editable installs.
    code_path = epath.Path(__file__)
    pkg_dir_path = epath.Path(__file__).parent
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: Mstar and Mcdm maps, parameters, splits by simulation.",
    }
    BUILDER_CONFIGS = _make_configs()
    DEFAULT_BUILDER_CONFIG_NAME = "IllustrisTNG_LH"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the 2-D maps of the CAMELS Multifield Dataset ({_CMD_DOC_URL}) and pass
their folder as `manual_dir`. For config `{{suite}}_{{set}}` the folder must hold exactly:

  Maps_Mstar_{{suite}}_{{set}}_z=0.00.npy   float32 [n_maps, 256, 256]
  Maps_Mcdm_{{suite}}_{{set}}_z=0.00.npy    float32 [n_maps, 256, 256]
  params_{{set}}_{{suite}}.txt              n_maps / 15 rows x 6 columns

e.g. for IllustrisTNG_LH: Maps_Mstar_IllustrisTNG_LH_z=0.00.npy,
Maps_Mcdm_IllustrisTNG_LH_z=0.00.npy and params_LH_IllustrisTNG.txt
(suites: {", ".join(SUITES)}; sets: {", ".join(SETS)}). The `mock_*` configs need no files.
"""

    def _info(self) -> tfds.core.DatasetInfo:
        map_doc = "{} map, (Msun/h)/(Mpc/h)^2, 256x256 over a periodic (25 Mpc/h)^2 slab of 5 Mpc/h."
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "stellar_mass": tfds.features.Tensor(
                        shape=(MAP_SIZE, MAP_SIZE),
                        dtype=np.float32,
                        encoding=tfds.features.Encoding.ZLIB,
                        doc=map_doc.format("Stellar mass (Mstar)"),
                    ),
                    "dark_matter": tfds.features.Tensor(
                        shape=(MAP_SIZE, MAP_SIZE),
                        dtype=np.float32,
                        doc=map_doc.format("Cold dark matter mass (Mcdm)"),
                    ),
                    "params": tfds.features.Tensor(
                        shape=(NUM_PARAMS,),
                        dtype=np.float32,
                        doc="Simulation parameters: " + ", ".join(PARAM_NAMES),
                    ),
                    "simulation": tfds.features.Scalar(
                        dtype=np.int32, doc="Simulation index (row of the parameter table)."
                    ),
                    "map_index": tfds.features.Scalar(
                        dtype=np.int32, doc="Row of the map in the .npy files."
                    ),
                }
            ),
            supervised_keys=("stellar_mass", "dark_matter"),
            homepage=_CMD_DOC_URL,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        if cfg.mock:
            folder = self._write_mock_files(dl_manager)
        else:
            try:
                folder = dl_manager.manual_dir
            except AssertionError as e:
                # TFDS names the folder it searched in this message.
                raise CmdFilesNotFoundError(
                    _files_message(
                        None,
                        cfg.suite,
                        cfg.set_name,
                        f"{e} (pass download_config=tfds.download.DownloadConfig(manual_dir=...)).",
                    )
                ) from e
        files = read_cmd_files(folder, cfg.suite, cfg.set_name)
        splits = split_simulations(files.num_simulations, cfg.set_name)
        return {
            name: self._generate_examples(files=files, simulations=sims)
            for name, sims in splits.items()
        }

    def _write_mock_files(self, dl_manager) -> pathlib.Path:
        cfg = self.builder_config
        if _mock_writer is None:
            raise RuntimeError(
                f"Config {cfg.name!r} generates mock maps, and no mock writer is set: "
                "`import keras_dmdiff` first (it sets keras_dmdiff.mock.write_cmd_files), or call "
                "keras_dmdiff_datasets.camels_cmd.set_mock_writer."
            )
        tag = (
            f"{cfg.suite}_{cfg.set_name}_n{cfg.num_simulations or 'all'}"
            f"_g{cfg.mock_grid_size}_s{cfg.mock_num_steps}_seed{cfg.mock_seed}"
        )
        # A stable folder: an interrupted build resumes the mock where it stopped.
        out_dir = pathlib.Path(os.fspath(dl_manager.download_dir)) / "camels_cmd_mock" / tag
        out_dir.mkdir(parents=True, exist_ok=True)
        workers = cfg.mock_workers or os.cpu_count() or 1
        _mock_writer(
            out_dir,
            cfg.suite,
            set_name=cfg.set_name,
            num_sims=cfg.num_simulations,
            grid_size=cfg.mock_grid_size,
            map_size=MAP_SIZE,
            box_size=25.0,
            num_steps=cfg.mock_num_steps,
            workers=workers,
            seed=cfg.mock_seed,
            progress=True,
        )
        return out_dir

    def _generate_examples(self, files: CmdFiles, simulations) -> Iterator[tuple[int, dict]]:
        mps = files.maps_per_simulation
        for sim in np.sort(np.asarray(simulations)).tolist():
            indices = range(sim * mps, (sim + 1) * mps)
            stellar = np.array(files.stellar_mass[indices.start : indices.stop], dtype=np.float32)
            dark = np.array(files.dark_matter[indices.start : indices.stop], dtype=np.float32)
            check_simulation_maps(files, sim, stellar, dark)
            for offset, map_index in enumerate(indices):
                yield map_index, {
                    "stellar_mass": stellar[offset],
                    "dark_matter": dark[offset],
                    "params": files.params[sim],
                    "simulation": np.int32(sim),
                    "map_index": np.int32(map_index),
                }


def expected_mean_dark_matter(omega_m: float) -> float:
    """The mean of a CMD dark-matter map over its simulation, in (Msun/h)/(Mpc/h)^2.

    Args:
        omega_m: the simulation's Omega_m (column 0 of the parameter table).

    Example:

    >>> f"{expected_mean_dark_matter(0.3):.3g}"
    '3.48e+11'
    """
    return (omega_m - CMD_OMEGA_B) * CRITICAL_DENSITY * CMD_SLAB_DEPTH


def check_simulation_maps(files: CmdFiles, sim: int, stellar: np.ndarray, dark: np.ndarray) -> None:
    """Raises a `CmdFilesFormatError` naming the file if one simulation's maps are not physical.

    Checks non-finite values, negative stellar mass, dark matter that is not strictly
    positive, maps that are already log10-scaled, and dark matter whose mean is not the
    simulation's mass per area (another unit, e.g. Msun per pixel).

    Args:
        files: the `CmdFiles` the maps come from (named in the error).
        sim: the simulation's row in the parameter table.
        stellar, dark: its maps, [maps_per_simulation, H, W].
    """

    def fail(field, problem):
        raise CmdFilesFormatError(
            _files_message(
                files.folder, files.suite, files.set_name,
                f"{files.path(field).name}: simulation {sim} (maps {sim * files.maps_per_simulation}-"
                f"{(sim + 1) * files.maps_per_simulation - 1}) {problem}",
            )
        )

    for field, array in (("stellar_mass", stellar), ("dark_matter", dark)):
        finite = np.isfinite(array)
        if not np.all(finite):
            first = sim * files.maps_per_simulation + int(np.nonzero(~finite)[0][0])
            fail(field, f"has non-finite values (first in map {first}).")
    if stellar.min() < 0:
        fail("stellar_mass", f"has negative stellar mass (minimum {stellar.min():g}).")
    if dark.min() <= 0:
        fail("dark_matter", f"is not strictly positive (minimum {dark.min():g}); log10 of it is taken.")
    if dark.max() < 100.0:
        fail("dark_matter", f"looks log10-scaled (largest value {dark.max():g}); CMD maps are linear.")
    expected = expected_mean_dark_matter(float(files.params[sim, 0]))
    ratio = float(dark.mean(dtype=np.float64)) / expected
    if not 1.0 / _UNIT_TOLERANCE < ratio < _UNIT_TOLERANCE:
        fail(
            "dark_matter",
            f"has a mean of {ratio:.3g}x the mass per area of its Omega_m "
            f"({expected:.3g} (Msun/h)/(Mpc/h)^2 for 5 Mpc/h slabs): the maps must be surface "
            "densities in (Msun/h)/(Mpc/h)^2, not masses per pixel or another unit.",
        )
