import keras
import numpy as np
import pytest

from keras_dmdiff.models import network_from_preset
from keras_dmdiff.models.regression_unet import RegressionUNet
from keras_dmdiff.transforms import MapTransform
from keras_dmdiff_datasets.camels_cmd.fake_cmd import fake_maps


@pytest.fixture(scope="module")
def maps():
    return fake_maps(8, map_size=32, seed=3)


def make_model(stars, dm):
    keras.utils.set_random_seed(0)
    model = RegressionUNet(network=network_from_preset("tiny"))
    model.adapt(stars, dm)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


@pytest.fixture(scope="module")
def trained(maps):
    stars, dm = maps
    model = make_model(stars, dm)
    history = model.fit(stars, dm, batch_size=4, epochs=25, verbose=0)
    return model, history.history["loss"]


def test_regression_unet_learns_and_predicts_physical_maps(maps, trained):
    stars, dm = maps
    model, losses = trained
    assert np.all(np.isfinite(losses))
    # Starts near the variance of the normalised target (1), then learns.
    assert losses[0] > 0.5
    assert losses[-1] < 0.7 * losses[0]
    predicted = model.predict_maps(stars)
    assert predicted.shape == dm.shape and predicted.dtype == np.float32
    assert np.all(predicted > 0)
    # Physical units: log10 of the prediction sits near the dark matter's.
    assert abs(np.log10(predicted).mean() - np.log10(dm).mean()) < 0.3
    mse = np.mean((np.log10(predicted) - np.log10(dm)) ** 2)
    assert mse < np.var(np.log10(dm))


def test_regression_unet_round_trips_through_keras_file(maps, trained, tmp_path):
    stars, dm = maps
    model, _ = trained
    path = tmp_path / "regression.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, RegressionUNet)
    assert restored.transform.get_config() == pytest.approx(model.transform.get_config())
    np.testing.assert_allclose(restored.predict_maps(stars[:2]), model.predict_maps(stars[:2]), rtol=1e-5)
    config = model.get_config()
    clone = RegressionUNet.from_config(config)
    assert isinstance(clone.transform, MapTransform)
    assert clone.network.widths == model.network.widths


def test_regression_unet_rejects_bad_input(maps):
    stars, dm = maps
    model = RegressionUNet(network=network_from_preset("tiny"))
    with pytest.raises(ValueError, match="multiples"):
        model.predict_maps(np.full((30, 30), 1e9, np.float32))
    with pytest.raises(ValueError, match="log10"):
        model.predict_maps(np.log10(1 + stars))
    with pytest.raises(ValueError, match="dark-matter"):
        model.compute_loss(x=stars, y=None)


def deviance_model(objective):
    transform = MapTransform(dark_matter_mean=10.0, dark_matter_std=0.5)
    return RegressionUNet(network=network_from_preset("tiny"), transform=transform, objective=objective)


def test_poisson_deviance_has_its_exact_value():
    model = deviance_model("poisson")
    dark_matter = np.array([1e10, 1e11, 1e9, 3e10], np.float32).reshape(1, 2, 2)
    predicted = np.full((1, 2, 2, 1), 4e10, np.float32)
    normalised = (np.log10(predicted) - 10.0) / 0.5
    loss = float(model.compute_loss(x=None, y=dark_matter, y_pred=normalised))
    truth, mean = dark_matter.ravel() / 1e10, 4.0
    expected = np.mean(2 * (truth * np.log(truth / mean) - truth + mean))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    exact = (np.log10(dark_matter[..., None]) - 10.0) / 0.5
    assert abs(float(model.compute_loss(x=None, y=dark_matter, y_pred=exact))) < 1e-5


@pytest.mark.parametrize("objective", ["log_mse", "poisson"])
def test_each_objective_is_minimised_by_its_mean(objective):
    # Two truths for one prediction: the Poisson deviance is least at their arithmetic mean,
    # the log-space MSE at their geometric mean.
    model = deviance_model(objective)
    dark_matter = np.array([1e10, 9e10], np.float32).reshape(2, 1, 1)
    candidates = np.linspace(2e10, 6e10, 401)
    losses = [
        float(model.compute_loss(x=None, y=dark_matter, y_pred=np.full((2, 1, 1, 1), (np.log10(c) - 10.0) / 0.5)))
        for c in candidates
    ]
    best = candidates[int(np.argmin(losses))]
    expected = 5e10 if objective == "poisson" else 3e10
    assert abs(best - expected) <= candidates[1] - candidates[0]


def test_the_objective_round_trips_and_a_wrong_one_is_named(tmp_path):
    model = deviance_model("poisson")
    assert RegressionUNet.from_config(model.get_config()).objective == "poisson"
    with pytest.raises(ValueError, match="objective 'mse'.*log_mse"):
        RegressionUNet(network=network_from_preset("tiny"), objective="mse")
