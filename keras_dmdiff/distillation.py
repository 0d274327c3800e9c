"""Distillation runs: halve a trained model's DDIM steps round after round, resumably.

`distill(config, run_dir)` takes a trained `VariationalDiffusion` (the
teacher) and runs progressive distillation rounds (`models.distillation`)
from `teacher_steps / 2` down to `student_steps` student steps, each round's
student teaching the next. Every round is a training run of its own
(`run_dir/steps_<N>/`: checkpoints, history.csv, the distiller's model.keras,
the student's student.keras), so a killed run resumes at the last epoch of
the round it was in, like `training.train`. The last student is
`run_dir/model.keras`; `run_dir/done.json` sums the rounds' wall time.
"""

import dataclasses
import json
import pathlib
import shutil
import time

import keras

from keras_dmdiff import atomic_files
from keras_dmdiff.models.distillation import ProgressiveDistillation
from keras_dmdiff.science_monitor import MonitorConfig
from keras_dmdiff.settings import from_fields
from keras_dmdiff.training import check_schedule, fit_resumably, record_config, total_wall_time

__all__ = ["DistillConfig", "distill", "round_dir", "round_steps"]


@dataclasses.dataclass
class DistillConfig:
    """Settings of a distillation run.

    Args:
        teacher: path of the trained `.keras` VariationalDiffusion.
        teacher_steps: the teacher's DDIM steps in the first round (it is
            asked for two of them per student step); a power-of-two multiple
            of `student_steps`.
        student_steps: the last student's steps.
        steps: optimiser steps per round.
        dataset, data_dir, manual_dir, crop_size, batch_size, validation_batches:
            the data, as in `training.TrainConfig`.
        steps_per_epoch, checkpoint_every, learning_rate, weight_decay,
            clipnorm, restart_steps, ema_momentum, seed: the optimiser and
            checkpoints of every round, as in `training.TrainConfig`.

    Example:
        >>> DistillConfig.from_dict({"teacher": "model.keras", "teacher_steps": 32, "student_steps": 8,
        ...                          "steps": 400, "steps_per_epoch": 100, "checkpoint_every": 100}).rounds
        [16, 8]
    """

    teacher: str
    teacher_steps: int = 256
    student_steps: int = 8
    steps: int = 2000
    dataset: str = "camels_cmd/mock_IllustrisTNG_LH"
    data_dir: str | None = None
    manual_dir: str | None = None
    crop_size: int | None = 128
    batch_size: int = 12
    validation_batches: int = 4
    steps_per_epoch: int = 100
    checkpoint_every: int = 100
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    clipnorm: float = 0.5
    restart_steps: int | None = None
    ema_momentum: float | None = 0.995
    seed: int = 0

    # Distillation rounds run no posterior monitor (training.fit_resumably reads this).
    science = MonitorConfig()

    @classmethod
    def from_dict(cls, values):
        config = from_fields(cls, values, "distillation settings")
        config.validate()
        return config

    def validate(self):
        check_schedule(self)
        round_steps(self.teacher_steps, self.student_steps)

    @property
    def rounds(self):
        """The student's steps in each round, e.g. [128, 64, ..., 8]."""
        return round_steps(self.teacher_steps, self.student_steps)


def round_steps(teacher_steps, student_steps):
    """The student steps of each halving round from `teacher_steps` to `student_steps`.

    Raises:
        ValueError: `teacher_steps` is not `student_steps` times a power of two above 1.

    Example:
        >>> round_steps(64, 8)
        [32, 16, 8]
    """
    teacher_steps, student_steps = int(teacher_steps), int(student_steps)
    ratio = teacher_steps // student_steps if student_steps >= 1 else 0
    if student_steps < 1 or ratio < 2 or teacher_steps % student_steps or ratio & (ratio - 1):
        raise ValueError(
            f"teacher_steps ({teacher_steps}) must be student_steps ({student_steps}) times a power of two "
            "(each round halves the steps)."
        )
    rounds, steps = [], teacher_steps
    while steps > student_steps:
        steps //= 2
        rounds.append(steps)
    return rounds


def round_dir(run_dir, steps):
    """The folder of the round that distils a `steps`-step student; its student is `student.keras` there.

    Example:
        >>> round_dir("runs/distill", 8).as_posix()
        'runs/distill/steps_8'
    """
    return pathlib.Path(run_dir) / f"steps_{int(steps)}"


def distill(config, run_dir, verbose="auto", time_limit_s=None):
    """Distils (or resumes distilling) `config.teacher` into `config.student_steps` DDIM steps.

    Args:
        config: a `DistillConfig` or a dict of its fields.
        run_dir: the run folder (created if needed).
        verbose: passed to `fit`.
        time_limit_s: None, or seconds of wall time for this call: it stops
            at the last epoch end that fits and returns None; calling again
            resumes there.

    Returns:
        The last student (a `VariationalDiffusion` with `distilled_steps`),
        or None when `time_limit_s` stopped the run.

    Example:
        >>> student = distill({"teacher": "runs/cpu/train/model.keras", "teacher_steps": 256,  # doctest: +SKIP
        ...                    "student_steps": 8, "steps": 1000}, "runs/distill")
        >>> student.sample(stars, 16, num_steps=8, sampler="ddim")  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = DistillConfig.from_dict(config)
    config.validate()
    run_dir = pathlib.Path(run_dir)
    record_config(run_dir, config)
    final_path = run_dir / "model.keras"
    if (run_dir / "done.json").exists() and final_path.exists():
        return keras.saving.load_model(final_path, compile=False)
    deadline = None if time_limit_s is None else time.time() + float(time_limit_s)
    teacher_path = pathlib.Path(config.teacher)
    if not teacher_path.exists():
        raise FileNotFoundError(f"The teacher {teacher_path} does not exist: train it first (dmdiff train).")
    started = False
    for steps in config.rounds:
        folder = round_dir(run_dir, steps)
        student_path = folder / "student.keras"
        if not ((folder / "done.json").exists() and student_path.exists()):
            if started and deadline is not None and time.time() >= deadline:
                return None  # the next round begins in the next call
            started = True
            if not _distil_round(teacher_path, steps, config, folder, verbose, deadline):
                return None
        teacher_path = student_path
    with atomic_files.replacing(final_path) as temporary:
        shutil.copyfile(teacher_path, temporary)
    seconds = [total_wall_time(round_dir(run_dir, steps) / "history.csv")[0] for steps in config.rounds]
    atomic_files.write_json(
        run_dir / "done.json",
        {
            "teacher": str(config.teacher),
            "rounds": config.rounds,
            "steps_per_round": config.steps,
            "wall_time_s": round(sum(seconds), 1),
            "wall_time_s_per_round": dict(zip(map(str, config.rounds), seconds)),
            "backend": keras.backend.backend(),
        },
    )
    return keras.saving.load_model(final_path, compile=False)


def _distil_round(teacher_path, steps, config, folder, verbose, deadline):
    """One halving round; saves the student. False when `deadline` (a time.time(), or None) stopped it."""
    keras.utils.set_random_seed(config.seed)
    teacher = keras.saving.load_model(teacher_path, compile=False)
    distiller = ProgressiveDistillation(teacher, num_steps=steps, seed=config.seed)
    folder.mkdir(parents=True, exist_ok=True)
    # fit ends with the EMA weights in place (as the diffusion model's training does).
    if fit_resumably(distiller, config, folder, config.steps, verbose, deadline) is None:
        return False
    with atomic_files.replacing(folder / "student.keras") as temporary:
        distiller.student.save(temporary)
    return True
