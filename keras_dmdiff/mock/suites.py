"""Mock galaxy-formation suites and the real CAMELS parameter tables.

Three mock suites are named after the CAMELS suites. They share the N-body
and the dark-matter painting; they differ in the functional form of the
stellar-to-halo mass relation (SHMR), in how its shape responds to the four
astrophysical parameters, and in calibration constants, so that a model
trained on one mock suite meets a different galaxy-halo connection on the
others (the cross-suite transfer test):

- "IllustrisTNG": Moster et al. (2013) double power law,
  M*/M = 2 N / [(M/M1)^-beta + (M/M1)^gamma].
- "SIMBA": Behroozi et al. (2013) form, log M* = log(eps M1) + f(x) - f(0),
  f(x) = -log10(10^(alpha x) + 1) + delta (log10(1 + e^x))^g / (1 + e^(10^-x)).
- "Astrid": a rising power law with a quenching cutoff,
  M*/M = eps y^alpha / (1 + y^alpha) (1 + M/Mq)^-g, y = M/M1.

Parameter response (log-normal scatter sigma in dex added in every suite):
A_SN1 (wind energy / mass loading) lowers the efficiency; A_SN2 (wind speed)
steepens the low-mass slope and moves the peak up; A_AGN1 (AGN energy /
momentum flux) suppresses massive galaxies; A_AGN2 (burstiness, jet speed,
thermal AGN energy) changes the high-mass shape and the scatter.

Calibration: every suite has two painting constants, `log_norm` (dex added to
all stellar masses) and `star_eta` (stellar kernel width), chosen with
`calibrate_suite` so that the mean and std of log10(1 + Mstar) over mock LH
maps approach the published CMD values (`PUBLISHED_MOMENTS`); `dm_eta` (the
dark-matter kernel width) is shared. See `calibrate_suite` for the procedure
and the numbers it gave.

Parameter tables: `load_params(suite, set_name)` reads the real CAMELS tables
shipped in keras_dmdiff/assets/camels_params (MIT License, see LICENSE
there). For LH and CV, columns 1-6 are used as is. The IllustrisTNG and SIMBA
1P files are the newer 28-parameter tables with physical sub-grid values: we
keep the 30 rows 1P_p1_* ... 1P_p6_* that vary the six CMD parameters and
divide columns 3-6 by the fiducial row (1P_p1_0) to get A_SN1 ... A_AGN2. For
Astrid, the same 30 rows are kept (its p7 rows vary Omega_b, which the mock
keeps fixed).
"""

import dataclasses
import functools
import os

import numpy as np

__all__ = [
    "SUITES",
    "SETS",
    "PUBLISHED_MOMENTS",
    "MockSuite",
    "get_suite",
    "load_params",
    "params_table_path",
]

SETS = ("LH", "CV", "1P")

# Published moments of the real CMD LH maps (the CAMELS Multifield Dataset paper):
# (mean, std) of log10(1 + Mstar) and of log10(Mcdm).
PUBLISHED_MOMENTS = {
    "IllustrisTNG": {"log_mstar": (0.1207, 1.0849), "log_mcdm": (10.984, 0.508)},
    "SIMBA": {"log_mstar": (0.1544, 1.2290), "log_mcdm": (10.984, 0.509)},
    "Astrid": {"log_mstar": (0.2511, 1.5010), "log_mcdm": (10.981, 0.509)},
}

_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "camels_params")


def _moster(log_m, a_sn1, a_agn1, a_sn2, a_agn2):
    log_m1 = 11.45 + 0.25 * np.log10(a_sn2) + 0.1 * np.log10(a_sn1)
    norm = 0.035 * a_sn1**-0.45 * a_sn2**-0.2
    beta = 1.35 + 0.35 * np.log10(a_sn1) + 0.25 * np.log10(a_sn2)
    gamma = 0.6 + 0.3 * np.log10(a_agn1) + 0.1 * np.log10(a_agn2)
    x = log_m - log_m1
    ratio = 2.0 * norm / (10.0 ** (-beta * x) + 10.0 ** (gamma * x))
    scatter = 0.16 * a_agn2**0.1
    return log_m + np.log10(ratio), scatter


def _behroozi(log_m, a_sn1, a_agn1, a_sn2, a_agn2):
    log_eps = -1.78 - 0.4 * np.log10(a_sn1)
    log_m1 = 11.35 + 0.2 * np.log10(a_sn2)
    alpha = -1.6 - 0.5 * np.log10(a_sn2)
    delta = 3.5 - 1.2 * np.log10(a_agn1)
    g = 0.32 - 0.15 * np.log10(a_agn2)

    def f(x):
        return -np.log10(10.0 ** (alpha * x) + 1.0) + delta * np.log10(1.0 + np.exp(x)) ** g / (
            1.0 + np.exp(10.0 ** -np.clip(x, -2.5, None))
        )

    x = log_m - log_m1
    scatter = 0.2 * a_agn2**0.05
    return log_eps + log_m1 + f(x) - f(0.0), scatter


def _quenched_power_law(log_m, a_sn1, a_agn1, a_sn2, a_agn2):
    eps = 0.06 * a_sn1**-0.35
    log_m1 = 10.9 + 0.15 * np.log10(a_sn2)
    alpha = 1.3 + 0.4 * np.log10(a_sn2)
    log_mq = 11.9 - 0.3 * np.log10(a_agn1)
    g = 0.7 + 0.15 * np.log10(a_agn2)
    y = 10.0 ** (alpha * (log_m - log_m1))
    ratio = eps * y / (1.0 + y) * (1.0 + 10.0 ** (log_m - log_mq)) ** -g
    scatter = 0.22 * a_agn2**0.05
    return log_m + np.log10(ratio), scatter


@dataclasses.dataclass(frozen=True)
class MockSuite:
    """One mock galaxy-formation suite.

    Attributes:
        name: CAMELS suite name.
        shmr: callable (log10 M_halo, A_SN1, A_AGN1, A_SN2, A_AGN2) ->
            (mean log10 M*, scatter in dex), masses in Msun/h.
        log_norm: calibration offset in dex added to every stellar mass.
        star_eta: stellar kernel width in units of the k-th neighbour distance.
        k_neighbours: neighbour rank for the stellar kernel.
        core_fraction: fraction of a halo's densest particles that host stars.
        dm_eta: dark-matter kernel width in units of the local particle spacing.
        star_mass: mass of one Poisson star particle (Msun/h).
    """

    name: str
    shmr: object
    log_norm: float = 0.0
    star_eta: float = 0.1
    k_neighbours: int = 8
    core_fraction: float = 0.02
    dm_eta: float = 0.4
    star_mass: float = 1e7

    def stellar_mass(self, halo_mass, params, rng):
        """Stellar mass of halos of total mass `halo_mass` (Msun/h).

        Args:
            halo_mass: [H] halo masses in Msun/h.
            params: the 6 CMD parameters (Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2).
            rng: numpy Generator for the log-normal scatter.

        Returns:
            [H] stellar masses in Msun/h.

        Examples:
            >>> s = get_suite("IllustrisTNG")
            >>> m = s.stellar_mass(np.array([1e10, 1e12]), (0.3, 0.8, 1, 1, 1, 1), np.random.default_rng(0))
            >>> bool(m[1] > m[0])
            True
        """
        halo_mass = np.asarray(halo_mass, dtype=np.float64)
        a_sn1, a_agn1, a_sn2, a_agn2 = (float(p) for p in params[2:6])
        log_ms, scatter = self.shmr(np.log10(np.maximum(halo_mass, 1.0)), a_sn1, a_agn1, a_sn2, a_agn2)
        noise = scatter * rng.standard_normal(halo_mass.shape)
        return 10.0 ** (log_ms + self.log_norm + noise)


# Calibrated constants (see `keras_dmdiff.mock.calibration.calibrate_suite`), on the
# first 6 LH rows of each suite at N=128, 256^2 maps, 10 steps, seed 0:
# - dm_eta = 0.4 (grid 0.4/0.45/0.5): log10 Mcdm 11.006 / 0.501 (published 10.984 / 0.508).
# - IllustrisTNG: star_eta 0.1, log_norm -0.81: log10(1+Mstar) 0.120 / 1.001 (published
#   0.1207 / 1.0849), 1.5 % non-zero pixels. (star_eta 0.05 with log_norm +1.44 fits the std
#   better, 0.117 / 1.118, but puts M* above the halo's baryons: rejected.)
# - SIMBA: star_eta 0.1, log_norm +0.19: 0.153 / 1.156 (published 0.1544 / 1.2290), 1.8 %
#   non-zero; its 6 LH rows give log10 Mcdm 10.892 / 0.508 (lower Omega_m on average).
# - Astrid: star_eta 0.2, log_norm -0.81: 0.254 / 1.470 (published 0.2511 / 1.5010), 3.0 %
#   non-zero; its 6 LH rows give log10 Mcdm 11.074 / 0.543 (higher Omega_m on average).
# Six simulations are a small sample of the LH cosmologies: expect +-0.1 dex on the Mcdm mean.
SUITES = {
    "IllustrisTNG": MockSuite("IllustrisTNG", _moster, log_norm=-0.81),
    "SIMBA": MockSuite("SIMBA", _behroozi, log_norm=0.19),
    "Astrid": MockSuite("Astrid", _quenched_power_law, log_norm=-0.81, star_eta=0.2),
}


def get_suite(suite):
    """The `MockSuite` named `suite`; ValueError for unknown names.

    Examples:
        >>> get_suite("SIMBA").name
        'SIMBA'
    """
    if isinstance(suite, MockSuite):
        return suite
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; expected one of {sorted(SUITES)}")
    return SUITES[suite]


def params_table_path(suite, set_name):
    """Path of the shipped CAMELS table `CosmoAstroSeed_<suite>_L25n256_<set>.txt`."""
    get_suite(suite)
    if set_name not in SETS:
        raise ValueError(f"Unknown set {set_name!r}; expected one of {list(SETS)}")
    return os.path.join(_ASSETS, suite, f"CosmoAstroSeed_{suite}_L25n256_{set_name}.txt")


@functools.lru_cache(maxsize=None)
def _load(suite, set_name):
    path = params_table_path(suite, set_name)
    with open(path) as f:
        rows = [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]
    names = np.array([r[0] for r in rows])
    values = np.array([[float(v) for v in r[1:]] for r in rows])
    seeds = values[:, -1].astype(np.int64)
    params = values[:, :6].copy()
    if set_name == "1P":
        keep = np.array([any(n.startswith(f"1P_p{i}_") for i in range(1, 7)) for n in names])
        if values.shape[1] > 8:  # 28-parameter tables: physical values -> A parameters.
            fiducial = values[list(names).index("1P_p1_0"), 2:6]
            params[:, 2:6] = values[:, 2:6] / fiducial
        names, params, seeds = names[keep], params[keep], seeds[keep]
    return names, params, seeds


def load_params(suite, set_name="LH"):
    """The real CAMELS parameters of a suite and set.

    Args:
        suite: "IllustrisTNG", "SIMBA" or "Astrid".
        set_name: "LH", "CV" or "1P".

    Returns:
        (names, params, seeds): [S] simulation names, [S, 6] float64
        (Omega_m, sigma_8, A_SN1, A_AGN1, A_SN2, A_AGN2), [S] int64 seeds of
        the initial conditions.

    Examples:
        >>> names, params, seeds = load_params("IllustrisTNG", "LH")
        >>> params.shape
        (1000, 6)
        >>> load_params("SIMBA", "1P")[1][10:15, 2].round(2).tolist()
        [0.25, 0.5, 1.0, 2.0, 4.0]
    """
    names, params, seeds = _load(suite, set_name)
    return names.copy(), params.copy(), seeds.copy()
