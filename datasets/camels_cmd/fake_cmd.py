"""Tiny files in exactly the CMD format, for tests and for the builder's `dummy_data/`.

The maps are cheap random fields, not physics (use `keras_dmdiff.mock` for physics): dark
matter is a positive lognormal field with CMD's log10 mean and std (10.98, 0.51); stellar mass
is sparse (~2 % non-zero pixels), placed on the densest dark-matter pixels.

Regenerate the builder's dummy data (from the repository root):

    python -m keras_dmdiff_datasets.camels_cmd.fake_cmd datasets/camels_cmd/dummy_data
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

from keras_dmdiff_datasets.camels_cmd.camels_cmd_dataset_builder import (
    MAP_SIZE,
    NUM_PARAMS,
    cmd_file_names,
)

_FIDUCIAL = np.array([0.3, 0.8, 1.0, 1.0, 1.0, 1.0])
_LOW = np.array([0.1, 0.6, 0.25, 0.25, 0.5, 0.5])
_HIGH = np.array([0.5, 1.0, 4.0, 4.0, 2.0, 2.0])


def fake_maps(num_maps: int, *, map_size: int = MAP_SIZE, seed: int = 0):
    """Random (stellar_mass, dark_matter) float32 maps [num_maps, map_size, map_size].

    Args:
        num_maps: Number of maps.
        map_size: Pixels per side.
        seed: Random seed.

    Returns:
        A tuple `(stellar_mass, dark_matter)` of float32 arrays in CMD-like physical units.
    """
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(map_size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    kernel = np.exp(-k2 * (map_size / 8.0) ** 2)  # periodic Gaussian smoothing
    stellar = np.zeros((num_maps, map_size, map_size), np.float32)
    dark = np.zeros((num_maps, map_size, map_size), np.float32)
    for i in range(num_maps):
        noise = rng.standard_normal((map_size, map_size))
        field = np.fft.ifft2(np.fft.fft2(noise) * kernel).real
        field = (field - field.mean()) / field.std() + 0.3 * rng.standard_normal(field.shape)
        field = (field - field.mean()) / field.std()
        log_dm = 10.98 + 0.51 * field
        dark[i] = (10.0**log_dm).astype(np.float32)
        threshold = np.quantile(log_dm, 0.98)
        on = log_dm > threshold
        stellar[i][on] = (10.0 ** (9.0 + 2.0 * (log_dm[on] - threshold))).astype(np.float32)
    return stellar, dark


def fake_params(num_simulations: int, set_name: str = "LH", *, seed: int = 0) -> np.ndarray:
    """Parameter rows [num_simulations, 6]: uniform in the LH ranges, or fiducial for CV."""
    if set_name == "CV":
        return np.tile(_FIDUCIAL, (num_simulations, 1))
    rng = np.random.default_rng(seed + 1)
    return _LOW + (_HIGH - _LOW) * rng.random((num_simulations, NUM_PARAMS))


def write_fake_cmd_files(
    folder,
    suite: str = "IllustrisTNG",
    set_name: str = "LH",
    *,
    num_simulations: int = 3,
    maps_per_simulation: int = 2,
    map_size: int = MAP_SIZE,
    seed: int = 0,
) -> dict[str, pathlib.Path]:
    """Write `Maps_Mstar_*.npy`, `Maps_Mcdm_*.npy` and `params_*.txt` in the CMD format.

    Args:
        folder: Output folder (created if needed).
        suite: Suite name used in the file names.
        set_name: Set name used in the file names (`"CV"` writes fiducial parameters).
        num_simulations: Rows of the parameter table.
        maps_per_simulation: Maps per simulation (CMD has 15; tests use fewer).
        map_size: Pixels per side (the builder requires 256).
        seed: Random seed.

    Returns:
        Dict `"stellar_mass"`, `"dark_matter"`, `"params"` -> written path.

    Examples:

    >>> paths = write_fake_cmd_files("/tmp/cmd", "SIMBA", "CV", num_simulations=2)  # doctest: +SKIP
    """
    folder = pathlib.Path(os.fspath(folder))
    folder.mkdir(parents=True, exist_ok=True)
    names = cmd_file_names(suite, set_name)
    stellar, dark = fake_maps(num_simulations * maps_per_simulation, map_size=map_size, seed=seed)
    paths = {key: folder / name for key, name in names.items()}
    np.save(paths["stellar_mass"], stellar)
    np.save(paths["dark_matter"], dark)
    np.savetxt(paths["params"], fake_params(num_simulations, set_name, seed=seed), fmt="%.5f")
    return paths


def write_dummy_data(folder) -> None:
    """Write the builder's `dummy_data/` (IllustrisTNG LH 3x2 maps, CV 2x2, 1P 1x2)."""
    write_fake_cmd_files(folder, "IllustrisTNG", "LH", num_simulations=3, seed=0)
    write_fake_cmd_files(folder, "IllustrisTNG", "CV", num_simulations=2, seed=1)
    write_fake_cmd_files(folder, "IllustrisTNG", "1P", num_simulations=1, seed=2)


if __name__ == "__main__":
    write_dummy_data(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "dummy_data")
