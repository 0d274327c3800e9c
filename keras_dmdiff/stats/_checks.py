"""Input checks shared by the statistics modules (pure numpy)."""

import numpy as np


def as_maps(maps, name="maps", min_ndim=2):
    """Returns `maps` as a float64 array after checking shape and finiteness.

    Args:
        maps: array-like `[..., H, W]`.
        name: name used in error messages.
        min_ndim: minimum number of dimensions.

    Returns:
        A float64 `np.ndarray`.

    Raises:
        ValueError: if the array has fewer than `min_ndim` dimensions, an empty
            axis, or any NaN / infinite value.
    """
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimensions ([..., H, W]), "
            f"got shape {arr.shape}."
        )
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return arr


def check_box_size(box_size):
    """Returns `box_size` as a positive float; raises ValueError otherwise."""
    try:
        value = float(box_size)
    except (TypeError, ValueError):
        raise ValueError(f"`box_size` must be a positive number, got {box_size!r}.")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`box_size` must be a positive number, got {box_size!r}.")
    return value


def check_square(arr, name="maps"):
    """Raises ValueError unless the last two axes of `arr` are equal."""
    h, w = arr.shape[-2:]
    if h != w:
        raise ValueError(
            f"`{name}` must be square maps [..., N, N] (a periodic square box), "
            f"got [..., {h}, {w}]."
        )
    return h


def check_same_map_shape(a, b, names=("a", "b")):
    """Raises ValueError unless the last two axes of `a` and `b` agree."""
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same map shape, got "
            f"{a.shape[-2:]} and {b.shape[-2:]}."
        )
