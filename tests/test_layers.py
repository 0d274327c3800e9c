import keras
import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models.layers import (
    BilinearUpsample,
    CircularConv2D,
    FourierFeatures,
    GammaEmbedding,
    GroupNorm,
    ResidualBlock,
    SelfAttention,
    periodic_bilinear_upsample,
    wrap_pad,
)


def random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_circular_conv_matches_periodic_convolution():
    x = random((1, 8, 8, 1))
    conv = CircularConv2D(1, 3, use_bias=False)
    conv.build(x.shape)
    kernel = random((3, 3, 1, 1), seed=1)
    conv.conv.kernel.assign(kernel)
    out = ops.convert_to_numpy(conv(x))[0, :, :, 0]
    expected = np.zeros((8, 8))
    for dy in range(3):
        for dx in range(3):
            # Cross-correlation: out[i, j] = sum k[dy, dx] x[i + dy - 1, j + dx - 1] (wrapped).
            expected += kernel[dy, dx, 0, 0] * np.roll(x[0, :, :, 0], (1 - dy, 1 - dx), axis=(0, 1))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def _gradient(function, x):
    """d sum(function(x)) / dx on the backend in use."""
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: function(v).sum())(x))
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(function(x))
    return tape.gradient(total, x).numpy()


@pytest.mark.parametrize("size, pad", [((5, 7), 1), ((4, 6), 2), ((2, 3), 1), ((1, 3), 1)])
def test_wrap_pad_and_its_gradient_are_the_periodic_pad_and_its_adjoint(size, pad):
    x = random((2, *size, 3))
    expected = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="wrap")
    np.testing.assert_array_equal(ops.convert_to_numpy(wrap_pad(x, pad)), expected)
    # The adjoint of the pad: every padded pixel's weight lands on the pixel it copies.
    weights = random(expected.shape, seed=1)
    rows = (np.arange(size[0] + 2 * pad) - pad) % size[0]
    columns = (np.arange(size[1] + 2 * pad) - pad) % size[1]
    adjoint = np.zeros_like(x)
    np.add.at(adjoint, (slice(None), rows[:, None], columns[None, :]), weights)
    gradient = _gradient(lambda v: wrap_pad(v, pad) * weights, x)
    np.testing.assert_allclose(gradient, adjoint, rtol=1e-6, atol=1e-6)


def test_circular_conv_is_shift_equivariant():
    x = random((2, 16, 16, 3))
    conv = CircularConv2D(4, 5)
    shifted = ops.convert_to_numpy(conv(np.roll(x, (3, -5), axis=(1, 2))))
    np.testing.assert_allclose(shifted, np.roll(ops.convert_to_numpy(conv(x)), (3, -5), axis=(1, 2)), atol=1e-5)


def test_circular_conv_rejects_kernels_that_cannot_centre():
    with pytest.raises(ValueError, match="even"):
        CircularConv2D(4, 2)
    with pytest.raises(ValueError, match="even"):
        CircularConv2D(4, 3, strides=2)


def test_strided_circular_conv_matches_periodic_convolution_and_shifts_by_two():
    x = random((1, 8, 8, 1))
    conv = CircularConv2D(1, 4, strides=2, use_bias=False)
    conv.build(x.shape)
    kernel = random((4, 4, 1, 1), seed=1)
    conv.conv.kernel.assign(kernel)
    out = ops.convert_to_numpy(conv(x))[0, :, :, 0]
    assert out.shape == (4, 4)
    # Output i sums the wrapped input rows 2i - 1 .. 2i + 2: centred on 2i + 1/2.
    expected = np.zeros((8, 8))
    for dy in range(4):
        for dx in range(4):
            expected += kernel[dy, dx, 0, 0] * np.roll(x[0, :, :, 0], (1 - dy, 1 - dx), axis=(0, 1))
    np.testing.assert_allclose(out, expected[::2, ::2], atol=1e-5)
    shifted = ops.convert_to_numpy(conv(np.roll(x, (2, -4), axis=(1, 2))))[0, :, :, 0]
    np.testing.assert_allclose(shifted, np.roll(out, (1, -2), axis=(0, 1)), atol=1e-5)


def test_periodic_bilinear_upsample_weights():
    x = random((2, 4, 6, 3))
    out = ops.convert_to_numpy(periodic_bilinear_upsample(x))
    assert out.shape == (2, 8, 12, 3)
    expected = x
    for axis in (1, 2):
        # Output 2i sits a quarter pixel before input i, output 2i + 1 a quarter pixel after.
        before = 0.75 * expected + 0.25 * np.roll(expected, 1, axis=axis)
        after = 0.75 * expected + 0.25 * np.roll(expected, -1, axis=axis)
        expected = np.stack([before, after], axis=axis + 1)
        shape = list(before.shape)
        shape[axis] *= 2
        expected = expected.reshape(shape)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-5)  # mass is kept

    layer = BilinearUpsample(5)
    y = ops.convert_to_numpy(layer(x))
    assert y.shape == (2, 8, 12, 5)
    # The 1x1 convolution commutes with the interpolation.
    projected = x @ ops.convert_to_numpy(layer.projection.kernel) + ops.convert_to_numpy(layer.projection.bias)
    np.testing.assert_allclose(y, ops.convert_to_numpy(periodic_bilinear_upsample(projected)), atol=1e-4)


def test_group_norm_matches_keras_group_normalization():
    x = random((2, 8, 8, 16)) * 3 + 1
    ours = GroupNorm(4)
    reference = keras.layers.GroupNormalization(groups=4, epsilon=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(reference(x)), atol=2e-4
    )
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(3)(x)


def test_attention_and_fourier_shapes_and_equivariance():
    x = random((1, 8, 8, 16))
    attention = SelfAttention(groups=4)
    attention.build(x.shape)
    attention.projection.kernel.assign(random((16, 16), seed=2))
    out = ops.convert_to_numpy(attention(x))
    rolled = ops.convert_to_numpy(attention(np.roll(x, 2, axis=1)))
    np.testing.assert_allclose(rolled, np.roll(out, 2, axis=1), atol=1e-4)
    assert FourierFeatures(6, 8)(x[..., :1]).shape == (1, 8, 8, 7)


def test_gamma_embedding_and_residual_block():
    embedding = GammaEmbedding(16, 32)(np.linspace(0, 1, 3).astype("float32"))
    assert embedding.shape == (3, 32)
    block = ResidualBlock(8, groups=4, dropout=0.0)
    out = block([random((3, 8, 8, 4)), embedding])
    assert out.shape == (3, 8, 8, 8)


@pytest.mark.parametrize(
    "layer",
    [
        CircularConv2D(4, 3, kernel_initializer="zeros"),
        CircularConv2D(4, 4, strides=2),
        BilinearUpsample(6),
        GroupNorm(4, epsilon=1e-3),
        GammaEmbedding(16, 32),
        FourierFeatures(5, 7),
        ResidualBlock(8, groups=4, dropout=0.2),
        SelfAttention(groups=2),
    ],
)
def test_layer_configs_round_trip(layer):
    config = layer.get_config()
    again = layer.__class__.from_config(config)
    assert again.get_config() == config


def test_the_docstring_examples_run():
    import doctest

    from keras_dmdiff.models import layers

    assert doctest.testmod(layers, extraglobs={"keras": keras, "ops": ops}).failed == 0
