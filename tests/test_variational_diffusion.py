import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dmdiff.models import VariationalDiffusion, network_from_preset


def toy_data(n=128, size=16, seed=0):
    """A posterior known exactly: log10 dm = 11 + 0.5 [star in pixel] + N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    has_star = rng.random((n, size, size)) < 0.2
    stars = (has_star * 1e9).astype("float32")
    dm = (10 ** (11 + 0.5 * has_star + 0.1 * rng.normal(size=(n, size, size)))).astype("float32")
    return stars, dm, has_star


def tiny_model(**kwargs):
    return VariationalDiffusion(network=network_from_preset("tiny"), seed=1, **kwargs)


@pytest.fixture(scope="module")
def trained():
    stars, dm, has_star = toy_data()
    model = tiny_model()
    model.adapt(stars, dm)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, global_clipnorm=1.0))
    history = model.fit(stars, dm, batch_size=32, epochs=40, verbose=0)
    return model, history, (stars, dm, has_star)


def test_tiny_model_learns_the_conditional_posterior(trained):
    model, history, (stars, _, has_star) = trained
    loss = history.history["loss"]
    assert np.mean(loss[-5:]) < 0.5 * loss[0]
    for term in ("diffusion_bpd", "latent_bpd", "reconstruction_bpd"):
        assert term in history.history
    samples = np.log10(model.sample(stars[:8], num_samples=8, num_steps=100, seed=3))
    star = np.broadcast_to(has_star[:8, None], samples.shape)
    star_mean, empty_mean = samples[star].mean(), samples[~star].mean()
    spread = samples.std(axis=1).mean()
    print(f"star pixels {star_mean:.3f} (11.5), empty {empty_mean:.3f} (11.0), spread {spread:.3f} (0.1)")
    assert abs(star_mean - 11.5) < 0.1
    assert abs(empty_mean - 11.0) < 0.05
    assert 0.06 < spread < 0.16


def test_sampling_is_seeded_and_round_trips_through_keras_file(trained, tmp_path):
    model, _, (stars, _, _) = trained
    first = model.sample(stars[:2], num_samples=2, num_steps=10, seed=7)
    assert first.shape == (2, 2, 16, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first, model.sample(stars[:2], num_samples=2, num_steps=10, seed=7))
    other = model.sample(stars[:2], num_samples=2, num_steps=10, seed=8)
    assert not np.allclose(first, other)
    assert not np.allclose(first[:, 0], first[:, 1])  # samples of one map differ
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.transform.get_config() == model.transform.get_config()
    np.testing.assert_array_equal(first, loaded.sample(stars[:2], num_samples=2, num_steps=10, seed=7))
    # A single [H, W] map and the DDIM sampler.
    single = loaded.sample(stars[0], num_samples=1, num_steps=5, seed=1, sampler="ddim")
    assert single.shape == (1, 1, 16, 16) and np.all(single > 0)


def test_fit_on_tf_data_and_evaluate():
    stars, dm, _ = toy_data(n=16)
    dataset = tf.data.Dataset.from_tensor_slices((stars, dm)).batch(8)
    model = tiny_model(schedule="learned_monotone")
    model.adapt(dataset.as_numpy_iterator(), None)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True))
    model.fit(dataset, epochs=1, verbose=0, callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    assert np.isfinite(results["loss"]) and "diffusion_bpd" in results


def test_config_round_trip():
    model = tiny_model(schedule="fixed_linear", gamma_min=-10.0, gamma_max=9.0, reconstruction_sigma=2e-3)
    again = VariationalDiffusion.from_config(model.get_config())
    config = again.get_config()
    assert config["schedule"]["class_name"] == "FixedLinearSchedule"
    assert config["reconstruction_sigma"] == 2e-3 and config["network"] == model.get_config()["network"]


@pytest.mark.parametrize(
    "maps, kwargs, message",
    [
        (np.full((2, 16, 16), np.nan), {}, "NaN"),
        (np.full((2, 16, 16), -1e9), {}, "negative"),
        (np.full((2, 16, 16), 3.0), {}, "log10-scaled"),
        (np.full((2, 18, 16), 1e9), {}, "multiples of the network stride 4"),
        (np.full((2, 1, 16, 16), 1e9), {}, "shape"),
        (np.full((16, 16), 1e9), {"sampler": "euler"}, "Unknown sampler"),
        (np.full((16, 16), 1e9), {"num_samples": 0}, ">= 1"),
        (np.full((16, 16), 1e9), {"seed": 1.5}, "seed must be an int"),
    ],
)
def test_sample_rejects_bad_input(maps, kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.sample(maps, num_steps=2, **kwargs)


def test_a_diverging_sampler_raises_instead_of_returning_inf():
    model = tiny_model()
    model.build()
    # An absurd output layer (a broken or untrained network) sends the samples out of float range.
    kernel = model.network.conv_out.conv.kernel
    kernel.assign(np.random.default_rng(3).normal(size=kernel.shape).astype("float32") * 200.0)
    with pytest.raises(FloatingPointError, match="'ddim' sampler diverged with 4 steps"):
        model.sample(np.full((2, 16, 16), 1e9, "float32"), num_samples=2, num_steps=4, sampler="ddim")
    with pytest.raises(ValueError, match="multiple of num_steps"):
        model.sample(np.full((16, 16), 1e9, "float32"), num_steps=4, noise_steps=10)


def test_random_shifts_give_reproducible_samples_of_the_same_maps():
    model = tiny_model()
    model.build()
    kernel = model.network.conv_out.conv.kernel
    kernel.assign(np.random.default_rng(3).normal(size=kernel.shape).astype("float32") * 0.05)
    stars = np.where(np.random.default_rng(0).random((2, 16, 16)) < 0.2, 1e9, 0.0).astype("float32")
    shifted = model.sample(stars, num_samples=2, num_steps=6, seed=3, random_shifts=True)
    np.testing.assert_array_equal(shifted, model.sample(stars, num_samples=2, num_steps=6, seed=3, random_shifts=True))
    plain = model.sample(stars, num_samples=2, num_steps=6, seed=3)  # not shifted by default
    np.testing.assert_array_equal(plain, model.sample(stars, num_samples=2, num_steps=6, seed=3, random_shifts=False))
    assert shifted.shape == plain.shape and np.all(shifted > 0)
    assert not np.allclose(shifted, plain)  # the network is not shift-equivariant below its stride


def test_predict_points_to_sample():
    stars, dm, _ = toy_data(n=4)
    model = tiny_model()
    with pytest.raises(NotImplementedError, match="model.sample"):
        model.predict(stars, verbose=0)


def test_tiled_sampling_matches_whole_map_sampling():
    # With a margin covering the receptive field and no attention, tiles change nothing.
    model = VariationalDiffusion(
        network=network_from_preset("tiny", bottleneck_attention=False), seed=1
    )
    model.build()
    for weight in model.network.weights:
        if "conv_out" in weight.path or "projection" in weight.path:
            weight.assign(np.random.default_rng(0).normal(size=weight.shape).astype("float32") * 0.05)
    stars, _, _ = toy_data(n=1, size=64)
    whole = model.sample(stars, num_samples=2, num_steps=3, seed=5)
    tiled = model.sample(stars, num_samples=2, num_steps=3, seed=5, tile_size=32, tile_margin=16, tile_batch=2)
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(np.log10(tiled), np.log10(whole), atol=2e-4)
    with pytest.raises(ValueError, match="tile_size"):
        model.sample(stars, num_steps=1, tile_size=24)
    with pytest.raises(ValueError, match="must divide"):
        model.sample(stars, num_steps=1, tile_size=48, tile_margin=8)
