import json
import pathlib

import pytest

from keras_dmdiff.recipes import load_recipe, run_recipe

RECIPES = sorted((pathlib.Path(__file__).parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe["description"].strip()
    assert recipe["steps"]


def test_bad_recipes_are_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('description = "x"\n[[steps]]\nkind = "dance"\n')
    with pytest.raises(ValueError, match="kind 'dance'"):
        load_recipe(bad)
    bad.write_text('description = "x"\n[[steps]]\nkind = "evaluate"\nnum_sampels = 4\n')
    with pytest.raises(ValueError, match=r"unknown settings \['num_sampels'\]"):
        load_recipe(bad)
    # The mock step's settings are write_cmd_files' arguments, by the same names.
    bad.write_text('description = "x"\n[[steps]]\nkind = "mock"\nsuite = "SIMBA"\nset = "CV"\npm_steps = 2\n')
    with pytest.raises(ValueError, match=r"unknown settings \['pm_steps', 'set'\]; known: .*'num_steps'.*'set_name'"):
        load_recipe(bad)
    bad.write_text('description = "x"\n[[steps]]\nkind = "train"\nlearning_rat = 1.0\n')
    with pytest.raises(ValueError, match="unknown settings"):
        load_recipe(bad)
    bad.write_text("description = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.toml")


SMALL_TRAIN = """
preset = "tiny"
crop_size = 32
batch_size = 4
steps = 2
steps_per_epoch = 2
validation_batches = 1
"""

CROSS_SUITE = """
description = "two suites, tiny everything"
{mocks}
{trains}
[[steps]]
kind = "cross_suite"
num_samples = 2
num_steps = 2
max_maps = 1
crop_size = 64
[steps.models]
IllustrisTNG = "train_IllustrisTNG/model.keras"
SIMBA = "train_SIMBA/model.keras"
[steps.data]
IllustrisTNG = "data/IllustrisTNG"
SIMBA = "data/SIMBA"
"""


@pytest.mark.backend_independent  # slow-ish; the pipeline is the same on both backends
def test_cross_suite_recipe_runs_end_to_end_and_resumes(tmp_path, capsys):
    mocks = "".join(
        f'[[steps]]\nkind = "mock"\nsuite = "{s}"\nnum_sims = 3\ngrid_size = 32\nnum_steps = 3\nout = "data/{s}"\n'
        for s in ("IllustrisTNG", "SIMBA")
    )
    trains = "".join(
        f'[[steps]]\nkind = "train"\nout = "train_{s}"\ndataset = "camels_cmd/{s}_LH"\nmanual_dir = "data/{s}"\nverbose = 0\n'
        + SMALL_TRAIN
        for s in ("IllustrisTNG", "SIMBA")
    )
    recipe = tmp_path / "cross.toml"
    recipe.write_text(CROSS_SUITE.format(mocks=mocks, trains=trains))
    run = run_recipe(recipe, tmp_path / "run")
    table = json.loads((run / "cross_suite" / "table.json").read_text())
    assert set(table) == {"IllustrisTNG", "SIMBA"} and set(table["SIMBA"]) == {"IllustrisTNG", "SIMBA"}
    assert all(value is not None for value in table["SIMBA"]["IllustrisTNG"].values())
    assert "| IllustrisTNG |" in (run / "cross_suite" / "table.md").read_text()
    assert (run / "cross_suite" / "cross_suite.png").exists()
    assert (run / "recipe.toml").read_text() == recipe.read_text()
    # Re-running a finished recipe redoes nothing.
    stamp = (run / "cross_suite" / "SIMBA_on_SIMBA" / "metrics.json").stat().st_mtime
    run_recipe(recipe, tmp_path / "run")
    assert (run / "cross_suite" / "SIMBA_on_SIMBA" / "metrics.json").stat().st_mtime == stamp
    # A changed recipe does not silently mix into the old folder.
    recipe.write_text(recipe.read_text().replace("num_samples = 2", "num_samples = 3"))
    with pytest.raises(ValueError, match="another version of the recipe"):
        run_recipe(recipe, tmp_path / "run")


@pytest.mark.backend_independent
def test_recipes_are_read_without_tomllib_as_on_python_3_10(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: recipes then read through tomli (a dependency there)."""
    import importlib
    import sys

    import keras_dmdiff.recipes as recipes

    recipe = tmp_path / "r.toml"
    recipe.write_text('description = "x"\n\n[[steps]]\nkind = "export"\nmodel = "m.keras"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails
    try:
        reloaded = importlib.reload(recipes)
        assert reloaded.tomllib.__name__ == "tomli"
        assert reloaded.load_recipe(recipe)["steps"][0]["model"] == "m.keras"
    finally:
        monkeypatch.undo()
        importlib.reload(recipes)


def test_the_evaluate_step_passes_its_settings_to_run_evaluation(tmp_path, monkeypatch):
    from keras_dmdiff import evaluation

    calls = []

    def run_evaluation(model_path, data, out_dir, settings, **kwargs):
        calls.append((model_path, data, out_dir, settings, kwargs))

    monkeypatch.setattr(evaluation, "run_evaluation", run_evaluation)
    recipe = tmp_path / "evaluate.toml"
    recipe.write_text(
        'description = "x"\n[[steps]]\nkind = "evaluate"\nnum_samples = 4\nmax_train_maps = 3\n'
        'regression_model = "train/mean/model.keras"\nsampler = "ddim"\n'
    )
    run_recipe(recipe, tmp_path / "run")
    ((model_path, data, out_dir, settings, kwargs),) = calls
    assert settings.num_samples == 4 and data.max_train_maps == 3
    # What the step does not set keeps the dataclasses' defaults, written there only.
    assert settings.num_steps == evaluation.EvaluationSettings().num_steps
    assert (data.dataset, data.split) == (evaluation.DEFAULT_DATASET, evaluation.DEFAULT_SPLIT)
    run = tmp_path / "run"
    assert model_path == str(run / "train" / "model.keras")
    assert kwargs["regression_model_path"] == str(run / "train" / "mean" / "model.keras")
    assert out_dir == str(run / "evaluate") and data.manual_dir is None
    assert data.data_dir == str(run / "tfds")
    assert settings.options.sampler == "ddim"


def test_the_evaluate_and_cross_suite_steps_refuse_unknown_settings(tmp_path):
    for kind in ("evaluate", "cross_suite"):
        recipe = tmp_path / f"{kind}.toml"
        recipe.write_text(f'description = "x"\n[[steps]]\nkind = "{kind}"\nnum_sample = 4\n')
        with pytest.raises(ValueError, match=r"unknown settings \['num_sample'\]"):
            run_recipe(recipe, tmp_path / "run")


def test_the_distill_step_resolves_its_paths_and_stops_at_the_time_limit(tmp_path, monkeypatch):
    from keras_dmdiff import distillation

    calls = []

    def distill(settings, out, verbose, time_limit_s):
        calls.append((settings, out, time_limit_s))
        return None  # stopped by the time limit

    monkeypatch.setattr(distillation, "distill", distill)
    recipe = tmp_path / "distill.toml"
    recipe.write_text(
        'description = "x"\n[[steps]]\nkind = "distill"\nteacher = "train/model.keras"\nmanual_dir = "data"\n'
        'teacher_steps = 16\nstudent_steps = 8\n[[steps]]\nkind = "export"\nmodel = "distill/model.keras"\n'
    )
    run = tmp_path / "run"
    assert run_recipe(recipe, run, time_limit_s=100.0) == run
    ((settings, out, time_limit_s),) = calls
    assert settings["teacher"] == str(run / "train" / "model.keras") and settings["manual_dir"] == str(run / "data")
    assert settings["data_dir"] == str(run / "tfds") and out == str(run / "distill")
    assert 0 < time_limit_s <= 100.0
    assert not (run / "saved_model").exists()  # the export waits for the distillation to finish
    bad = tmp_path / "bad.toml"
    bad.write_text('description = "x"\n[[steps]]\nkind = "distill"\npreset = "cpu"\n')
    with pytest.raises(ValueError, match=r"unknown settings \['preset'\]"):
        load_recipe(bad)
