"""FLOP counting and the machine's matmul peak: the roofline every speed figure is set against.

FLOP convention (`count_flops`): 2 FLOPs per multiply-add of every
convolution (periodic, strided, transposed; the useful H x W outputs only,
not the padding a backend may compute), dense layer and the two attention
matmuls (`Q K^T` and `A V`: 4 B N^2 C for N pixels of C channels). Biases,
normalisations, activations, softmax and the sampler's arithmetic are left out
(they are a few percent of the count, though not of the time). With this
convention the paper's network costs 68.0 GFLOP per 256x256 forward pass.
"""

import math
import statistics
import time

import numpy as np

# A training step does ~3x the forward FLOPs (forward, and the backward pass
# through activations and weights): the usual estimate, used for train GFLOP/s.
TRAIN_FLOPS_PER_FORWARD = 3.0


def median_time(function, repeats, warmup=1):
    """Median wall time of `function()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(max(int(repeats), 1)):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)




def matmul_peak(size=2048, repeats=5):
    """The float32 matmul throughput of this machine (numpy, its BLAS, all cores).

    Args:
        size: n of the n x n by n x n product (2 n^3 FLOPs).
        repeats: timed products; the median is reported.

    Returns:
        dict: "gflops" (median GFLOP/s), "seconds" (median time), "size", "repeats".

    Example:
        >>> matmul_peak(size=256, repeats=2)["gflops"] > 0
        True
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    seconds = median_time(lambda: a @ b, repeats, warmup=1)
    return {"gflops": 2.0 * size**3 / seconds / 1e9, "seconds": seconds, "size": int(size), "repeats": int(repeats)}


def count_flops(layer, inputs, **call_kwargs):
    """Counts the multiply-add FLOPs of one call of a Keras layer, from shapes only.

    The layer is traced symbolically (no arithmetic is done, so the paper's
    network at 2048^2 costs nothing) while every convolution and dense layer
    records its input and output shapes. Counted (2 FLOPs per multiply-add):

    - `Conv2D`, `CircularConv2D`: 2 * prod(output[:-1]) * kh * kw * C_in * C_out
      (a circular convolution counts its H x W outputs, not the padded ones
      that the JAX path computes and crops);
    - `Conv2DTranspose`: 2 * prod(input[:-1]) * kh * kw * C_in * C_out;
    - `Dense`: 2 * prod(input[:-1]) * C_in * C_out;
    - `SelfAttention`: its dense layers as above, plus 4 * B * N^2 * C for the
      two matmuls of N = H * W tokens.

    Biases, normalisations, activations and softmax are not counted.

    Args:
        layer: a built or unbuilt Keras layer or model.
        inputs: the call's input shapes: a shape tuple, or a list of them
            (e.g. `[(1, 256, 256, 1), (1, 256, 256, 1), (1,)]` for a
            `ConditionalUNet`).
        **call_kwargs: passed to `layer.call` (e.g. `training=False`).

    Returns:
        dict: "total" (int FLOPs) and "by_type" (FLOPs per layer class).

    Example:
        >>> import keras
        >>> conv = keras.layers.Conv2D(8, 3, padding="same")
        >>> count_flops(conv, (1, 16, 16, 4))["total"] == 2 * 16 * 16 * 9 * 4 * 8
        True
    """
    import keras
    from keras.src.backend import compute_output_spec

    from keras_dmdiff.models.layers import CircularConv2D, SelfAttention

    leaf_types = (CircularConv2D, keras.layers.Conv2DTranspose, keras.layers.Conv2D, keras.layers.Dense)
    by_type = {}
    active = [0]  # depth inside a counted layer: its inner layers are not counted again

    def add(kind, flops):
        by_type[kind] = by_type.get(kind, 0) + int(flops)

    def wrap(sub):
        original = sub.call

        if isinstance(sub, SelfAttention):

            def call(x, *args, **kwargs):
                out = original(x, *args, **kwargs)
                if not active[0]:
                    batch, height, width, channels = x.shape
                    tokens = height * width
                    add("SelfAttention (QK^T, AV)", 4 * batch * tokens * tokens * channels)
                return out

        else:

            def call(x, *args, **kwargs):
                active[0] += 1
                try:
                    out = original(x, *args, **kwargs)
                finally:
                    active[0] -= 1
                if not active[0]:
                    add(type(sub).__name__, _leaf_flops(sub, x, out))
                return out

        sub.call = call
        return sub

    def to_tensor(shape):
        return keras.KerasTensor(tuple(shape))

    single = isinstance(inputs, tuple) and all(isinstance(d, (int, type(None))) for d in inputs)
    symbolic = to_tensor(inputs) if single else [to_tensor(shape) for shape in inputs]
    if not layer.built:
        layer.build(inputs if single else [tuple(shape) for shape in inputs])
    layers = [sub for sub in layer._flatten_layers(include_self=True, recursive=True)]
    patched = [wrap(sub) for sub in layers if isinstance(sub, leaf_types + (SelfAttention,))]
    try:
        compute_output_spec(layer.call, symbolic, **call_kwargs)
    finally:
        for sub in patched:
            del sub.call  # back to the class's method
    return {"total": int(sum(by_type.values())), "by_type": by_type}


def _leaf_flops(sub, x, out):
    """FLOPs of one convolution or dense layer, from its input and output shapes."""
    import keras

    from keras_dmdiff.models.layers import CircularConv2D

    if isinstance(sub, keras.layers.Conv2DTranspose):
        kh, kw, c_out, c_in = sub.kernel.shape
        return 2 * math.prod(x.shape[:-1]) * kh * kw * c_in * c_out
    if isinstance(sub, CircularConv2D):
        kh, kw, c_in, c_out = sub.conv.kernel.shape
        return 2 * math.prod(out.shape[:-1]) * kh * kw * c_in * c_out
    if isinstance(sub, keras.layers.Conv2D):
        kh, kw, c_in, c_out = sub.kernel.shape
        return 2 * math.prod(out.shape[:-1]) * kh * kw * c_in * c_out
    c_in, c_out = sub.kernel.shape
    return 2 * math.prod(x.shape[:-1]) * c_in * c_out


def network_flops(network, height, width=None, batch_size=1):
    """FLOPs of one forward pass of a `ConditionalUNet` (see `count_flops`).

    Args:
        network: a `ConditionalUNet`.
        height, width: map size (width defaults to height).
        batch_size: maps per call.

    Returns:
        int FLOPs (about 68.0e9 for the paper's network at 256x256, batch 1).

    Example:
        >>> network_flops(network_from_preset("tiny"), 32)   # doctest: +SKIP
    """
    width = height if width is None else width
    shape = (batch_size, height, width, 1)
    return count_flops(network, [shape, shape, (batch_size,)], training=False)["total"]

