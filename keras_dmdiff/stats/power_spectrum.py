"""2-D power spectra of periodic maps (pure numpy).

Conventions (used everywhere in `keras_dmdiff.stats`):

* Maps are square, periodic, shape `[..., N, N]`, of side `box_size` in Mpc/h
  (CAMELS CMD: N = 256, box_size = 25). Leading axes are batch axes.
* Wavenumbers are in h/Mpc: `k = 2 pi |n| / box_size` for the integer mode
  vector `n`. The fundamental is `k_f = 2 pi / box_size` and the Nyquist
  wavenumber `k_nyq = pi N / box_size` (~32.2 h/Mpc for CMD). Modes with
  `|k| > k_nyq` (the corners of the square of modes) are not used by default.
* The statistic is the power spectrum of the overdensity
  `delta = rho / mean(rho) - 1` (the mean taken per map), unless the caller
  passes a precomputed field with `is_overdensity=True` (e.g. a mean-subtracted
  log field).
* Normalisation: with `F = fft2(delta)` (numpy's unnormalised forward FFT),

      P(k) = |F(k)|^2 * box_size^2 / N^4        [units (Mpc/h)^2]

  so that Parseval reads `mean(delta^2) = sum_over_all_modes P / box_size^2`,
  and a white-noise field of per-pixel variance s^2 has the flat spectrum
  `P = s^2 * (box_size / N)^2` (variance times pixel area). A binned value is
  the plain average of `P` over the modes in the bin.
"""

import numpy as np

from keras_dmdiff.stats._checks import as_maps
from keras_dmdiff.stats._checks import check_box_size
from keras_dmdiff.stats._checks import check_same_map_shape
from keras_dmdiff.stats._checks import check_square

DEFAULT_BOX_SIZE = 25.0
DEFAULT_NUM_LOG_BINS = 20

# Relative tolerance when a mode's |k| sits exactly on a bin edge: such a mode
# belongs to the upper bin ([lo, hi) intervals); the last edge is inclusive.
_EDGE_RTOL = 1e-10


def overdensity(maps):
    """Overdensity `delta = rho / mean(rho) - 1` of each map.

    Args:
        maps: array `[..., H, W]`; the mean is taken per map over the last two
            axes.

    Returns:
        float64 array of the same shape, with zero mean per map.

    Raises:
        ValueError: on NaN / infinite values or a map whose mean is not
            strictly positive (the overdensity is then undefined).

    Examples:
        >>> overdensity(np.array([[1.0, 3.0], [2.0, 2.0]]))
        array([[-0.5,  0.5],
               [ 0. ,  0. ]])
    """
    arr = as_maps(maps)
    mean = arr.mean(axis=(-2, -1), keepdims=True)
    if np.any(mean <= 0):
        raise ValueError(
            "Every map must have a strictly positive mean to form an overdensity; "
            "pass `is_overdensity=True` with a precomputed field (e.g. a "
            "mean-subtracted log map) instead."
        )
    return arr / mean - 1.0


def fundamental_wavenumber(box_size=DEFAULT_BOX_SIZE):
    """`k_f = 2 pi / box_size` in h/Mpc."""
    return 2.0 * np.pi / check_box_size(box_size)


def nyquist_wavenumber(num_pixels, box_size=DEFAULT_BOX_SIZE):
    """`k_nyq = pi * num_pixels / box_size` in h/Mpc (~32.2 for 256 px, 25 Mpc/h)."""
    return np.pi * int(num_pixels) / check_box_size(box_size)


def _mode_norms(num_pixels):
    """|n| on the rfft2 grid `[N, N//2 + 1]` and the weight of each column.

    The rfft2 grid stores half of the modes of a real field; a column other than
    the zero and (even N) Nyquist columns stands for itself and its complex
    conjugate, hence weight 2. Weighted counts equal full-FFT mode counts.
    """
    n = int(num_pixels)
    ny = np.fft.fftfreq(n, d=1.0 / n)
    nx = np.fft.rfftfreq(n, d=1.0 / n)
    norms = np.sqrt(ny[:, None] ** 2 + nx[None, :] ** 2)
    weights = np.full(nx.shape, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return norms, np.broadcast_to(weights, norms.shape)


def _assign_bins(norms, edges_n):
    """Bin index of each |n| for dimensionless edges; -1 outside the range."""
    nudged = norms * (1.0 + _EDGE_RTOL)
    idx = np.searchsorted(edges_n, nudged, side="right") - 1
    num_bins = len(edges_n) - 1
    # The last edge is inclusive (so that modes exactly at Nyquist count).
    on_last_edge = (idx == num_bins) & (norms <= edges_n[-1] * (1.0 + _EDGE_RTOL))
    idx = np.where(on_last_edge, num_bins - 1, idx)
    return np.where((idx >= 0) & (idx < num_bins), idx, -1)


def k_bin_edges(
    num_pixels,
    box_size=DEFAULT_BOX_SIZE,
    bins="linear",
    num_bins=None,
    k_min=None,
    k_max=None,
):
    """Edges (h/Mpc) of the k bins used by `power_spectrum`.

    Args:
        num_pixels: N, the side of the square maps in pixels.
        box_size: side of the periodic box in Mpc/h.
        bins: `"linear"`, `"log"`, or an explicit increasing array of edges in
            h/Mpc (returned unchanged after checks).
        num_bins: number of bins. Linear default: bins of width `k_f` centred
            on `k_f, 2 k_f, ..., k_nyq` (the last one is half-width, it stops
            at Nyquist). Log default: `DEFAULT_NUM_LOG_BINS` (20).
        k_min: lower edge in h/Mpc. Default `k_f / 2` (linear) or `k_f` (log).
        k_max: upper edge in h/Mpc. Default `k_nyq`.

    Returns:
        1-D float64 array of `num_bins + 1` edges in h/Mpc. For automatic log
        bins, bins that would contain no mode on this grid (the spacing of the
        lowest modes is coarser than a log bin) are merged into their upper
        neighbour, so fewer than `num_bins` bins may come back; explicit edges
        are never changed.

    Raises:
        ValueError: on a bad `bins` string, non-increasing edges, `num_bins < 1`
            or `k_min >= k_max`.

    Examples:
        >>> k_bin_edges(256, 25.0)[:3] / fundamental_wavenumber(25.0)
        array([0.5, 1.5, 2.5])
    """
    n = int(num_pixels)
    if n < 2:
        raise ValueError(f"`num_pixels` must be >= 2, got {num_pixels}.")
    kf = fundamental_wavenumber(box_size)
    n_nyq = n / 2.0
    if not isinstance(bins, str):
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError("Explicit `bins` must be a 1-D increasing array of >= 2 edges.")
        if not np.all(np.isfinite(edges)) or edges[0] < 0:
            raise ValueError("Explicit `bins` must be finite and non-negative.")
        return edges
    if bins not in ("linear", "log"):
        raise ValueError(f"`bins` must be 'linear', 'log' or an array of edges, got {bins!r}.")
    if num_bins is not None and int(num_bins) < 1:
        raise ValueError(f"`num_bins` must be >= 1, got {num_bins}.")
    lo = None if k_min is None else float(k_min) / kf
    hi = n_nyq if k_max is None else float(k_max) / kf
    if bins == "linear":
        if num_bins is None and lo is None and k_max is None:
            # Bins centred on integer multiples of k_f; the last one stops at Nyquist.
            edges_n = 0.5 + np.arange(n // 2 + 1, dtype=np.float64)
            edges_n[-1] = min(edges_n[-1], n_nyq)
            return edges_n * kf
        lo = 0.5 if lo is None else lo
        if not lo < hi:
            raise ValueError(f"Need k_min < k_max, got {lo * kf} and {hi * kf}.")
        nb = int(num_bins) if num_bins is not None else max(1, int(round(hi - lo)))
        return np.linspace(lo, hi, nb + 1) * kf
    lo = 1.0 if lo is None else lo
    if not 0 < lo < hi:
        raise ValueError(f"Log bins need 0 < k_min < k_max, got {lo * kf} and {hi * kf}.")
    nb = int(num_bins) if num_bins is not None else DEFAULT_NUM_LOG_BINS
    edges_n = np.geomspace(lo, hi, nb + 1)
    # Merge empty bins upwards: near k_f the modes are sparser than log bins.
    norms, _ = _mode_norms(n)
    idx = _assign_bins(norms.ravel(), edges_n)
    occupied = np.bincount(idx[idx >= 0], minlength=nb) > 0
    keep = [0] + [i + 1 for i in range(nb) if occupied[i]]
    if not occupied[-1] and len(keep) > 1:
        # The top bin was empty: its lower edge goes, the top edge stays.
        keep[-1] = nb
    edges_n = np.unique(edges_n[keep])
    return edges_n * kf


def _binning(num_pixels, box_size, edges):
    """Sorted mode selection for fast batched binning on the rfft2 grid."""
    kf = fundamental_wavenumber(box_size)
    norms, weights = _mode_norms(num_pixels)
    idx = _assign_bins(norms.ravel(), edges / kf)
    valid = np.flatnonzero(idx >= 0)
    order = valid[np.argsort(idx[valid], kind="stable")]
    sorted_idx = idx[order]
    num_bins = len(edges) - 1
    w = weights.ravel()[order]
    counts = np.bincount(sorted_idx, weights=w, minlength=num_bins)
    ksum = np.bincount(sorted_idx, weights=w * norms.ravel()[order] * kf, minlength=num_bins)
    mid = 0.5 * (edges[:-1] + edges[1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        k_centres = np.where(counts > 0, ksum / np.where(counts > 0, counts, 1), mid)
    nonempty = np.flatnonzero(counts > 0)
    starts = np.searchsorted(sorted_idx, nonempty)
    return order, w, starts, nonempty, counts, k_centres


def _bin_power(modes, binning, num_bins):
    """Average `modes` `[..., N, N//2+1]` over k bins -> `[..., num_bins]`."""
    order, w, starts, nonempty, counts, _ = binning
    flat = modes.reshape(modes.shape[:-2] + (-1,))[..., order] * w
    out = np.full(modes.shape[:-2] + (num_bins,), np.nan)
    if nonempty.size:
        sums = np.add.reduceat(flat, starts, axis=-1)
        out[..., nonempty] = sums / counts[nonempty]
    return out


def _prepare(maps, name, is_overdensity):
    arr = as_maps(maps, name=name)
    check_square(arr, name=name)
    return arr if is_overdensity else overdensity(arr)


def _spectra(a, b, box_size, bins, num_bins, k_min, k_max, is_overdensity, which):
    box_size = check_box_size(box_size)
    da = _prepare(a, "a", is_overdensity)
    db = None
    if b is not None:
        db = _prepare(b, "b", is_overdensity)
        check_same_map_shape(da, db)
        try:
            np.broadcast_shapes(da.shape, db.shape)
        except ValueError:
            raise ValueError(
                f"Batch shapes of `a` {da.shape} and `b` {db.shape} do not broadcast."
            )
    n = da.shape[-1]
    edges = k_bin_edges(n, box_size, bins=bins, num_bins=num_bins, k_min=k_min, k_max=k_max)
    binning = _binning(n, box_size, edges)
    num = len(edges) - 1
    norm = box_size**2 / float(n) ** 4
    fa = np.fft.rfft2(da)
    out = {}
    if "a" in which:
        out["a"] = _bin_power((fa.real**2 + fa.imag**2) * norm, binning, num)
    if db is not None:
        fb = np.fft.rfft2(db)
        if "b" in which:
            out["b"] = _bin_power((fb.real**2 + fb.imag**2) * norm, binning, num)
        if "x" in which:
            cross = (fa.real * fb.real + fa.imag * fb.imag) * norm
            out["x"] = _bin_power(cross, binning, num)
    return binning[5], out, binning[4].astype(np.int64)


def power_spectrum(
    maps,
    box_size=DEFAULT_BOX_SIZE,
    bins="linear",
    num_bins=None,
    k_min=None,
    k_max=None,
    is_overdensity=False,
):
    """Binned 2-D power spectrum of the overdensity of periodic maps.

    Args:
        maps: array `[..., N, N]` (any number of leading batch axes), e.g.
            surface densities in (Msun/h)/(Mpc/h)^2.
        box_size: side of the periodic box in Mpc/h (CMD: 25).
        bins: `"linear"`, `"log"` or explicit edges in h/Mpc (see
            `k_bin_edges`).
        num_bins: number of bins for `"linear"` / `"log"`.
        k_min, k_max: range in h/Mpc (default `k_f/2` or `k_f` to `k_nyq`).
        is_overdensity: if True, `maps` is used as the field as is (e.g.
            `log10(rho) - mean`), instead of `rho / mean(rho) - 1`.

    Returns:
        `(k, pk, counts)`: `k` `[num_bins]` the mean |k| of the modes in each
        bin (h/Mpc); `pk` `[..., num_bins]` in (Mpc/h)^2 with the module's
        normalisation `P = |FFT|^2 box_size^2 / N^4`; `counts` `[num_bins]`
        the number of Fourier modes (full plane, both k and -k) per bin. A bin
        with no mode (only possible with explicit edges) has `pk = NaN`.

    Raises:
        ValueError: non-square maps, NaN, `box_size <= 0`, a map with
            non-positive mean (unless `is_overdensity`), bad bins.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> k, pk, counts = power_spectrum(1.0 + 0.1 * rng.normal(size=(4, 64, 64)))
        >>> pk.shape, k.shape
        ((4, 32), (32,))
    """
    k, out, counts = _spectra(
        maps, None, box_size, bins, num_bins, k_min, k_max, is_overdensity, ("a",)
    )
    return k, out["a"], counts


def cross_power_spectrum(
    a,
    b,
    box_size=DEFAULT_BOX_SIZE,
    bins="linear",
    num_bins=None,
    k_min=None,
    k_max=None,
    is_overdensity=False,
):
    """Binned cross power `P_x(k) = <Re(F_a conj(F_b))>` of two sets of maps.

    Same conventions and arguments as `power_spectrum`; the batch shapes of `a`
    and `b` broadcast (e.g. samples `[S, N, N]` against one truth `[N, N]`).

    Returns:
        `(k, pk_cross, counts)` with `pk_cross` of the broadcast batch shape
        `[..., num_bins]`; `cross_power_spectrum(a, a)` equals
        `power_spectrum(a)`.
    """
    k, out, counts = _spectra(a, b, box_size, bins, num_bins, k_min, k_max, is_overdensity, ("x",))
    return k, out["x"], counts


def cross_correlation(
    a,
    b,
    box_size=DEFAULT_BOX_SIZE,
    bins="linear",
    num_bins=None,
    k_min=None,
    k_max=None,
    is_overdensity=False,
):
    """Cross-correlation coefficient `r(k) = P_x / sqrt(P_a P_b)`.

    `r = 1` means the two maps agree up to a scale-dependent factor at that k
    (phases identical); `r = 0` means uncorrelated phases. Same arguments as
    `cross_power_spectrum`; batch shapes broadcast.

    Returns:
        `(k, r, counts)`, `r` `[..., num_bins]` in [-1, 1].

    Examples:
        >>> rng = np.random.default_rng(1)
        >>> m = np.exp(rng.normal(size=(32, 32)))
        >>> k, r, _ = cross_correlation(m, 3.0 * m)
        >>> bool(np.allclose(r, 1.0))
        True
    """
    k, out, counts = _spectra(
        a, b, box_size, bins, num_bins, k_min, k_max, is_overdensity, ("a", "b", "x")
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        r = out["x"] / np.sqrt(out["a"] * out["b"])
    return k, r, counts


def power_ratio(pk_samples, pk_true, sample_axis=0, band=(0.1, 0.9)):
    """Ratio `P_sample / P_true` summarised over posterior samples.

    Args:
        pk_samples: spectra of the samples, e.g. `[S, ..., num_bins]`.
        pk_true: spectra of the truth, broadcastable against `pk_samples`
            with `sample_axis` removed (e.g. `[..., num_bins]`).
        sample_axis: the axis of `pk_samples` holding the samples.
        band: lower and upper quantiles of the band (default 10-90 %).

    Returns:
        dict with `"mean"`, `"low"`, `"high"` (arrays `[..., num_bins]`, the
        mean and quantiles over samples of the per-sample ratio) and `"ratio"`
        (the per-sample ratios, shape of `pk_samples`).

    Raises:
        ValueError: on incompatible shapes, a bad band or non-positive truth.
    """
    ps = np.asarray(pk_samples, dtype=np.float64)
    pt = np.asarray(pk_true, dtype=np.float64)
    lo, hi = band
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"`band` must satisfy 0 <= low < high <= 1, got {band}.")
    ps = np.moveaxis(ps, sample_axis, 0)
    try:
        np.broadcast_shapes(ps.shape[1:], pt.shape)
    except ValueError:
        raise ValueError(
            f"`pk_true` {pt.shape} does not broadcast against `pk_samples` without its "
            f"sample axis {ps.shape[1:]}."
        )
    if np.any(pt[np.isfinite(pt)] <= 0):
        raise ValueError("`pk_true` must be strictly positive to form a ratio.")
    ratio = ps / pt
    return {
        "mean": np.mean(ratio, axis=0),
        "low": np.quantile(ratio, lo, axis=0),
        "high": np.quantile(ratio, hi, axis=0),
        "ratio": np.moveaxis(ratio, 0, sample_axis),
    }
