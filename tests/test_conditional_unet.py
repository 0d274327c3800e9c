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


@pytest.mark.parametrize("resampling", ["strided", "bilinear"])
def test_periodic_shift_equivariance(resampling):
    # Shifts by multiples of the stride commute with the whole periodic network.
    unet = network_from_preset("tiny", attention_levels=[1], resampling=resampling)
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
    unet = network_from_preset("tiny", fourier_features=[6, 7], attention_levels=[0], resampling="bilinear")
    again = ConditionalUNet.from_config(unet.get_config())
    assert again.get_config() == unet.get_config()
    assert again.resampling == "bilinear"
    z, c, g = inputs(16)
    assert again([z, c, g]).shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="divisible by groups"):
        ConditionalUNet(widths=(12, 16), groups=8)
    with pytest.raises(ValueError, match="Unknown resampling"):
        ConditionalUNet(widths=(8, 16), resampling="nearest")


def randomise(network, seed=1):
    """Non-zero output weights, so that the network's output is not just its z_t skip."""
    rng = np.random.default_rng(seed)
    for layer in network._flatten_layers():
        if getattr(layer, "name", "") in ("conv_out", "projection"):
            for weight in layer.weights:
                weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1)


def test_mixed_precision_reaches_every_sub_layer_and_keeps_float32_variables(tmp_path):
    from keras_dmdiff.models import VariationalDiffusion

    mixed = network_from_preset("tiny", attention_levels=[1], fourier_features=[6, 7], dtype="mixed_bfloat16")
    mixed.build(None)
    randomise(mixed)
    assert mixed.weights and all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    computing = [layer for layer in mixed._flatten_layers(include_self=False) if layer.weights]
    assert len(computing) > 10
    assert {layer.compute_dtype for layer in computing} == {"bfloat16"}, [
        (layer.name, layer.compute_dtype) for layer in computing if layer.compute_dtype != "bfloat16"
    ]
    z, c, g = inputs(32)
    out = ops.convert_to_numpy(mixed([z, c, g]))
    assert out.dtype == np.float32
    # The same weights in float32 give the same map to bfloat16 precision (a few %
    # of what the network adds to its skip, in RMS).
    plain = network_from_preset("tiny", attention_levels=[1], fourier_features=[6, 7])
    plain.build(None)
    plain.set_weights(mixed.get_weights())
    reference = ops.convert_to_numpy(plain([z, c, g]))
    assert np.abs(out - z).std() > 0.05  # the network does something beyond its skip
    error = np.sqrt(np.mean((out - reference) ** 2))
    assert 0 < error < 0.05 * (reference - z).std(), (error, (reference - z).std())

    # A diffusion model around it keeps its own computations in float32, and
    # saves and reloads to the same outputs, policy included.
    stars, dm = np.full((2, 32, 32), 1e9, np.float32), np.full((2, 32, 32), 1e11, np.float32)
    model = VariationalDiffusion(network=mixed, seed=0)
    assert model.dtype_policy.name == "float32" and model.schedule.dtype_policy.name == "float32"
    model.compile(optimizer="adam")
    model.fit(stars, dm, batch_size=2, epochs=1, verbose=0)
    gamma = np.full((2,), 0.5, np.float32)
    before = ops.convert_to_numpy(model.predict_noise(z, c, gamma))
    model.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras")
    assert loaded.network.dtype_policy.name == "mixed_bfloat16"
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.predict_noise(z, c, gamma)), before)
