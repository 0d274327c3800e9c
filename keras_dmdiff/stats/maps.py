"""Map-space statistics: one-point PDF, MSE in dex^2, aperture masses.

Maps are periodic squares `[..., N, N]` of side `box_size` Mpc/h holding
surface densities in (Msun/h)/(Mpc/h)^2 (CAMELS CMD units). Pixel `(i, j)`
(row `i` along axis -2, column `j` along axis -1) has its centre at
`((i + 0.5) * dx, (j + 0.5) * dx)` with `dx = box_size / N`; positions such as
aperture centres are given in that same `(row, column)` order, in Mpc/h.
"""

import numpy as np

from keras_dmdiff.stats._checks import as_maps
from keras_dmdiff.stats._checks import check_box_size
from keras_dmdiff.stats._checks import check_square

DEFAULT_BOX_SIZE = 25.0

# log10 Sigma_cdm of CMD maps: mean ~10.98, std ~0.51 dex; these bins cover
# about -4 to +6 sigma and are shared by truth and samples so PDFs compare.
DEFAULT_LOG10_SIGMA_BINS = np.linspace(9.0, 14.0, 101)


def pixel_area(num_pixels, box_size=DEFAULT_BOX_SIZE):
    """Area of one pixel in (Mpc/h)^2: `(box_size / num_pixels)^2`."""
    return (check_box_size(box_size) / int(num_pixels)) ** 2


def _log10_positive(maps, name, offset):
    arr = as_maps(maps, name=name) + float(offset)
    if np.any(arr <= 0):
        raise ValueError(
            f"`{name}` + offset must be strictly positive to take log10 "
            f"(min {arr.min():.3g}); set `offset` (e.g. 1 for stellar maps)."
        )
    return np.log10(arr)


def one_point_pdf(maps, bins=None, offset=0.0):
    """One-point PDF of `log10(Sigma + offset)`, per map, on fixed bins.

    Args:
        maps: array `[..., H, W]` of surface densities.
        bins: increasing edges in log10 units; default
            `DEFAULT_LOG10_SIGMA_BINS` (9 to 14 in 100 bins, for Sigma_cdm).
            Use the same bins for the truth and the samples.
        offset: added before the log (e.g. 1 for `log10(1 + Mstar)`).

    Returns:
        `(centres, density)`: `centres` `[num_bins]`; `density`
        `[..., num_bins]` normalised by the *total* number of pixels of each
        map, so `sum(density * width)` is the fraction of pixels inside the
        bin range (1 when the bins cover the map; unlike `np.histogram`, pixels
        outside the range are not silently renormalised away).

    Raises:
        ValueError: NaN, non-positive `maps + offset`, bad bins.

    Examples:
        >>> c, d = one_point_pdf(np.full((8, 8), 1e11))
        >>> float((d * np.diff(DEFAULT_LOG10_SIGMA_BINS)).sum())
        1.0
    """
    edges = DEFAULT_LOG10_SIGMA_BINS if bins is None else np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError("`bins` must be a 1-D increasing array of at least 2 edges.")
    logs = _log10_positive(maps, "maps", offset)
    batch = logs.shape[:-2]
    flat = logs.reshape((-1, logs.shape[-2] * logs.shape[-1]))
    num_bins = edges.size - 1
    idx = np.searchsorted(edges, flat, side="right") - 1
    idx = np.where(flat == edges[-1], num_bins - 1, idx)  # last edge inclusive
    inside = (idx >= 0) & (idx < num_bins)
    # One bincount for the whole batch: offset each map's bins by its row index.
    rows = np.broadcast_to(np.arange(flat.shape[0])[:, None], flat.shape)
    counts = np.bincount(
        (rows * num_bins + idx)[inside], minlength=flat.shape[0] * num_bins
    ).reshape(flat.shape[0], num_bins)
    density = counts / (flat.shape[1] * np.diff(edges))
    centres = 0.5 * (edges[:-1] + edges[1:])
    return centres, density.reshape(batch + (num_bins,))


def mse_dex2(prediction, truth, offset=0.0):
    """Mean squared error between `log10` maps, in dex^2, per map.

    Args:
        prediction: array `[..., H, W]` (e.g. samples `[S, H, W]`).
        truth: array broadcastable against `prediction`.
        offset: added to both before the log.

    Returns:
        array of the broadcast batch shape: `mean((log10 p - log10 t)^2)` over
        the last two axes.

    Raises:
        ValueError: NaN, non-positive values, mismatched map shapes.

    Examples:
        >>> float(mse_dex2(np.full((4, 4), 10.0), np.full((4, 4), 100.0)))
        1.0
    """
    lp = _log10_positive(prediction, "prediction", offset)
    lt = _log10_positive(truth, "truth", offset)
    if lp.shape[-2:] != lt.shape[-2:]:
        raise ValueError(f"Map shapes differ: {lp.shape[-2:]} vs {lt.shape[-2:]}.")
    try:
        diff = lp - lt
    except ValueError:
        raise ValueError(f"Shapes {lp.shape} and {lt.shape} do not broadcast.")
    return np.mean(diff**2, axis=(-2, -1))


def _check_centres(centres):
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"`centres` must have shape [num_centres, 2] (row, col), got {c.shape}.")
    if not np.all(np.isfinite(c)):
        raise ValueError("`centres` contains NaN or infinite values.")
    return c


def aperture_masses(maps, centres, radius, box_size=DEFAULT_BOX_SIZE):
    """Total mass inside circular apertures, with periodic wrapping.

    A pixel belongs to an aperture when its centre lies within `radius` of the
    aperture centre (minimum-image distance in the periodic box); its mass is
    `Sigma * pixel_area`.

    Args:
        maps: array `[..., N, N]` of surface densities (mass / area).
        centres: `[num_centres, 2]` positions `(row, col)` in Mpc/h (any real
            values: they are wrapped into the box).
        radius: aperture radius in Mpc/h, `0 < radius < box_size / 2`.
        box_size: side of the box in Mpc/h.

    Returns:
        array `[..., num_centres]` of masses (Msun/h for CMD units).

    Raises:
        ValueError: bad radius, centres of the wrong shape, NaN, non-square maps.

    Examples:
        >>> m = aperture_masses(np.ones((256, 256)), [[12.5, 12.5]], 2.0)
        >>> bool(abs(m[0] / (np.pi * 2.0**2) - 1) < 0.02)  # pixelisation ~ 1 %
        True
    """
    arr = as_maps(maps)
    n = check_square(arr)
    box_size = check_box_size(box_size)
    c = _check_centres(centres) % box_size
    radius = float(radius)
    if not (np.isfinite(radius) and 0 < radius < box_size / 2):
        # Beyond half the box a pixel would be inside the aperture twice.
        raise ValueError(f"`radius` must be in (0, box_size / 2), got {radius}.")
    dx = box_size / n
    half = int(np.ceil(radius / dx)) + 1
    offsets = np.arange(-half, half + 1)
    out = np.empty(arr.shape[:-2] + (c.shape[0],))
    for m, (cy, cx) in enumerate(c):
        # Only a window around the centre is examined (cheap on 2048^2 maps).
        iy = np.floor(cy / dx).astype(int) + offsets
        ix = np.floor(cx / dx).astype(int) + offsets
        dy = (iy + 0.5) * dx - cy
        dxx = (ix + 0.5) * dx - cx
        mask = dy[:, None] ** 2 + dxx[None, :] ** 2 <= radius**2
        rows, cols = np.nonzero(mask)
        values = arr[..., iy[rows] % n, ix[cols] % n]
        out[..., m] = values.sum(axis=-1)
    return out * dx * dx


def peak_centres(map_, num_peaks, min_separation, box_size=DEFAULT_BOX_SIZE):
    """Positions of the `num_peaks` highest pixels at least `min_separation` apart.

    A simple greedy choice of "regions" for aperture statistics (e.g. the most
    massive dark-matter peaks of the truth, or the brightest stellar pixels).

    Args:
        map_: one map `[N, N]`.
        num_peaks: how many centres to return (fewer if the map runs out).
        min_separation: minimum periodic distance between centres, Mpc/h.
        box_size: side of the box in Mpc/h.

    Returns:
        `[num_found, 2]` pixel-centre positions `(row, col)` in Mpc/h, in
        decreasing order of pixel value.

    Raises:
        ValueError: if `map_` is not a single square map or has NaN.
    """
    arr = as_maps(map_, name="map_")
    if arr.ndim != 2:
        raise ValueError(f"`map_` must be a single map [N, N], got shape {arr.shape}.")
    n = check_square(arr, name="map_")
    box_size = check_box_size(box_size)
    dx = box_size / n
    order = np.argsort(arr, axis=None)[::-1]
    chosen = []
    sep2 = float(min_separation) ** 2
    for flat in order:
        if len(chosen) >= num_peaks:
            break
        pos = (np.array(np.unravel_index(flat, arr.shape)) + 0.5) * dx
        if chosen:
            d = np.abs(np.asarray(chosen) - pos)
            d = np.minimum(d, box_size - d)
            if np.any((d**2).sum(axis=1) < sep2):
                continue
        chosen.append(pos)
    return np.asarray(chosen).reshape(-1, 2)


def grid_edge_ratio(maps, period=16):
    """Mean |jump| of log10 Sigma across the lines of a `period`-pixel grid over the mean |jump| elsewhere.

    A U-Net of stride `period` is shift-equivariant only for multiples of
    it, so an under-trained one draws straight edges on that grid: its
    jumps across the grid lines (between pixels period*j - 1 and period*j,
    periodically, along both axes) exceed the typical pixel-to-pixel jump.
    For maps without that artefact the ratio is 1 up to noise.

    Args:
        maps: `[..., N, N]` positive maps, N a multiple of `period`.
        period: grid spacing in pixels.

    Returns:
        float, the ratio over all maps.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(grid_edge_ratio(10 ** rng.normal(size=(4, 64, 64)), 16), 1)
        1.0
    """
    logs = _log10_positive(maps, "maps", 0.0)
    check_square(logs, "maps")
    n = logs.shape[-1]
    period = int(period)
    if period < 2 or n % period:
        raise ValueError(f"`period` must be >= 2 and divide the map size {n}; got {period}.")
    on_grid = np.arange(n) % period == 0  # the jump into pixel j from pixel j - 1
    edge, other = [], []
    for axis in (-1, -2):
        jumps = np.abs(logs - np.roll(logs, 1, axis=axis))
        jumps = np.moveaxis(jumps, axis, -1)
        edge.append(jumps[..., on_grid].ravel())
        other.append(jumps[..., ~on_grid].ravel())
    return float(np.mean(np.concatenate(edge)) / np.mean(np.concatenate(other)))
