"""Building blocks of the conditional U-Net.

Every spatial convolution is periodic (CAMELS boxes are periodic), so the
network is translation-equivariant on the torus and a model trained on crops
runs on whole maps of any size its stride divides.
"""

import math

import keras
from keras import layers, ops

PACKAGE = "keras_dmdiff"


def wrap_pad(x, pad):
    """Pads [B, H, W, C] periodically by `pad` pixels on each side of H and W.

    On TensorFlow, with H and W known and at least 2 `pad`, its gradient is
    written out (`_wrap_pad_folded`): the same numbers as differentiating the
    slices, without their full-size gradients (a quarter to a half of the
    padding's time in a training step).

    Example:
        >>> x = ops.reshape(ops.arange(4.0), (1, 2, 2, 1))
        >>> ops.convert_to_numpy(wrap_pad(x, 1))[0, :, :, 0]
        array([[3., 2., 3., 2.],
               [1., 0., 1., 0.],
               [3., 2., 3., 2.],
               [1., 0., 1., 0.]], dtype=float32)
    """
    if pad == 0:
        return x
    sizes = x.shape[1:3]
    if keras.backend.backend() == "tensorflow" and all(n is not None and n >= 2 * pad for n in sizes):
        return _wrap_pad_folded(x, pad)
    return _concatenated_wrap(x, pad)


def _concatenated_wrap(x, pad):
    x = ops.concatenate([x[:, -pad:], x, x[:, :pad]], axis=1)
    return ops.concatenate([x[:, :, -pad:], x, x[:, :, :pad]], axis=2)


def _fold(gradient, pad, axis):
    """The gradient of a periodic pad of `axis` (1 or 2): each pad strip added onto the edge it copies.

    Needs the unpadded size n >= 2 pad, so that the two strips land on separate edges.
    """
    n = gradient.shape[axis] - 2 * pad

    def part(start, stop):
        return gradient[:, start:stop] if axis == 1 else gradient[:, :, start:stop]

    edges = [part(pad, 2 * pad) + part(n + pad, n + 2 * pad), part(2 * pad, n), part(n, n + pad) + part(0, pad)]
    return ops.concatenate(edges, axis=axis)


def _wrap_pad_folded(x, pad):
    @ops.custom_gradient
    def padded(x):
        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            return _fold(_fold(upstream, pad, 2), pad, 1)

        return _concatenated_wrap(x, pad), gradient

    return padded(x)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CircularConv2D(layers.Layer):
    """A convolution with periodic (circular) boundary conditions.

    The map is wrap-padded by (kernel_size - strides) / 2 pixels on each side
    and convolved with 'valid' padding, so a stride-s convolution of an H x W
    map gives H/s x W/s outputs, output i centred on input pixel
    s i + (s - 1) / 2. On JAX, XLA's CPU 'valid' convolution takes a path ~4x
    slower than 'same', so there a stride-1 map is wrap-padded, convolved with
    'same' and cropped: the same numbers (and the same weights, so models move
    between backends).

    Args:
        filters: output channels.
        kernel_size: the square kernel size; kernel_size - strides must be even.
        strides: 1, or the downsampling factor.
        kernel_initializer: initializer of the kernel ("zeros" for output convs).
        use_bias: add a bias.

    Example:
        >>> conv = CircularConv2D(16, 3)
        >>> tuple(conv(keras.random.normal((2, 32, 32, 4))).shape)
        (2, 32, 32, 16)
        >>> tuple(CircularConv2D(16, 4, strides=2)(keras.random.normal((2, 32, 32, 4))).shape)
        (2, 16, 16, 16)
    """

    def __init__(self, filters, kernel_size=3, strides=1, kernel_initializer="glorot_uniform", use_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        if strides < 1 or kernel_size < strides or (kernel_size - strides) % 2:
            raise ValueError(
                f"CircularConv2D needs kernel_size - strides even and >= 0; got kernel_size={kernel_size}, "
                f"strides={strides}."
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.use_bias = use_bias
        self._same_then_crop = keras.backend.backend() == "jax" and strides == 1
        self.conv = layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same" if self._same_then_crop else "valid",
            kernel_initializer=self.kernel_initializer,
            use_bias=use_bias,
            dtype=self.dtype_policy,
            name="conv",
        )

    @property
    def _pad(self):
        return (self.kernel_size - self.strides) // 2

    def build(self, input_shape):
        padded = list(input_shape)
        for axis in (1, 2):
            if padded[axis] is not None:
                padded[axis] += 2 * self._pad
        self.conv.build(tuple(padded))

    def call(self, x):
        pad = self._pad
        x = wrap_pad(x, pad)
        x = self.conv(x)
        if self._same_then_crop and pad:
            x = x[:, pad:-pad, pad:-pad]
        return x

    def compute_output_shape(self, input_shape):
        spatial = [None if n is None else n // self.strides for n in input_shape[1:3]]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            use_bias=self.use_bias,
        )
        return config


def periodic_bilinear_upsample(x):
    """Doubles H and W of [B, H, W, C] by bilinear interpolation on the torus.

    Each input pixel covers a 2x2 block of outputs, centred on it, and each
    output mixes its own pixel (3/4) with its nearest neighbour (1/4) along
    each axis. Computed as a nearest-neighbour repeat followed by the
    periodic [1, 2, 1] / 4 filter, which gives exactly those weights. Every
    output position gets the same (mirrored) filter, so, unlike a stride-2
    transposed convolution, it draws no pattern on the pixel grid.
    """
    for axis in (1, 2):
        x = ops.repeat(x, 2, axis=axis)
        x = 0.5 * x + 0.25 * (ops.roll(x, 1, axis=axis) + ops.roll(x, -1, axis=axis))
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class BilinearUpsample(layers.Layer):
    """A 1x1 convolution to `filters` channels, then periodic bilinear x2 upsampling.

    The learned part runs at the coarse resolution (the 1x1 convolution
    commutes with the interpolation, so this costs a quarter of the same
    projection after it).

    Args:
        filters: output channels.

    Example:
        >>> tuple(BilinearUpsample(8)(keras.random.normal((2, 16, 16, 4))).shape)
        (2, 32, 32, 8)
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.projection = layers.Conv2D(filters, 1, dtype=self.dtype_policy, name="projection")

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, x):
        return periodic_bilinear_upsample(self.projection(x))

    def compute_output_shape(self, input_shape):
        spatial = [None if n is None else 2 * n for n in input_shape[1:3]]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupNorm(layers.Layer):
    """Group normalisation in one pass over the data.

    Sums x and x^2 per channel over the pixels (one sweep, no reshape of the
    activations into groups), combines the sums per group on the small
    [B, C] tensors, and folds the normalisation, scale and shift into one
    per-channel multiply-add. On CPU this is measurably faster than
    `keras.layers.GroupNormalization` and than reshaping to
    groups: on TensorFlow it took the paper network's 256x256 forward pass
    from ~0.45 s to ~0.40 s, and on JAX it avoids a slow gradient of the
    grouped reduction at batch size 1.

    Args:
        groups: number of channel groups; must divide the channel count.
        epsilon: added to the variance.
    """

    def __init__(self, groups=8, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by {self.groups} groups.")
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        shape = ops.shape(x)
        group_size = x.shape[-1] // self.groups
        # The sums in float32 whatever the compute dtype: a mean of squares in
        # bfloat16 loses the variance.
        statistics = x if keras.backend.standardize_dtype(x.dtype) == "float32" else ops.cast(x, "float32")
        count = ops.cast(shape[1] * shape[2] * group_size, "float32")
        sums = ops.reshape(ops.sum(statistics, axis=(1, 2)), (-1, self.groups, group_size))
        square_sums = ops.reshape(ops.sum(ops.square(statistics), axis=(1, 2)), (-1, self.groups, group_size))
        mean = ops.sum(sums, axis=-1) / count  # [B, groups]
        variance = ops.maximum(ops.sum(square_sums, axis=-1) / count - ops.square(mean), 0.0)
        inv_std = ops.repeat(ops.rsqrt(variance + self.epsilon), group_size, axis=1)  # [B, C]
        scale = ops.cast(self.gamma, "float32") * inv_std
        shift = ops.cast(self.beta, "float32") - ops.repeat(mean, group_size, axis=1) * scale
        scale, shift = ops.cast(scale, x.dtype), ops.cast(shift, x.dtype)
        return x * scale[:, None, None, :] + shift[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GammaEmbedding(layers.Layer):
    """Sinusoidal embedding of the normalised log-SNR, then an MLP.

    gamma_t in [0, 1] is multiplied by 1000 (the scale of discrete timesteps that
    sinusoidal embeddings are designed for), embedded in `embedding_dim`
    sinusoids and mapped by Dense(hidden) -> SiLU -> Dense(hidden).

    Args:
        embedding_dim: even size of the sinusoidal embedding (48 in the paper).
        hidden_dim: width of the MLP and of the output (192 in the paper).
    """

    def __init__(self, embedding_dim=48, hidden_dim=192, **kwargs):
        # The sinusoids take float32 gamma (bfloat16 would round 1000 gamma to steps of ~4).
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        if embedding_dim % 2:
            raise ValueError(f"GammaEmbedding needs an even embedding_dim; got {embedding_dim}.")
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.dense_in = layers.Dense(hidden_dim, dtype=self.dtype_policy, name="dense_in")
        self.dense_out = layers.Dense(hidden_dim, dtype=self.dtype_policy, name="dense_out")

    def build(self, input_shape):
        self.dense_in.build((None, self.embedding_dim))
        self.dense_out.build((None, self.hidden_dim))

    def call(self, gamma_normalised):
        t = ops.reshape(ops.cast(gamma_normalised, "float32"), (-1, 1)) * 1000.0
        half = self.embedding_dim // 2
        frequencies = ops.exp(-math.log(10000.0) * ops.arange(half, dtype="float32") / max(half - 1, 1))
        angles = t * ops.reshape(frequencies, (1, half))
        embedding = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        embedding = ops.cast(embedding, self.compute_dtype)
        return self.dense_out(ops.silu(self.dense_in(embedding)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, hidden_dim=self.hidden_dim)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FourierFeatures(layers.Layer):
    """Appends sin(2^n pi x) and cos(2^n pi x) for n in [first, last] (Kingma et al. 2021).

    They let the network resolve the fine detail of a nearly noiseless z_t.

    Args:
        first, last: range of the exponents n (inclusive).
    """

    def __init__(self, first=6, last=8, **kwargs):
        # sin(2^8 pi x) needs float32 x; the features are cast to the compute dtype after.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.first = first
        self.last = last

    def call(self, x):
        x = ops.cast(x, "float32")
        features = [x]
        for n in range(self.first, self.last + 1):
            angle = x * (2.0**n * math.pi)
            features += [ops.sin(angle), ops.cos(angle)]
        return ops.cast(ops.concatenate(features, axis=-1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        multiplier = 1 + 2 * (self.last - self.first + 1)
        return tuple(input_shape[:-1]) + (input_shape[-1] * multiplier,)

    def get_config(self):
        config = super().get_config()
        config.update(first=self.first, last=self.last)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBlock(layers.Layer):
    """GroupNorm -> SiLU -> conv, + gamma embedding bias, GroupNorm -> SiLU -> dropout -> conv, + skip.

    Args:
        filters: output channels.
        groups: GroupNorm groups.
        dropout: dropout rate before the second convolution.

    Call arguments:
        inputs: `[features [B, H, W, C], embedding [B, E]]`.
        training: enables dropout.
    """

    def __init__(self, filters, groups=8, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.groups = groups
        self.dropout_rate = dropout
        policy = self.dtype_policy
        self.norm_in = GroupNorm(groups, dtype=policy, name="norm_in")
        self.conv_in = CircularConv2D(filters, 3, dtype=policy, name="conv_in")
        self.embedding_projection = layers.Dense(filters, dtype=policy, name="embedding_projection")
        self.norm_out = GroupNorm(groups, dtype=policy, name="norm_out")
        self.dropout = layers.Dropout(dropout, dtype=policy)
        # Zero-initialised so that each block starts as the identity.
        self.conv_out = CircularConv2D(filters, 3, kernel_initializer="zeros", dtype=policy, name="conv_out")
        self.skip = None

    def build(self, input_shape):
        feature_shape, embedding_shape = input_shape
        self.norm_in.build(feature_shape)
        self.conv_in.build(feature_shape)
        self.embedding_projection.build(embedding_shape)
        out_shape = tuple(feature_shape[:-1]) + (self.filters,)
        self.norm_out.build(out_shape)
        self.conv_out.build(out_shape)
        if feature_shape[-1] != self.filters:
            self.skip = layers.Conv2D(self.filters, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(feature_shape)

    def call(self, inputs, training=False):
        x, embedding = inputs
        h = self.conv_in(ops.silu(self.norm_in(x)))
        h = h + self.embedding_projection(embedding)[:, None, None, :]
        h = self.dropout(ops.silu(self.norm_out(h)), training=training)
        h = self.conv_out(h)
        skip = x if self.skip is None else self.skip(x)
        return skip + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, groups=self.groups, dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SelfAttention(layers.Layer):
    """Single-head self-attention over all pixels, with a residual connection.

    Global attention is periodic-equivariant, so it keeps the network's
    symmetry; it is used only at the coarsest level where maps are small.

    Args:
        groups: GroupNorm groups.
    """

    def __init__(self, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.norm = GroupNorm(groups, dtype=self.dtype_policy, name="norm")

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm.build(input_shape)
        self.qkv = layers.Dense(3 * channels, dtype=self.dtype_policy, name="qkv")
        self.qkv.build(input_shape)
        self.projection = layers.Dense(channels, kernel_initializer="zeros", dtype=self.dtype_policy, name="projection")
        self.projection.build(input_shape)

    def call(self, x):
        shape = ops.shape(x)
        channels = x.shape[-1]
        tokens = ops.reshape(self.norm(x), (shape[0], -1, channels))
        query, key, value = ops.split(self.qkv(tokens), 3, axis=-1)
        scores = ops.einsum("bqc,bkc->bqk", query, key) / math.sqrt(channels)
        attended = ops.einsum("bqk,bkc->bqc", ops.softmax(scores, axis=-1), value)
        return x + ops.reshape(self.projection(attended), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups)
        return config
