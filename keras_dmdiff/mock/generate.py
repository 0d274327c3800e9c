"""One mock CAMELS simulation: N-body, then dark-matter and stellar maps.

Known weakness (say it wherever mock numbers are shown): the particle-mesh
N-body resolves ~1 mesh cell (0.2 Mpc/h at N=128 in 25 Mpc/h), so the mock
Mcdm maps have less small-scale power than the real CMD maps, and galaxies
live only in halos of >~ 20 particles (~1e10 Msun/h at N=128).
"""

import dataclasses

import numpy as np

from keras_dmdiff.mock import cosmology, painting, particle_mesh, suites

__all__ = ["MockSettings", "generate_simulation", "run_nbody", "paint_simulation"]


@dataclasses.dataclass(frozen=True)
class MockSettings:
    """The resolution of a mock simulation and its maps (CMD's by default).

    Args:
        grid_size: particles per side N (even); 128 for 25 Mpc/h.
        map_size: pixels per side (256 for CMD).
        box_size: box side in Mpc/h (25 for CMD; see `for_box`).
        num_steps: particle-mesh kick-drift-kick steps from a = 0.1 to 1.
        slab_thickness, slabs_per_axis: see `painting.slab_layout`
            (default: 5 slabs of 5 Mpc/h per axis, 15 maps a simulation).

    Examples:
        >>> MockSettings.for_box(100.0)
        MockSettings(grid_size=512, map_size=1024, box_size=100.0, num_steps=10, slab_thickness=5.0, slabs_per_axis=None)
    """

    grid_size: int = 128
    map_size: int = 256
    box_size: float = 25.0
    num_steps: int = 10
    slab_thickness: float | None = 5.0
    slabs_per_axis: int | None = None

    def __post_init__(self):
        check_sizes(self.grid_size, self.map_size, self.box_size, self.num_steps)

    @classmethod
    def for_box(cls, box_size, reference=None):
        """A large box at the mass and pixel resolution of `reference` (CMD's).

        The particle mass and the pixel (97.66 kpc/h) stay those of N=128 in
        25 Mpc/h; by default 5 slabs of 5 Mpc/h per axis are projected (one
        every box/5), so a simulation gives 15 maps, each (box/25)^2 times
        CMD's area. Memory grows as grid_size^3: a 256^3 run (50 Mpc/h)
        peaked at 2.3 GiB; a 512^3 run (100 Mpc/h) peaked at 13.3 GiB and took
        18 minutes on a 2-core machine (measured with `recipes/large_volume.toml`).
        """
        reference = cls() if reference is None else reference
        scale = box_size / reference.box_size
        return dataclasses.replace(
            reference,
            grid_size=int(round(reference.grid_size * scale / 2.0)) * 2,
            map_size=int(round(reference.map_size * scale)),
            box_size=float(box_size),
        )


def _validate(params):
    params = np.asarray(params, dtype=np.float64).reshape(-1)
    if params.shape != (6,):
        raise ValueError(f"params must hold 6 values (Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2), got {params.shape}")
    if not (cosmology.OMEGA_B < params[0] <= 1.0):
        raise ValueError(f"Omega_m must be in ({cosmology.OMEGA_B}, 1], got {params[0]}")
    if params[1] <= 0 or np.any(params[2:] <= 0):
        raise ValueError(f"sigma_8 and the A parameters must be > 0, got {params.tolist()}")
    return params


def check_sizes(grid_size, map_size, box_size, num_steps):
    """Raises ValueError unless the simulation and map sizes are usable."""
    if int(grid_size) != grid_size or grid_size < 4 or grid_size % 2:
        raise ValueError(f"grid_size must be an even integer >= 4, got {grid_size!r}")
    if int(map_size) != map_size or map_size < 4:
        raise ValueError(f"map_size must be an integer >= 4, got {map_size!r}")
    if not box_size > 0:
        raise ValueError(f"box_size must be > 0, got {box_size!r}")
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def _seeds(seed):
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    nbody, stars = ss.spawn(2)
    return nbody, stars


def run_nbody(params, settings=None, *, seed=0):
    """The N-body part of a mock simulation plus its halo catalogue.

    Args:
        params: the 6 CMD parameters; only Omega_m and sigma_8 enter here.
        settings: a `MockSettings` (None: CMD's); its grid, box and steps enter here.
        seed: int or SeedSequence (the same value as for `generate_simulation`).

    Returns:
        dict from `particle_mesh.run_simulation` plus `halos` from
        `painting.find_halos` (labelling grid of 2 * grid_size cells).

    Examples:
        >>> nb = run_nbody((0.3, 0.8, 1, 1, 1, 1), MockSettings(grid_size=16, num_steps=2))
        >>> nb["pos"].shape
        (4096, 3)
    """
    c = MockSettings() if settings is None else settings
    params = _validate(params)
    nbody_seed, _ = _seeds(seed)
    out = particle_mesh.run_simulation(
        params[0], params[1], grid_size=c.grid_size, box_size=c.box_size, num_steps=c.num_steps, seed=nbody_seed
    )
    out["halos"] = painting.find_halos(out["pos"], c.box_size, 2 * c.grid_size)
    return out


def paint_simulation(nbody, params, suite, settings=None, *, seed=0, suite_overrides=None, return_stars=False):
    """Mstar and Mcdm maps from an N-body output (see `run_nbody`).

    Args:
        nbody: dict returned by `run_nbody`.
        params: the 6 CMD parameters.
        suite: suite name or `suites.MockSuite`.
        settings: the `MockSettings` of the N-body run (None: CMD's).
        seed: the same seed as given to `run_nbody` (the stellar scatter and
            Poisson draws use an independent child stream).
        suite_overrides: optional dict of `MockSuite` fields to replace
            (used by the calibration).
        return_stars: also return the star-particle positions and masses.

    Returns:
        (mstar, mcdm) float32 [3 * S, map_size, map_size] in (Msun/h)/(Mpc/h)^2,
        plus a dict of stars when `return_stars`.
    """
    c = MockSettings() if settings is None else settings
    params = _validate(params)
    spec = suites.get_suite(suite)
    if suite_overrides:
        spec = dataclasses.replace(spec, **suite_overrides)
    _, star_seed = _seeds(seed)
    rng = np.random.default_rng(star_seed)
    geometry = painting.MapGeometry(c.box_size, c.map_size, c.slab_thickness, c.slabs_per_axis)
    omega_m = params[0]
    cdm_fraction = (omega_m - cosmology.OMEGA_B) / omega_m
    pos, mass = nbody["pos"], nbody["particle_mass"]
    mcdm = painting.dark_matter_maps(
        pos,
        nbody["density"],
        mass * cdm_fraction,
        geometry=geometry,
        grid_size=c.grid_size,
        eta=spec.dm_eta,
    )
    halos = nbody["halos"]
    halo_mass = halos["counts"] * mass
    mstar_halo = spec.stellar_mass(halo_mass, params, rng)
    # Densest particles first: fine-cell count, then the smoother CIC density.
    dens = halos["cell_count"] + nbody["density"] / (1.0 + nbody["density"].max())
    host, star_mass = painting.place_stars(
        halos["labels"], mstar_halo, dens, rng, star_mass=spec.star_mass, core_fraction=spec.core_fraction
    )
    mstar = painting.stellar_maps(
        pos[host],
        star_mass,
        geometry=geometry,
        k_neighbours=spec.k_neighbours,
        eta=spec.star_eta,
    )
    if return_stars:
        return mstar, mcdm, {"pos": pos[host], "mass": star_mass, "halo_mass": halo_mass, "halo_mstar": mstar_halo}
    return mstar, mcdm


def generate_simulation(params, suite, settings=None, *, seed=0):
    """One mock CAMELS simulation projected to CMD-style map pairs.

    2LPT initial conditions at a = 0.1 (Eisenstein-Hu no-wiggle P(k) normalised
    to sigma_8), FastPM kick-drift-kick particle-mesh to a = 1, halos as
    connected regions above 60x the mean density, stars from the suite's
    stellar-to-halo relation as Poisson star particles on the densest halo
    particles, adaptive smoothing, projection of slabs along 3 axes.

    Args:
        params: (Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2).
        suite: "IllustrisTNG", "SIMBA" or "Astrid".
        settings: a `MockSettings` (None: CMD's resolution).
        seed: int or numpy SeedSequence; the same seed gives the same maps.

    Returns:
        (mstar, mcdm): float32 [3 * slabs_per_axis, map_size, map_size]
        (15 maps for CMD) in (Msun/h)/(Mpc/h)^2; map i = axis * S + slab.
        Mcdm > 0 everywhere; Mstar >= 0 and mostly zero.

    Examples:
        >>> ms, mc = generate_simulation((0.3, 0.8, 1, 1, 1, 1), "IllustrisTNG",
        ...                              MockSettings(grid_size=16, map_size=32, num_steps=2))
        >>> ms.shape, mc.dtype
        ((15, 32, 32), dtype('float32'))
    """
    suites.get_suite(suite)
    params = _validate(params)
    nbody = run_nbody(params, settings, seed=seed)
    return paint_simulation(nbody, params, suite, settings, seed=seed)
