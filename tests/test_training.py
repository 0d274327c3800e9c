import csv
import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from keras_dmdiff.training import TrainConfig, build_model, train
from keras_dmdiff_datasets.camels_cmd.fake_cmd import write_fake_cmd_files


# The run folder's logic (resuming, time limits, residual and fine-tuning runs, settings) is the
# same on every backend: it runs in the TensorFlow pass only. The JAX pass trains, writes a complete
# run folder and resumes to the uninterrupted run's weights.
run_folder_logic = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def cmd_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmd")
    write_fake_cmd_files(root / "manual", "IllustrisTNG", "LH", num_simulations=3, maps_per_simulation=2)
    return {"manual_dir": str(root / "manual"), "data_dir": str(root / "tfds")}


def tiny_config(cmd_dirs, **overrides):
    values = dict(
        dataset="camels_cmd/IllustrisTNG_LH",
        preset="tiny",
        crop_size=32,
        batch_size=4,
        steps=6,
        steps_per_epoch=2,
        checkpoint_every=2,
        validation_batches=1,
        learning_rate=1e-3,
        **cmd_dirs,
    )
    values.update(overrides)
    return values


def read_history(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_train_writes_a_complete_run_folder_and_is_idempotent(cmd_dirs, tmp_path):
    run = tmp_path / "run"
    model = train(tiny_config(cmd_dirs), run, verbose=0)
    for name in ("config.json", "transform.json", "history.csv", "model.keras", "done.json"):
        assert (run / name).exists(), name
    rows = read_history(run / "history.csv")
    assert len(rows) == 3 and "val_loss" in rows[0]
    assert np.isfinite(float(rows[-1]["loss"]))
    # The transform was fitted on the training split, not left at its defaults.
    fitted = json.loads((run / "transform.json").read_text())
    assert model.transform.get_config() == pytest.approx(fitted)
    # A finished run is loaded, not retrained.
    again = train(tiny_config(cmd_dirs), run, verbose=0)
    assert len(read_history(run / "history.csv")) == 3
    np.testing.assert_array_equal(again.network.get_weights()[0], model.network.get_weights()[0])
    stars = np.full((32, 32), 1e9, np.float32)
    assert again.sample(stars, num_samples=1, num_steps=2).shape == (1, 1, 32, 32)


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            raise KeyboardInterrupt


def train_interrupted(config, run, monkeypatch, epochs):
    """Trains until `epochs` epochs have ended in this call, then dies as a kill would."""
    original_fit = keras.Model.fit

    def fit(self, *args, callbacks=(), **kwargs):
        return original_fit(self, *args, callbacks=list(callbacks) + [StopAfter(epochs)], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, verbose=0)
    monkeypatch.undo()


@run_folder_logic
def test_killed_run_resumes_and_continues_the_loss_curve(cmd_dirs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_interrupted(tiny_config(cmd_dirs), run, monkeypatch, epochs=2)
    assert not (run / "model.keras").exists()
    assert len(read_history(run / "history.csv")) == 2
    model = train(tiny_config(cmd_dirs), run, verbose=0)
    epochs = [int(row["epoch"]) for row in read_history(run / "history.csv")]
    assert epochs == [0, 1, 2]  # resumed at epoch 2, not from scratch
    # ...and no optimiser step was repeated: 3 epochs of 2 steps in all.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6
    # The training time spans both sessions: every epoch timed once, the last session's part of it.
    seconds = [float(row["epoch_seconds"]) for row in read_history(run / "history.csv")]
    done = json.loads((run / "done.json").read_text())
    assert all(value > 0 for value in seconds) and done["epochs_timed"] == 3
    assert done["wall_time_s"] == pytest.approx(sum(seconds), abs=0.1)
    assert done["wall_time_s"] > seconds[-1] and done["wall_time_s_last_session"] >= seconds[-1]


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(cmd_dirs, tmp_path, monkeypatch):
    config = tiny_config(cmd_dirs)
    once = train(config, tmp_path / "once", verbose=0)

    run = tmp_path / "run"
    train_interrupted(config, run, monkeypatch, epochs=1)
    pointer = run / "backup" / "checkpoint.json"
    after_epoch_1 = pointer.read_text()
    train_interrupted(config, run, monkeypatch, epochs=2)
    assert json.loads(pointer.read_text())["epoch"] == 2
    # As if killed after the weights of epoch 2 were written but before the
    # checkpoint record was renamed into place: epoch 1's record is current.
    pointer.write_text(after_epoch_1)
    resumed = train(config, run, verbose=0)

    assert [int(row["epoch"]) for row in read_history(run / "history.csv")] == [0, 1, 2]
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 6
    # Same data, same noise, same steps: the same weights (float tolerance for threaded kernels).
    for ours, theirs in zip(resumed.get_weights(), once.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not [p for p in run.rglob("*") if ".partial-" in p.name]  # no temporary left behind


@run_folder_logic
def test_a_checkpoint_damaged_from_outside_is_named(cmd_dirs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_interrupted(tiny_config(cmd_dirs), run, monkeypatch, epochs=1)
    weights = run / "backup" / json.loads((run / "backup" / "checkpoint.json").read_text())["weights"]
    weights.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(ValueError, match="checkpoint file .*weights.h5 is unreadable"):
        train(tiny_config(cmd_dirs), run, verbose=0)


@run_folder_logic
def test_bad_configs_are_rejected(cmd_dirs, tmp_path):
    with pytest.raises(ValueError, match="Unknown training settings"):
        TrainConfig.from_dict({"learning_rat": 1.0})
    with pytest.raises(ValueError, match="multiple of `steps_per_epoch`"):
        TrainConfig.from_dict({"steps": 5, "steps_per_epoch": 2})
    with pytest.raises(ValueError, match="checkpoints are taken at epoch ends"):
        TrainConfig.from_dict({"steps": 4, "steps_per_epoch": 2, "checkpoint_every": 3})
    train(tiny_config(cmd_dirs, steps=2, steps_per_epoch=2), tmp_path / "a", verbose=0)
    with pytest.raises(ValueError, match="another configuration"):
        train(tiny_config(cmd_dirs, steps=4, steps_per_epoch=2), tmp_path / "a", verbose=0)


@run_folder_logic
def test_a_run_resumes_with_its_data_named_by_another_path(cmd_dirs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    config = tiny_config(cmd_dirs)
    train_interrupted(config, run, monkeypatch, epochs=1)
    # The same folders, named relative to the working directory (as a run started elsewhere would).
    moved = dict(config, **{key: os.path.relpath(path) for key, path in cmd_dirs.items()})
    resumed = train(moved, run, verbose=0)
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == config["steps"]
    assert json.loads((run / "config.json").read_text())["data_dir"] == moved["data_dir"]


@run_folder_logic
def test_residual_run_trains_the_mean_network_first_and_ships_one_model(cmd_dirs, tmp_path):
    config = tiny_config(cmd_dirs, residual=True, mean_steps=4, prediction="v", loss_weighting="sigmoid")
    model = train(config, tmp_path / "run", verbose=0)
    assert json.loads((tmp_path / "run" / "mean" / "done.json").read_text())["steps"] == 4
    assert len(read_history(tmp_path / "run" / "mean" / "history.csv")) == 2
    assert model.mean_network is not None and model.get_config()["prediction"] == "v"
    mean = keras.saving.load_model(tmp_path / "run" / "mean" / "model.keras", compile=False)
    for ours, theirs in zip(model.mean_network.get_weights(), mean.get_weights()):
        np.testing.assert_array_equal(ours, theirs)  # frozen while the diffusion trained
    loaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert loaded.mean_network.transform.get_config() == loaded.transform.get_config()


@run_folder_logic
def test_mean_only_trains_the_mean_network_and_a_later_call_goes_on(cmd_dirs, tmp_path):
    config = tiny_config(cmd_dirs, residual=True, mean_steps=4, steps=2)
    mean = train(config, tmp_path / "run", verbose=0, mean_only=True)
    assert type(mean).__name__ == "RegressionUNet"
    assert (tmp_path / "run" / "mean" / "done.json").exists() and not (tmp_path / "run" / "model.keras").exists()
    model = train(config, tmp_path / "run", verbose=0)
    assert len(read_history(tmp_path / "run" / "mean" / "history.csv")) == 2  # not trained again
    for ours, theirs in zip(model.mean_network.get_weights(), mean.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="residual = true"):
        train(tiny_config(cmd_dirs), tmp_path / "other", verbose=0, mean_only=True)


@run_folder_logic
def test_a_run_from_init_model_starts_from_its_weights_and_keeps_its_mean_network(cmd_dirs, tmp_path):
    first = train(tiny_config(cmd_dirs, residual=True, mean_steps=2, steps=2), tmp_path / "first", verbose=0)
    start = tmp_path / "first" / "model.keras"
    config = tiny_config(cmd_dirs, residual=True, steps=2, seed=1, init_model=str(start))
    tuned = train(config, tmp_path / "tuned", verbose=0)
    assert not (tmp_path / "tuned" / "mean").exists()  # no mean network trained
    for ours, theirs in zip(tuned.mean_network.get_weights(), first.mean_network.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert tuned.transform.get_config() == first.transform.get_config()
    assert json.loads((tmp_path / "tuned" / "transform.json").read_text()) == first.transform.get_config()
    # Two AdamW steps of rate 1e-3 move each weight by ~2e-3; a fresh initialisation (seed 1) lies far away.
    keras.utils.set_random_seed(1)
    fresh = build_model(TrainConfig.from_dict(config))
    fresh.network.build(None)
    moved = max(np.abs(a - b).max() for a, b in zip(tuned.network.get_weights(), first.network.get_weights()))
    apart = max(np.abs(a - b).max() for a, b in zip(fresh.network.get_weights(), first.network.get_weights()))
    assert 0 < moved < 0.01 < apart

    with pytest.raises(ValueError, match="keeps that model's mean network: drop `mean_steps`"):
        TrainConfig.from_dict(dict(config, mean_steps=2))
    with pytest.raises(ValueError, match="has mean network, but this run has residual = False"):
        train(tiny_config(cmd_dirs, init_model=str(start)), tmp_path / "plain", verbose=0)
    with pytest.raises(ValueError, match="not a model of preset 'tiny'.*do not match"):
        train(dict(config, network={"bottleneck_width": 16}), tmp_path / "wider", verbose=0)
    with pytest.raises(FileNotFoundError, match="No model file at .*missing.keras"):
        train(dict(config, init_model=str(tmp_path / "missing.keras")), tmp_path / "missing", verbose=0)


@run_folder_logic
def test_time_limit_stops_at_a_checkpoint_and_a_rerun_finishes(cmd_dirs, tmp_path):
    run = tmp_path / "run"
    # A zero budget stops after the first epoch (its checkpoint is written first).
    assert train(tiny_config(cmd_dirs), run, verbose=0, time_limit_s=0.0) is None
    assert not (run / "model.keras").exists() and not (run / "done.json").exists()
    assert [row["epoch"] for row in read_history(run / "history.csv")] == ["0"]
    model = train(tiny_config(cmd_dirs), run, verbose=0)
    assert model is not None and (run / "done.json").exists()
    assert [row["epoch"] for row in read_history(run / "history.csv")] == ["0", "1", "2"]


@run_folder_logic
def test_residual_settings_are_checked():
    with pytest.raises(ValueError, match="mean_steps"):
        TrainConfig.from_dict({"residual": True, "steps": 4, "steps_per_epoch": 2})
    with pytest.raises(ValueError, match="residual = true"):
        TrainConfig.from_dict({"mean_steps": 2, "steps": 4, "steps_per_epoch": 2})
    with pytest.raises(ValueError, match="mean_objective.*residual = true"):
        TrainConfig.from_dict({"mean_objective": "poisson", "steps": 4, "steps_per_epoch": 2})
    with pytest.raises(ValueError, match="Unknown `mean_objective` 'linear'"):
        TrainConfig.from_dict({"residual": True, "mean_steps": 2, "mean_objective": "linear", "steps": 4,
                               "steps_per_epoch": 2})
    config = TrainConfig.from_dict({"residual": True, "mean_steps": 2, "mean_objective": "poisson", "steps": 4,
                                    "steps_per_epoch": 2})
    assert TrainConfig.from_dict(dataclasses.asdict(config)) == config


@run_folder_logic
def test_science_monitor_logs_posterior_statistics_and_keeps_the_best_model(cmd_dirs, tmp_path):
    science = {"every_epochs": 2, "maps": 2, "samples": 2, "steps": 2}
    config = tiny_config(cmd_dirs, steps=8, science=science)
    train(config, tmp_path / "run", verbose=0)
    rows = read_history(tmp_path / "run" / "history.csv")
    measured = [row for row in rows if row["science_r_mean"] != ""]
    assert [int(row["epoch"]) for row in measured] == [1, 3]  # every second epoch
    for row in measured:
        assert -1.0 <= float(row["science_r_mean"]) <= 1.0
        assert float(row["science_power_error"]) >= 0.0 and float(row["science_coverage_error"]) >= 0.0
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["epoch"] in (1, 3)
    assert best["science_r_mean"] == max(float(row["science_r_mean"]) for row in measured)
    assert keras.saving.load_model(tmp_path / "run" / "best.keras").count_params() > 0
    # The setting round-trips through the run folder: a rerun is the same run.
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["science"] == {**science, "seed": 0}
    assert TrainConfig.from_dict(stored).science.every_epochs == 2
    with pytest.raises(ValueError, match="samples >= 2"):
        TrainConfig.from_dict({"science": {"every_epochs": 1, "samples": 1}})


def test_docstring_examples_run():
    import doctest

    from keras_dmdiff import training

    result = doctest.testmod(training)
    assert result.attempted > 0 and result.failed == 0
