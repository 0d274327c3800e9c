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


# --------------------------------------------------------------- objectives
def test_v_prediction_of_an_untrained_network_predicts_alpha_z():
    """conv_out starts at zero, so v_hat = 0: eps_hat = sigma z, y_hat = alpha z (the unit-variance optimum)."""
    model = tiny_model(prediction="v")
    model.build()
    z = keras.random.normal((3, 16, 16, 1), seed=0)
    condition = keras.random.normal((3, 16, 16, 1), seed=1)
    gamma_normalised = np.array([0.1, 0.5, 0.9], "float32")
    eps_hat = keras.ops.convert_to_numpy(model.predict_noise(z, condition, gamma_normalised))
    gamma = -13.3 + gamma_normalised * 26.6
    sigma = np.sqrt(1 / (1 + np.exp(-gamma)))[:, None, None, None]
    np.testing.assert_allclose(eps_hat, sigma * keras.ops.convert_to_numpy(z), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prediction": "v"},
        {"loss_weighting": "sigmoid"},
        {"loss_weighting": "sigmoid", "importance_sampling": True},
        {"loss_weighting": "min_snr", "importance_sampling": True, "prediction": "v", "multiscale_weight": 1.0},
    ],
)
def test_every_objective_trains_reports_the_elbo_and_round_trips(kwargs, tmp_path):
    stars, dm, _ = toy_data(n=32)
    model = tiny_model(**kwargs)
    model.adapt(stars, dm)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, global_clipnorm=1.0))
    history = model.fit(stars, dm, batch_size=16, epochs=3, verbose=0).history
    for name in ("loss", "elbo_bpd", "diffusion_bpd", "weighted_diffusion_bpd"):
        assert np.all(np.isfinite(history[name])), name
    if kwargs.get("loss_weighting", "elbo") != "elbo" and not kwargs.get("multiscale_weight"):
        # The weights are below 1, so the weighted term is smaller than the ELBO's.
        assert history["weighted_diffusion_bpd"][-1] < history["diffusion_bpd"][-1]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for key, value in kwargs.items():
        assert loaded.get_config()[key] == value
    np.testing.assert_array_equal(
        model.sample(stars[:1], num_samples=2, num_steps=4, seed=2),
        loaded.sample(stars[:1], num_samples=2, num_steps=4, seed=2),
    )


def test_elbo_weighting_reports_the_elbo_as_its_loss():
    stars, dm, _ = toy_data(n=16)
    model = tiny_model()
    model.adapt(stars, dm)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    results = model.evaluate(stars, dm, batch_size=16, verbose=0, return_dict=True)
    assert results["loss"] == pytest.approx(results["elbo_bpd"], rel=1e-5)
    assert results["weighted_diffusion_bpd"] == pytest.approx(results["diffusion_bpd"], rel=1e-5)


def test_the_multiscale_loss_changes_what_is_optimised_not_the_elbo():
    stars, dm, _ = toy_data(n=16)
    results = []
    for weight in (0.0, 2.0):
        model = tiny_model(multiscale_weight=weight)
        model.adapt(stars, dm)
        model.build()
        if weight:
            model.set_weights(plain_weights)
        plain_weights = model.get_weights()
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        results.append(model.evaluate(stars, dm, batch_size=16, verbose=0, return_dict=True))
    plain, multiscale = results
    assert multiscale["elbo_bpd"] == pytest.approx(plain["elbo_bpd"], rel=1e-5)
    assert multiscale["diffusion_bpd"] == pytest.approx(plain["diffusion_bpd"], rel=1e-5)
    # Every level adds a positive term: the optimised loss is above the ELBO's.
    assert multiscale["weighted_diffusion_bpd"] > 1.05 * plain["weighted_diffusion_bpd"]


def test_importance_sampled_times_follow_the_weighting():
    model = tiny_model(loss_weighting="sigmoid", antithetic_time_sampling=False, importance_sampling=True)
    model.build()
    t, total = model._sample_times(20_000)
    gamma = -13.3 + 26.6 * keras.ops.convert_to_numpy(t)
    # Density of gamma proportional to sigmoid(gamma + 2): its CDF is a softplus ratio.
    softplus = lambda g: np.logaddexp(0.0, g + 2.0)  # noqa: E731
    assert float(total) == pytest.approx(softplus(13.3) - softplus(-13.3), rel=1e-5)
    for point in (-6.0, -2.0, 0.0, 4.0):
        expected = (softplus(point) - softplus(-13.3)) / (softplus(13.3) - softplus(-13.3))
        assert np.mean(gamma <= point) == pytest.approx(expected, abs=0.015)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prediction": "x"}, "Unknown prediction"),
        ({"loss_weighting": "snr"}, "Unknown loss weighting"),
        ({"importance_sampling": True, "schedule": "learned_monotone"}, "linear schedule"),
        ({"mean_network": "not a model"}, "RegressionUNet"),
        ({"multiscale_weight": -1.0}, "multiscale_weight"),
    ],
)
def test_bad_objectives_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**kwargs)


# ------------------------------------------------------------- residual mode
def _mean_network(stars, dm, transform=None):
    from keras_dmdiff.models import RegressionUNet

    mean = RegressionUNet(network=network_from_preset("tiny"), transform=transform)
    if transform is None:
        mean.adapt(stars, dm)
    mean.compile(optimizer=keras.optimizers.Adam(3e-3))
    mean.fit(stars, dm, batch_size=16, epochs=2, verbose=0)
    return mean


def test_residual_samples_are_the_plain_samples_plus_the_mean(tmp_path):
    stars, dm, _ = toy_data(n=32)
    plain = tiny_model()
    plain.adapt(stars, dm)
    mean = _mean_network(stars, dm, transform=plain.transform.get_config())
    residual = tiny_model(mean_network=mean, transform=plain.transform.get_config())
    residual.build()
    plain.build()
    residual.network.set_weights(plain.network.get_weights())
    residual.schedule.set_weights(plain.schedule.get_weights())
    samples = np.log10(residual.sample(stars[:2], num_samples=2, num_steps=5, seed=4))
    base = np.log10(plain.sample(stars[:2], num_samples=2, num_steps=5, seed=4))
    mu = np.log10(mean.predict_maps(stars[:2]))  # physical mean: mean + std * mu_normalised
    offset = mu - plain.transform.get_config()["dark_matter_mean"]
    np.testing.assert_allclose(samples - base, np.broadcast_to(offset[:, None], samples.shape), atol=2e-4)
    # It trains, saves and reloads as one model with the frozen mean inside.
    residual.compile(optimizer=keras.optimizers.AdamW(3e-3))
    before = [w.copy() for w in mean.get_weights()]
    residual.fit(stars, dm, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(before, mean.get_weights()):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "residual.keras"
    residual.save(path)
    loaded = keras.saving.load_model(path)
    # Reloaded, the mean network is still frozen: the optimiser sees the diffusion's variables only.
    expected = {id(v) for v in loaded.network.trainable_variables + loaded.schedule.trainable_variables}
    assert {id(v) for v in loaded.trainable_variables} == expected
    assert not any(v.trainable for v in loaded.mean_network.variables)
    np.testing.assert_array_equal(
        residual.sample(stars[:1], num_samples=1, num_steps=3, seed=1),
        loaded.sample(stars[:1], num_samples=1, num_steps=3, seed=1),
    )


def test_a_mean_network_with_another_normalisation_is_refused():
    stars, dm, _ = toy_data(n=16)
    mean = _mean_network(stars, dm)
    with pytest.raises(ValueError, match="normalisation differs"):
        tiny_model(mean_network=mean)  # the default (published TNG) normalisation
