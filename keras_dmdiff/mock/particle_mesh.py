"""Particle-mesh N-body for the CMD mock: 2LPT initial conditions + FastPM KDK.

Pure numpy/scipy. Positions are kept in mesh-cell units in [0, N) during the
run; `run_simulation` returns them in Mpc/h.

Scheme (Feng et al. 2016, FastPM): with momentum p = a^3 E(a) dx/da and
dp/da = 3/2 Omega_m / (a^2 E) * acc, acc = -grad lapl^-1 delta, the kick and
drift factors are taken from linear theory so that the large scales grow
exactly as D1(a) however few steps are taken:

    kick:  dp = acc(x(a_c)) * (F(a_f) - F(a_i)) / D1(a_c),   F = a^3 E dD1/da
    drift: dx = p(a_c) * (D1(a_f) - D1(a_i)) / F(a_c)

Known weakness: with a force mesh equal to the particle grid (N^3) the force
resolution is ~1-2 cells (~0.2-0.4 Mpc/h at N=128 in 25 Mpc/h), so halo
cores are puffier and the small-scale power is below that of the real CAMELS
simulations (which resolve ~1 kpc/h).
"""

import numpy as np
import scipy.fft

from keras_dmdiff.mock import cosmology

__all__ = [
    "cic_paint",
    "cic_readout",
    "gaussian_field",
    "lpt_displacements",
    "run_simulation",
    "lagrangian_grid",
]


def _check_grid_size(n):
    if int(n) != n or n < 4 or n % 2:
        raise ValueError(f"grid_size must be an even integer >= 4, got {n!r}")
    return int(n)


def _wavenumbers(n):
    """Mesh wavenumbers (radians per cell) for an rfftn of an n^3 grid."""
    kf = 2.0 * np.pi * np.fft.fftfreq(n).astype(np.float32)
    kz = 2.0 * np.pi * np.fft.rfftfreq(n).astype(np.float32)
    return kf[:, None, None], kf[None, :, None], kz[None, None, :]


#: Particles handled at a time by the CIC routines: bounds their temporary
#: memory (a 512^3 run has 134 M particles).
PARTICLE_CHUNK = 1 << 21


def _cic_corners(flat, frac, n):
    """The eight CIC corner cells [8, P] (flat indices) and weights [8, P] float32."""
    index_type = flat.dtype
    i0, j0, k0 = flat // (n * n), flat // n % n, flat % n
    w = (1.0 - frac, frac)
    corners = np.empty((8, len(flat)), index_type)
    weights = np.empty((8, len(flat)), np.float32)
    corner = 0
    for a in range(2):
        ia = (i0 + a) % n * n
        for b in range(2):
            iab = (ia + (j0 + b) % n) * n
            wab = w[a][:, 0] * w[b][:, 1]
            for c in range(2):
                corners[corner] = iab + (k0 + c) % n
                weights[corner] = wab * w[c][:, 2]
                corner += 1
    return corners, weights


def _cic_chunks(pos, n, setup=None):
    """Yields (slice, corners, weights) of `_cic_corners` for `PARTICLE_CHUNK` particles at a time."""
    count = len(setup[0]) if setup is not None else len(pos)
    for begin in range(0, count, PARTICLE_CHUNK):
        chunk = slice(begin, begin + PARTICLE_CHUNK)
        flat, frac = (setup[0][chunk], setup[1][chunk]) if setup is not None else _cic_setup(pos[chunk], n)
        yield (chunk, *_cic_corners(flat, frac, n))


def _i_times(k):
    """1j * k as complex64: a Python 1j would promote every mesh product to complex128."""
    return (1j * k).astype(np.complex64)


def _cic_setup(pos, n):
    """Base cell index and fractional offsets of each particle (pos in cell units)."""
    base = np.floor(pos)
    frac = (pos - base).astype(np.float32)
    # int32 halves the index memory (n^3 < 2^31 up to n = 1290).
    base = base.astype(np.int32 if n**3 < 2**31 else np.int64) % n
    flat = (base[:, 0] * n + base[:, 1]) * n + base[:, 2]
    return flat, frac


def cic_paint(pos, n, weights=None, setup=None):
    """Cloud-in-cell mass assignment of particles to a periodic n^3 mesh.

    Args:
        pos: [P, 3] positions in cell units (any real values; wrapped periodically).
        n: mesh size per dimension.
        weights: optional [P] masses (default 1 per particle).
        setup: optional precomputed `(flat_index, frac)` from the same positions.

    Returns:
        [n, n, n] float64 mesh of summed weights (total mass is conserved).

    Examples:
        >>> m = cic_paint(np.array([[0.5, 0.5, 0.5]]), 4)
        >>> float(m.sum()), float(m.max())
        (1.0, 0.125)
    """
    mesh = np.zeros(n**3)
    for chunk, corners, corner_weights in _cic_chunks(pos, n, setup):
        if weights is not None:
            corner_weights = corner_weights * np.asarray(weights, np.float32)[chunk][None, :]
        mesh += np.bincount(corners.reshape(-1), weights=corner_weights.reshape(-1), minlength=n**3)
    return mesh.reshape(n, n, n)


def cic_readout(fields, pos, setup=None):
    """Cloud-in-cell interpolation of mesh fields at particle positions.

    Args:
        fields: [C, n, n, n] (or [n, n, n]) periodic mesh fields.
        pos: [P, 3] positions in cell units.
        setup: optional precomputed `(flat_index, frac)`.

    Returns:
        [C, P] (or [P]) float32 interpolated values.

    Examples:
        >>> f = np.arange(8.0).reshape(2, 2, 2)
        >>> float(cic_readout(f, np.array([[0.5, 0.5, 0.5]]))[0])
        3.5
    """
    single = isinstance(fields, np.ndarray) and fields.ndim == 3
    # A list of meshes is read without stacking them (memory at 512^3).
    fields = [fields] if single else list(fields)
    n = fields[0].shape[-1]
    fields = [np.asarray(field, np.float32).reshape(-1) for field in fields]
    out = np.zeros((len(fields), len(setup[0]) if setup is not None else len(pos)), np.float32)
    for chunk, corners, corner_weights in _cic_chunks(pos, n, setup):
        for j, field in enumerate(fields):
            out[j, chunk] = np.sum(field.take(corners) * corner_weights, axis=0)
    return out[0] if single else out


def gaussian_field(n, box_size, power_fn, rng):
    """Fourier modes of a Gaussian random field with power spectrum P(k).

    Args:
        n: mesh size per dimension (even).
        box_size: box side in Mpc/h.
        power_fn: callable P(k), k in h/Mpc, returning (Mpc/h)^3.
        rng: numpy Generator (white noise is drawn in real space, so the
            field is reproducible for a given seed).

    Returns:
        complex64 [n, n, n//2+1] rfftn of the linear overdensity at D1 = 1.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> dk = gaussian_field(8, 25.0, lambda k: 100.0 / (1 + k), rng)
        >>> dk.shape
        (8, 8, 5)
    """
    n = _check_grid_size(n)
    white = rng.standard_normal((n, n, n), dtype=np.float32)
    wk = scipy.fft.rfftn(white)
    kx, ky, kz = _wavenumbers(n)
    k = np.sqrt(kx**2 + ky**2 + kz**2) * (n / box_size)  # h/Mpc
    k[0, 0, 0] = 1.0
    cell_volume = (box_size / n) ** 3
    # Unit-variance white noise has <|W_k|^2> = n^3; P = V <|delta_k|^2> / n^6.
    amp = np.sqrt(power_fn(k) / cell_volume).astype(np.float32)
    amp[0, 0, 0] = 0.0
    return (wk * amp).astype(np.complex64)


def lagrangian_grid(n):
    """[n^3, 3] float32 particle positions on the regular grid (cell units)."""
    i = np.arange(n, dtype=np.float32)
    q = np.stack(np.meshgrid(i, i, i, indexing="ij"), axis=-1)
    return q.reshape(-1, 3)


def lpt_displacements(delta_k):
    """First- and second-order LPT displacement fields (unit growth).

    Conventions of 2LPTic: x = q + D1 psi1 + D2 psi2 with
    psi1 = -grad phi1, lapl phi1 = delta; psi2 = grad phi2,
    lapl phi2 = sum_{i<j} (phi1_ii phi1_jj - phi1_ij^2), D2 ~ -3/7 D1^2.

    Args:
        delta_k: rfftn of the linear overdensity at D1 = 1 on an n^3 mesh.

    Returns:
        (psi1, psi2): each [n^3, 3] float32 in cell units, ordered like
        `lagrangian_grid(n)`.

    Examples:
        >>> dk = gaussian_field(8, 25.0, lambda k: 10.0 / (1 + k), np.random.default_rng(1))
        >>> p1, p2 = lpt_displacements(dk)
        >>> p1.shape, p2.shape
        ((512, 3), (512, 3))
    """
    n = delta_k.shape[0]
    kx, ky, kz = _wavenumbers(n)
    kvec = (kx, ky, kz)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    phi1 = -delta_k / k2  # lapl phi = delta
    phi1[0, 0, 0] = 0.0
    shape = (n, n, n)
    psi1 = np.empty((n**3, 3), np.float32)
    for i in range(3):
        psi1[:, i] = scipy.fft.irfftn(_i_times(-kvec[i]) * phi1, s=shape).reshape(-1)
    # Second-order source from the six second derivatives phi1_ij = -k_i k_j phi1.
    d = {}
    for i in range(3):
        for j in range(i, 3):
            d[i, j] = scipy.fft.irfftn(-kvec[i] * kvec[j] * phi1, s=shape)
    source = (
        d[0, 0] * d[1, 1] + d[0, 0] * d[2, 2] + d[1, 1] * d[2, 2]
        - d[0, 1] ** 2 - d[0, 2] ** 2 - d[1, 2] ** 2
    )
    del d
    phi2 = -scipy.fft.rfftn(source) / k2
    phi2[0, 0, 0] = 0.0
    psi2 = np.empty((n**3, 3), np.float32)
    for i in range(3):
        psi2[:, i] = scipy.fft.irfftn(_i_times(kvec[i]) * phi2, s=shape).reshape(-1)
    return psi1, psi2


def _acceleration(pos, n, extra_density=False):
    """acc = -grad lapl^-1 delta at the particles (cell units), and 1+delta there."""
    mesh = cic_paint(pos, n)
    mean = pos.shape[0] / n**3
    delta = (mesh / mean - 1.0).astype(np.float32)
    dk = scipy.fft.rfftn(delta)
    kx, ky, kz = _wavenumbers(n)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    pot = dk / k2  # -lapl^-1 delta
    pot[0, 0, 0] = 0.0
    fields = [scipy.fft.irfftn(_i_times(kk) * pot, s=(n, n, n)) for kk in (kx, ky, kz)]
    del dk, pot
    if extra_density:
        fields.append(delta + 1.0)
    values = cic_readout(fields, pos)
    acc = values[:3].T
    rho = values[3] if extra_density else None
    return acc, rho, mesh


def _kick_drift_kick(pos, mom, a0, omega_m, num_steps, n):
    """FastPM KDK steps, linear in a from `a0` to 1 (positions in mesh units).

    `pos` and the momenta `mom` (p = a^3 E dx/da) are updated in place.
    Returns the final positions (in [0, n)), the local 1+delta at each
    particle and the final CIC mesh.
    """
    a_grid = np.linspace(a0, 1.0, num_steps + 1)
    a_half = 0.5 * (a_grid[1:] + a_grid[:-1])
    a_all = np.concatenate([a_grid, a_half])
    d_all = cosmology.growth_factor(a_all, omega_m)
    f_all = cosmology.growth_rate(a_all, omega_m)
    # F(a) = a^3 E dD/da = a^2 E f D.
    big_f = a_all**2 * cosmology.hubble_e(a_all, omega_m) * f_all * d_all
    d_of = dict(zip(a_all.round(12), d_all))
    f_of = dict(zip(a_all.round(12), big_f))

    def dfac(a):
        return d_of[round(float(a), 12)]

    def ffac(a):
        return f_of[round(float(a), 12)]

    acc, _, _ = _acceleration(pos, n)
    for i in range(num_steps):
        ai, af, ah = a_grid[i], a_grid[i + 1], a_half[i]
        mom += acc * np.float32((ffac(ah) - ffac(ai)) / dfac(ai))
        pos += mom * np.float32((dfac(af) - dfac(ai)) / ffac(ah))
        pos %= n
        last = i == num_steps - 1
        acc, rho, mesh = _acceleration(pos, n, extra_density=last)
        mom += acc * np.float32((ffac(af) - ffac(ah)) / dfac(af))
    return pos, rho, mesh


def run_simulation(
    omega_m,
    sigma8,
    *,
    grid_size=128,
    box_size=25.0,
    num_steps=10,
    a_init=0.1,
    seed=0,
    lpt_only=False,
):
    """Gaussian initial conditions, 2LPT to `a_init`, FastPM KDK steps to a = 1.

    Args:
        omega_m: total matter density parameter.
        sigma8: linear rms fluctuation at 8 Mpc/h, z = 0.
        grid_size: particles per dimension N (even); the force mesh is N^3.
        box_size: periodic box side in Mpc/h.
        num_steps: number of KDK steps, linear in a from a_init to 1.
        a_init: starting scale factor of the 2LPT initial conditions.
        seed: int or numpy SeedSequence for the white noise.
        lpt_only: if True, return the 2LPT positions at a = 1 (no N-body; forms no halos).

    Returns:
        dict with `pos` [N^3, 3] float32 positions in Mpc/h in [0, box_size),
        `density` [N^3] float32 local 1+delta at each particle (CIC on the
        N^3 mesh), `mesh` [N, N, N] float32 final CIC mass mesh in particles
        per cell, and `particle_mass` in Msun/h (total matter).

    Examples:
        >>> out = run_simulation(0.3, 0.8, grid_size=16, box_size=25.0, num_steps=2)
        >>> out["pos"].shape
        (4096, 3)
    """
    n = _check_grid_size(grid_size)
    if not 0.0 < a_init < 1.0:
        raise ValueError(f"a_init must be in (0, 1), got {a_init}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    rng = np.random.default_rng(seed)
    power = lambda k: cosmology.linear_power(k, omega_m, sigma8)  # noqa: E731
    delta_k = gaussian_field(n, box_size, power, rng)
    psi1, psi2 = lpt_displacements(delta_k)
    del delta_k
    q = lagrangian_grid(n)
    a0 = 1.0 if lpt_only else a_init
    d1 = cosmology.growth_factor(a0, omega_m)[0]
    d2 = cosmology.second_order_growth_factor(a0, omega_m)[0]
    pos = q + np.float32(d1) * psi1 + np.float32(d2) * psi2
    particle_mass = omega_m * cosmology.RHO_CRIT * box_size**3 / n**3

    if not lpt_only:
        f1 = cosmology.growth_rate(a0, omega_m)[0]
        f2 = cosmology.second_order_growth_rate(a0, omega_m)[0]
        e0 = cosmology.hubble_e(a0, omega_m)
        # p = a^3 E dx/da = a^2 E (f1 D1 psi1 + f2 D2 psi2).
        mom = (a0**2 * e0) * (np.float32(f1 * d1) * psi1 + np.float32(f2 * d2) * psi2)
        mom = mom.astype(np.float32)
        del psi1, psi2, q
        pos, rho, mesh = _kick_drift_kick(pos, mom, a0, omega_m, num_steps, n)
        del mom
    else:
        del psi1, psi2, q
        pos %= n
        setup = _cic_setup(pos, n)
        mesh = cic_paint(pos, n, setup=setup)
        rho = cic_readout((mesh / (pos.shape[0] / n**3)).astype(np.float32), pos, setup=setup)

    pos = (pos * np.float32(box_size / n)) % np.float32(box_size)
    return {
        "pos": pos.astype(np.float32),
        "density": np.maximum(rho, 0.0).astype(np.float32),
        "mesh": mesh.astype(np.float32),
        "particle_mass": float(particle_mass),
    }
