"""Calibration of posterior samples against the truth (pure numpy).

Everything here takes `samples` with the posterior draws on one axis
(`sample_axis`, default 0: `[num_samples, ...]`) and `truth` with the shape of
one draw (`[...]`). Any feature works: pixel values, P(k) per k bin, aperture
masses. Rank-based statistics are invariant under monotone transforms, so
pixel coverage is the same for Sigma and for log10 Sigma.

* `rank_statistic`: the simulation-based-calibration rank (Talts et al. 2018):
  the number of draws below the truth, in `0..S`. Calibrated => uniform.
* `interval_coverage`: the fraction of truths inside the central credible
  interval of level `l`, from the empirical posterior CDF (see its docstring).
  Calibrated => coverage = l. Over-dispersed (too wide) => coverage > l;
  under-dispersed (overconfident) => coverage < l.
* `tarp_coverage`: the expected-coverage curve of TARP (Lemos et al. 2023,
  "Sampling-based accuracy testing of posterior estimators for general
  inference"), a joint test in many dimensions with random reference points.
* `error_to_spread`: the error of the draws' mean over their spread, 1 for a
  calibrated posterior; readable from a few features (e.g. one per map).
* `calibration_verdict`: one summary with documented thresholds.
"""

import numpy as np

from keras_dmdiff.stats.maps import aperture_masses
from keras_dmdiff.stats.power_spectrum import power_spectrum

DEFAULT_LEVELS = (0.5, 0.68, 0.9, 0.95)

# Verdict thresholds (see `calibration_verdict`).
COVERAGE_TOLERANCE = 0.05
BIAS_TOLERANCE = 0.05


def _samples_truth(samples, truth, sample_axis):
    # No float64 copy: samples of many maps are large, comparisons need none.
    s = np.asarray(samples)
    t = np.asarray(truth)
    if not (np.issubdtype(s.dtype, np.number) and np.issubdtype(t.dtype, np.number)):
        raise ValueError("`samples` and `truth` must be numeric arrays.")
    if s.ndim < 1:
        raise ValueError("`samples` must have a sample axis.")
    s = np.moveaxis(s, sample_axis, 0)
    if s.shape[0] < 2:
        raise ValueError(f"Need at least 2 samples, got {s.shape[0]}.")
    if s.shape[1:] != t.shape:
        raise ValueError(
            f"`truth` must have the shape of one sample {s.shape[1:]}, got {t.shape}."
        )
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise ValueError("`samples` and `truth` must be finite (no NaN / inf).")
    return s, t


def _counts_below_and_tied(s, t):
    """Per feature: how many draws are below and equal to the truth."""
    below = np.zeros(t.shape, dtype=np.int64)
    tied = np.zeros(t.shape, dtype=np.int64)
    for draw in s:  # a loop over draws keeps memory at one map
        below += draw < t
        tied += draw == t
    return below, tied


def rank_statistic(samples, truth, sample_axis=0, seed=0):
    """Rank of the truth among the posterior draws (SBC rank), per feature.

    Args:
        samples: `[S, ...]` draws (sample axis at `sample_axis`).
        truth: `[...]`, the shape of one draw.
        sample_axis: axis of the draws in `samples`.
        seed: ties (draws exactly equal to the truth, e.g. in discrete
            features) are broken uniformly at random with this seed, so ranks
            stay uniform for a calibrated sampler.

    Returns:
        int array of `truth`'s shape, values in `0..S`. For a calibrated
        posterior each rank is uniform on `{0, ..., S}`.

    Raises:
        ValueError: shape mismatch, fewer than 2 draws, NaN.

    Examples:
        >>> rank_statistic(np.array([[0.0], [1.0], [2.0]]), np.array([1.5]))
        array([2])
    """
    s, t = _samples_truth(samples, truth, sample_axis)
    below, tied = _counts_below_and_tied(s, t)
    if np.any(tied):
        rng = np.random.default_rng(seed)
        # Uniform position of the truth among the tied draws: 0..tied.
        below = below + np.floor(rng.random(tied.shape) * (tied + 1)).astype(np.int64)
    return below


def normalized_rank(samples, truth, sample_axis=0):
    """Mid-rank of the truth mapped to (0, 1): `(below + tied/2 + 1/2) / (S + 1)`.

    Deterministic; for a calibrated sampler its mean is 1/2 and it is uniform
    on the grid `{(j + 1/2) / (S + 1)}`: the empirical posterior CDF at the
    truth (probability integral transform).

    Returns:
        float array of `truth`'s shape in (0, 1).
    """
    s, t = _samples_truth(samples, truth, sample_axis)
    below, tied = _counts_below_and_tied(s, t)
    return (below + 0.5 * tied + 0.5) / (s.shape[0] + 1)


def _check_levels(levels):
    lv = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    if lv.ndim != 1 or np.any(lv <= 0) or np.any(lv >= 1):
        raise ValueError(f"Credibility levels must lie in (0, 1), got {levels}.")
    return lv


def _pit_bounds(s, t):
    """The interval `[lo, hi]` over which the randomised PIT of the truth is uniform.

    With `below` draws under the truth and `tied` equal to it, the truth's
    position among the S + 1 exchangeable values is uniform on
    `below .. below + tied`, so its randomised PIT is uniform on
    `[below, below + tied + 1] / (S + 1)`; for a calibrated sampler the
    resulting PIT is exactly U(0, 1), whatever S.
    """
    below, tied = _counts_below_and_tied(s, t)
    n = s.shape[0] + 1.0
    return below / n, (below + tied + 1.0) / n


def _expected_coverage(lo, hi, levels):
    """Fraction of truths inside central intervals, averaged over the PIT randomisation.

    Instead of drawing the randomised PIT, each feature contributes the exact
    probability that it falls in `[1/2 - l/2, 1/2 + l/2]`: the overlap of its
    `[lo, hi]` with that interval divided by `hi - lo`. Deterministic, and
    free of the `1/(S+1)` discreteness of a plain rank test.
    """
    lo = np.ravel(lo)
    hi = np.ravel(hi)
    out = np.empty(len(levels))
    for i, level in enumerate(levels):  # one level at a time: features can be many
        a, b = 0.5 - level / 2, 0.5 + level / 2
        overlap = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)
        out[i] = np.mean(overlap / (hi - lo))
    return out


def interval_coverage(samples, truth, levels=DEFAULT_LEVELS, sample_axis=0):
    """Coverage of central credible intervals, pooled over all features.

    The central interval of level `l` is `[q_{(1-l)/2}, q_{(1+l)/2}]` of the
    empirical posterior of each feature (e.g. each pixel): the truth is inside
    when its probability integral transform `u` (its posterior CDF value)
    satisfies `|u - 1/2| <= l/2`. `u` is the randomised PIT from the truth's
    rank among the S draws, averaged analytically over the randomisation, so
    a calibrated sampler has expected coverage exactly `l` for any number of
    draws (interpolated sample quantiles with few draws would give
    intervals too narrow, a plain rank test intervals too wide).

    Args:
        samples: `[S, ...]` draws; truth: `[...]`.
        levels: credibility levels in (0, 1), default (0.5, 0.68, 0.9, 0.95).
        sample_axis: axis of the draws in `samples`.

    Returns:
        dict with `"levels"` `[L]` and `"coverage"` `[L]` (fractions in [0, 1]).
        Features correlate (neighbouring pixels), so the scatter of the
        coverage is larger than the binomial one for independent features.
    """
    s, t = _samples_truth(samples, truth, sample_axis)
    lv = _check_levels(levels)
    lo, hi = _pit_bounds(s, t)
    return {"levels": lv, "coverage": _expected_coverage(lo, hi, lv)}


def coverage_curve(samples, truth, num_levels=19, sample_axis=0):
    """`interval_coverage` on an evenly spaced grid of levels, for plots.

    Returns:
        dict `{"levels", "coverage"}` with `num_levels` levels in (0, 1).
    """
    levels = np.linspace(0, 1, num_levels + 2)[1:-1]
    return interval_coverage(samples, truth, levels, sample_axis)


def rank_histogram(ranks, num_samples, num_bins=None, feature_axis=None):
    """Histogram of SBC ranks in `0..num_samples`.

    Args:
        ranks: integer ranks from `rank_statistic`.
        num_samples: S, the number of draws behind each rank.
        num_bins: number of equal-width bins over the S + 1 possible ranks;
            default `min(S + 1, 20)`. Bins hold as equal a number of rank
            values as possible (exact when `(S + 1) % num_bins == 0`).
        feature_axis: if given, one histogram per index of that axis (e.g.
            per k bin), pooling all other axes; otherwise one histogram.

    Returns:
        `(counts, expected)`: `counts` `[num_bins]` or `[F, num_bins]`, and the
        expected count per bin for uniform ranks (same shape).

    Raises:
        ValueError: ranks outside `0..num_samples`.
    """
    r = np.asarray(ranks)
    s = int(num_samples)
    if np.any(r < 0) or np.any(r > s):
        raise ValueError(f"Ranks must lie in 0..{s}.")
    nb = min(s + 1, 20) if num_bins is None else int(num_bins)
    if not 1 <= nb <= s + 1:
        raise ValueError(f"`num_bins` must be in 1..{s + 1}, got {num_bins}.")
    # Rank value v goes to bin floor(v * nb / (S + 1)).
    per_bin = np.bincount((np.arange(s + 1) * nb) // (s + 1), minlength=nb)
    if feature_axis is None:
        flat = r.ravel()[None, :]
    else:
        flat = np.moveaxis(r, feature_axis, 0).reshape(r.shape[feature_axis], -1)
    bins = (flat.astype(np.int64) * nb) // (s + 1)
    counts = np.stack([np.bincount(b, minlength=nb) for b in bins])
    expected = np.broadcast_to(flat.shape[1] * per_bin / (s + 1), counts.shape).copy()
    if feature_axis is None:
        return counts[0], expected[0]
    return counts, expected


def rank_uniformity_pvalue(counts, expected):
    """Chi-square p-value of a rank histogram against uniform ranks.

    Valid for independent features only (pixels of one map are correlated:
    treat their p-value as indicative). Requires scipy.

    Returns:
        float p-value, or array of them for a `[F, num_bins]` histogram.
    """
    from scipy import stats as _scipy_stats

    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    chi2 = np.sum((c - e) ** 2 / e, axis=-1)
    return _scipy_stats.chi2.sf(chi2, df=c.shape[-1] - 1)


def pixel_ranks(samples, truth, sample_axis=0, max_pixels=None, seed=0):
    """SBC ranks of pixel values, optionally on a random subset of pixels.

    Args:
        samples: `[S, ..., H, W]`; truth: `[..., H, W]`.
        max_pixels: if given, at most this many pixels (over all maps) are
            ranked, drawn without replacement with `seed`.

    Returns:
        int ranks, flat `[num_pixels]` (or `truth`'s shape without subsetting).
    """
    s = np.moveaxis(np.asarray(samples), sample_axis, 0)
    t = np.asarray(truth)
    if max_pixels is not None and t.size > max_pixels:
        pick = np.random.default_rng(seed).choice(t.size, size=int(max_pixels), replace=False)
        s = s.reshape(s.shape[0], -1)[:, pick]
        t = t.reshape(-1)[pick]
    return rank_statistic(s, t, 0, seed)


def power_spectrum_ranks(samples, truth, sample_axis=0, **pk_kwargs):
    """SBC ranks of P(k) in each k bin.

    Args:
        samples: `[S, ..., N, N]` maps; truth: `[..., N, N]`.
        **pk_kwargs: passed to `power_spectrum` (box_size, bins, ...).

    Returns:
        `(k, ranks)`, `ranks` `[..., num_bins]` in `0..S`; histogram them per k
        bin with `rank_histogram(ranks, S, feature_axis=-1)`.
    """
    s = np.moveaxis(np.asarray(samples), sample_axis, 0)
    k, pk_s, _ = power_spectrum(s, **pk_kwargs)
    _, pk_t, _ = power_spectrum(truth, **pk_kwargs)
    return k, rank_statistic(pk_s, pk_t, 0)


def aperture_mass_ranks(samples, truth, centres, radius, box_size=25.0, sample_axis=0):
    """SBC ranks of aperture masses around `centres` (see `aperture_masses`).

    Returns:
        int ranks `[..., num_centres]` in `0..S`.
    """
    s = np.moveaxis(np.asarray(samples), sample_axis, 0)
    ms = aperture_masses(s, centres, radius, box_size)
    mt = aperture_masses(truth, centres, radius, box_size)
    return rank_statistic(ms, mt, 0)


def tarp_coverage(
    samples,
    truth,
    num_levels=51,
    num_references=1,
    normalize=True,
    seed=0,
):
    """Expected-coverage curve of TARP (Lemos et al. 2023).

    For each of the `n` independent problems (e.g. conditioning maps), draw a
    random reference point `theta_r` (uniform in the box spanned by the
    normalised truths), and compute the fraction of draws closer to `theta_r`
    than the truth is, `f = (closer + 1/2) / (S + 1)` (mid-rank form). For a
    calibrated posterior `f` is uniform, so the expected coverage
    `ECP(a) = P(f < a)` equals `a`. Because the reference is random, the test
    is sensitive to joint (multi-dimensional) miscalibration, not only
    marginal. With `num_references > 1` each problem is scored against
    several references and the curve averaged.

    Args:
        samples: `[S, n, D]` draws for `n` problems in `D` dimensions (reduce
            maps to features first: P(k) bins, aperture masses, a few pixels).
        truth: `[n, D]`.
        num_levels: number of credibility levels in [0, 1] for the curve.
        num_references: reference points per problem.
        normalize: standardise each dimension by the mean / std of the truths
            (as in the paper), so no dimension dominates the distance.
        seed: seed of the reference points.

    Returns:
        dict with `"levels"` `[num_levels]` (alpha), `"coverage"` (ECP at each
        alpha), `"f"` `[num_references, n]` and `"max_error"`
        (`max |ECP - alpha|`, a KS-like distance; ~`1/sqrt(n)` from noise).

    Raises:
        ValueError: shapes other than `[S, n, D]` / `[n, D]`, NaN, n < 2.
    """
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if s.ndim == 2:
        s = s[..., None]
    if t.ndim == 1:
        t = t[..., None]
    if s.ndim != 3 or t.shape != s.shape[1:]:
        raise ValueError(
            f"TARP needs samples [S, n, D] and truth [n, D], got {s.shape} and {t.shape}."
        )
    if t.shape[0] < 2:
        raise ValueError("TARP needs at least 2 independent problems (n >= 2).")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise ValueError("`samples` and `truth` must be finite.")
    if normalize:
        mu = t.mean(axis=0)
        sd = t.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        s = (s - mu) / sd
        t = (t - mu) / sd
    rng = np.random.default_rng(seed)
    lo, hi = t.min(axis=0), t.max(axis=0)
    f = np.empty((int(num_references), t.shape[0]))
    for j in range(f.shape[0]):
        ref = rng.uniform(lo, hi, size=t.shape)
        d_samples = np.sqrt(((s - ref) ** 2).sum(axis=-1))  # [S, n]
        d_truth = np.sqrt(((t - ref) ** 2).sum(axis=-1))  # [n]
        # Mid-rank form of the paper's fraction: uniform on a grid for a
        # calibrated posterior, so ECP(0) = 0 and ECP(1) = 1 exactly.
        f[j] = (np.sum(d_samples < d_truth, axis=0) + 0.5) / (s.shape[0] + 1)
    levels = np.linspace(0.0, 1.0, int(num_levels))
    ecp = np.mean(f.ravel()[None, :] < levels[:, None], axis=1)
    return {
        "levels": levels,
        "coverage": ecp,
        "f": f,
        "max_error": float(np.max(np.abs(ecp - levels))),
    }


def calibration_verdict(
    samples,
    truth,
    levels=DEFAULT_LEVELS,
    sample_axis=0,
    coverage_tolerance=COVERAGE_TOLERANCE,
    bias_tolerance=BIAS_TOLERANCE,
):
    """One-line judgement of a posterior's calibration, with its numbers.

    From the rank of the truth among the draws, pooled over all features, it
    computes the central-interval coverage at `levels` (`interval_coverage`),
    the mid-rank `u` (`normalized_rank`) and:

    * `coverage_error = max_l |coverage(l) - l|`;
    * `signed_coverage_error = mean_l (coverage(l) - l)` (> 0: intervals too
      wide, < 0: too narrow);
    * `rank_bias = mean(u) - 1/2` (> 0: the truth tends to lie above the
      draws, i.e. samples are low).

    Verdict (thresholds are arguments, defaults `COVERAGE_TOLERANCE = 0.05`,
    `BIAS_TOLERANCE = 0.05`):

    1. `"calibrated"` if `coverage_error <= coverage_tolerance` and
       `|rank_bias| <= bias_tolerance`;
    2. else `"biased"` if `|rank_bias| > bias_tolerance` (a shifted posterior
       also under-covers; the shift is the thing to fix);
    3. else `"over-dispersed"` if `signed_coverage_error > 0` (too wide,
       under-confident), otherwise `"under-dispersed"` (too narrow,
       over-confident).

    The expected coverage of a calibrated sampler is exact for any number of
    draws S; with few draws a miscalibrated one is flagged less strongly
    (its empirical CDF is noisy). The scatter comes from the finite number of
    (correlated) features: use many pixels or maps before trusting a 0.05
    tolerance.

    Args:
        samples: `[S, ...]` draws; truth: `[...]`.
        levels: credibility levels.
        sample_axis: axis of the draws in `samples`.
        coverage_tolerance: allowed `coverage_error`.
        bias_tolerance: allowed `|rank_bias|`.

    Returns:
        dict: `"verdict"`, `"coverage_error"`, `"signed_coverage_error"`,
        `"rank_bias"`, `"levels"` (list), `"coverage"` (list), `"num_samples"`,
        `"num_features"`, and the thresholds used; JSON-serialisable.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> mu = rng.normal(size=20000)
        >>> truth = mu + rng.normal(size=20000)
        >>> samples = mu + rng.normal(size=(50, 20000))
        >>> calibration_verdict(samples, truth)["verdict"]
        'calibrated'
    """
    s, t = _samples_truth(samples, truth, sample_axis)
    lv = _check_levels(levels)
    lo, hi = _pit_bounds(s, t)
    u = 0.5 * (lo + hi)  # the mid-rank, `normalized_rank`
    cov = _expected_coverage(lo, hi, lv)
    err = cov - lv
    coverage_error = float(np.max(np.abs(err)))
    signed = float(np.mean(err))
    bias = float(np.mean(u) - 0.5)
    if coverage_error <= coverage_tolerance and abs(bias) <= bias_tolerance:
        verdict = "calibrated"
    elif abs(bias) > bias_tolerance:
        verdict = "biased"
    elif signed > 0:
        verdict = "over-dispersed"
    else:
        verdict = "under-dispersed"
    return {
        "verdict": verdict,
        "coverage_error": coverage_error,
        "signed_coverage_error": signed,
        "rank_bias": bias,
        "levels": lv.tolist(),
        "coverage": cov.tolist(),
        "num_samples": int(s.shape[0]),
        "num_features": int(np.size(u)),
        "coverage_tolerance": float(coverage_tolerance),
        "bias_tolerance": float(bias_tolerance),
    }


def error_to_spread(samples, truth, sample_axis=0):
    """The rms error of the draws' mean over the rms spread of the draws, 1 if calibrated.

    For a calibrated posterior the truth is one more draw, so
    E[(mean - truth)^2] = sigma^2 (1 + 1/S) and the draws' variance (ddof 1)
    estimates sigma^2: the ratio sqrt(mean (mean - truth)^2 / (mean var (1 + 1/S)))
    is 1, above 1 for over-confident draws and below 1 for too wide ones. Unlike
    ranks, it says by how much, and it is readable from a few features.

    Args:
        samples: `[S, ...]` draws (S >= 2); truth: `[...]`.
        sample_axis: axis of the draws in `samples`.

    Returns:
        float.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> mu = rng.normal(size=20000)
        >>> truth = mu + rng.normal(size=20000)
        >>> round(error_to_spread(mu + rng.normal(size=(16, 20000)), truth), 1)
        1.0
        >>> round(error_to_spread(mu + rng.normal(size=(16, 20000)) / 3, truth), 1)   # 3x too narrow
        2.9
    """
    s, t = _samples_truth(samples, truth, sample_axis)
    error = np.mean((s.mean(axis=0) - t) ** 2)
    spread = np.mean(s.var(axis=0, ddof=1)) * (1 + 1 / s.shape[0])
    return float(np.sqrt(error / spread))


def predicted_mean_correlation(single_sample_r, num_samples):
    """r(k) of the mean of N samples that a calibrated posterior implies.

    For samples drawn from the true posterior, one sample's cross-correlation
    with the truth is rho(k) = P_mean(k) / P_truth(k) (P_mean: the power of the
    infinite-sample posterior mean), and the mean of N samples has
    r_N^2 = rho^2 / (rho + (1 - rho) / N). Negative rho (noise) counts as 0.

    Args:
        single_sample_r: r(k) of single samples with the truth (any shape).
        num_samples: N, the samples in the mean.

    Returns:
        r_N(k) of the same shape.

    Example:
        >>> float(predicted_mean_correlation(np.array(0.5), 1))
        0.5
    """
    rho = np.clip(np.asarray(single_sample_r, dtype=np.float64), 0.0, 1.0)
    n = float(num_samples)
    denominator = rho + (1.0 - rho) / n
    return np.divide(rho, np.sqrt(denominator), out=np.zeros_like(rho), where=denominator > 0)


def fourier_calibration(k, single_sample_r, mean_r, num_samples, k_max=10.0, tolerance=0.05):
    """The Fourier-space calibration check: measured against predicted r(k) of the mean of N.

    Args:
        k: [K] bin centres (h/Mpc).
        single_sample_r: [K] mean r(k) of single samples with the truth.
        mean_r: [K] mean r(k) of the N-sample posterior mean with the truth.
        num_samples: N.
        k_max: bins below this wavenumber enter `max_difference`.
        tolerance: largest |measured - predicted| of a calibrated posterior.

    Returns:
        dict: "predicted" [K], "difference" [K] (measured - predicted),
        "max_difference" (largest |difference| for k < k_max), "k_max",
        "tolerance", "verdict" ("calibrated", "over-dispersed" when the mean
        correlates better than predicted, else "under-dispersed").
    """
    k = np.asarray(k, dtype=np.float64)
    predicted = predicted_mean_correlation(single_sample_r, num_samples)
    difference = np.asarray(mean_r, dtype=np.float64) - predicted
    low = (k < k_max) & np.isfinite(difference)
    worst = float(np.max(np.abs(difference[low]))) if low.any() else float("nan")
    signed = float(difference[low][np.argmax(np.abs(difference[low]))]) if low.any() else 0.0
    if worst <= tolerance:
        verdict = "calibrated"
    else:
        # Samples too far apart make their mean smoother, hence better correlated than predicted.
        verdict = "over-dispersed" if signed > 0 else "under-dispersed"
    return {
        "predicted": predicted,
        "difference": difference,
        "max_difference": worst,
        "k_max": float(k_max),
        "tolerance": float(tolerance),
        "verdict": verdict,
    }
