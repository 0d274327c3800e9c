"""SIGKILL a whole recipe at random moments, rerun it until done: it ends where an uninterrupted run ends.

Every step kind that writes state runs at tiny size: mock (3 simulations on a
32^3 grid), train (tiny network, 4 epochs of 2 steps), evaluate (2 maps x 2
samples x 3 steps), export, ship. The recipe is killed with SIGKILL at seeded
random moments of its run (at least 5 kills land) and rerun until done; it must
reach the same training history, weights, metrics, samples, SavedModel outputs
and shipped model. TensorFlow's CPU
kernels are deterministic for a fixed thread count, so the tolerances are float
round-off, not statistics.
"""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import keras_dmdiff.models  # noqa: F401  (registers the classes that model.keras names)

pytestmark = pytest.mark.backend_independent

RECIPE = """
description = "every step kind that writes state, tiny"

[[steps]]
kind = "mock"
suite = "IllustrisTNG"
num_sims = 3
grid_size = 32
num_steps = 3
out = "data/IllustrisTNG"

[[steps]]
kind = "train"
dataset = "camels_cmd/IllustrisTNG_LH"
manual_dir = "data/IllustrisTNG"
verbose = 0
preset = "tiny"
crop_size = 32
batch_size = 4
steps = 8
steps_per_epoch = 2
checkpoint_every = 2
validation_batches = 1

[[steps]]
kind = "evaluate"
model = "train/model.keras"
dataset = "camels_cmd/IllustrisTNG_LH"
manual_dir = "data/IllustrisTNG"
num_samples = 2
num_steps = 3
max_maps = 2
crop_size = 32
seed = 0

[[steps]]
kind = "export"
model = "train/model.keras"
samplers = ["ancestral"]

[[steps]]
kind = "ship"
name = "tiny"
out = "shipped/tiny"
description = "every step kind, tiny"
"""

KILLS = 6


def kill_delays(uninterrupted_s, seed=0):
    """Seconds each killed call runs: seeded, spread over the whole run (imports included)."""
    return np.random.default_rng(seed).uniform(0.05, 0.4, KILLS) * uninterrupted_s


def command(recipe, run_dir):
    code = "import sys; from keras_dmdiff.recipes import run_recipe; run_recipe(sys.argv[1], sys.argv[2])"
    return [sys.executable, "-c", code, str(recipe), str(run_dir)]


def environment():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def run_killed(recipe, run_dir, delays):
    """Runs the recipe, SIGKILLed after each delay, then to the end; returns the kills that landed."""
    kills = 0
    for delay in delays:
        process = subprocess.Popen(command(recipe, run_dir), env=environment(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.returncode == 0
        return kills
    finished = subprocess.run(command(recipe, run_dir), env=environment(), capture_output=True, text=True,
                              timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return kills


def test_a_recipe_killed_anywhere_ends_where_an_uninterrupted_run_ends(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    once = tmp_path / "once"
    start = time.time()
    done = subprocess.run(command(recipe, once), env=environment(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    uninterrupted_s = time.time() - start

    killed = tmp_path / "killed"
    kills = run_killed(recipe, killed, kill_delays(uninterrupted_s))
    assert kills >= 5, f"only {kills} kills landed in a {uninterrupted_s:.0f} s run"

    # The training history: every epoch once, the same losses.
    def history(run):
        lines = (run / "train" / "history.csv").read_text().splitlines()
        header = lines[0].split(",")
        return [dict(zip(header, map(float, line.split(",")))) for line in lines[1:]]

    a, b = history(once), history(killed)
    assert [row["epoch"] for row in b] == [0.0, 1.0, 2.0, 3.0]
    for row_a, row_b in zip(a, b):
        assert row_b["loss"] == pytest.approx(row_a["loss"], rel=1e-4, abs=1e-6)
    # The weights.
    model_a = keras.saving.load_model(once / "train" / "model.keras", compile=False)
    model_b = keras.saving.load_model(killed / "train" / "model.keras", compile=False)
    for wa, wb in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-4, atol=1e-6)
    # The samples and the metrics.
    with h5py.File(once / "evaluate" / "samples.h5") as fa, h5py.File(killed / "evaluate" / "samples.h5") as fb:
        np.testing.assert_allclose(fb["samples"][:], fa["samples"][:], rtol=1e-3)
    summary_a = json.loads((once / "evaluate" / "metrics.json").read_text())["summary"]
    summary_b = json.loads((killed / "evaluate" / "metrics.json").read_text())["summary"]
    for key in ("cross_correlation_1_k_5", "power_ratio_error_k_lt_10", "mse_dex2"):
        for name, value in summary_a[key].items():
            if value is None:  # undefined on these tiny maps (JSON null) in both runs
                assert summary_b[key][name] is None, (key, name)
            else:
                assert summary_b[key][name] == pytest.approx(value, rel=1e-3, abs=1e-6), (key, name)
    # The exported SavedModel draws the same samples for a seed.
    from keras_dmdiff.export import load_exported

    stars = np.asarray(h5py.File(once / "evaluate" / "samples.h5")["stellar_mass"][:1])
    draw_a = load_exported(str(once / "saved_model"))(stars, num_samples=1, num_steps=2, seed=3)
    draw_b = load_exported(str(killed / "saved_model"))(stars, num_samples=1, num_steps=2, seed=3)
    np.testing.assert_allclose(draw_b, draw_a, rtol=1e-3)
    # The shipped model: the same weights and held-out metrics (its card's wall times differ).
    shipped_a = keras.saving.load_model(once / "shipped" / "tiny" / "model.keras", compile=False)
    shipped_b = keras.saving.load_model(killed / "shipped" / "tiny" / "model.keras", compile=False)
    for wa, wb, wt in zip(shipped_a.get_weights(), shipped_b.get_weights(), model_a.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(wa, wt)
    card_a = json.loads((once / "shipped" / "tiny" / "metrics.json").read_text())
    card_b = json.loads((killed / "shipped" / "tiny" / "metrics.json").read_text())
    assert card_b["evaluation"]["summary"]["verdict"] == card_a["evaluation"]["summary"]["verdict"]
    assert card_b["training"]["steps"] == card_a["training"]["steps"] == 8
