"""Training checkpoints that a kill at any instant cannot damage, and that resume exactly.

A checkpoint is the model's and optimiser's variables, the state of every
`keras.random.SeedGenerator` in the model (Keras' `save_weights` leaves those
out, so a resumed run would redraw the noise and diffusion times of the first
epochs), the epoch and the optimiser step. It is committed in one atomic
rename: the weights go to whichever of two slots the current checkpoint does
not use, then `checkpoint.json` is replaced to point at them. A kill before the
rename leaves the previous checkpoint intact; after it, the new one.

Resuming exactly also needs the data where the killed run left it: `restore`
returns the epoch to start from, and the caller skips that many epochs of its
(seeded, deterministic) input pipeline.

Example:
    >>> checkpoint = ResumableCheckpoint("runs/tiny/backup", steps_per_epoch=100)  # doctest: +SKIP
    >>> first_epoch = checkpoint.restore(model)  # 0 for a new run  # doctest: +SKIP
    >>> model.fit(data.skip(first_epoch * 100), initial_epoch=first_epoch, epochs=10,
    ...           steps_per_epoch=100, callbacks=[checkpoint])  # doctest: +SKIP
"""

import json
import pathlib

import keras
import numpy as np

from keras_dmdiff import atomic_files

POINTER_FILE = "checkpoint.json"
_SLOTS = ("a.weights.h5", "b.weights.h5")
# What `keras.callbacks.BackupAndRestore` wrote in run folders made before this module.
_KERAS_WEIGHTS = "latest.weights.h5"


class ResumableCheckpoint(keras.callbacks.Callback):
    """Saves the training state at the end of every `every_epochs`-th epoch.

    Args:
        folder: where the checkpoint lives (created on the first save).
        steps_per_epoch: optimiser steps per epoch of the `fit` call.
        every_epochs: epochs between checkpoints.
    """

    def __init__(self, folder, steps_per_epoch, every_epochs=1):
        super().__init__()
        self.folder = pathlib.Path(folder)
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_epochs = int(every_epochs)
        if self.every_epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"steps_per_epoch and every_epochs must be >= 1; got {steps_per_epoch}, {every_epochs}."
            )

    def restore(self, model):
        """Loads the last checkpoint into `model` (built, with a built optimiser).

        Args:
            model: the compiled model to resume.

        Returns:
            The epoch to resume at: 0 when there is no checkpoint.

        Raises:
            ValueError: the checkpoint is unreadable or does not match its record.
        """
        pointer = self.folder / POINTER_FILE
        if pointer.exists():
            try:
                record = json.loads(pointer.read_text())
                weights = self.folder / record["weights"]
            except (ValueError, KeyError, TypeError) as error:
                raise self._damaged(pointer, error) from None
            self._load_weights(model, weights)
            if int(model.optimizer.iterations) != record["step"]:
                raise self._damaged(
                    weights, f"it holds optimiser step {int(model.optimizer.iterations)}, "
                    f"{pointer.name} says {record['step']}"
                )
            states = _seed_states(model)
            if len(states) != len(record["seed_states"]):
                raise self._damaged(pointer, "it records another number of random generators")
            for variable, value in zip(states, record["seed_states"]):
                variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))
            return int(record["epoch"])
        legacy = self.folder / _KERAS_WEIGHTS
        if legacy.exists():
            # An older run folder: its epoch counter was written after the weights,
            # so the optimiser step (saved with them) is the one to trust.
            self._load_weights(model, legacy)
            return int(model.optimizer.iterations) // self.steps_per_epoch
        return 0

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            self.save(epoch + 1)

    def save(self, epoch):
        """Commits the model's current state as the checkpoint of `epoch` (epochs done)."""
        pointer = self.folder / POINTER_FILE
        current = json.loads(pointer.read_text())["weights"] if pointer.exists() else None
        slot = _SLOTS[1] if current == _SLOTS[0] else _SLOTS[0]
        with atomic_files.replacing(self.folder / slot) as temporary:
            self.model.save_weights(temporary)
        record = {
            "epoch": int(epoch),
            "step": int(self.model.optimizer.iterations),
            "weights": slot,
            "seed_states": [keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(self.model)],
        }
        atomic_files.write_json(pointer, record)

    def _load_weights(self, model, path):
        self.set_model(model)
        try:
            model.load_weights(path)
        except (OSError, ValueError) as error:
            raise self._damaged(path, error) from None

    def _damaged(self, path, reason):
        return ValueError(
            f"The checkpoint file {path} is unreadable ({reason}). Checkpoints are written whole "
            f"or not at all, so it was damaged from outside: delete {self.folder} to restart the "
            "run from scratch."
        )


def _seed_states(model):
    """The state variables of the model's random generators, in a fixed order."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]
