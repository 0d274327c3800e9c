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
