"""Declarative experiment recipes (recipes/*.toml), run step by step in one folder.

A recipe is a TOML file with a `description` and an ordered list of `[[steps]]`
tables, each with a `kind`:

    mock      write mock CMD files        (keras_dmdiff.mock.write_cmd_files)
    train     train a model               (keras_dmdiff.training.train)
    distill   fewer sampling steps        (keras_dmdiff.distillation.distill)
    evaluate  statistics and calibration  (keras_dmdiff.evaluation.run_evaluation)
    export    SavedModel                  (keras_dmdiff.export.export_saved_model)
    large_volume  one big mock box, whole and tiled (keras_dmdiff.large_volume)
    cross_suite   every model on every suite      (keras_dmdiff.cross_suite)
    ship      copy a finished run into saved_models/ with its card (keras_dmdiff.model_card)

Relative paths inside a step are relative to the run folder, so a run folder is
self-contained: the copy of the recipe, the data it generated, the model, the
metrics and the figures. Every step is resumable, so re-running a recipe after
a kill continues where it stopped.

Example:
    >>> run_recipe("recipes/quickstart.toml", "runs/quickstart")
"""

import dataclasses
import inspect
import pathlib
import shutil
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from keras_dmdiff import atomic_files
from keras_dmdiff.posterior import SamplingOptions, load_keras_posterior

RUN_STEP_KINDS = ("mock", "train", "distill", "evaluate", "export", "large_volume", "cross_suite", "ship", "bench")


def load_recipe(path):
    """Reads and checks a recipe file; returns its dict."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No recipe at {path}.")
    with open(path, "rb") as handle:
        try:
            recipe = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from error
    for index, step in enumerate(recipe.get("steps", [])):
        kind = step.get("kind")
        if kind not in RUN_STEP_KINDS:
            raise ValueError(f"{path}: step {index} has kind {kind!r}; expected one of {RUN_STEP_KINDS}.")
        known = _step_keys(kind)
        unknown = sorted(set(step) - known) if known is not None else []
        if unknown:
            raise ValueError(
                f"{path}: step {index} ({kind}) has unknown settings {unknown}; known: {sorted(known)}."
            )
    return recipe


# Settings each step kind reads (besides `kind`); the kinds that pass their
# settings on to a function are checked by that function's signature.
_SAMPLING_KEYS = {field.name for field in dataclasses.fields(SamplingOptions)}
# Every step's TFDS folder, in the run folder unless told.
_DATA_DIR = "tfds"
_STEP_KEYS = {
    "export": {"model", "out", "samplers", "random_shifts"},
    "ship": {"out", "name", "description", "limitations", "train", "evaluation", "saved_model", "student_steps"},
}


def _step_keys(kind):
    if kind == "mock":
        from keras_dmdiff.mock import MockSettings, write_cmd_files

        # write_cmd_files' own argument names and MockSettings' fields; `out` is its out_dir.
        arguments = set(inspect.signature(write_cmd_files).parameters) - {"out_dir", "progress", "settings"}
        return {"kind", "out"} | arguments | {field.name for field in dataclasses.fields(MockSettings)}
    if kind == "train":
        from keras_dmdiff.training import TrainConfig

        return {"kind", "out", "verbose"} | {field.name for field in dataclasses.fields(TrainConfig)}
    if kind == "distill":
        from keras_dmdiff.distillation import DistillConfig

        return {"kind", "out", "verbose"} | {field.name for field in dataclasses.fields(DistillConfig)}
    if kind == "evaluate":
        return {"kind"} | set(_EVALUATE_PATHS) | _evaluation_keys() | _evaluation_data_keys()
    if kind == "large_volume":
        return _large_volume_keys()
    if kind == "cross_suite":
        return ({"kind", "models", "data", "out", "set_name"} | _evaluation_keys()
                | _evaluation_data_keys() - {"dataset", "manual_dir"})
    if kind == "bench":
        from keras_dmdiff.bench import BenchConfig

        return {"kind", "out"} | {field.name for field in dataclasses.fields(BenchConfig)}
    keys = _STEP_KEYS.get(kind)
    return None if keys is None else keys | {"kind"}


def _resolve(run_dir, value):
    if value is None:
        return None
    path = pathlib.Path(value).expanduser()
    return str(path if path.is_absolute() else run_dir / path)


def _step_mock(step, run_dir):
    from keras_dmdiff.mock import write_cmd_files_from_fields

    settings = {k: v for k, v in step.items() if k not in ("kind", "out")}
    write_cmd_files_from_fields(_resolve(run_dir, step["out"]), progress=True, **settings)


def _step_train(step, run_dir, time_limit_s=None):
    """Returns False when the time limit stopped the training before its end."""
    from keras_dmdiff.training import train

    out = _resolve(run_dir, step.get("out", "train"))
    return train(_training_settings(step, run_dir), out, verbose=step.get("verbose", 2),
                 time_limit_s=time_limit_s) is not None


def _training_settings(step, run_dir):
    """A training or distillation step's settings, its data folders and initial model resolved in the run folder."""
    settings = {k: v for k, v in step.items() if k not in ("kind", "out", "verbose")}
    settings["data_dir"] = _resolve(run_dir, settings.get("data_dir", _DATA_DIR))
    settings["manual_dir"] = _resolve(run_dir, settings.get("manual_dir"))
    if "init_model" in settings:
        settings["init_model"] = _resolve(run_dir, settings["init_model"])
    return settings


def _step_distill(step, run_dir, time_limit_s=None):
    """Returns False when the time limit stopped the distillation before its end."""
    from keras_dmdiff.distillation import distill

    settings = _training_settings(step, run_dir)
    settings["teacher"] = _resolve(run_dir, settings.get("teacher", "train/model.keras"))
    out = _resolve(run_dir, step.get("out", "distill"))
    return distill(settings, out, verbose=step.get("verbose", 2), time_limit_s=time_limit_s) is not None


def _sampling_options(step):
    """The step's `SamplingOptions`, from its keys named like the dataclass's fields."""
    return SamplingOptions.from_dict({key: step[key] for key in _SAMPLING_KEYS if key in step})


def _evaluation_keys():
    """The keys of a step's `EvaluationSettings`: its own fields and the sampling options'."""
    from keras_dmdiff.evaluation import EvaluationSettings

    own = {field.name for field in dataclasses.fields(EvaluationSettings)} - {"options", "measure"}
    return own | _SAMPLING_KEYS


def _evaluation_settings(step):
    """The step's `EvaluationSettings`, from its keys named like the dataclasses' fields."""
    from keras_dmdiff.evaluation import EvaluationSettings

    own = _evaluation_keys() - _SAMPLING_KEYS
    return EvaluationSettings(**{key: step[key] for key in own if key in step}, options=_sampling_options(step))


# The evaluate step's paths to models and its output (relative to the run
# folder): recipe key -> default. Like every step's, path keys are named by
# what they point to (`model`, `out`), without a _path or _dir suffix.
_EVALUATE_PATHS = {"model": "train/model.keras", "out": "evaluate", "regression_model": None}


def _evaluation_data_keys():
    from keras_dmdiff.evaluation import EvaluationData

    return {field.name for field in dataclasses.fields(EvaluationData)}


def _evaluation_data(step, run_dir):
    """The step's `EvaluationData`, its folders resolved in the run folder."""
    from keras_dmdiff.evaluation import EvaluationData

    data = {key: step[key] for key in _evaluation_data_keys() - {"data_dir", "manual_dir"} if key in step}
    return EvaluationData(**data, data_dir=_resolve(run_dir, step.get("data_dir", _DATA_DIR)),
                          manual_dir=_resolve(run_dir, step.get("manual_dir")))


def _step_evaluate(step, run_dir):
    from keras_dmdiff.evaluation import run_evaluation

    paths = {key: _resolve(run_dir, step.get(key, default)) for key, default in _EVALUATE_PATHS.items()}
    run_evaluation(paths["model"], _evaluation_data(step, run_dir), paths["out"], _evaluation_settings(step),
                   regression_model_path=paths["regression_model"])


def _step_export(step, run_dir):
    from keras_dmdiff.export import export_saved_model

    out = pathlib.Path(_resolve(run_dir, step.get("out", "saved_model")))
    if (out / "saved_model.pb").exists():
        return
    model = load_keras_posterior(_resolve(run_dir, step.get("model", "train/model.keras")))
    options = {"random_shifts": bool(step["random_shifts"])} if "random_shifts" in step else {}
    export_saved_model(model, out, samplers=tuple(step.get("samplers", ("ancestral", "ddim"))), **options)


def _step_large_volume(step, run_dir):
    from keras_dmdiff.large_volume import LargeVolumeSettings, run_large_volume

    out = pathlib.Path(_resolve(run_dir, step.get("out", "large_volume")))
    if (out / "metrics.json").exists():
        return
    own = _large_volume_keys() - _SAMPLING_KEYS - {"kind", "model", "data", "out"}
    options = LargeVolumeSettings().options.replace(**{key: step[key] for key in _SAMPLING_KEYS if key in step})
    settings = LargeVolumeSettings(**{key: step[key] for key in own if key in step}, options=options)
    run_large_volume(_resolve(run_dir, step["model"]), _resolve(run_dir, step["data"]), out, settings)


def _large_volume_keys():
    from keras_dmdiff.large_volume import LargeVolumeSettings

    own = {field.name for field in dataclasses.fields(LargeVolumeSettings)} - {"options"}
    return {"kind", "model", "data", "out"} | own | _SAMPLING_KEYS


def _step_cross_suite(step, run_dir):
    from keras_dmdiff.cross_suite import run_cross_suite

    run_cross_suite(
        {suite: _resolve(run_dir, path) for suite, path in step["models"].items()},
        {suite: _resolve(run_dir, path) for suite, path in step["data"].items()},
        _resolve(run_dir, step.get("out", "cross_suite")),
        _evaluation_settings(step),
        reading=_evaluation_data(step, run_dir),
        **({"set_name": step["set_name"]} if "set_name" in step else {}),
    )


def _step_ship(step, run_dir):
    from keras_dmdiff.model_card import ship_model

    ship_model(
        run_dir,
        _resolve(run_dir, step["out"]),
        step["name"],
        train=step.get("train", "train"),
        evaluation=step.get("evaluation", "evaluate"),
        # A recipe ships no SavedModel with saved_model = "" (TOML has no null).
        saved_model=step.get("saved_model", "saved_model") or None,
        student_steps=step.get("student_steps"),
        data_description=step.get("description", ""),
        limitations=step.get("limitations", []),
    )


def _step_bench(step, run_dir):
    from keras_dmdiff.bench import BenchConfig, run_bench

    out = pathlib.Path(_resolve(run_dir, step.get("out", "bench.json")))
    if out.exists():
        return
    settings = {k: v for k, v in step.items() if k not in ("kind", "out")}
    for name in ("quality_model", "quality_data"):
        settings[name] = _resolve(run_dir, step.get(name))
    settings["quality_students"] = [_resolve(run_dir, path) for path in step.get("quality_students", [])]
    run_bench(BenchConfig.from_dict(settings), json_path=out)


# The steps that train, and stop at the recipe's time limit.
_TIMED_STEPS = {"train": _step_train, "distill": _step_distill}
_STEPS = {
    "mock": _step_mock,
    "evaluate": _step_evaluate,
    "export": _step_export,
    "large_volume": _step_large_volume,
    "cross_suite": _step_cross_suite,
    "ship": _step_ship,
    "bench": _step_bench,
}


def run_recipe(path, out_dir=None, time_limit_s=None):
    """Runs every step of a recipe into `out_dir` (default runs/<recipe name>).

    Args:
        path: the recipe .toml.
        out_dir: the run folder; a copy of the recipe is kept in it.
        time_limit_s: None, or wall-time seconds for this call: a training
            or distillation step stops cleanly at its last checkpoint that
            fits, and the recipe stops there; rerunning resumes.

    Returns:
        The run folder as a pathlib.Path.
    """
    deadline = None if time_limit_s is None else time.time() + float(time_limit_s)
    path = pathlib.Path(path)
    recipe = load_recipe(path)
    run_dir = pathlib.Path(out_dir or pathlib.Path("runs") / path.stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    copy = run_dir / "recipe.toml"
    if copy.exists() and copy.read_bytes() != path.read_bytes():
        raise ValueError(f"{run_dir} was made by another version of the recipe ({copy}); use a new folder.")
    with atomic_files.replacing(copy) as temporary:  # a partial copy would read as another recipe
        shutil.copyfile(path, temporary)
    for index, step in enumerate(recipe.get("steps", [])):
        start = time.time()
        print(f"[{path.stem}] step {index + 1}/{len(recipe['steps'])}: {step['kind']}", flush=True)
        if step["kind"] in _TIMED_STEPS:
            remaining = None if deadline is None else deadline - time.time()
            if not _TIMED_STEPS[step["kind"]](step, run_dir, remaining):
                print(f"[{path.stem}] stopped by the time limit; rerun to resume.", flush=True)
                return run_dir
        else:
            _STEPS[step["kind"]](step, run_dir)
        print(f"[{path.stem}] step {step['kind']} done in {time.time() - start:.0f} s", flush=True)
    return run_dir
