"""Tests of keras_dmdiff.export: the standalone SavedModel, on the current backend.

The suite runs once per Keras backend, so these tests export from TensorFlow in
one pass and from JAX (jax2tf) in the other.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dmdiff
from keras_dmdiff import export
from keras_dmdiff.export import export_saved_model, load_exported
from keras_dmdiff.models import VariationalDiffusion, network_from_preset

SIZE = 16
STEPS = 4


def stellar_maps(count=2, height=SIZE, width=SIZE, seed=0):
    """Physical stellar mass: 1e9 in ~20 % of the pixels, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    return ((rng.random((count, height, width)) < 0.2) * 1e9).astype("float32")


def tiny_model():
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=1)
    model.build()
    # conv_out starts at zero (the network would return z_t): give it weights
    # so that samples depend on the network and on the stellar map.
    kernel = model.network.conv_out.conv.kernel
    kernel.assign(np.random.default_rng(3).normal(size=kernel.shape).astype("float32") * 0.02)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    started = time.perf_counter()
    model = tiny_model()
    print(f"\n[{keras.backend.backend()}] tiny model built in {time.perf_counter() - started:.1f} s", end="")
    path = tmp_path_factory.mktemp("export") / "savedmodel"
    info = export_saved_model(model, path)
    size_mb = info["bytes"] / 2**20
    print(f"\n[{keras.backend.backend()}] export {info['seconds']:.1f} s, {size_mb:.2f} MB")
    # One load for the whole module, so that its compiled graphs are reused
    # (on the JAX export, XLA compiles once per input shape and per load).
    sampler = load_exported(path)
    return model, str(path), sampler.module, info, sampler


def test_savedmodel_is_light_and_carries_metadata(exported):
    model, path, loaded, info, _ = exported
    metadata = json.loads(loaded.metadata().numpy().decode())
    with open(os.path.join(path, export.METADATA_FILE)) as handle:
        assert json.load(handle) == metadata
    assert metadata["stride"] == model.stride == 4
    assert metadata["transform"] == model.transform.get_config()
    assert metadata["samplers"] == ["ancestral", "ddim"]
    assert metadata["random_shifts"] is False  # as model.sample by default
    assert metadata["keras_dmdiff_version"] == keras_dmdiff.__version__
    assert metadata["exported_from_backend"] == keras.backend.backend()
    if keras.backend.backend() == "jax":
        assert metadata["jax_platforms"] == ["cpu", "cuda"]
    assert metadata["model_config"]["network"]["config"]["widths"] == [8, 16]
    for name in ("sample", "sample_ddim", "draw", "draw_ddim", "metadata"):
        assert hasattr(loaded, name), name
    assert set(loaded.signatures["serving_default"].structured_input_signature[1]) == {
        "stellar_mass", "num_samples", "num_steps", "seed"
    }
    # Each variable stored once: the checkpoint holds exactly the sampler's weights.
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    stored = sum(
        int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items() if "OBJECT_GRAPH" not in name
    )
    assert stored == model.network.count_params() + model.schedule.count_params()
    assert info["bytes"] < 4 * 2**20
    assert info["bytes"] == export._directory_size(path)


# Most calls below use B * num_samples = 6 maps of 16x16 and STEPS steps, so
# that the compiled graphs (XLA on the JAX export, and model.sample's) are reused.


def test_sample_matches_model_sample_with_the_same_seed(exported):
    model, _, loaded, _, _ = exported
    stars = stellar_maps()
    samples = loaded.sample(stars, num_samples=3, num_steps=STEPS, seed=7).numpy()
    assert samples.shape == (2, 3, SIZE, SIZE) and samples.dtype == np.float32
    assert np.all(np.isfinite(samples)) and np.all(samples > 0)
    expected = model.sample(stars, num_samples=3, num_steps=STEPS, seed=7)
    np.testing.assert_allclose(samples, expected, rtol=2e-4)


def test_sample_ddim_matches_model_sample(exported):
    model, _, loaded, _, _ = exported
    stars = stellar_maps()
    ddim = loaded.sample_ddim(stars, num_samples=3, num_steps=STEPS, seed=7).numpy()
    assert ddim.shape == (2, 3, SIZE, SIZE) and np.all(np.isfinite(ddim)) and np.all(ddim > 0)
    np.testing.assert_allclose(ddim, model.sample(stars, 3, STEPS, seed=7, sampler="ddim"), rtol=2e-4)


def test_seeds_give_new_samples_and_repeat_exactly(exported):
    _, _, loaded, _, _ = exported
    stars = stellar_maps()
    first = loaded.sample(stars, 3, STEPS, 1).numpy()
    np.testing.assert_array_equal(first, loaded.sample(stars, 3, STEPS, 1).numpy())
    other = loaded.sample(stars, 3, STEPS, 2).numpy()
    assert np.mean(np.abs(np.log10(first) - np.log10(other))) > 0.05
    assert np.mean(np.abs(np.log10(first[:, 0]) - np.log10(first[:, 1]))) > 0.05
    # num_steps is a runtime value of the same graph.
    longer = loaded.sample(stars, 3, STEPS + 3, 1).numpy()
    assert np.all(np.isfinite(longer)) and not np.allclose(longer, first)
    # The draw endpoint uses its seed as is: draw(seed of chunk 0) = sample(seed).
    drawn = loaded.draw(np.repeat(stars, 3, axis=0), STEPS, int(export.chunk_seed(1, 0))).numpy()
    np.testing.assert_array_equal(drawn.reshape(first.shape), first)
    # Dynamic B, H, W and num_samples on the same graph.
    wide = loaded.sample(stellar_maps(1, 8, 12), 3, STEPS, 5).numpy()
    assert wide.shape == (1, 3, 8, 12) and np.all(wide > 0) and np.all(np.isfinite(wide))


def test_exported_samples_match_model_statistics(exported):
    model, _, loaded, _, _ = exported
    stars = stellar_maps()
    # 12 seeds each: with 4 (and random shifts), one random tiny network in 6 missed these bounds (30 tried).
    ours = np.log10([loaded.sample(stars, 3, STEPS, seed).numpy() for seed in range(10, 22)])
    theirs = np.log10([model.sample(stars, 3, STEPS, seed=seed) for seed in range(30, 42)])
    has_star = np.broadcast_to(stars[None, :, None] > 0, ours.shape)
    for mask in (has_star, ~has_star):
        assert abs(ours[mask].mean() - theirs[mask].mean()) < 0.05
        assert abs(ours[mask].std() / theirs[mask].std() - 1) < 0.1


def test_load_exported_reproduces_model_sample_in_chunks(exported):
    model, path, _, _, sampler = exported
    assert sampler.stride == 4 and sampler.samplers == ["ancestral", "ddim"]
    stars = stellar_maps()
    # 12 repeated maps in two chunks, seeded like model.sample.
    ours = sampler(stars, num_samples=6, num_steps=STEPS, seed=3, batch_size=6)
    assert ours.shape == (2, 6, SIZE, SIZE) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, model.sample(stars, 6, STEPS, seed=3, batch_size=6), rtol=2e-4)
    single = sampler(stars[0], num_samples=6, num_steps=STEPS, seed=0, sampler="ddim")
    assert single.shape == (1, 6, SIZE, SIZE)
    with pytest.raises(ValueError, match="multiples of the network stride 4"):
        sampler(np.zeros((1, 10, 16), "float32"))
    with pytest.raises(ValueError, match="negative"):
        sampler(-stars)
    with pytest.raises(ValueError, match="log10-scaled"):
        sampler(np.log10(stars + 1))
    with pytest.raises(ValueError, match="NaN"):
        sampler(stars * np.nan)
    with pytest.raises(ValueError, match="was not exported"):
        sampler(stars, sampler="heun")
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        sampler(stars, num_steps=0)
    with pytest.raises(ValueError, match="not a SavedModel"):
        load_exported(os.path.dirname(path))


@pytest.mark.parametrize(
    "maps, num_samples, num_steps, message",
    [
        (np.full((1, SIZE, SIZE), np.nan, "float32"), 1, 2, "NaN or infinite"),
        (-stellar_maps(1), 1, 2, "negative mass"),
        (stellar_maps(1, 10, 16), 1, 2, "multiples of the network stride 4"),
        (np.log10(stellar_maps(1) + 1), 1, 2, "log10-scaled"),
        (stellar_maps(1), 0, 2, "num_samples must be >= 1"),
        (stellar_maps(1), 1, 0, "num_steps must be >= 1"),
    ],
)
def test_graph_validates_its_inputs(exported, maps, num_samples, num_steps, message):
    _, _, loaded, _, _ = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.sample(maps, num_samples, num_steps, 0)


def test_export_arguments_are_checked(exported, tmp_path):
    model = exported[0]
    with pytest.raises(ValueError, match="Unknown sampler"):
        export_saved_model(model, tmp_path / "a", samplers=("heun",))
    with pytest.raises(ValueError, match="Duplicate"):
        export_saved_model(model, tmp_path / "a", samplers=("ddim", "ddim"))
    with pytest.raises(ValueError, match="needs a VariationalDiffusion"):
        export_saved_model(model.network, tmp_path / "a")


def test_single_sampler_export_with_xla_and_random_shifts(exported, tmp_path):
    """One sampler only (the stochastic second-order one); `jit_compile=True`
    (XLA on TensorFlow); random shifts fixed in the graph (`model.sample(..., random_shifts=True)`).

    JAX exports are always XLA and match `model.sample` for a seed. On
    TensorFlow, XLA's stateless RNG may use another algorithm than the
    TensorFlow kernels, so one seed gives other (equally distributed) numbers:
    there, compare statistics, and determinism.
    """
    model = exported[0]
    # Multistep solvers extrapolate the data prediction, which this untrained network makes
    # wild at 4 huge steps; 10 keep it in range.
    steps = 10
    path = tmp_path / "sde_only"
    export_saved_model(model, path, samplers="dpm_solver_2m_sde", jit_compile=True, random_shifts=True)
    assert load_exported(path).random_shifts is True
    loaded = tf.saved_model.load(str(path))
    assert not hasattr(loaded, "sample") and not hasattr(loaded, "draw")
    assert hasattr(loaded, "sample_dpm_solver_2m_sde") and hasattr(loaded, "draw_dpm_solver_2m_sde")
    stars = stellar_maps(2)
    ours = loaded.sample_dpm_solver_2m_sde(stars, 3, steps, 4).numpy()
    np.testing.assert_array_equal(ours, loaded.sample_dpm_solver_2m_sde(stars, 3, steps, 4).numpy())
    assert np.all(np.isfinite(ours)) and np.all(ours > 0)
    theirs = model.sample(stars, 3, steps, seed=4, sampler="dpm_solver_2m_sde", random_shifts=True)
    if keras.backend.backend() == "jax":
        np.testing.assert_allclose(ours, theirs, rtol=2e-4)
    ours, theirs = np.log10(ours), np.log10(theirs)
    assert abs(ours.mean() - theirs.mean()) < 0.05 and abs(ours.std() / theirs.std() - 1) < 0.1


BLOCK_AND_LOAD = textwrap.dedent(
    """
    import importlib.util, json, sys

    # As if these were not installed: `import keras` raises ModuleNotFoundError
    # and importlib.util.find_spec("keras") a ValueError (TensorFlow's own
    # optional lookups treat that as absent).
    BLOCKED = ("keras", "keras_dmdiff", "keras_dmdiff_datasets", "jax", "jaxlib", "tf_keras")
    for name in BLOCKED:
        sys.modules[name] = None
    export_file, savedmodel, expected_file, STEPS = sys.argv[1:]
    STEPS = int(STEPS)
    import numpy as np
    import tensorflow as tf

    def _try_import(name):
        try:
            __import__(name)
        except ImportError as error:
            return type(error).__name__
        return "imported"

    loaded = tf.saved_model.load(savedmodel)
    stars = np.load(expected_file + ".stars.npy")
    first = loaded.sample(stars, 3, STEPS, 21).numpy()
    again = loaded.sample(stars, 3, STEPS, 21).numpy()
    other = loaded.sample(stars, 3, STEPS, 22).numpy()
    # load_exported from this module's file alone (no package import).
    spec = importlib.util.spec_from_file_location("standalone_export", export_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sampler = module.load_exported(savedmodel)
    chunked = sampler(stars, num_samples=6, num_steps=STEPS, seed=5, batch_size=6)
    np.save(expected_file + ".first.npy", first)
    np.save(expected_file + ".chunked.npy", chunked)
    print(json.dumps({
        "same_seed_equal": bool(np.array_equal(first, again)),
        "new_seed_differs": float(np.mean(np.abs(np.log10(first) - np.log10(other)))),
        "shape": list(first.shape), "dtype": str(first.dtype),
        "positive_finite": bool(np.all(first > 0) and np.all(np.isfinite(first))),
        "blocked_loaded": sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in BLOCKED),
        "keras_import": _try_import("keras"),
        "metadata_stride": sampler.stride,
    }))
    """
)


def test_savedmodel_loads_and_samples_without_keras(exported, tmp_path):
    model, path, loaded, _, _ = exported
    stars = stellar_maps(2)
    prefix = str(tmp_path / "run")
    np.save(prefix + ".stars.npy", stars)
    script = tmp_path / "serve.py"
    script.write_text(BLOCK_AND_LOAD)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script), export.__file__, path, prefix, str(STEPS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"keras-free load and sample: {time.perf_counter() - started:.1f} s")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked_loaded"] == [] and report["keras_import"] == "ModuleNotFoundError"
    assert report["same_seed_equal"] and report["positive_finite"]
    assert report["new_seed_differs"] > 0.05
    assert report["shape"] == [2, 3, SIZE, SIZE] and report["dtype"] == "float32"
    assert report["metadata_stride"] == 4
    # The same numbers as in this process, and as model.sample.
    np.testing.assert_allclose(np.load(prefix + ".first.npy"), loaded.sample(stars, 3, STEPS, 21).numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        np.load(prefix + ".chunked.npy"), model.sample(stars, 6, STEPS, seed=5, batch_size=6), rtol=2e-4
    )


def test_residual_v_prediction_model_exports_with_its_mean_network(tmp_path):
    """A residual model (frozen regression U-Net inside) with v-prediction: the SavedModel
    adds the mean back and converts v to eps exactly as `model.sample` does."""
    from keras_dmdiff.models import RegressionUNet

    mean = RegressionUNet(network=network_from_preset("tiny"))
    mean.build()
    kernel = mean.network.conv_out.conv.kernel
    kernel.assign(np.random.default_rng(5).normal(size=kernel.shape).astype("float32") * 0.05)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=1, prediction="v", mean_network=mean)
    model.build()
    path = tmp_path / "residual"
    export_saved_model(model, path, samplers="ancestral")
    loaded = tf.saved_model.load(str(path))
    stars = stellar_maps(2)
    ours = loaded.sample(stars, 2, STEPS, 3).numpy()
    np.testing.assert_allclose(ours, model.sample(stars, num_samples=2, num_steps=STEPS, seed=3), rtol=2e-4)
    # The mean matters: without it the samples move by mu.
    plain = VariationalDiffusion(network=network_from_preset("tiny"), seed=1, prediction="v")
    plain.build()
    plain.network.set_weights(model.network.get_weights())
    assert np.abs(np.log10(ours) - np.log10(plain.sample(stars, num_samples=2, num_steps=STEPS, seed=3))).max() > 1e-3
