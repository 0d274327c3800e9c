"""Training runs: a model, its data pipeline and callbacks, resumable in one folder.

A run folder holds everything a run writes:

    run_dir/
      config.json        the TrainConfig (what produced this run)
      transform.json     the fitted normalisation (reused on resume)
      backup/            the resumable checkpoint (keras_dmdiff.checkpoint), every
                         `checkpoint_every` steps
      logs/              TensorBoard
      history.csv        the loss curve (appended across resumes)
      model.keras        the final model (EMA weights when EMA is on)
      done.json          wall time and step count, written last
      mean/              residual mode only: the regression U-Net mu(stars),
                         trained first, in the same layout


Re-running a finished run does nothing; re-running a killed run resumes from
its last checkpoint with the loss curve continuing.
"""

import csv
import dataclasses
import json
import os
import pathlib
import time

import keras
import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.checkpoint import ResumableCheckpoint
from keras_dmdiff.models import VariationalDiffusion, network_from_preset
from keras_dmdiff.models.regression_unet import OBJECTIVES as MEAN_OBJECTIVES
from keras_dmdiff.science_monitor import MonitorConfig, PosteriorMonitor
from keras_dmdiff.settings import from_fields
from keras_dmdiff.stats.power_spectrum import DEFAULT_BOX_SIZE
from keras_dmdiff.transforms import MapTransform


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run.

    Args:
        dataset: TFDS name, e.g. "camels_cmd/mock_IllustrisTNG_LH" or
            "camels_cmd/IllustrisTNG_LH" (real files from `manual_dir`).
        data_dir: TFDS data dir (None: the TFDS default).
        manual_dir: folder of the real CMD files.
        preset: network preset ("paper", "cpu", "tiny").
        network: keyword overrides of the preset.
        schedule: noise schedule name.
        crop_size: training crop side (None: full maps).
        batch_size: maps per step.
        steps: total optimiser steps.
        steps_per_epoch: steps between validation / logging points.
        learning_rate, weight_decay, clipnorm: AdamW settings.
        restart_steps: first period of cosine warm restarts (None: constant rate).
        ema_momentum: EMA of the weights (None: no EMA).
        checkpoint_every: steps between resumable checkpoints, a multiple of
            `steps_per_epoch`: checkpoints are taken at epoch ends, so a
            resumed run repeats no step and continues exactly where it stopped.
        validation_batches: batches of the validation split evaluated per epoch.
        seed: seed of the model and the pipeline.
        data_parallel: split batches over all local devices (keras.distribution).
        prediction, loss_weighting, weighting_bias, importance_sampling,
            multiscale_weight: the diffusion objective (see `VariationalDiffusion`).
        residual: train a regression U-Net mu(stars) first (same preset, data
            and optimiser settings) and the diffusion on y - mu(stars).
        mean_steps: optimiser steps of that regression U-Net.
        mean_objective: its objective, one of `RegressionUNet`'s ("log_mse",
            the reference; "poisson", whose minimiser is the linear-space mean).
        science: a `keras_dmdiff.science_monitor.MonitorConfig` (or its dict):
            every `every_epochs` epochs, sample held-out validation maps and
            log the posterior's statistics; keeps `best.keras` (0: off).
        init_model: a `.keras` VariationalDiffusion whose weights this run
            starts from (fine-tuning), instead of a random initialisation: the
            same preset and network settings, its normalisation, and in
            residual mode its trained mean network, kept as it is (so
            `mean_steps` stays 0). None: train from scratch.
    """

    dataset: str = "camels_cmd/mock_IllustrisTNG_LH"
    data_dir: str | None = None
    manual_dir: str | None = None
    preset: str = "cpu"
    network: dict = dataclasses.field(default_factory=dict)
    schedule: str = "learned_linear"
    crop_size: int | None = 64
    batch_size: int = 12
    steps: int = 10_000
    steps_per_epoch: int = 200
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    clipnorm: float = 0.5
    restart_steps: int | None = None
    ema_momentum: float | None = 0.999
    checkpoint_every: int = 200
    validation_batches: int = 4
    seed: int = 0
    data_parallel: bool = False
    prediction: str = "eps"
    loss_weighting: str = "elbo"
    weighting_bias: float | None = None
    importance_sampling: bool = False
    multiscale_weight: float = 0.0
    residual: bool = False
    mean_steps: int = 0
    mean_objective: str = "log_mse"
    science: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    init_model: str | None = None

    def __post_init__(self):
        if isinstance(self.science, dict):
            self.science = MonitorConfig(**self.science)

    @classmethod
    def from_dict(cls, values):
        config = from_fields(cls, values, "training settings")
        config.validate()
        return config

    def validate(self):
        check_schedule(self)
        if self.init_model is not None and self.mean_steps:
            raise ValueError("A run from `init_model` keeps that model's mean network: drop `mean_steps`.")
        if self.residual and self.init_model is None and (self.mean_steps < 1 or self.mean_steps % self.steps_per_epoch):
            raise ValueError(
                f"A residual run needs `mean_steps` >= 1, a multiple of `steps_per_epoch` "
                f"({self.steps_per_epoch}); got {self.mean_steps}."
            )
        self.science.validate()
        if not self.residual and self.mean_steps:
            raise ValueError("`mean_steps` is the residual mode's setting: set `residual = true` or drop it.")
        if not self.residual and self.mean_objective != "log_mse":
            raise ValueError("`mean_objective` is the residual mode's setting: set `residual = true` or drop it.")
        if self.mean_objective not in MEAN_OBJECTIVES:
            raise ValueError(f"Unknown `mean_objective` {self.mean_objective!r}; choose one of {MEAN_OBJECTIVES}.")


def check_schedule(config):
    """Checks the step counts and learning rate of a training or distillation configuration."""
    for name in ("batch_size", "steps", "steps_per_epoch", "checkpoint_every"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"Training setting `{name}` must be >= 1; got {getattr(config, name)}.")
    if config.checkpoint_every % config.steps_per_epoch:
        raise ValueError(
            f"`checkpoint_every` ({config.checkpoint_every}) must be a multiple of `steps_per_epoch` "
            f"({config.steps_per_epoch}): checkpoints are taken at epoch ends."
        )
    if config.steps % config.steps_per_epoch:
        raise ValueError(
            f"`steps` ({config.steps}) must be a multiple of `steps_per_epoch` ({config.steps_per_epoch})."
        )
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; got {config.learning_rate}.")


class ResumableCSVLogger(keras.callbacks.Callback):
    """Appends one row per epoch to a CSV file, consistent across resumes.

    A run killed mid-epoch resumes at the start of that epoch: rows of epochs
    at or after the resumed one are dropped first, so the curve continues
    without duplicates.

    Args:
        path: the CSV file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)
        self._resumed = False

    def _read(self):
        if not self.path.exists():
            return [], []
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)

    def on_epoch_begin(self, epoch, logs=None):
        if self._resumed:
            return
        self._resumed = True
        fields, rows = self._read()
        kept = [row for row in rows if int(row["epoch"]) < epoch]
        if len(kept) != len(rows):
            self._write(fields, kept)

    def _write(self, fields, rows):
        with atomic_files.replacing(self.path) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def on_epoch_end(self, epoch, logs=None):
        fields, rows = self._read()
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        # Some keys appear only in some epochs (the science monitor's): a column each, from then on.
        fields = fields + [k for k in row if k not in fields]
        rows.append({k: row.get(k, "") for k in fields})
        self._write(fields, rows)


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds`, the epoch's wall time, to the logs (so to history.csv).

    Summed over history.csv (`total_wall_time`), it is the run's training time
    over every session that resumed it, each epoch counted once.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.time() - self._start


def total_wall_time(history_path):
    """`(seconds, epochs timed)`: the `epoch_seconds` of a run's history.csv, summed.

    Epochs written before the column existed are not counted, hence the count.

    Args:
        history_path: a history.csv written by `train`.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "history.csv"
        >>> _ = path.write_text("epoch,loss,epoch_seconds\\n0,1.0,\\n1,0.5,60.5\\n2,0.4,59.5\\n")
        >>> total_wall_time(path)
        (120.0, 2)
    """
    with open(history_path, newline="") as handle:
        values = [row.get("epoch_seconds") for row in csv.DictReader(handle)]
    timed = [float(value) for value in values if value not in (None, "")]
    return round(sum(timed), 1), len(timed)


class WallTimeLimit(keras.callbacks.Callback):
    """Stops `fit` at the end of an epoch when the next one would pass a deadline.

    Stopping at an epoch's end leaves the run exactly at a checkpoint, so a
    rerun resumes with no step lost or repeated.

    Args:
        deadline: `time.time()` value to stop before.
    """

    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline
        self.stopped = False
        self._epoch_start = None
        self._longest = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        self._longest = max(self._longest, now - self._epoch_start)
        if now + self._longest > self.deadline and epoch + 1 < self.params.get("epochs", epoch + 2):
            self.stopped = True
            self.model.stop_training = True


def build_model(config, mean_network=None):
    """The untrained VariationalDiffusion described by a TrainConfig.

    Args:
        config: a TrainConfig.
        mean_network: the trained RegressionUNet of a residual run.
    """
    network = network_from_preset(config.preset, **config.network)
    return VariationalDiffusion(
        network=network,
        schedule=config.schedule,
        seed=config.seed,
        prediction=config.prediction,
        loss_weighting=config.loss_weighting,
        weighting_bias=config.weighting_bias,
        importance_sampling=config.importance_sampling,
        multiscale_weight=config.multiscale_weight,
        mean_network=mean_network,
        transform=None if mean_network is None else mean_network.transform.get_config(),
    )


def build_optimizer(config):
    learning_rate = config.learning_rate
    if config.restart_steps:
        learning_rate = keras.optimizers.schedules.CosineDecayRestarts(
            config.learning_rate, first_decay_steps=config.restart_steps, alpha=0.1
        )
    return keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        global_clipnorm=config.clipnorm,
        use_ema=config.ema_momentum is not None,
        ema_momentum=config.ema_momentum or 0.99,
    )


def _datasets(config):
    from keras_dmdiff.data import make_dataset

    common = dict(data_dir=config.data_dir, manual_dir=config.manual_dir)
    train = make_dataset(
        config.dataset,
        split="train",
        training=True,
        batch_size=config.batch_size,
        crop_size=config.crop_size,
        seed=config.seed,
        repeat=True,
        cache=True,
        **common,
    )
    validation = make_dataset(
        config.dataset,
        split="validation",
        training=False,
        batch_size=config.batch_size,
        crop_size=config.crop_size,
        **common,
    ).take(config.validation_batches)
    return train, validation


def _posterior_monitor(config, run_dir):
    from keras_dmdiff.data import crop_box_size, make_dataset
    from keras_dmdiff.evaluation import collect_maps

    common = dict(split="validation", data_dir=config.data_dir, manual_dir=config.manual_dir)
    # Crops of the training size, the first of each map: the same maps every epoch.
    validation = make_dataset(config.dataset, training=False, batch_size=config.science.maps,
                              crop_size=config.crop_size, eval_crop="corner", **common)
    maps = collect_maps(validation.take(1), max_maps=config.science.maps)
    box_size = crop_box_size(config.dataset, config.crop_size, DEFAULT_BOX_SIZE, **common)
    return PosteriorMonitor(maps, box_size, config.science, out_dir=run_dir)


def _fit_transform(config, run_dir):
    path = run_dir / "transform.json"
    if path.exists():
        return MapTransform.from_config(json.loads(path.read_text()))
    from keras_dmdiff.data import make_dataset

    # Moments of the *training* split only, on whole maps (no augmentation).
    maps = make_dataset(
        config.dataset,
        split="train",
        training=False,
        batch_size=32,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
    )
    transform = MapTransform().adapt(maps.as_numpy_iterator(), None)
    atomic_files.write_json(path, transform.get_config())
    return transform


def train(config, run_dir, verbose="auto", time_limit_s=None, mean_only=False):
    """Trains (or resumes) the run described by `config` in `run_dir`.

    Args:
        config: a TrainConfig or a dict of its fields.
        run_dir: the run folder (created if needed).
        verbose: passed to `fit` (1: progress bar, 2: one line per epoch).
        time_limit_s: None, or seconds of wall time for this call: training
            stops at the last epoch end that fits (a checkpoint) and returns
            None; calling again resumes there. Not part of the configuration.
        mean_only: a residual run's mean network alone: train (or resume)
            `run_dir/mean` and return that RegressionUNet. A later call
            without it goes on to the diffusion model of the same run, so
            ablations of the mean network are cheap to measure. Not part of
            the configuration.

    Returns:
        The trained VariationalDiffusion (loaded from run_dir/model.keras when
        the run had already finished), the RegressionUNet with `mean_only`,
        or None when `time_limit_s` stopped it.

    Example:
        >>> model = train({"preset": "tiny", "steps": 100, "steps_per_epoch": 50}, "runs/tiny")  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    if mean_only and not config.residual:
        raise ValueError("`mean_only` trains a residual run's mean network: set `residual = true`.")
    run_dir = pathlib.Path(run_dir)
    final_path = run_dir / "model.keras"
    record_config(run_dir, config)
    if (run_dir / "done.json").exists() and final_path.exists():
        return keras.saving.load_model(final_path)

    if config.data_parallel:
        devices = keras.distribution.list_devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    deadline = None if time_limit_s is None else time.time() + float(time_limit_s)
    if config.init_model is not None:
        model = _initialised_model(config, run_dir)
        if mean_only:
            return model.mean_network
        return fit_resumably(model, config, run_dir, config.steps, verbose, deadline)
    transform = _fit_transform(config, run_dir)
    mean_network = None
    if config.residual:
        mean_network = _train_mean_network(config, run_dir / "mean", transform, verbose, deadline)
        if mean_network is None or mean_only:
            return mean_network
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, mean_network)
    model.transform = transform
    return fit_resumably(model, config, run_dir, config.steps, verbose, deadline)


def _initialised_model(config, run_dir):
    """The model of `config` holding the weights, normalisation and mean network of `config.init_model`."""
    from keras_dmdiff.posterior import load_keras_file

    path = config.init_model
    start = load_keras_file(path, VariationalDiffusion, "it cannot start a diffusion training run (init_model)")
    if (start.mean_network is not None) != config.residual:
        raise ValueError(f"init_model {path} {'has' if start.mean_network is not None else 'has no'} mean network, "
                         f"but this run has residual = {config.residual}.")  # fmt: skip
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, start.mean_network)
    model.transform = start.transform
    model.build()
    ours, theirs = [tuple(v.shape) for v in model.weights], [tuple(v.shape) for v in start.weights]
    if ours != theirs:
        raise ValueError(f"init_model {path} is not a model of preset {config.preset!r} with network settings "
                         f"{config.network}: its {len(theirs)} weights do not match this run's {len(ours)}.")  # fmt: skip
    model.set_weights(start.get_weights())
    # For the record, as a run from scratch keeps the normalisation it fitted.
    atomic_files.write_json(run_dir / "transform.json", model.transform.get_config())
    return model


# Where the data is read from is not what is trained: a run folder moved, or
# named by another path (relative or absolute), still resumes.
_LOCATION_FIELDS = ("data_dir", "manual_dir")


def _identity(config):
    """The settings that make two runs the same run."""
    if config is None:
        return None
    return {key: value for key, value in config.items() if key not in _LOCATION_FIELDS}


def _stored_config(path, cls):
    try:
        return dataclasses.asdict(cls.from_dict(json.loads(path.read_text())))
    except (ValueError, TypeError):
        return None


def record_config(run_dir, config):
    """Writes `run_dir/config.json`, refusing a folder that holds a run of another configuration.

    Args:
        run_dir: the run folder (created if needed).
        config: a dataclass with a `from_dict` classmethod (a `TrainConfig`).

    Raises:
        ValueError: the stored configuration differs in a setting of what is trained.
    """
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    values = dataclasses.asdict(config)
    # Compared as configurations, so a setting added since the run began (at its default) matches.
    if config_path.exists() and _identity(_stored_config(config_path, type(config))) != _identity(values):
        raise ValueError(
            f"{run_dir} holds a run with another configuration ({config_path}); "
            "use a new run folder or delete the old one."
        )
    atomic_files.write_text(config_path, json.dumps(values, indent=2, sort_keys=True))


def _train_mean_network(config, run_dir, transform, verbose, deadline):
    """The residual mode's regression U-Net, trained (or resumed) in its own folder."""
    from keras_dmdiff.models import RegressionUNet

    run_dir.mkdir(parents=True, exist_ok=True)
    final_path = run_dir / "model.keras"
    if not ((run_dir / "done.json").exists() and final_path.exists()):
        keras.utils.set_random_seed(config.seed)
        network = network_from_preset(config.preset, **config.network)
        model = RegressionUNet(network=network, transform=transform.get_config(), objective=config.mean_objective)
        if fit_resumably(model, config, run_dir, config.mean_steps, verbose, deadline) is None:
            return None
    return keras.saving.load_model(final_path, compile=False)


def _fit_callbacks(model, config, run_dir, checkpoint, deadline):
    """`fit_resumably`'s callbacks, in the order they must run, and its wall-time limit (or None)."""
    callbacks = [
        checkpoint,  # first: it saves the raw weights, before the EMA ones are swapped in
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.ema_momentum is not None:
        # Validate and measure with the EMA weights, train with the raw ones.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if config.science.every_epochs and isinstance(model, VariationalDiffusion):
        callbacks.append(_posterior_monitor(config, run_dir))
    callbacks += [
        EpochTimer(),  # after the monitor, so its sampling counts in the epoch's time
        ResumableCSVLogger(run_dir / "history.csv"),
        keras.callbacks.TensorBoard(os.fspath(run_dir / "logs"), update_freq="epoch", write_graph=False),
    ]
    limit = None
    if deadline is not None:
        # Last, so that it runs after the checkpoint of the epoch it stops at.
        limit = WallTimeLimit(deadline)
        callbacks.append(limit)
    return callbacks, limit


def fit_resumably(model, config, run_dir, steps, verbose, deadline=None):
    """Fits `model` for `steps` from its last checkpoint in `run_dir`; saves model.keras and done.json.

    The one training loop of the diffusion model, the residual mode's mean
    network and each distillation round.

    Args:
        model: an uncompiled keras.Model with a `network` (its size goes to done.json).
        config: the settings it reads (`TrainConfig`, or `distillation.DistillConfig`):
            the optimiser's, the data's, `steps_per_epoch`, `checkpoint_every`,
            `ema_momentum` and `science`.
        run_dir: the folder of its checkpoints, history and model.
        steps: optimiser steps in all.
        verbose: passed to `fit`.
        deadline: None, or a time.time(): training stops at the last epoch end that fits before it.

    Returns:
        The model, or None when `deadline` stopped it at an epoch end.
    """
    final_path = run_dir / "model.keras"
    model.compile(optimizer=build_optimizer(config))
    # The checkpoint restores into existing variables: create them first.
    model.build()
    model.optimizer.build(model.trainable_variables)
    checkpoint = ResumableCheckpoint(
        run_dir / "backup", config.steps_per_epoch, config.checkpoint_every // config.steps_per_epoch
    )
    first_epoch = checkpoint.restore(model)
    train_data, validation_data = _datasets(config)
    # The seeded pipeline, advanced to where the checkpoint left it: a resumed
    # run sees the same crops as an uninterrupted one.
    train_data = train_data.skip(first_epoch * config.steps_per_epoch)

    callbacks, limit = _fit_callbacks(model, config, run_dir, checkpoint, deadline)

    start = time.time()
    history = model.fit(
        train_data,
        validation_data=validation_data,
        initial_epoch=first_epoch,
        epochs=steps // config.steps_per_epoch,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )
    if any(not np.isfinite(v) for v in history.history.get("loss", [])):
        raise FloatingPointError(f"Training diverged (NaN loss); see {run_dir / 'history.csv'}.")
    if limit is not None and limit.stopped:
        print(f"Stopped by the time limit after epoch {len(history.epoch)}; rerun to resume from {run_dir}.")
        return None
    with atomic_files.replacing(final_path) as temporary:
        model.save(temporary)
    wall_time, epochs_timed = total_wall_time(run_dir / "history.csv")  # over every session
    atomic_files.write_json(
        run_dir / "done.json",
        {
            "steps": steps,
            "wall_time_s_last_session": round(time.time() - start, 1),
            "wall_time_s": wall_time,
            "epochs_timed": epochs_timed,
            "backend": keras.backend.backend(),
            "parameters": int(model.network.count_params()),
        },
    )
    return model
