"""The posterior-sampler interface: options, their checks, and what `load_posterior` refuses."""

import json
import zipfile

import keras
import numpy as np
import pytest

from keras_dmdiff.models import VariationalDiffusion, network_from_preset
from keras_dmdiff.posterior import (
    PosteriorFunction,
    PosteriorSampler,
    SamplingOptions,
    load_posterior,
)
from keras_dmdiff_datasets.camels_cmd.fake_cmd import fake_maps


@pytest.fixture(scope="module")
def tiny_model():
    stars, truth = fake_maps(2, map_size=32, seed=3)
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0).adapt(stars, truth)
    model.build()
    return model, stars


@pytest.mark.backend_independent
def test_sampling_options_round_trip_and_refuse_what_they_do_not_know():
    options = SamplingOptions(sampler="ddim", eta=0.25, random_shifts=True, batch_size=4)
    assert SamplingOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert options.non_default() == {"sampler": "ddim", "eta": 0.25, "random_shifts": True, "batch_size": 4}
    with pytest.raises(ValueError, match=r"Unknown sampling options \['temperature'\]"):
        SamplingOptions.from_dict({"temperature": 2.0})
    with pytest.raises(ValueError, match="batch_size"):
        SamplingOptions(batch_size=0)
    with pytest.raises(ValueError, match="random_shifts"):
        SamplingOptions(random_shifts="yes")
    # What an owner honours passes, a fixed setting is filled in, anything else is named.
    assert options.check_supported({"sampler", "eta", "batch_size"}, "x", fixed={"random_shifts": True}) == options
    assert SamplingOptions().check_supported((), "x", fixed={"random_shifts": False}).random_shifts is False
    with pytest.raises(ValueError, match="x does not support the sampling option eta=0.25"):
        options.check_supported({"sampler", "batch_size", "random_shifts"}, "x")
    with pytest.raises(ValueError, match="x has random_shifts=False fixed"):
        options.check_supported({"sampler", "eta", "batch_size"}, "x", fixed={"random_shifts": False})


@pytest.mark.backend_independent
def test_a_posterior_function_is_a_posterior_sampler():
    calls = []

    def draw(stellar_mass, num_samples, num_steps, seed):
        calls.append((stellar_mass.shape, num_samples, num_steps, seed))
        return np.ones((len(stellar_mass), num_samples) + stellar_mass.shape[1:])

    posterior = PosteriorFunction(draw)
    assert isinstance(posterior, PosteriorSampler)
    assert posterior.sample(np.zeros((8, 8)), 3, 5, 7).shape == (1, 3, 8, 8)
    assert calls == [((1, 8, 8), 3, 5, 7)]
    with pytest.raises(ValueError, match="'draw' does not support the sampling option sampler='ddim'"):
        posterior.sample(np.zeros((8, 8)), options=SamplingOptions(sampler="ddim"))
    with pytest.raises(TypeError):
        PosteriorFunction(42)


def test_the_model_takes_options_or_their_keywords_alike(tiny_model):
    model, stars = tiny_model
    assert isinstance(model, PosteriorSampler)
    options = SamplingOptions(sampler="ddim", eta=0.5, batch_size=1)
    by_options = model.sample(stars, 2, 3, 4, options)
    by_keywords = model.sample(stars, num_samples=2, num_steps=3, seed=4, sampler="ddim", eta=0.5, batch_size=1)
    np.testing.assert_array_equal(by_options, by_keywords)
    assert model.resolve_options(None).random_shifts is False
    with pytest.raises(ValueError, match="Unknown sampling options"):
        model.sample(stars, 1, 2, temperature=2.0)
    with pytest.raises(ValueError, match="Unknown sampler"):
        model.sample(stars, 1, 2, sampler="euler")
    with pytest.raises(ValueError, match="tile_size"):
        model.resolve_options(SamplingOptions(tile_size=model.stride + 1))


def test_load_posterior_opens_both_formats_and_names_what_it_cannot(tiny_model, tmp_path):
    import tensorflow as tf

    from keras_dmdiff.export import export_saved_model

    model, stars = tiny_model
    model.save(tmp_path / "model.keras")
    assert isinstance(load_posterior(tmp_path / "model.keras"), VariationalDiffusion)
    export_saved_model(model, tmp_path / "saved", samplers=("ancestral",))
    exported = load_posterior(tmp_path / "saved")
    assert isinstance(exported, PosteriorSampler) and exported.samplers == ["ancestral"]
    np.testing.assert_allclose(exported.sample(stars, 1, 2, 3, SamplingOptions()), model.sample(stars, 1, 2, 3),
                               rtol=1e-4)

    with pytest.raises(FileNotFoundError):
        load_posterior(tmp_path / "nothing.keras")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        load_posterior(tmp_path / "empty")
    # A SavedModel of something else, and one that lost the endpoints its metadata lists.
    foreign = tf.Module()
    foreign.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(foreign, str(tmp_path / "foreign"))
    with pytest.raises(ValueError, match="not one written by keras_dmdiff"):
        load_posterior(tmp_path / "foreign")
    metadata = json.dumps({"stride": 16, "samplers": ["ancestral"],
                           "endpoints": {"ancestral": {"sample": "sample", "draw": "draw"}}})
    partial = tf.Module()
    partial.metadata = tf.function(lambda: tf.constant(metadata), input_signature=[])
    tf.saved_model.save(partial, str(tmp_path / "partial"))
    with pytest.raises(ValueError, match=r"lacks the sampling endpoint\(s\) \['sample', 'draw'\]"):
        load_posterior(tmp_path / "partial")

    # .keras files: truncated, another kind of model, a class from another package.
    data = (tmp_path / "model.keras").read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated.keras is not a .keras archive"):
        load_posterior(tmp_path / "truncated.keras")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "dense.keras")
    with pytest.raises(ValueError, match="holds a Sequential, not a keras_dmdiff VariationalDiffusion"):
        load_posterior(tmp_path / "dense.keras")
    with zipfile.ZipFile(tmp_path / "dense.keras") as source, \
            zipfile.ZipFile(tmp_path / "foreign.keras", "w") as target:  # fmt: skip
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(content)
                config.update(module=None, class_name="Emulator", registered_name="other_package>Emulator")
                content = json.dumps(config).encode()
            target.writestr(item, content)
    with pytest.raises(ValueError, match="foreign.keras holds a model this package cannot rebuild"):
        load_posterior(tmp_path / "foreign.keras")
    with pytest.raises(ValueError, match="expected a .keras file or a SavedModel folder"):
        (tmp_path / "weights.h5").write_bytes(b"")
        load_posterior(tmp_path / "weights.h5")


def test_sampling_shows_progress_only_when_asked(tiny_model, capsys):
    model, stars = tiny_model
    quiet = model.sample(stars, 2, 3, 0, batch_size=2)
    assert capsys.readouterr().err == ""
    shown = model.sample(stars, 2, 3, 0, batch_size=2, verbose=1)
    err = capsys.readouterr().err
    assert "sampling, 3 steps each" in err and "0/4 [" in err  # 4 samples; tqdm redraws at intervals
    np.testing.assert_array_equal(shown, quiet)  # progress changes nothing drawn
    model.sample(stars, 1, 2, 0, verbose="auto")  # stderr is no terminal under pytest
    assert capsys.readouterr().err == ""
