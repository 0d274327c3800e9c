"""The headline numbers every report of the package quotes, defined once.

Evaluation (`metrics.json`, the model card), the bench's sampler-quality rows,
the cross-suite table, the large-volume test and the science monitor all call
these, so "P-ratio error" and "r of the posterior mean" mean one thing:

- `power_ratio_error`: the mean over the k bins with 0 < k < 10 h/Mpc of
  |R(k) - 1|, R(k) the mean over maps and samples of P_sample(k) / P_truth(k);
- `band_cross_correlation`: the mean over the k bins with 1 < k < 5 h/Mpc of
  r(k) averaged over maps (the posterior mean's, or single samples').

Bins whose value is undefined (NaN: r(k) of a flat map) are left out.
"""

import numpy as np

POWER_RATIO_K_MAX = 10.0  # h/Mpc
CROSS_CORRELATION_K_RANGE = (1.0, 5.0)  # h/Mpc


def band_mean(k, values, k_min, k_max):
    """Mean of `values` over the finite bins with k_min < k < k_max (NaN if there is none).

    Args:
        k: bin centres [K] in h/Mpc.
        values: one value per bin [K].
        k_min, k_max: the open band.

    Example:
        >>> band_mean(np.array([0.5, 2.0, 4.0, 8.0]), np.array([9.0, 1.0, np.nan, 3.0]), 1.0, 10.0)
        2.0
    """
    k, values = np.asarray(k, np.float64), np.asarray(values, np.float64)
    mask = (k > k_min) & (k < k_max) & np.isfinite(values)
    return float(np.mean(values[mask])) if np.any(mask) else float("nan")


def power_ratio_error(k, mean_power_ratio, k_max=POWER_RATIO_K_MAX):
    """Mean |R(k) - 1| over 0 < k < k_max, R the mean power ratio per bin.

    Example:
        >>> power_ratio_error(np.array([1.0, 5.0, 20.0]), np.array([0.9, 1.3, 0.0]))
        0.2
    """
    return band_mean(k, np.abs(np.asarray(mean_power_ratio, np.float64) - 1.0), 0.0, k_max)


def band_cross_correlation(k, mean_r, k_range=CROSS_CORRELATION_K_RANGE):
    """Mean r(k) over k_range[0] < k < k_range[1], r already averaged over maps.

    Example:
        >>> band_cross_correlation(np.array([0.5, 2.0, 4.0, 8.0]), np.array([1.0, 0.8, 0.6, 0.1]))
        0.7
    """
    return band_mean(k, mean_r, *k_range)
