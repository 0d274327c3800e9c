"""Simple baselines to compare a diffusion posterior against (pure numpy).

(b) `ConditionalMeanBaseline`: the conditional mean of log10 Mcdm in bins of
    the Gaussian-smoothed stellar mass, a deterministic, local, one-parameter
    "bias model" a referee will ask for.
(c) `stellar_tracer`: the stellar-mass map itself, rescaled to the dark
    matter's mean, as the trivial tracer. On CMD-like maps it already has
    r(k) ~ 0.85 for 1 < k < 5 h/Mpc with the dark matter, while its P(k) is
    nothing like the dark matter's: a reconstruction must beat it in r(k) and
    match P(k) at the same time.

(a) the regression U-Net is a Keras model and lives with the models.

Maps are periodic squares `[..., N, N]` of side `box_size` Mpc/h in
(Msun/h)/(Mpc/h)^2; all functions take and return physical maps.
"""

import numpy as np

DEFAULT_BOX_SIZE = 25.0


def _as_maps(maps, name):
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2] or arr.size == 0:
        raise ValueError(f"`{name}` must be square maps [..., N, N], got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


def _check_box_size(box_size):
    value = float(box_size)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`box_size` must be a positive number, got {box_size!r}.")
    return value


def _periodic_gaussian_1d(n, scale, box_size):
    """Sampled 1-D Gaussian on the periodic grid, images of the box included."""
    dx = box_size / n
    d = (np.arange(n) - n * (np.arange(n) > n // 2)) * dx  # signed distance to pixel 0
    images = np.arange(-2, 3)[:, None] * box_size
    g = np.exp(-0.5 * ((d[None, :] + images) / scale) ** 2).sum(axis=0)
    return g / g.sum()


def periodic_gaussian_smooth(maps, scale, box_size=DEFAULT_BOX_SIZE):
    """Gaussian smoothing with periodic boundaries.

    The kernel is a Gaussian of standard deviation `scale` sampled on the
    periodic pixel grid (with its periodic images) and normalised to unit sum;
    the convolution is done with FFTs. Hence the total (and mean) mass of every
    map is preserved exactly, nothing leaks across or is lost at the box
    edges, and non-negative maps stay non-negative (up to FFT round-off), even
    for `scale` below a pixel (a Gaussian cut in Fourier space would ring).

    Args:
        maps: `[..., N, N]`.
        scale: Gaussian sigma in Mpc/h (>= 0; 0 returns a copy).
        box_size: side of the periodic box in Mpc/h.

    Returns:
        float64 array of the same shape. Callers that take logs should clip
        the ~1e-16 relative round-off below zero.

    Raises:
        ValueError: bad shapes, NaN, `scale < 0`, `box_size <= 0`.

    Examples:
        >>> m = np.zeros((64, 64)); m[10, 20] = 1.0
        >>> s = periodic_gaussian_smooth(m, 1.0, 25.0)
        >>> bool(np.isclose(s.sum(), 1.0))
        True
    """
    arr = _as_maps(maps, "maps")
    box_size = _check_box_size(box_size)
    scale = float(scale)
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"`scale` must be >= 0 (Mpc/h), got {scale}.")
    if scale == 0:
        return arr.copy()
    n = arr.shape[-1]
    g = _periodic_gaussian_1d(n, scale, box_size)
    kernel = np.fft.rfft2(np.outer(g, g))
    return np.fft.irfft2(np.fft.rfft2(arr) * kernel, s=(n, n))


class ConditionalMeanBaseline:
    """Conditional mean of log10 Mcdm given the smoothed stellar mass.

    `fit` smooths each stellar map with a periodic Gaussian of
    `smoothing_scale` Mpc/h, forms `x = log10(1 + smoothed Mstar)` per pixel,
    cuts the range of `x` into `num_bins` equal-width bins and stores, per bin
    holding at least `min_count` training pixels, the mean `x`, the mean and
    the standard deviation of `log10 Mcdm`. `predict` interpolates linearly
    between the bin means (constant beyond the outermost ones): a smooth,
    deterministic, local bias model. (Equal-width rather than equal-occupancy
    bins: the rare high-x pixels, i.e. the halos, keep a fine resolution.)

    Args:
        smoothing_scale: Gaussian sigma in Mpc/h (0: no smoothing).
        box_size: side of the periodic maps in Mpc/h.
        num_bins: number of x bins over the training range.
        min_count: bins with fewer training pixels are ignored (too noisy).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> stars = rng.exponential(1e9, size=(4, 32, 32))
        >>> dm = 1e10 * (1 + periodic_gaussian_smooth(stars, 1.0) / 1e9)
        >>> model = ConditionalMeanBaseline(1.0).fit(stars, dm)
        >>> model.predict(stars).shape
        (4, 32, 32)
        >>> restored = ConditionalMeanBaseline.from_dict(model.to_dict())
    """

    def __init__(self, smoothing_scale=1.0, box_size=DEFAULT_BOX_SIZE, num_bins=40, min_count=10):
        if not np.isfinite(float(smoothing_scale)) or float(smoothing_scale) < 0:
            raise ValueError(f"`smoothing_scale` must be >= 0, got {smoothing_scale}.")
        if int(num_bins) < 1:
            raise ValueError(f"`num_bins` must be >= 1, got {num_bins}.")
        if int(min_count) < 1:
            raise ValueError(f"`min_count` must be >= 1, got {min_count}.")
        self.smoothing_scale = float(smoothing_scale)
        self.box_size = _check_box_size(box_size)
        self.num_bins = int(num_bins)
        self.min_count = int(min_count)
        self.x_means = None
        self.y_means = None
        self.y_stds = None
        self.counts = None

    @property
    def is_fitted(self):
        return self.x_means is not None

    def features(self, stellar_maps):
        """`x = log10(1 + periodic-Gaussian-smoothed Mstar)`, per pixel."""
        stars = _as_maps(stellar_maps, "stellar_maps")
        if np.any(stars < 0):
            raise ValueError("`stellar_maps` must be non-negative.")
        smoothed = periodic_gaussian_smooth(stars, self.smoothing_scale, self.box_size)
        # Clip FFT round-off below zero before the log.
        return np.log10(1.0 + np.clip(smoothed, 0.0, None))

    def fit(self, stellar_maps, dm_maps):
        """Fits the binned relation on pairs of maps.

        Args:
            stellar_maps: `[..., N, N]` stellar surface densities (>= 0).
            dm_maps: dark-matter maps of the same shape (> 0).

        Returns:
            self.

        Raises:
            ValueError: mismatched shapes, NaN, negative stars, non-positive
                dark matter.
        """
        x = self.features(stellar_maps).ravel()
        dm = _as_maps(dm_maps, "dm_maps")
        if dm.shape != np.shape(stellar_maps):
            raise ValueError(
                f"`stellar_maps` {np.shape(stellar_maps)} and `dm_maps` {dm.shape} differ."
            )
        if np.any(dm <= 0):
            raise ValueError("`dm_maps` must be strictly positive (log10 is taken).")
        y = np.log10(dm).ravel()
        lo, hi = x.min(), x.max()
        if hi <= lo:  # every pixel has the same x
            hi = lo + 1.0
        nb = self.num_bins
        idx = np.clip(((x - lo) / (hi - lo) * nb).astype(np.int64), 0, nb - 1)
        counts = np.bincount(idx, minlength=nb)
        keep = counts >= min(self.min_count, x.size)
        safe = np.where(keep, counts, 1)
        x_means = np.bincount(idx, weights=x, minlength=nb) / safe
        y_means = np.bincount(idx, weights=y, minlength=nb) / safe
        y_var = np.bincount(idx, weights=y**2, minlength=nb) / safe - y_means**2
        self.x_means = x_means[keep]
        self.y_means = y_means[keep]
        self.y_stds = np.sqrt(np.clip(y_var[keep], 0.0, None))
        self.counts = counts[keep]
        return self

    def predict_log10(self, stellar_maps):
        """Predicted `E[log10 Mcdm | x]` maps, same shape as the input."""
        if not self.is_fitted:
            raise ValueError("Call `fit` (or `from_dict`) before `predict`.")
        x = self.features(stellar_maps)
        return np.interp(x, self.x_means, self.y_means)

    def predict(self, stellar_maps):
        """Predicted dark-matter maps `10 ** E[log10 Mcdm | x]` (physical units)."""
        return 10.0 ** self.predict_log10(stellar_maps)

    def to_dict(self):
        """JSON-serialisable state (configuration and fitted table)."""
        state = {
            "class_name": type(self).__name__,
            "smoothing_scale": self.smoothing_scale,
            "box_size": self.box_size,
            "num_bins": self.num_bins,
            "min_count": self.min_count,
        }
        if self.is_fitted:
            state.update(
                x_means=self.x_means.tolist(),
                y_means=self.y_means.tolist(),
                y_stds=self.y_stds.tolist(),
                counts=[int(c) for c in self.counts],
            )
        return state

    @classmethod
    def from_dict(cls, state):
        """Rebuilds a baseline from `to_dict` output."""
        model = cls(
            state["smoothing_scale"],
            state["box_size"],
            state["num_bins"],
            state.get("min_count", 10),
        )
        if "x_means" in state:
            model.x_means = np.asarray(state["x_means"], dtype=np.float64)
            model.y_means = np.asarray(state["y_means"], dtype=np.float64)
            model.y_stds = np.asarray(state["y_stds"], dtype=np.float64)
            model.counts = np.asarray(state["counts"], dtype=np.int64)
        return model


def stellar_tracer(stellar_maps, target_mean, smoothing_scale=0.0, box_size=DEFAULT_BOX_SIZE):
    """The stellar-mass map as a dark-matter tracer, rescaled to a given mean.

    P(k) and r(k) of the overdensity do not depend on the map's mean; the
    rescaling only makes the tracer comparable in physical units (PDFs, MSE,
    aperture masses). Stars leave most pixels empty: log statistics of the
    tracer need some smoothing (`smoothing_scale > 0`).

    Args:
        stellar_maps: `[..., N, N]` stellar surface densities (>= 0).
        target_mean: the mean surface density to give each map: a scalar or an
            array broadcastable to the batch shape (e.g. the truth maps' means
            `dm.mean(axis=(-2, -1))`).
        smoothing_scale: optional periodic Gaussian smoothing, Mpc/h.
        box_size: side of the box in Mpc/h.

    Returns:
        float64 maps of the same shape with `mean(axis=(-2, -1)) == target_mean`.

    Raises:
        ValueError: negative stars, a map without stars (zero mean), NaN,
            non-positive `target_mean`.

    Examples:
        >>> stars = np.zeros((8, 8)); stars[2, 3] = 5.0
        >>> float(stellar_tracer(stars, 1e10).mean())
        10000000000.0
    """
    stars = _as_maps(stellar_maps, "stellar_maps")
    if np.any(stars < 0):
        raise ValueError("`stellar_maps` must be non-negative.")
    target = np.asarray(target_mean, dtype=np.float64)
    if not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ValueError("`target_mean` must be finite and strictly positive.")
    smoothed = periodic_gaussian_smooth(stars, smoothing_scale, box_size)
    if smoothing_scale > 0:
        smoothed = np.clip(smoothed, 0.0, None)
    mean = smoothed.mean(axis=(-2, -1), keepdims=True)
    if np.any(mean <= 0):
        raise ValueError("A stellar map has no stars (zero mean): it cannot trace anything.")
    return smoothed / mean * target[..., None, None]
