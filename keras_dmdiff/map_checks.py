"""Checks of physical surface-density maps, before anything enters a model.

`validate_maps` names the problem with a map batch (rank, size against the
network stride, NaN, negative mass, values that look already log10-scaled)
and returns it as float32 [B, H, W]. It is the one definition of that policy:
the models, `dmdiff reconstruct`, evaluation and the exported SavedModel's
numpy wrapper all call it (the SavedModel's own graph repeats it as
TensorFlow asserts, with `LOG_SCALED_MAX` from here).

This module imports numpy only, so `export.py` can use it where neither keras
nor the package is installed.
"""

import numpy as np

# Physical surface densities in CMD are ~1e9-1e14 (Msun/h)/(Mpc/h)^2 wherever
# there is mass. A non-empty map whose largest value is below this bound is
# almost surely already log10-scaled (log10 values stay below ~16).
LOG_SCALED_MAX = 100.0


def _as_float_array(maps, name):
    try:
        array = np.asarray(maps, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a numeric array; got {type(maps).__name__}.") from error
    return array


def validate_maps(maps, name, *, strictly_positive=False, stride=1, allow_rank2=True):
    """Checks a batch of physical surface-density maps and returns it as [B, H, W] float32.

    Args:
        maps: array-like [H, W] or [B, H, W] in (Msun/h)/(Mpc/h)^2.
        name: what the maps are, used in error messages ("stellar_mass").
        strictly_positive: require every pixel > 0 (dark matter), else >= 0.
        stride: H and W must be multiples of it (the network's total downsampling).
        allow_rank2: accept a single [H, W] map and add a batch axis.

    Returns:
        float32 numpy array [B, H, W].

    Raises:
        ValueError: naming the problem: rank, NaN/inf, negative values, size not
            a multiple of `stride`, or values that look already log10-scaled.

    Example:
        >>> validate_maps(np.full((64, 64), 1e10), "dark_matter").shape
        (1, 64, 64)
    """
    array = _as_float_array(maps, name)
    if array.ndim == 2 and allow_rank2:
        array = array[None]
    if array.ndim != 3:
        expected = "[H, W] or [B, H, W]" if allow_rank2 else "[B, H, W]"
        raise ValueError(f"`{name}` must have shape {expected}; got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {array.shape}).")
    height, width = array.shape[1:]
    if height % stride or width % stride or height == 0 or width == 0:
        raise ValueError(
            f"`{name}` maps are {height}x{width}; H and W must be positive multiples of "
            f"the network stride {stride} (e.g. {max(stride, 1) * max(1, round(height / stride))})."
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values.")
    minimum = float(array.min())
    if strictly_positive and minimum <= 0:
        raise ValueError(
            f"`{name}` must be strictly positive (a physical surface density); "
            f"its minimum is {minimum:g}."
        )
    if minimum < 0:
        raise ValueError(
            f"`{name}` has negative mass (minimum {minimum:g}); expected a physical "
            "surface density in (Msun/h)/(Mpc/h)^2, >= 0."
        )
    maximum = float(array.max())
    if 0 < maximum < LOG_SCALED_MAX:
        raise ValueError(
            f"`{name}` looks already log10-scaled or normalised (largest value {maximum:g}); "
            "pass physical surface densities in (Msun/h)/(Mpc/h)^2, which reach 1e9 and more."
        )
    return array.astype(np.float32)
