import json

import h5py
import keras
import numpy as np
import pytest

from keras_dmdiff.baselines import ConditionalMeanBaseline, periodic_gaussian_smooth
from keras_dmdiff.evaluation import (
    CONDITIONAL_MEAN,
    REGRESSION_UNET,
    STELLAR_TRACER,
    Baselines,
    EvaluationData,
    EvaluationSettings,
    collect_maps,
    evaluate,
    run_evaluation,
)
from keras_dmdiff.models import VariationalDiffusion, network_from_preset
from keras_dmdiff.models.regression_unet import RegressionUNet
from keras_dmdiff.posterior import PosteriorFunction, SamplingOptions, load_posterior
from keras_dmdiff_datasets.camels_cmd.fake_cmd import fake_maps, write_fake_cmd_files

numpy_only = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def toy():
    """A problem whose posterior is known: log10 Sigma = mu + 0.1 N(0, 1).

    mu is a smooth field tied to the stars (they sit on its peaks); a sampler
    that knows mu and draws with width 0.1 is exactly calibrated.
    """
    stars, base = fake_maps(6, map_size=64, seed=1)
    mu = np.log10(base.astype(np.float64))
    rng = np.random.default_rng(0)
    truth = (10.0 ** (mu + 0.1 * rng.standard_normal(mu.shape))).astype(np.float32)
    train = fake_maps(6, map_size=64, seed=2)
    return {"stars": stars, "mu": mu, "truth": truth, "train": train}


def gaussian_sampler(toy, width, calls=None):
    """Draws 10 ** (mu + width N(0, 1)) for the maps it is given."""
    index = {s.tobytes(): i for i, s in enumerate(toy["stars"])}

    def draw(stellar_mass, num_samples=1, num_steps=250, seed=0):
        if calls is not None:
            calls.append([index[s.tobytes()] for s in stellar_mass])
        rng = np.random.default_rng(seed)
        mu = toy["mu"][[index[s.tobytes()] for s in stellar_mass]][:, None]
        noise = rng.standard_normal((len(mu), num_samples) + mu.shape[2:])
        return (10.0 ** (mu + width * noise)).astype(np.float32)

    return PosteriorFunction(draw)


def oracle_sampler(toy):
    """Returns the truth times 10 ** (1e-4 N(0, 1)): a perfect reconstruction."""
    index = {s.tobytes(): i for i, s in enumerate(toy["stars"])}

    def draw(stellar_mass, num_samples=1, num_steps=250, seed=0):
        rng = np.random.default_rng(seed)
        truth = toy["truth"][[index[s.tobytes()] for s in stellar_mass]][:, None].astype(np.float64)
        noise = rng.standard_normal((len(truth), num_samples) + truth.shape[2:])
        return (truth * 10.0 ** (1e-4 * noise)).astype(np.float32)

    return PosteriorFunction(draw)


def finite_leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from finite_leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from finite_leaves(value)
    elif isinstance(tree, float):
        yield tree


@numpy_only
def test_oracle_sampler_gets_perfect_scores_and_beats_the_baselines(toy):
    metrics = evaluate(
        oracle_sampler(toy),
        (toy["stars"], toy["truth"]),
        EvaluationSettings(num_samples=4, num_steps=1),
        baselines=Baselines(train_batches=toy["train"]),
        progress=False,
    )
    summary = metrics["summary"]
    r = np.array(metrics["cross_correlation"]["diffusion_posterior_mean"]["mean"])
    ratio = np.array(metrics["power_ratio"]["diffusion_samples"]["mean"])
    assert np.all(r > 0.9999)
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)
    assert summary["power_ratio_error_k_lt_10"]["diffusion_samples"] < 1e-3
    assert summary["cross_correlation_1_k_5"]["diffusion_posterior_mean"] > 0.9999
    assert summary["mse_dex2"]["diffusion_posterior_mean"] < 1e-6
    np.testing.assert_allclose(metrics["pdf"]["diffusion_samples"], metrics["pdf"]["truth"], atol=0.05)
    # The metrics are not vacuous: the baselines score visibly worse.
    for name in (STELLAR_TRACER, CONDITIONAL_MEAN):
        assert summary["cross_correlation_1_k_5"][name] < 0.95
        assert summary["power_ratio_error_k_lt_10"][name] > 0.1
        assert summary["mse_dex2"][name] > 0.01
    assert metrics["baselines"] == [CONDITIONAL_MEAN, STELLAR_TRACER]


@numpy_only
@pytest.mark.parametrize(
    "width, verdict",
    [(0.1, "calibrated"), (0.04, "under-dispersed"), (0.25, "over-dispersed")],
)
def test_calibration_tells_a_calibrated_posterior_from_a_miscalibrated_one(toy, width, verdict):
    metrics = evaluate(
        gaussian_sampler(toy, width),
        (toy["stars"], toy["truth"]),
        EvaluationSettings(num_samples=16, num_steps=1),
        baselines=[],
        progress=False,
    )
    summary = metrics["summary"]
    assert summary["verdict"] == verdict
    if verdict == "calibrated":
        assert summary["coverage_error"] < 0.03
        for level, value in summary["coverage"].items():
            assert value == pytest.approx(float(level.rstrip("%")) / 100, abs=0.03)
        # A calibrated posterior also reproduces the power spectrum.
        assert summary["power_ratio_error_k_lt_10"]["diffusion_samples"] < 0.05
    else:
        assert summary["coverage_error"] > 0.1


@numpy_only
def test_evaluate_writes_the_output_folder_and_resumes_without_resampling(toy, tmp_path):
    calls = []
    out = tmp_path / "eval"
    data = (toy["stars"][:4], toy["truth"][:4])
    settings = EvaluationSettings(num_samples=3, num_steps=7, seed=5, maps_per_call=1)
    kwargs = dict(settings=settings, progress=False)
    metadata = {"model_path": "toy", "dataset": "fake", "split": "test"}

    # A run that dies while sampling map 2 keeps maps 0 and 1.
    draw = gaussian_sampler(toy, 0.1, calls)

    @PosteriorFunction
    def dies_on_map_2(stellar_mass, **kw):
        if np.array_equal(stellar_mass[0], toy["stars"][2]):
            raise KeyboardInterrupt
        return draw.function(stellar_mass, **kw)

    with pytest.raises(KeyboardInterrupt):
        evaluate(dies_on_map_2, data, out_dir=out, metadata=metadata, **kwargs)
    assert calls == [[0], [1]]
    # Drawn groups are kept as whole parts; samples.h5 appears only complete.
    assert not (out / "samples.h5").exists()
    assert sorted(p.name for p in (out / "samples.h5.parts").glob("*.npz")) == ["maps_000000.npz", "maps_000001.npz"]

    # The rerun samples only the missing maps, then writes everything.
    calls.clear()
    metrics = evaluate(draw, data, out_dir=out, metadata=metadata,
                       baselines=Baselines(train_batches=toy["train"]), **kwargs)
    assert calls == [[2], [3]]
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "samples.h5", "maps.png", "power_spectrum.png", "cross_correlation.png",
            "pdf.png", "coverage.png", "rank_histograms.png"} <= names
    assert all((out / name).stat().st_size > 5000 for name in metrics["figures"])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    for key in ("summary", "k", "power_spectrum", "power_ratio", "cross_correlation", "pdf",
                "mse_dex2", "calibration", "metadata", "settings", "figures"):
        assert key in on_disk, key
    summary = on_disk["summary"]
    for key in ("power_ratio_error_k_lt_10", "cross_correlation_1_k_5", "mse_dex2"):
        assert set(summary[key]) >= {"diffusion_samples", "diffusion_posterior_mean",
                                     STELLAR_TRACER, CONDITIONAL_MEAN}
    assert summary["verdict"] in ("calibrated", "biased", "over-dispersed", "under-dispersed")
    assert set(on_disk["calibration"]) == {"pixels", "pixels_by_stars", "power_spectrum", "map_mass", "aperture_masses", "tarp", "fourier"}
    leaves = list(finite_leaves(summary))
    assert leaves and all(np.isfinite(leaves))

    with h5py.File(out / "samples.h5") as f:
        assert f["samples"].shape == (4, 3, 64, 64) and f["samples"].dtype == np.float32
        assert f["samples"].compression == "gzip"
        np.testing.assert_array_equal(f["stellar_mass"][:], data[0])
        np.testing.assert_array_equal(f["dark_matter_true"][:], data[1])
        attrs = dict(f.attrs)
        # Samples are those of an uninterrupted run (seeds per map).
        expected = draw.sample(data[0][3:4], num_samples=3, seed=int(_group_seed(5, 3)))
        np.testing.assert_array_equal(f["samples"][3], expected[0])
    assert attrs["model_path"] == "toy" and attrs["split"] == "test" and attrs["dataset"] == "fake"
    assert attrs["seed"] == 5 and attrs["num_steps"] == 7 and attrs["num_samples"] == 3
    assert attrs["sampler"] == "ancestral"
    for key in ("keras_dmdiff_version", "backend", "date"):
        assert attrs[key]

    # A finished run samples nothing; more maps sample only the new ones.
    calls.clear()
    evaluate(draw, data, out_dir=out, metadata=metadata, figures=False, **kwargs)
    assert calls == []
    evaluate(draw, (toy["stars"][:5], toy["truth"][:5]), out_dir=out, figures=False, **kwargs)
    assert calls == [[4]]
    # Other settings or other maps must not silently mix with stored samples.
    with pytest.raises(ValueError, match="seed"):
        evaluate(draw, data, out_dir=out, **{**kwargs, "settings": settings.replace(seed=6)})
    with pytest.raises(ValueError, match="other maps"):
        evaluate(draw, (toy["stars"][1:5], toy["truth"][1:5]), out_dir=out, **kwargs)


@numpy_only
def test_damaged_or_foreign_sample_files_are_named_and_drawn_work_is_kept(toy, tmp_path):
    calls = []
    draw = gaussian_sampler(toy, 0.1, calls)
    data = (toy["stars"][:3], toy["truth"][:3])
    kwargs = dict(settings=EvaluationSettings(num_samples=2, num_steps=3, seed=1, maps_per_call=1), baselines=[],
                  figures=False, progress=False)
    out = tmp_path / "eval"

    @PosteriorFunction
    def dies_on_map_2(stellar_mass, **kw):
        if np.array_equal(stellar_mass[0], toy["stars"][2]):
            raise KeyboardInterrupt
        return draw.function(stellar_mass, **kw)

    with pytest.raises(KeyboardInterrupt):
        evaluate(dies_on_map_2, data, out_dir=out, **kwargs)
    # A truncated samples.h5 from elsewhere: a clear error, and the parts survive it.
    (out / "samples.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ValueError, match="samples.h5 is damaged or not an HDF5 file"):
        evaluate(draw, data, out_dir=out, **kwargs)
    with h5py.File(out / "samples.h5", "w") as f:
        f["something_else"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a keras_dmdiff samples file"):
        evaluate(draw, data, out_dir=out, **kwargs)
    (out / "samples.h5").unlink()
    # A part damaged from outside (the package writes them whole) is drawn again, with a warning.
    part = out / "samples.h5.parts" / "maps_000001.npz"
    part.write_bytes(part.read_bytes()[:200])
    calls.clear()
    metrics = evaluate(draw, data, out_dir=out, **kwargs)
    assert calls == [[1], [2]]
    assert not (out / "samples.h5.parts").exists()
    uninterrupted = evaluate(draw, data, out_dir=tmp_path / "once", **kwargs)
    assert metrics["summary"] == uninterrupted["summary"]
    with h5py.File(out / "samples.h5") as a, h5py.File(tmp_path / "once" / "samples.h5") as b:
        np.testing.assert_array_equal(a["samples"][:], b["samples"][:])
    # A part of other maps is refused, not mixed in.
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        evaluate(dies_on_map_2, data, out_dir=other, **kwargs)
    with pytest.raises(ValueError, match="other maps than this dataset"):
        evaluate(draw, (toy["stars"][3:6], toy["truth"][3:6]), out_dir=other, **kwargs)


def _group_seed(seed, start):
    from keras_dmdiff.evaluation import _group_seed as group_seed

    return group_seed(seed, start)


@numpy_only
def test_evaluate_rejects_bad_samplers_and_inputs(toy):
    data = (toy["stars"][:2], toy["truth"][:2])

    @PosteriorFunction
    def wrong_shape(stellar_mass, num_samples=1, **kwargs):
        return np.ones((len(stellar_mass), num_samples, 8, 8), np.float32) * 1e10

    @PosteriorFunction
    def nan_maps(stellar_mass, num_samples=1, **kwargs):
        return np.full((len(stellar_mass), num_samples) + stellar_mass.shape[1:], np.nan, np.float32)

    with pytest.raises(ValueError, match="shape"):
        evaluate(wrong_shape, data, EvaluationSettings(num_samples=2), progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate(nan_maps, data, EvaluationSettings(num_samples=2), progress=False)
    with pytest.raises(ValueError, match="Unknown baseline"):
        evaluate(oracle_sampler(toy), data, baselines=["nope"], progress=False)
    with pytest.raises(ValueError, match="train_batches"):
        evaluate(oracle_sampler(toy), data, baselines=[CONDITIONAL_MEAN], progress=False)
    # A plain function is not a posterior sampler until wrapped; options it cannot honour are named.
    with pytest.raises(TypeError, match="PosteriorFunction"):
        evaluate(wrong_shape.function, data, EvaluationSettings(num_samples=2), progress=False)
    with pytest.raises(ValueError, match="does not support the sampling option sampler='ddim'"):
        evaluate(oracle_sampler(toy), data,
                 EvaluationSettings(num_samples=2, options=SamplingOptions(sampler="ddim", eta=0.5)), progress=False)
    with pytest.raises(ValueError, match="`num_samples` must be an int >= 1"):
        EvaluationSettings(num_samples=0)
    with pytest.raises(ValueError, match="`max_maps` must be an int >= 1 or None"):
        EvaluationSettings(max_maps=0)
    with pytest.raises(ValueError, match="No maps"):
        collect_maps([])
    stars, dm = collect_maps([data, data], max_maps=3)
    assert stars.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="`dark_matter` looks already log10-scaled"):
        collect_maps((data[0], np.log10(data[1])))
    with pytest.raises(ValueError, match="`stellar_mass` contains 1 NaN"):
        stars = data[0].copy()
        stars[1, 2, 3] = np.nan
        collect_maps((stars, data[1]))
    with pytest.raises(ValueError, match="`dark_matter` must be strictly positive"):
        collect_maps((data[0], 0.0 * data[1]))


def test_tiny_diffusion_model_through_evaluate(toy, tmp_path):
    stars, truth = fake_maps(3, map_size=32, seed=4)
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0).adapt(stars, truth)
    fitted = ConditionalMeanBaseline(box_size=25.0).fit(*toy["train"])
    metrics = evaluate(
        model,
        (stars, truth),
        EvaluationSettings(num_samples=2, num_steps=3),
        # (a), the regression U-Net, runs in test_run_evaluation_from_keras_files...
        baselines={STELLAR_TRACER: STELLAR_TRACER, CONDITIONAL_MEAN: fitted,
                   "smoothed_stars": lambda s: 1e10 + periodic_gaussian_smooth(s, 1.0)},
        out_dir=tmp_path / "eval",
        figures=False,
        progress=False,
    )
    for name in ("diffusion_samples", "diffusion_posterior_mean", STELLAR_TRACER, CONDITIONAL_MEAN,
                 "smoothed_stars"):
        assert np.isfinite(metrics["summary"]["mse_dex2"][name]), name
        assert np.isfinite(metrics["summary"]["cross_correlation_1_k_5"][name]), name
    with h5py.File(tmp_path / "eval" / "samples.h5") as f:
        samples = f["samples"][:]
        assert f.attrs["backend"] == keras.backend.backend()
    # The stored samples are the model's, seeded per map.
    direct = model.sample(stars[:1], num_samples=2, num_steps=3, seed=_group_seed(0, 0))
    np.testing.assert_allclose(samples[0], direct[0], rtol=1e-5)


@pytest.fixture(scope="module")
def cmd_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmd")
    write_fake_cmd_files(root / "manual", "IllustrisTNG", "LH", num_simulations=3, maps_per_simulation=2)
    return {"manual_dir": str(root / "manual"), "data_dir": str(root / "tfds")}


def test_run_evaluation_from_keras_files_on_a_tfds_split(cmd_dirs, tmp_path):
    stars, truth = fake_maps(2, map_size=32, seed=5)
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0).adapt(stars, truth)
    model.build()
    model.save(tmp_path / "model.keras")
    regression = RegressionUNet(network=network_from_preset("tiny")).adapt(stars, truth)
    regression.build()
    regression.save(tmp_path / "regression.keras")
    out = tmp_path / "eval"
    data = EvaluationData("camels_cmd/IllustrisTNG_LH", "test", crop_size=32, max_train_maps=8, **cmd_dirs)
    settings = EvaluationSettings(num_samples=2, num_steps=2, seed=1, max_maps=3)
    metrics = run_evaluation(tmp_path / "model.keras", data, out, settings,
                             regression_model_path=tmp_path / "regression.keras", progress=False)
    assert metrics["settings"]["num_maps"] == 3
    assert metrics["settings"]["box_size"] == pytest.approx(25.0 * 32 / 256)
    assert metrics["baselines"] == [CONDITIONAL_MEAN, REGRESSION_UNET, STELLAR_TRACER]
    assert metrics["metadata"]["model_class"] == "VariationalDiffusion"
    assert (out / "metrics.json").exists() and (out / "maps.png").exists()
    with h5py.File(out / "samples.h5") as f:
        assert f["samples"].shape == (3, 2, 32, 32)
        assert f.attrs["dataset"] == "camels_cmd/IllustrisTNG_LH" and f.attrs["split"] == "test"
        assert f.attrs["model_path"].endswith("model.keras")
    with pytest.raises(ValueError, match="VariationalDiffusion without a mean network"):
        run_evaluation(tmp_path / "model.keras", data, tmp_path / "other", settings.replace(max_maps=1),
                       regression_model_path=tmp_path / "model.keras", progress=False)


def test_a_residual_models_mean_network_is_its_regression_baseline(tmp_path):
    from keras_dmdiff.evaluation import load_regression_model

    mean = RegressionUNet(network=network_from_preset("tiny"))
    mean.build()
    kernel = mean.network.conv_out.conv.kernel
    kernel.assign(np.random.default_rng(2).normal(size=kernel.shape).astype("float32"))
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0, mean_network=mean)
    model.build()
    model.save(tmp_path / "residual.keras")
    loaded = load_regression_model(tmp_path / "residual.keras")
    assert isinstance(loaded, RegressionUNet)
    for ours, theirs in zip(loaded.get_weights(), mean.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    keras.saving.save_model(mean, tmp_path / "mean.keras")
    assert isinstance(load_regression_model(tmp_path / "mean.keras"), RegressionUNet)


def test_exported_saved_model_evaluates_like_its_keras_model(tmp_path):
    from keras_dmdiff.export import export_saved_model

    stars, truth = fake_maps(2, map_size=32, seed=6)
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0).adapt(stars, truth)
    model.build()
    export_saved_model(model, tmp_path / "savedmodel", samplers=("ancestral",))
    loaded = load_posterior(tmp_path / "savedmodel")
    assert type(loaded).__name__ == "ExportedSampler"
    kwargs = dict(baselines=[], figures=False, progress=False)
    options = SamplingOptions(batch_size=4)
    settings = EvaluationSettings(num_samples=2, num_steps=2, seed=3, options=options)
    exported = evaluate(loaded, (stars, truth), settings, out_dir=tmp_path / "a", **kwargs)
    direct = evaluate(model, (stars, truth), settings, out_dir=tmp_path / "b", **kwargs)
    with h5py.File(tmp_path / "a" / "samples.h5") as fa, h5py.File(tmp_path / "b" / "samples.h5") as fb:
        np.testing.assert_allclose(fa["samples"][:], fb["samples"][:], rtol=1e-4)
    assert exported["summary"]["mse_dex2"] == pytest.approx(direct["summary"]["mse_dex2"], rel=1e-3)
    # Both record the shifts in force: the .keras model's default, the SavedModel's as exported.
    assert direct["settings"]["random_shifts"] is False and exported["settings"]["random_shifts"] is False
    with pytest.raises(ValueError, match="random_shifts=False fixed"):
        evaluate(loaded, (stars, truth), settings.replace(options=SamplingOptions(random_shifts=True)), **kwargs)
    with pytest.raises(ValueError, match="does not support the sampling option tile_size=16"):
        evaluate(loaded, (stars, truth), settings.replace(options=SamplingOptions(tile_size=16)), **kwargs)
    # Samples drawn without shifts are not resumed with them.
    with pytest.raises(ValueError, match="random_shifts"):
        evaluate(model, (stars, truth), settings.replace(options=options.replace(random_shifts=True)),
                 out_dir=tmp_path / "b", **kwargs)


def test_the_settings_examples_run():
    import doctest

    from keras_dmdiff import evaluation

    result = doctest.testmod(evaluation)
    assert result.failed == 0 and result.attempted >= 3
