"""Linear cosmology for the CMD mock: power spectrum and growth.

Small pure numpy functions (in the spirit of jax_cosmo) for a flat LCDM
universe with the CAMELS fixed parameters: Omega_b = 0.049, h = 0.6711,
n_s = 0.9624. Radiation is neglected (it changes D1 at a = 0.1 by < 0.1 %).

Units: wavenumbers k in h/Mpc, lengths in Mpc/h, power spectra in (Mpc/h)^3.
All growth quantities are normalised so that D1(a=1) = 1.
"""

import numpy as np

OMEGA_B = 0.049
HUBBLE_H = 0.6711
N_S = 0.9624
T_CMB = 2.7255
# rho_crit in (Msun/h) / (Mpc/h)^3: 3 H0^2 / (8 pi G) with H0 = 100 h km/s/Mpc.
RHO_CRIT = 2.77536627e11

__all__ = [
    "OMEGA_B",
    "HUBBLE_H",
    "N_S",
    "RHO_CRIT",
    "eisenstein_hu_nowiggle_transfer",
    "tophat_window",
    "sigma_r",
    "linear_power",
    "hubble_e",
    "omega_m_a",
    "growth_factor",
    "growth_rate",
    "second_order_growth_factor",
    "second_order_growth_rate",
]


def eisenstein_hu_nowiggle_transfer(k, omega_m, omega_b=OMEGA_B, h=HUBBLE_H, t_cmb=T_CMB):
    """Eisenstein & Hu (1998) "no-wiggle" (zero-baryon-oscillation) transfer function.

    Equations 26-31 of Eisenstein & Hu 1998, ApJ 496, 605: the shape of the
    matter transfer function including baryon suppression, without the
    acoustic oscillations (irrelevant at the 25 Mpc/h scales of CAMELS).

    Args:
        k: wavenumbers in h/Mpc (array-like, > 0).
        omega_m: total matter density parameter.
        omega_b: baryon density parameter.
        h: dimensionless Hubble parameter.
        t_cmb: CMB temperature in K.

    Returns:
        T(k) as a numpy array, -> 1 for k -> 0.

    Examples:
        >>> float(eisenstein_hu_nowiggle_transfer(1e-5, 0.3)) > 0.999
        True
    """
    k = np.asarray(k, dtype=np.float64)
    om_h2 = omega_m * h**2
    ob_h2 = omega_b * h**2
    f_b = omega_b / omega_m
    theta2 = (t_cmb / 2.7) ** 2
    # Sound horizon fit (eq. 26), in Mpc.
    s = 44.5 * np.log(9.83 / om_h2) / np.sqrt(1.0 + 10.0 * ob_h2**0.75)
    alpha_gamma = 1.0 - 0.328 * np.log(431.0 * om_h2) * f_b + 0.38 * np.log(22.3 * om_h2) * f_b**2
    k_mpc = k * h  # 1/Mpc
    gamma_eff = omega_m * h * (alpha_gamma + (1.0 - alpha_gamma) / (1.0 + (0.43 * k_mpc * s) ** 4))
    q = k * theta2 / gamma_eff  # eq. 28, with k in h/Mpc
    l0 = np.log(2.0 * np.e + 1.8 * q)
    c0 = 14.2 + 731.0 / (1.0 + 62.5 * q)
    return l0 / (l0 + c0 * q**2)


def tophat_window(x):
    """Fourier transform of a 3-D spherical top-hat, W(x) = 3 (sin x - x cos x) / x^3.

    Args:
        x: k R (array-like).

    Returns:
        W(x), with the small-x limit 1 - x^2/10 used below x = 1e-3.

    Examples:
        >>> round(float(tophat_window(0.0)), 6)
        1.0
    """
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 1e-3
    xs = np.where(small, 1.0, x)
    w = 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    return np.where(small, 1.0 - x**2 / 10.0, w)


def _log_k_grid(k_min=1e-5, k_max=1e3, n=4096):
    return np.logspace(np.log10(k_min), np.log10(k_max), n)


def sigma_r(power_fn, radius=8.0):
    """RMS of the linear density field in spheres of `radius` Mpc/h.

    sigma^2(R) = int dln k k^3 P(k) W^2(kR) / (2 pi^2), integrated on a log grid.

    Args:
        power_fn: callable P(k) with k in h/Mpc.
        radius: top-hat radius in Mpc/h.

    Returns:
        sigma(R) as a float.

    Examples:
        >>> s = sigma_r(lambda k: linear_power(k, 0.3, 0.8))
        >>> abs(s - 0.8) < 1e-3
        True
    """
    k = _log_k_grid()
    integrand = k**3 * power_fn(k) * tophat_window(k * radius) ** 2 / (2.0 * np.pi**2)
    return float(np.sqrt(np.trapezoid(integrand, np.log(k))))


def linear_power(k, omega_m, sigma8, omega_b=OMEGA_B, h=HUBBLE_H, n_s=N_S):
    """Linear matter power spectrum at z = 0, normalised to sigma_8.

    P(k) = A k^n_s T_EH(k)^2 with A such that sigma(R = 8 Mpc/h) = sigma8.

    Args:
        k: wavenumbers in h/Mpc.
        omega_m: total matter density parameter.
        sigma8: rms linear fluctuation in 8 Mpc/h top-hat spheres at z = 0.
        omega_b, h, n_s: fixed CAMELS values by default.

    Returns:
        P(k) in (Mpc/h)^3, same shape as k.

    Examples:
        >>> p = linear_power([0.02, 0.2, 2.0], 0.3, 0.8)
        >>> bool(p[0] > p[1] > p[2])
        True
    """
    k = np.asarray(k, dtype=np.float64)

    def shape(kk):
        return kk**n_s * eisenstein_hu_nowiggle_transfer(kk, omega_m, omega_b, h) ** 2

    norm = (sigma8 / sigma_r(shape, 8.0)) ** 2
    return norm * shape(k)


def hubble_e(a, omega_m):
    """E(a) = H(a)/H0 for flat LCDM (no radiation).

    Examples:
        >>> float(hubble_e(1.0, 0.3))
        1.0
    """
    a = np.asarray(a, dtype=np.float64)
    return np.sqrt(omega_m / a**3 + (1.0 - omega_m))


def omega_m_a(a, omega_m):
    """Matter density parameter at scale factor a.

    Examples:
        >>> round(float(omega_m_a(1.0, 0.3)), 6)
        0.3
    """
    a = np.asarray(a, dtype=np.float64)
    return omega_m / a**3 / hubble_e(a, omega_m) ** 2


def _growth_unnormalised(a, omega_m, n=2048):
    # Heath (1977): D(a) = 5/2 Om E(a) int_0^a da' / (a' E(a'))^3; exact for flat LCDM
    # (growing mode of the linear growth ODE without radiation).
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    out = np.empty_like(a)
    for i, ai in enumerate(a):
        # Substitute a' = ai * u^2 to tame the a'^(3/2) behaviour near 0.
        u = np.linspace(0.0, 1.0, n)[1:]
        ap = ai * u**2
        integrand = 1.0 / (ap * hubble_e(ap, omega_m)) ** 3 * 2.0 * ai * u
        integral = np.trapezoid(np.concatenate([[0.0], integrand]), np.concatenate([[0.0], u]))
        out[i] = 2.5 * omega_m * hubble_e(ai, omega_m) * integral
    return out


def growth_factor(a, omega_m):
    """Linear growth factor D1(a), normalised to D1(1) = 1.

    Args:
        a: scale factor(s) in (0, 1].
        omega_m: matter density parameter (flat LCDM).

    Returns:
        D1(a) with the shape of `a` (a 1-d array for scalars).

    Examples:
        >>> round(float(growth_factor(1.0, 0.3)[0]), 6)
        1.0
    """
    return _growth_unnormalised(a, omega_m) / _growth_unnormalised(1.0, omega_m)[0]


def growth_rate(a, omega_m):
    """Linear growth rate f1 = dln D1 / dln a (exact for flat LCDM).

    Uses f = dln E/dln a + 5 Omega_m / (2 a^2 E^2 D_u), with D_u the
    unnormalised Heath integral (D_u -> a in matter domination).

    Examples:
        >>> abs(float(growth_rate(1.0, 0.3)[0]) - 0.3**0.55) < 0.01
        True
    """
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    e2 = hubble_e(a, omega_m) ** 2
    dlne = -1.5 * omega_m / a**3 / e2
    return dlne + 2.5 * omega_m / (a**2 * e2 * _growth_unnormalised(a, omega_m))


def second_order_growth_factor(a, omega_m):
    """Second-order (2LPT) growth factor, D2 ~ -3/7 D1^2 Omega_m(a)^(-1/143).

    The fit of Bouchet et al. (1995); accurate to < 1 % for flat LCDM. The
    sign convention is the 2LPTic one: x = q - D1 grad(phi1) + D2 grad(phi2).

    Examples:
        >>> float(second_order_growth_factor(1.0, 1.0)[0]) == -3.0 / 7.0
        True
    """
    d1 = growth_factor(a, omega_m)
    return -3.0 / 7.0 * d1**2 * omega_m_a(a, omega_m) ** (-1.0 / 143.0)


def second_order_growth_rate(a, omega_m):
    """Second-order growth rate f2 = dln D2 / dln a ~ 2 Omega_m(a)^(6/11).

    Examples:
        >>> round(float(second_order_growth_rate(1.0, 1.0)[0]), 6)
        2.0
    """
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    return 2.0 * omega_m_a(a, omega_m) ** (6.0 / 11.0)
