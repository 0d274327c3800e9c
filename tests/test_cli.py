import h5py
import numpy as np
import pytest

from keras_dmdiff import cli
from keras_dmdiff.models import VariationalDiffusion, network_from_preset

SUBCOMMANDS = ["mock", "train", "distill", "run", "reconstruct", "evaluate", "export", "bench"]


def test_help_for_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    top = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: dmdiff " + name in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0)
    model.build()
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def stellar_maps(count=2, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.random((count, size, size)) < 0.05) * 1e10).astype("float32")


def test_reconstruct_writes_samples_and_figure(tiny_model_path, tmp_path, capsys):
    maps_path = tmp_path / "stars.npy"
    np.save(maps_path, stellar_maps())
    out = tmp_path / "out" / "dm.h5"
    code = cli.main(
        ["reconstruct", str(maps_path), "--model", str(tiny_model_path), "--num-samples", "3", "--steps", "4", "--out", str(out)]
    )
    assert code == 0
    assert (tmp_path / "out" / "dm.png").stat().st_size > 10_000
    with h5py.File(out) as handle:
        assert handle["samples"].shape == (2, 3, 32, 32)
        assert handle["posterior_mean"].shape == (2, 32, 32)
        assert np.all(handle["samples"][...] > 0)
        assert handle.attrs["num_steps"] == 4 and handle.attrs["units"] == "(Msun/h)/(Mpc/h)^2"
    # The same from an HDF5 input, without a figure.
    h5_input = tmp_path / "stars.h5"
    with h5py.File(h5_input, "w") as handle:
        handle["maps"] = stellar_maps(1)
    out2 = tmp_path / "dm2.h5"
    assert cli.main(["reconstruct", str(h5_input), "--dataset", "maps", "--model", str(tiny_model_path),
                     "--num-samples", "1", "--steps", "2", "--out", str(out2), "--no-png"]) == 0
    assert out2.exists() and not (tmp_path / "dm2.png").exists()


@pytest.mark.parametrize(
    "maps, message",
    [
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.full((32, 32), 2.0, np.float32), "log10-scaled"),
        (np.full((30, 32), 1e9, np.float32), "multiples"),
    ],
)
def test_reconstruct_reports_bad_maps(tiny_model_path, tmp_path, capsys, maps, message):
    path = tmp_path / "bad.npy"
    np.save(path, maps)
    code = cli.main(["reconstruct", str(path), "--model", str(tiny_model_path), "--steps", "2", "--out", str(tmp_path / "x.h5")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_reconstruct_reports_missing_files(tiny_model_path, tmp_path, capsys):
    assert cli.main(["reconstruct", str(tmp_path / "nope.npy"), "--model", str(tiny_model_path)]) == 2
    assert "No stellar-mass file" in capsys.readouterr().err
    np.save(tmp_path / "ok.npy", stellar_maps(1))
    assert cli.main(["reconstruct", str(tmp_path / "ok.npy"), "--model", str(tmp_path / "missing.keras")]) == 2
    assert "No model at" in capsys.readouterr().err


@pytest.mark.backend_independent  # the commands' plumbing; training on each backend: test_training
def test_mock_then_train_from_the_command_line(tmp_path):
    data = tmp_path / "data"
    assert cli.main(["mock", "--suite", "SIMBA", "--set-name", "LH", "--num-sims", "3", "--grid-size", "32",
                     "--steps", "3", "--out", str(data)]) == 0
    stars = np.load(data / "Maps_Mstar_SIMBA_LH_z=0.00.npy", mmap_mode="r")
    assert stars.shape == (45, 256, 256)
    run = tmp_path / "run"
    settings = {
        "dataset": "camels_cmd/SIMBA_LH", "manual_dir": str(data), "data_dir": str(tmp_path / "tfds"),
        "preset": "tiny", "crop_size": 32, "batch_size": 4, "steps": 2, "steps_per_epoch": 2,
        "validation_batches": 1,
    }
    args = ["train", "--out", str(run), "--verbose", "0"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert cli.main(args) == 0
    assert (run / "model.keras").exists() and (run / "history.csv").exists()

    distilled = tmp_path / "distilled"
    args = ["distill", "--out", str(distilled), "--verbose", "0", "--set", f"teacher={run / 'model.keras'}",
            "--set", "teacher_steps=2", "--set", "student_steps=1"]
    for key, value in {**settings, "crop_size": 32}.items():
        if key != "preset":
            args += ["--set", f"{key}={value}"]
    assert cli.main(args) == 0
    assert (distilled / "model.keras").exists() and (distilled / "steps_1" / "history.csv").exists()


def test_distill_names_a_missing_teacher(tmp_path, capsys):
    assert cli.main(["distill", "--out", str(tmp_path / "d"), "--set", f"teacher={tmp_path / 'none.keras'}",
                     "--set", "teacher_steps=16", "--set", "student_steps=8"]) == 2
    assert "none.keras does not exist" in capsys.readouterr().err


def test_reconstruct_in_tiles_matches_tiled_sampling(tiny_model_path, tmp_path):
    import json

    import keras

    maps_path = tmp_path / "stars.npy"
    np.save(maps_path, stellar_maps(1))
    out = tmp_path / "tiled.h5"
    assert cli.main(["reconstruct", str(maps_path), "--model", str(tiny_model_path), "--num-samples", "2",
                     "--steps", "3", "--seed", "5", "--tile-size", "16", "--tile-margin", "8",
                     "--out", str(out), "--no-png"]) == 0  # fmt: skip
    model = keras.saving.load_model(tiny_model_path)
    expected = model.sample(stellar_maps(1), num_samples=2, num_steps=3, seed=5, batch_size=1, tile_size=16, tile_margin=8)
    with h5py.File(out) as handle:
        np.testing.assert_allclose(handle["samples"][...], expected, rtol=1e-5)
        assert json.loads(handle.attrs["model"])["tile_size"] == 16


@pytest.mark.parametrize(
    "flag, options",
    [
        ([], {"random_shifts": False}),
        (["--random-shifts"], {"random_shifts": True}),
        (["--no-random-shifts"], {"random_shifts": False}),
        (["--sampler", "ddim", "--eta", "0.5"], {"random_shifts": False, "sampler": "ddim", "eta": 0.5}),
    ],
)
def test_reconstruct_sampling_flags_match_model_sample(tiny_model_path, tmp_path, flag, options):
    import json

    import keras

    maps_path = tmp_path / "stars.npy"
    np.save(maps_path, stellar_maps(2))
    out = tmp_path / "shifted.h5"
    assert cli.main(["reconstruct", str(maps_path), "--model", str(tiny_model_path), "--num-samples", "2",
                     "--steps", "3", "--seed", "5", *flag, "--out", str(out), "--no-png"]) == 0  # fmt: skip
    model = keras.saving.load_model(tiny_model_path)
    expected = model.sample(stellar_maps(2), num_samples=2, num_steps=3, seed=5, **options)
    with h5py.File(out) as handle:
        np.testing.assert_allclose(handle["samples"][...], expected, rtol=1e-5)
        description = json.loads(handle.attrs["model"])
        assert description["random_shifts"] is options["random_shifts"]
        assert description.get("eta") == options.get("eta")


def test_export_with_random_shifts_then_reconstruct_from_the_saved_model(tiny_model_path, tmp_path, capsys):
    import json

    import keras

    from keras_dmdiff.export import load_exported

    saved = tmp_path / "savedmodel"
    assert cli.main(["export", "--model", str(tiny_model_path), "--out", str(saved), "--random-shifts"]) == 0
    assert load_exported(saved).random_shifts is True
    maps_path = tmp_path / "stars.npy"
    np.save(maps_path, stellar_maps(2))
    out = tmp_path / "from_saved.h5"
    assert cli.main(["reconstruct", str(maps_path), "--model", str(saved), "--num-samples", "2",
                     "--steps", "3", "--seed", "5", "--out", str(out), "--no-png"]) == 0  # fmt: skip
    model = keras.saving.load_model(tiny_model_path)
    expected = model.sample(stellar_maps(2), num_samples=2, num_steps=3, seed=5, random_shifts=True)
    with h5py.File(out) as handle:
        np.testing.assert_allclose(handle["samples"][...], expected, rtol=2e-4)
        assert json.loads(handle.attrs["model"])["random_shifts"] is True
    # Asking this SavedModel for unshifted samples names the problem.
    code = cli.main(["reconstruct", str(maps_path), "--model", str(saved), "--no-random-shifts", "--out", str(out)])
    assert code == 2 and "has random_shifts=True fixed" in capsys.readouterr().err
    # So do options that only a .keras model honours.
    for flags, option in ((["--tile-size", "16"], "tile_size=16"), (["--sampler", "ddim", "--eta", "0.5"], "eta=0.5")):
        code = cli.main(["reconstruct", str(maps_path), "--model", str(saved), *flags, "--out", str(out)])
        assert code == 2 and f"does not support the sampling option {option}" in capsys.readouterr().err


def test_reconstruct_in_tiles_reports_bad_tiles(tiny_model_path, tmp_path, capsys):
    maps_path = tmp_path / "stars.npy"
    np.save(maps_path, stellar_maps(1))
    code = cli.main(["reconstruct", str(maps_path), "--model", str(tiny_model_path), "--steps", "2",
                     "--tile-size", "12", "--out", str(tmp_path / "x.h5")])  # fmt: skip
    assert code == 2 and "tile_size" in capsys.readouterr().err


def test_flag_defaults_are_the_functions_defaults():
    import inspect

    from keras_dmdiff.evaluation import EvaluationData, EvaluationSettings
    from keras_dmdiff.reconstruct import reconstruct

    parser = cli.build_parser()
    reconstruct_defaults = {name: p.default for name, p in inspect.signature(reconstruct).parameters.items()}
    evaluate_defaults = {**vars(EvaluationSettings()), **vars(EvaluationData())}
    for argv, defaults in (
        (["evaluate", "--model", "m.keras", "--out", "o"], evaluate_defaults),
        (["reconstruct", "--example"], reconstruct_defaults),
    ):
        args = parser.parse_args(argv)
        for name in ("num_samples", "num_steps", "seed"):
            assert getattr(args, name) == defaults[name], (argv[0], name)
    args = parser.parse_args(["evaluate", "--model", "m.keras", "--out", "o"])
    assert (args.dataset, args.split, args.max_maps) == (
        evaluate_defaults["dataset"], evaluate_defaults["split"], evaluate_defaults["max_maps"])


def test_bench_flags_build_the_bench_config_with_its_defaults():
    from keras_dmdiff.bench import BenchConfig

    parser = cli.build_parser()
    assert cli._bench_config(parser.parse_args(["bench"])) == BenchConfig()
    args = parser.parse_args(["bench", "--sizes", "", "--quality-model", "t.keras", "--quality-data", "maps.npz",
                              "--quality-students", "s8.keras,s4.keras", "--reference-sampler", "ddim",
                              "--quality-batch-size", "4", "--quality-crop", "128"])  # fmt: skip
    config = cli._bench_config(args)
    assert config.sizes == [] and config.quality_students == ["s8.keras", "s4.keras"]
    assert (config.reference_sampler, config.quality_batch_size, config.quality_crop) == ("ddim", 4, 128)
