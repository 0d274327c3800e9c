"""A squared error that also weighs the coarse scales of the error field.

The diffusion loss sums the squared error over pixels, so each Fourier mode of
the error counts once: the mean of a 128x128 crop (the total mass in it) is
1 of 16384 modes, and a network trained on it learns the mass of a map last.
The multiscale error (the multiscale training loss of Hoogeboom et al. 2023,
"simple diffusion") adds, for each 2x2 average pooling of the error down to
one value per map,

    weight * (pooled area) * sum over pooled pixels of (pooled error)^2,

which is about the error's energy in the modes coarser than that pooling, so a
mode gains `weight` once per level it lives in: the map mean
`1 + weight * log2(H)` times, the pixel scale nothing. Each mode's weight is
positive, so the minimiser (the posterior mean of the noise, mode by mode) is
the same as the plain loss's: only where training puts its effort changes.
"""

from keras import ops


def multiscale_squared_error(error, weight):
    """Per-example squared error with its coarse scales weighted up.

    Args:
        error: [B, H, W, C] error field with static H and W.
        weight: extra weight per pooling level (0: the plain sum of squares).

    Returns:
        [B] tensor.

    Example:
        >>> import numpy as np
        >>> ones = np.ones((1, 8, 8, 1), "float32")   # the map mean only
        >>> float(multiscale_squared_error(ones, 0.5)[0])   # 64 * (1 + 0.5 * 3 levels)
        160.0
        >>> chequer = np.indices((8, 8)).sum(0)[None, :, :, None] % 2 * 2.0 - 1.0   # the finest mode only
        >>> float(multiscale_squared_error(chequer.astype("float32"), 0.5)[0])
        64.0
    """
    total = ops.sum(ops.square(error), axis=(1, 2, 3))
    if not weight:
        return total
    height, width, channels = error.shape[1], error.shape[2], error.shape[3]
    if height is None or width is None:
        raise ValueError("The multiscale loss needs maps of a static height and width (fixed-size crops).")
    coarse, area = error, 1
    while height % 2 == 0 and width % 2 == 0:
        height, width, area = height // 2, width // 2, area * 4
        coarse = ops.mean(ops.reshape(coarse, (-1, height, 2, width, 2, channels)), axis=(2, 4))
        total = total + weight * area * ops.sum(ops.square(coarse), axis=(1, 2, 3))
    if height * width > 1:
        # Sides with an odd factor left: the last level is the map mean.
        mean = ops.mean(coarse, axis=(1, 2))
        total = total + weight * area * height * width * ops.sum(ops.square(mean), axis=1)
    return total
