"""Training runs: a model, its data pipeline and callbacks, resumable in one folder.

A run folder holds everything a run writes:

    run_dir/
      config.json        the TrainConfig (what produced this run)
      transform.json     the fitted normalisation (reused on resume)
      backup/            BackupAndRestore checkpoint, every `checkpoint_every` steps
      logs/              TensorBoard
      history.csv        the loss curve (appended across resumes)
      model.keras        the final model (EMA weights when EMA is on)
      done.json          wall time and step count, written last

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

from keras_dmdiff.models import VariationalDiffusion, network_from_preset
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
        checkpoint_every: steps between resumable checkpoints; at least
            `steps_per_epoch` means one at the end of every epoch (a resumed
            run then repeats no step); fewer means mid-epoch checkpoints, from
            which a resumed run repeats the rest of that epoch.
        validation_batches: batches of the validation split evaluated per epoch.
        seed: seed of the model and the pipeline.
        data_parallel: split batches over all local devices (keras.distribution).
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

    @classmethod
    def from_dict(cls, values):
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown training settings {unknown}; known: {sorted(names)}.")
        config = cls(**values)
        config.validate()
        return config

    def validate(self):
        for name in ("batch_size", "steps", "steps_per_epoch", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Training setting `{name}` must be >= 1; got {getattr(self, name)}.")
        if self.steps % self.steps_per_epoch:
            raise ValueError(
                f"`steps` ({self.steps}) must be a multiple of `steps_per_epoch` ({self.steps_per_epoch})."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate}.")


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
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)

    def on_epoch_end(self, epoch, logs=None):
        fields, rows = self._read()
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        fields = fields or list(row)
        rows.append({k: row.get(k, "") for k in fields})
        self._write(fields, rows)


def build_model(config):
    """The untrained VariationalDiffusion described by a TrainConfig."""
    network = network_from_preset(config.preset, **config.network)
    return VariationalDiffusion(network=network, schedule=config.schedule, seed=config.seed)


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
    path.write_text(json.dumps(transform.get_config(), indent=2))
    return transform


def train(config, run_dir, verbose="auto"):
    """Trains (or resumes) the run described by `config` in `run_dir`.

    Args:
        config: a TrainConfig or a dict of its fields.
        run_dir: the run folder (created if needed).
        verbose: passed to `fit` (1: progress bar, 2: one line per epoch).

    Returns:
        The trained VariationalDiffusion (loaded from run_dir/model.keras when
        the run had already finished).

    Example:
        >>> model = train({"preset": "tiny", "steps": 100, "steps_per_epoch": 50}, "runs/tiny")
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final_path = run_dir / "model.keras"
    config_path = run_dir / "config.json"
    config_json = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
    if config_path.exists() and config_path.read_text() != config_json:
        raise ValueError(
            f"{run_dir} holds a run with another configuration ({config_path}); "
            "use a new run folder or delete the old one."
        )
    config_path.write_text(config_json)
    if (run_dir / "done.json").exists() and final_path.exists():
        return keras.saving.load_model(final_path)

    if config.data_parallel:
        devices = keras.distribution.list_devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    model.transform = _fit_transform(config, run_dir)
    model.compile(optimizer=build_optimizer(config))
    # BackupAndRestore restores into existing variables: create them first.
    model.build()
    model.optimizer.build(model.trainable_variables)
    train_data, validation_data = _datasets(config)

    callbacks = [
        keras.callbacks.BackupAndRestore(
            os.fspath(run_dir / "backup"),
            # Keras resumes a checkpoint taken inside an epoch by re-running that
            # whole epoch; one taken at its end resumes at the next epoch.
            save_freq="epoch" if config.checkpoint_every >= config.steps_per_epoch else config.checkpoint_every,
            delete_checkpoint=False,
        ),
        keras.callbacks.TerminateOnNaN(),
        ResumableCSVLogger(run_dir / "history.csv"),
        keras.callbacks.TensorBoard(os.fspath(run_dir / "logs"), update_freq="epoch", write_graph=False),
    ]
    if config.ema_momentum is not None:
        # Validate with the EMA weights, train with the raw ones.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))

    start = time.time()
    history = model.fit(
        train_data,
        validation_data=validation_data,
        epochs=config.steps // config.steps_per_epoch,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )
    if any(not np.isfinite(v) for v in history.history.get("loss", [])):
        raise FloatingPointError(f"Training diverged (NaN loss); see {run_dir / 'history.csv'}.")
    model.save(final_path)
    (run_dir / "done.json").write_text(
        json.dumps(
            {
                "steps": config.steps,
                "wall_time_s_last_session": round(time.time() - start, 1),
                "backend": keras.backend.backend(),
                "parameters": int(model.network.count_params()),
            },
            indent=2,
        )
    )
    return model
