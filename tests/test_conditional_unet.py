import keras
import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models import ConditionalUNet, network_from_preset


def inputs(size, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, size, size, 1)).astype("float32")
    c = rng.normal(size=(batch, size, size, 1)).astype("float32")
    return z, c, np.linspace(0.1, 0.9, batch).astype("float32")


def test_default_is_the_paper_network():
    unet = ConditionalUNet()
    unet.build(None)
    # The reference network: about 32.7 M parameters, widths 48-96-192-384, bottleneck 768.
    assert unet.count_params() == 32_662_417
    assert unet.stride == 16 and unet.bottleneck_width == 768


def test_fully_convolutional_on_several_sizes():
    unet = network_from_preset("tiny")
    for size in (16, 32, 48):
        z, c, g = inputs(size)
        assert unet([z, c, g]).shape == (2, size, size, 1)


def test_periodic_shift_equivariance():
    # Shifts by multiples of the stride commute with the whole periodic network.
    unet = network_from_preset("tiny", attention_levels=[1])
    unet.build(None)
    for layer in unet._flatten_layers():
        if getattr(layer, "name", "") in ("conv_out", "projection"):
            for weight in layer.weights:
                weight.assign(np.random.default_rng(1).normal(size=weight.shape).astype("float32") * 0.1)
    z, c, g = inputs(32)
    out = ops.convert_to_numpy(unet([z, c, g]))
    shifted = ops.convert_to_numpy(unet([np.roll(z, (8, -4), (1, 2)), np.roll(c, (8, -4), (1, 2)), g]))
    np.testing.assert_allclose(shifted, np.roll(out, (8, -4), (1, 2)), atol=1e-4)
    assert np.abs(out - z).max() > 1e-3  # the check is not vacuous


def test_output_starts_as_z_t_skip():
    unet = network_from_preset("tiny")
    z, c, g = inputs(16)
    np.testing.assert_allclose(ops.convert_to_numpy(unet([z, c, g])), z, atol=1e-6)


def test_config_round_trip_and_bad_widths():
    unet = network_from_preset("tiny", fourier_features=[6, 7], attention_levels=[0])
    again = ConditionalUNet.from_config(unet.get_config())
    assert again.get_config() == unet.get_config()
    z, c, g = inputs(16)
    assert again([z, c, g]).shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="divisible by groups"):
        ConditionalUNet(widths=(12, 16), groups=8)
