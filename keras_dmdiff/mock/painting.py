"""From N-body particles to CMD-style maps: projection, halos and stars.

Pure numpy/scipy. Conventions of the CAMELS Multifield Dataset (CMD):

- Maps are projections of slabs of thickness `slab_thickness` (5 Mpc/h in CMD)
  along each of the 3 axes; map index = axis * slabs_per_axis + slab, and the
  image rows/columns are the two remaining axes in increasing order.
- Units are (Msun/h) / (Mpc/h)^2 (mass per comoving area).
- Mcdm carries the fraction (Omega_m - Omega_b) / Omega_m of the N-body mass
  (the N-body particles represent all matter).

Smoothing. Dark matter is painted with an adaptive Gaussian whose width
follows the local particle spacing, sigma = eta * (m_p / rho)^(1/3), so that
voids stay strictly positive and halos stay sharp. Stars are painted with a
width from the distance to the k-th nearest star particle (as an SPH-like
kernel), with a truncated Gaussian, so that pixels far from galaxies are
exactly zero (the CMD Mstar maps are ~97-99 % zeros).

Known weakness: the N-body force resolution (one mesh cell) leaves the
small-scale power of the Mcdm maps below that of the real CMD maps.
"""

import dataclasses

import numpy as np
import scipy.ndimage
import scipy.fft
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial

from keras_dmdiff.mock.particle_mesh import PARTICLE_CHUNK

#: Particles projected at a time: a 2-D CIC projection keeps 4 corners per
#: particle where the 3-D one keeps 8, so twice as many fit the same memory.
PROJECTION_CHUNK = 2 * PARTICLE_CHUNK

__all__ = [
    "MapGeometry",
    "slab_layout",
    "project_maps",
    "dark_matter_maps",
    "find_halos",
    "place_stars",
    "stellar_maps",
]


def slab_layout(box_size, slab_thickness=5.0, slabs_per_axis=None):
    """Start coordinates of the projected slabs along one axis.

    Slabs are spaced evenly over the box: in a 25 Mpc/h box with 5 Mpc/h
    slabs they tile it (CMD); in a 100 Mpc/h box the default keeps 5 slabs of
    5 Mpc/h, one every 20 Mpc/h, so every map has CMD's depth (and its
    statistics) but 16x the area.

    Args:
        box_size: box side in Mpc/h.
        slab_thickness: depth of each slab in Mpc/h (None: box_size / 5).
        slabs_per_axis: number of slabs per axis (None: min(5, box / thickness)).

    Returns:
        (starts, thickness): float64 array of slab starts, and the thickness.

    Examples:
        >>> slab_layout(25.0)[0].tolist()
        [0.0, 5.0, 10.0, 15.0, 20.0]
        >>> slab_layout(100.0)[0].tolist()
        [0.0, 20.0, 40.0, 60.0, 80.0]
    """
    thickness = box_size / 5.0 if slab_thickness is None else float(slab_thickness)
    if not 0.0 < thickness <= box_size:
        raise ValueError(f"slab_thickness must be in (0, box_size], got {slab_thickness}")
    fit = int(np.floor(box_size / thickness + 1e-9))
    n = min(5, fit) if slabs_per_axis is None else int(slabs_per_axis)
    if not 1 <= n <= fit:
        raise ValueError(f"slabs_per_axis must be in [1, {fit}] for this box, got {slabs_per_axis}")
    return np.arange(n) * (box_size / n), thickness


def _slab_index(coord, starts, thickness):
    """Slab of each particle along one axis, -1 where it is in no slab."""
    spacing = starts[1] - starts[0] if len(starts) > 1 else np.inf
    k = np.floor(coord / spacing).astype(np.intp) if np.isfinite(spacing) else np.zeros(coord.shape, np.intp)
    k = np.clip(k, 0, len(starts) - 1)
    inside = (coord - starts[k]) < thickness
    return np.where(inside, k, -1)


@dataclasses.dataclass(frozen=True)
class MapGeometry:
    """The maps a box is projected into: its side, their pixels and the slabs along each axis.

    Args:
        box_size: box side in Mpc/h.
        map_size: pixels per side.
        slab_thickness, slabs_per_axis: see `slab_layout` (checked here).

    Attributes:
        starts: start coordinates (Mpc/h) of the slabs along each axis.
        thickness: depth of each slab in Mpc/h.

    Examples:
        >>> geometry = MapGeometry(25.0, 256)
        >>> geometry.starts.tolist(), geometry.thickness, geometry.pixel_size
        ([0.0, 5.0, 10.0, 15.0, 20.0], 5.0, 0.09765625)
    """

    box_size: float
    map_size: int
    slab_thickness: float | None = 5.0
    slabs_per_axis: int | None = None
    # The slab layout, derived once from the fields above (and checked by `slab_layout`).
    starts: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    thickness: float = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.map_size < 1:
            raise ValueError(f"map_size must be >= 1, got {self.map_size}")
        starts, thickness = slab_layout(self.box_size, self.slab_thickness, self.slabs_per_axis)
        object.__setattr__(self, "starts", starts)  # frozen: set once here
        object.__setattr__(self, "thickness", thickness)

    @property
    def num_maps(self):
        """Maps per box: 3 axes x the slabs along each."""
        return 3 * len(self.starts)

    @property
    def pixel_size(self):
        """Pixel side in Mpc/h."""
        return self.box_size / self.map_size

    @property
    def pixels_per_mpc(self):
        """Pixels per Mpc/h: positions times this are pixel coordinates."""
        return self.map_size / self.box_size


def project_maps(pos, weights, classes, num_classes, geometry):
    """CIC-project weighted particles into per-slab, per-class maps along 3 axes.

    Args:
        pos: [P, 3] positions in Mpc/h, in [0, box_size).
        weights: [P] masses.
        classes: [P] int smoothing class in [0, num_classes).
        num_classes: number of classes.
        geometry: the `MapGeometry` of the maps.

    Returns:
        [3 * S, num_classes, map_size, map_size] float64 mass per pixel.

    Examples:
        >>> m = project_maps(np.array([[1.0, 2.0, 3.0]]), np.ones(1), np.zeros(1, int), 1, MapGeometry(25.0, 8))
        >>> m.shape, float(m.sum())
        ((15, 1, 8, 8), 3.0)
    """
    map_size = geometry.map_size
    out = np.zeros((3, len(geometry.starts), num_classes, map_size, map_size))
    # Particles in chunks: the temporaries stay bounded for 512^3 particles.
    for begin in range(0, len(pos), PROJECTION_CHUNK):
        part = slice(begin, begin + PROJECTION_CHUNK)
        _project_chunk(out, pos[part], weights[part], classes[part], geometry)
    return out.reshape(geometry.num_maps, num_classes, map_size, map_size)


def _project_chunk(out, pos, weights, classes, geometry):
    """Adds the CIC projection of some particles to `out` [3, S, C, M, M] (see `project_maps`)."""
    size = out[0].size
    num_classes, map_size, pix = out.shape[2], geometry.map_size, geometry.pixels_per_mpc
    starts, thickness = geometry.starts, geometry.thickness
    for axis in range(3):
        u_axis, v_axis = [i for i in range(3) if i != axis]
        slab = _slab_index(pos[:, axis], starts, thickness)
        keep = slab >= 0
        u = pos[keep, u_axis] * pix - 0.5  # pixel centres at (i + 0.5)
        v = pos[keep, v_axis] * pix - 0.5
        w = weights[keep]
        base = (slab[keep] * num_classes + classes[keep]) * map_size
        iu = np.floor(u)
        iv = np.floor(v)
        fu = u - iu
        fv = v - iv
        iu = iu.astype(np.intp)
        iv = iv.astype(np.intp)
        for du, wu in ((0, 1.0 - fu), (1, fu)):
            ju = (iu + du) % map_size
            for dv, wv in ((0, 1.0 - fv), (1, fv)):
                jv = (iv + dv) % map_size
                flat = (base + ju) * map_size + jv
                out[axis].reshape(-1)[:] += np.bincount(flat, weights=w * wu * wv, minlength=size)


def _classes(sigma, sigma_min, sigma_max, num_classes):
    """Log-spaced smoothing classes; returns (class index per item, class sigmas)."""
    edges = np.geomspace(sigma_min, sigma_max, num_classes + 1)
    centres = np.sqrt(edges[1:] * edges[:-1])
    cls = np.clip(np.searchsorted(edges, sigma) - 1, 0, num_classes - 1)
    return cls, centres


def dark_matter_maps(
    pos,
    density,
    particle_mass,
    *,
    geometry,
    grid_size,
    eta=0.6,
    sigma_range=(0.25, 8.0),
    num_classes=10,
):
    """Adaptive-Gaussian projected mass maps in (Msun/h)/(Mpc/h)^2.

    Each particle is smoothed with sigma = eta * d_local, d_local = (L/N) (1+delta)^(-1/3)
    the local mean particle spacing, so voids (few particles per pixel) are
    filled smoothly and stay strictly positive. Particles are grouped in
    log-spaced width classes; each class map is convolved with its periodic
    Gaussian in Fourier space.

    Args:
        pos: [P, 3] positions (Mpc/h).
        density: [P] local 1+delta of each particle.
        particle_mass: mass per particle (Msun/h) to paint.
        geometry: the `MapGeometry` of the maps.
        grid_size: particles per side.
        eta: kernel width in units of the local spacing (calibration constant).
        sigma_range: (min, max) sigma in pixels.
        num_classes: number of width classes.

    Returns:
        [3 * S, map_size, map_size] float32 surface density, > 0.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> pos = rng.uniform(0, 25, (4096, 3))
        >>> m = dark_matter_maps(pos, np.ones(4096), 1.0, geometry=MapGeometry(25.0, 16), grid_size=16)
        >>> m.shape, bool(m.min() > 0)
        ((15, 16, 16), True)
    """
    box_size, map_size, pix = geometry.box_size, geometry.map_size, geometry.pixels_per_mpc
    spacing = box_size / grid_size * pix  # mean particle spacing in pixels
    rho = np.maximum(density, 1e-3)
    sigma = eta * spacing * rho ** (-1.0 / 3.0)
    cls, centres = _classes(sigma, sigma_range[0], sigma_range[1], num_classes)
    maps = project_maps(pos, np.ones(len(pos)), cls, num_classes, geometry)
    k = 2.0 * np.pi * np.fft.fftfreq(map_size)
    kr = 2.0 * np.pi * np.fft.rfftfreq(map_size)
    k2 = k[:, None] ** 2 + kr[None, :] ** 2
    kernels = np.exp(-0.5 * k2[None] * centres[:, None, None] ** 2)  # [C, M, M//2+1]
    mk = scipy.fft.rfft2(maps)  # [maps, C, M, M//2+1]
    smooth = scipy.fft.irfft2((mk * kernels[None]).sum(axis=1), s=(map_size, map_size))
    area = geometry.pixel_size**2
    out = smooth * (particle_mass / area)
    # Why: FFT round-off can leave ~1e-16 relative noise; a floor far below any
    # physical value keeps the "strictly positive" promise for log10.
    return np.maximum(out, 1e-6 * out.mean()).astype(np.float32)


def find_halos(pos, box_size, fine_size, *, threshold=80.0, min_particles=20):
    """Halos as connected regions of a fine NGP grid above `threshold` x mean density.

    A friends-of-friends surrogate that is cheap in numpy: particles are
    counted on a fine_size^3 grid, cells above threshold x the mean count are
    labelled (face connectivity, periodic), and each particle inherits the
    label of its cell. Why 80 and faces: with ~1/8 particle per fine cell the
    NGP counts are noisy, and a lower threshold or 26-connectivity percolates
    along filaments (it merged groups into >1e14 Msun/h "halos").

    Args:
        pos: [P, 3] positions (Mpc/h).
        box_size: box side (Mpc/h).
        fine_size: cells per side of the labelling grid (2N: 1/8 particle per cell).
        threshold: overdensity threshold (~ the FoF b=0.2 boundary, 60-80).
        min_particles: halos with fewer particles are dropped.

    Returns:
        dict with `labels` [P] int (halo id, -1 for none), `counts` [H] particles
        per halo, and `cell_count` [P] particles in each particle's fine cell
        (a local density proxy used to find the densest halo particles).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> clump = rng.normal(5.0, 0.05, (200, 3))
        >>> field = rng.uniform(0, 25, (2000, 3))
        >>> h = find_halos(np.concatenate([clump, field]), 25.0, 32)
        >>> len(h["counts"]) >= 1 and int(h["counts"].max()) >= 150
        True
    """
    n = int(fine_size)
    # Only occupied cells are stored (a 2N^3 dense grid at N = 512 would need
    # tens of GB): cells and their counts come from sorting the particles.
    cell = np.floor(pos * (n / box_size)).astype(np.int64) % n
    flat = (cell[:, 0] * n + cell[:, 1]) * n + cell[:, 2]
    del cell
    occupied, particle_cell, occupancy = np.unique(flat, return_inverse=True, return_counts=True)
    del flat
    mean = len(pos) / n**3
    dense = occupied[occupancy >= max(threshold * mean, 2.0)]  # sorted flat indices
    halo_of_dense = _periodic_face_components(dense, n)
    # Halo of each occupied cell (-1 outside dense cells).
    halo_of_cell = np.full(len(occupied), -1, np.int64)
    halo_of_cell[np.searchsorted(occupied, dense)] = halo_of_dense
    labels = halo_of_cell[particle_cell]
    # Compact ids, dropping small groups.
    valid = labels >= 0
    uniq, inv, cnt = np.unique(labels[valid], return_inverse=True, return_counts=True)
    keep = cnt >= min_particles
    new_id = np.where(keep, np.cumsum(keep) - 1, -1)
    out = np.full(len(pos), -1, np.intp)
    out[valid] = new_id[inv]
    return {"labels": out, "counts": cnt[keep], "cell_count": occupancy[particle_cell]}


def _periodic_face_components(cells, n):
    """Connected components of a set of cells of a periodic n^3 grid (face neighbours).

    Args:
        cells: sorted unique flat indices (i * n + j) * n + k.
        n: cells per side.

    Returns:
        [len(cells)] component ids, numbered in the order of each component's
        lowest flat index (the raster order in which `scipy.ndimage.label`
        would number them).
    """
    if len(cells) == 0:
        return np.zeros(0, np.int64)
    i, j, k = cells // (n * n), cells // n % n, cells % n
    rows, cols = [], []
    for di, dj, dk in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        neighbour = (((i + di) % n) * n + (j + dj) % n) * n + (k + dk) % n
        position = np.minimum(np.searchsorted(cells, neighbour), len(cells) - 1)
        found = cells[position] == neighbour
        rows.append(np.nonzero(found)[0])
        cols.append(position[found])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = scipy.sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(cells), len(cells)))
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return component.astype(np.int64)


def place_stars(labels, halo_stellar_mass, density, rng, *, star_mass=1e7, core_fraction=0.1):
    """Poisson star particles on the densest particles of each halo.

    Each halo with stellar mass M* gets N ~ Poisson(M* / star_mass) star
    particles, each on one of its `core_fraction` densest particles (at least
    one), chosen uniformly.

    Args:
        labels: [P] halo id per particle (-1: none).
        halo_stellar_mass: [H] stellar mass per halo (Msun/h).
        density: [P] density proxy; ties are broken by particle order.
        rng: numpy Generator.
        star_mass: mass of one star particle (Msun/h).
        core_fraction: fraction of the halo's particles that may host stars.

    Returns:
        (particle_index, mass): the particles that host stars and their
        stellar mass (an integer number of star particles each).

    Examples:
        >>> lab = np.array([0, 0, 0, -1, 1])
        >>> idx, m = place_stars(lab, np.array([5e7, 0.0]), np.array([3., 2., 1., 9., 1.]),
        ...                      np.random.default_rng(0))
        >>> idx.tolist()
        [0]
    """
    in_halo = np.flatnonzero(labels >= 0)
    if len(in_halo) == 0 or len(halo_stellar_mass) == 0:
        return np.zeros(0, np.intp), np.zeros(0)
    # Sort halo particles by (halo, -density): the densest come first in each halo.
    order = in_halo[np.lexsort((-density[in_halo], labels[in_halo]))]
    halo_of = labels[order]
    num_halos = len(halo_stellar_mass)
    sizes = np.bincount(halo_of, minlength=num_halos)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_core = np.clip(np.round(core_fraction * sizes), 1, np.maximum(sizes, 1)).astype(np.intp)
    n_stars = rng.poisson(np.maximum(halo_stellar_mass, 0.0) / star_mass)
    host_halo = np.repeat(np.arange(num_halos), n_stars)
    rank = np.floor(rng.random(len(host_halo)) * n_core[host_halo]).astype(np.intp)
    host = order[start[host_halo] + rank]
    uniq, count = np.unique(host, return_counts=True)
    return uniq, count * float(star_mass)


def _spline_kernel(q):
    """Cubic-spline (M4) SPH kernel shape with support q < 1 (not normalised)."""
    q = np.asarray(q)
    inner = 1.0 - 6.0 * q**2 + 6.0 * q**3
    outer = 2.0 * np.clip(1.0 - q, 0.0, None) ** 3
    return np.where(q < 0.5, inner, outer)


def stellar_maps(
    star_pos,
    star_mass,
    *,
    geometry,
    k_neighbours=8,
    eta=0.5,
    h_range=(0.7, 2.0),
):
    """Stellar surface density maps with a k-nearest-neighbour SPH-like kernel.

    Each star particle is spread over the pixels whose centres fall inside a
    cubic-spline kernel of support radius h = eta x (distance to the k-th
    nearest star particle), clipped to `h_range` pixels, and normalised so
    its mass is conserved (all of it goes to the nearest pixel when no pixel
    centre lies inside). Pixels that barely overlap a kernel's edge get tiny
    but non-zero values, and pixels outside every kernel are exactly 0: like
    the CMD Mstar maps, ~97-99 % zeros and a broad tail of small values.

    Args:
        star_pos: [S, 3] star-particle positions (Mpc/h).
        star_mass: [S] masses (Msun/h).
        geometry: the `MapGeometry` of the maps.
        k_neighbours: neighbour rank for the kernel size (3-D, periodic).
        eta: kernel size scale (calibration constant).
        h_range: (min, max) support radius in pixels.

    Returns:
        [3 * S, map_size, map_size] float32 surface density, >= 0 and sparse.

    Examples:
        >>> m = stellar_maps(np.array([[1.0, 2.0, 3.0]]), np.array([1e9]), geometry=MapGeometry(25.0, 64))
        >>> m.shape, bool((m > 0).mean() < 0.01)
        ((15, 64, 64), True)
        >>> round(float(m.sum() * (25.0 / 64) ** 2 / 3), 1)
        1000000000.0
    """
    box_size, map_size = geometry.box_size, geometry.map_size
    starts, thickness = geometry.starts, geometry.thickness
    n_slabs = len(starts)
    n_maps = geometry.num_maps
    out = np.zeros(n_maps * map_size * map_size)
    if len(star_pos) == 0:
        return out.reshape(n_maps, map_size, map_size).astype(np.float32)
    pix = geometry.pixels_per_mpc
    k = min(k_neighbours + 1, len(star_pos))
    if k > 1:
        tree = scipy.spatial.cKDTree(star_pos, boxsize=box_size)
        dist, _ = tree.query(star_pos, k=[k])
        h = eta * dist[:, 0] * pix
    else:
        h = np.full(len(star_pos), h_range[1])
    h = np.clip(h, h_range[0], h_range[1])
    r = int(np.ceil(h_range[1]))
    off = np.arange(-r, r + 1)
    du, dv = np.meshgrid(off, off, indexing="ij")
    du, dv = du.ravel(), dv.ravel()
    for axis in range(3):
        u_axis, v_axis = [i for i in range(3) if i != axis]
        slab = _slab_index(star_pos[:, axis], starts, thickness)
        keep = slab >= 0
        u = star_pos[keep, u_axis] * pix
        v = star_pos[keep, v_axis] * pix
        iu = np.floor(u).astype(np.intp)
        iv = np.floor(v).astype(np.intp)
        hu = h[keep]
        # Distance from each particle to the centres of the (2r+1)^2 stencil pixels.
        cu = iu[:, None] + du[None] + 0.5
        cv = iv[:, None] + dv[None] + 0.5
        q = np.sqrt((cu - u[:, None]) ** 2 + (cv - v[:, None]) ** 2) / hu[:, None]
        w = _spline_kernel(q)
        total = w.sum(axis=1, keepdims=True)
        empty = total[:, 0] <= 0
        w[empty, len(du) // 2] = 1.0  # kernel between pixel centres: nearest pixel
        total[empty] = 1.0
        w *= star_mass[keep, None] / total
        base = (axis * n_slabs + slab[keep])[:, None] * map_size
        flat = (base + (iu[:, None] + du[None]) % map_size) * map_size + (iv[:, None] + dv[None]) % map_size
        nz = w > 0
        out += np.bincount(flat[nz], weights=w[nz], minlength=out.size)
    out *= 1.0 / geometry.pixel_size**2
    return out.reshape(n_maps, map_size, map_size).astype(np.float32)
