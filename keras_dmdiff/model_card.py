"""Package a finished run as a shipped model: files, metrics JSON and a model card.

    saved_models/<name>/
      model.keras       the trained model (EMA weights)
      saved_model/      TensorFlow SavedModel (runs without keras_dmdiff)
      metrics.json      data, training, hardware and held-out metrics
      figures/          the held-out evaluation's figures
      MODEL_CARD.md     the same, for people

Everything in the card is read from the run folder (config.json, done.json,
history.csv, the evaluation's metrics.json), never typed in by hand.
"""

import csv
import datetime
import json
import os
import pathlib
import platform
import shutil

import keras_dmdiff
from keras_dmdiff import atomic_files
from keras_dmdiff.distillation import round_dir


def _read_history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _float_or_none(value):
    return float(value) if value not in (None, "") else None


def _mean_network(train_dir, config):
    """The residual mode's regression U-Net, trained in `train_dir`: its steps, size and wall time."""
    done = json.loads((train_dir / "mean" / "done.json").read_text())
    history = _read_history(train_dir / "mean" / "history.csv")
    return {
        "steps": config["mean_steps"],
        "objective": config.get("mean_objective", "log_mse"),
        "parameters": done.get("parameters"),
        "final_val_loss": _float_or_none(history[-1].get("val_loss")),
        **_wall_time(train_dir / "mean", done),
    }


def _wall_time(train_dir, done):
    """Training time over every session (`epoch_seconds` of history.csv), and of the last one."""
    from keras_dmdiff.training import total_wall_time

    seconds, timed = total_wall_time(train_dir / "history.csv")
    return {
        "wall_time_s": seconds,
        "epochs_timed": f"{timed} of {len(_read_history(train_dir / 'history.csv'))}",
        "wall_time_s_last_session": done.get("wall_time_s_last_session"),
    }


def _hardware():
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU"


def _model_origin(path, strict=False):
    """What trained the `.keras` model at `path`: its name, steps, wall time and mean network.

    A shipped model's metrics.json beside the file says it; a training run's
    folder is read like a card's (config.json, histories), following its own
    `init_model` back, so the steps and time of a fine-tuned model include
    every model it started from, and the time also its mean network's. Otherwise
    the name is the path and the rest unknown.

    Args:
        path: the `.keras` file.
        strict: the run is the one being packaged, so a residual run without
            its finished mean network is an error (an initial model's or a
            teacher's missing facts are only unknown).

    Returns:
        dict: "name", "steps" (the diffusion network's optimiser steps, None
        if unknown), "wall_time_s" (None if unknown), "mean_network" (a
        dict, {"steps": None} if unknown) and, for a run started from
        `init_model`, "initial_model" (that model's origin).
    """
    from keras_dmdiff.training import total_wall_time

    folder = pathlib.Path(path).parent
    origin = {"name": str(path), "steps": None, "wall_time_s": None, "mean_network": {"steps": None}}
    if (folder / "metrics.json").exists():
        shipped = json.loads((folder / "metrics.json").read_text())
        training = shipped.get("training", {})
        origin.update(name=shipped.get("name") or origin["name"],
                      mean_network=training.get("mean_network", origin["mean_network"]))
        if "total_wall_time_s" in training:
            return dict(origin, steps=training.get("total_steps"), wall_time_s=training["total_wall_time_s"])
        # A card from before the totals: no initial model, so its own time and its mean network's.
        parts = [training.get("wall_time_s"), training.get("mean_network", {}).get("wall_time_s")]
        steps = [training.get("steps")]
    elif (folder / "history.csv").exists():
        parts = [total_wall_time(folder / "history.csv")[0]]
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        steps = [config.get("steps")]
        if config.get("init_model"):
            initial = _model_origin(config["init_model"])
            parts.append(initial["wall_time_s"])
            steps.append(initial["steps"])
            origin.update(mean_network=initial["mean_network"], initial_model=initial)
        elif config.get("residual"):
            mean = folder / "mean"
            if strict and not (mean / "done.json").exists():
                raise FileNotFoundError(f"The residual run {folder} has no finished mean network: "
                                        f"{mean / 'done.json'} is missing. Finish its training before packaging it.")
            if (mean / "history.csv").exists():
                parts.append(total_wall_time(mean / "history.csv")[0])
            if (mean / "done.json").exists():
                origin["mean_network"] = _mean_network(folder, config)
    else:
        return origin
    parts = [part for part in parts if part is not None]
    origin["wall_time_s"] = round(sum(parts), 1) if parts else None
    origin["steps"] = None if None in steps else int(sum(steps))
    return origin


def _teacher_facts(teacher):
    """A teacher's (or a fine-tuned run's initial model's) name and the wall time that trained it.

    The time includes its mean network's and, for a fine-tuned model, its own
    initial models'; None if unknown (see `_model_origin`).
    """
    origin = _model_origin(teacher)
    return origin["name"], origin["wall_time_s"]


def _distillation_facts(distill_dir, config, student_steps):
    """A distilled student's training: its teacher, rounds and cost against the teacher's training."""
    done = json.loads((distill_dir / "done.json").read_text())
    rounds = [steps for steps in done["rounds"] if steps >= student_steps]
    if student_steps not in rounds:
        raise ValueError(f"The distillation run {distill_dir} has no {student_steps}-step student; its rounds: "
                         f"{done['rounds']}.")
    seconds = sum(done["wall_time_s_per_round"][str(steps)] for steps in rounds)
    history = _read_history(round_dir(distill_dir, student_steps) / "history.csv")
    teacher, teacher_seconds = _teacher_facts(config["teacher"])
    return {
        "method": "progressive distillation (Salimans & Ho 2022), DDIM steps halved each round",
        "teacher": teacher,
        "student_steps": student_steps,
        "rounds": rounds,
        "steps_per_round": config["steps"],
        "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"],
        "ema_momentum": config["ema_momentum"],
        "final_loss": float(history[-1]["loss"]),
        "final_val_loss": _float_or_none(history[-1].get("val_loss")),
        "wall_time_s": round(seconds, 1),
        "teacher_training_wall_time_s": teacher_seconds,
        "wall_time_fraction_of_teacher_training": None if not teacher_seconds else round(seconds / teacher_seconds, 3),
        "backend": done.get("backend"),
        "hardware": _hardware(),
    }


def _training_facts(train_dir, config):
    done = json.loads((train_dir / "done.json").read_text())
    last = _read_history(train_dir / "history.csv")[-1]
    # One reading of the run and of every model it started from feeds the initial model, the totals and
    # the mean network (a fine-tuned run kept its initial model's).
    origin = _model_origin(train_dir / "model.keras", strict=True)
    return {
        "preset": config["preset"],
        "parameters": done.get("parameters"),
        "steps": config["steps"],
        "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"],
        "ema_momentum": config["ema_momentum"],
        # The objective optimised, and the ELBO (bits per dimension) whatever it is.
        "objective": f"{config.get('loss_weighting', 'elbo')} weighting, {config.get('prediction', 'eps')}-prediction",
        "final_loss": float(last["loss"]),
        "final_val_loss": _float_or_none(last.get("val_loss")),
        "final_val_elbo_bpd": _float_or_none(last.get("val_elbo_bpd")),
        **_wall_time(train_dir, done),
        "backend": done.get("backend"),
        "hardware": _hardware(),
        **_initial_model_facts(origin),
        # The run's steps and wall time with those of every initial model (and the mean network's time).
        "total_steps": origin["steps"],
        "total_wall_time_s": origin["wall_time_s"],
        **({"mean_network": origin["mean_network"]} if config.get("residual") else {}),
    }


def _initial_model_facts(origin):
    """A fine-tuned run's starting model, by name, and the steps and wall time that trained it (empty otherwise)."""
    if "initial_model" not in origin:
        return {}
    initial = origin["initial_model"]
    return {"initial_model": {"name": initial["name"], "training_steps": initial["steps"],
                              "training_wall_time_s": initial["wall_time_s"]}}


def collect_card(run_dir, *, train="train", evaluation="evaluate", data_description="", limitations=(),
                 student_steps=None):
    """Gathers the facts of a run into a JSON-serialisable dict.

    `train` is a training run's folder, or a distillation run's (its
    config.json names a teacher): the card is then the `student_steps`-step
    student's (default: the run's last), under "distillation".
    """
    run_dir = pathlib.Path(run_dir)
    config = json.loads((run_dir / train / "config.json").read_text())
    metrics = json.loads((run_dir / evaluation / "metrics.json").read_text())
    card = {
        "name": None,
        "keras_dmdiff_version": keras_dmdiff.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "dataset": config["dataset"],
            "description": data_description,
            "split_rule": "by simulation, 80/10/10 % (train/validation/test), see camels_cmd",
            "crop_size": config["crop_size"],
        },
    }
    if "teacher" in config:
        steps = int(student_steps or config["student_steps"])
        card["distillation"] = _distillation_facts(run_dir / train, config, steps)
    else:
        card["training"] = _training_facts(run_dir / train, config)
    card["evaluation"] = {
        "split": "test (held-out simulations)",
        "settings": metrics.get("settings"),
        "summary": metrics["summary"],
    }
    card["limitations"] = list(limitations)
    return card


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    return str(value)


def render_card(card):
    """The model card as Markdown."""
    lines = [f"# {card['name']}", "", card["data"]["description"], "", "## Data", ""]
    lines += [f"- {key}: {_format_value(value)}" for key, value in card["data"].items() if key != "description"]
    section = "distillation" if "distillation" in card else "training"
    lines += ["", f"## {section.capitalize()}", ""]
    lines += [f"- {key}: {_format_value(value)}" for key, value in card[section].items()]
    lines += ["", "## Held-out metrics", "", f"Evaluated on the {card['evaluation']['split']}.", ""]
    lines += [f"- settings: {_format_value(card['evaluation']['settings'])}"]
    lines += [f"- {key}: {_format_value(value)}" for key, value in card["evaluation"]["summary"].items()]
    if card["evaluation"].get("figures"):
        lines += ["", "Figures: " + ", ".join(f"[{p.split('/')[-1]}]({p})" for p in card["evaluation"]["figures"])]
    lines += ["", "## Known limits", ""] + [f"- {item}" for item in card["limitations"]]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from keras_dmdiff.posterior import load_posterior",
        f'model = load_posterior("saved_models/{card["name"]}/model.keras")'
        + ("  # or its saved_model folder" if card.get("saved_model", True) else ""),
        *_sample_lines(card),
        "```",
        "",
    ]
    if card.get("saved_model", True):
        lines += [
            "or, with TensorFlow alone: "
            "`tf.saved_model.load(\"saved_model\").sample(stellar_mass, num_samples, num_steps, seed)`.",
            "",
        ]
    return "\n".join(lines)


def _sample_lines(card):
    """The card's sampling example: a student samples with the DDIM steps it was distilled for."""
    if "distillation" not in card:
        return ["samples = model.sample(stellar_mass, num_samples=16, num_steps=100)  # physical maps [B, 16, H, W]"]
    steps = card["distillation"]["student_steps"]
    return [
        "from keras_dmdiff.posterior import SamplingOptions",
        f"samples = model.sample(stellar_mass, num_samples=16, num_steps={steps}, "
        'options=SamplingOptions(sampler="ddim"))  # [B, 16, H, W]',
    ]


def ship_model(run_dir, out_dir, name, *, train="train", evaluation="evaluate", saved_model="saved_model",
               student_steps=None, **card_kwargs):
    """Copies a finished run's model into `out_dir` with its metrics and model card.

    Args:
        run_dir: the recipe's run folder.
        out_dir: destination, e.g. saved_models/<name>.
        name: the model's name.
        train, evaluation, saved_model: sub-folders of the run; `train` may
            be a distillation run's folder; `saved_model` None ships none.
        student_steps: for a distillation run, the student to ship (default:
            the last).
        **card_kwargs: `data_description`, `limitations`.

    Returns:
        The destination folder.
    """
    run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
    card = collect_card(run_dir, train=train, evaluation=evaluation, student_steps=student_steps, **card_kwargs)
    card["name"] = name
    if "distillation" in card:
        model_path = round_dir(run_dir / train, card["distillation"]["student_steps"]) / "student.keras"
    else:
        model_path = run_dir / train / "model.keras"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Re-saved uncompiled: the run's file also holds the optimizer state (Adam
    # moments and EMA slots, 3x the weights), which users of the model never need.
    import keras

    # Every file is written under a temporary name and renamed, the card last.
    with atomic_files.replacing(out_dir / "model.keras") as temporary:
        keras.saving.load_model(model_path, compile=False).save(temporary)
    card["saved_model"] = saved_model is not None and (run_dir / saved_model).exists()
    if card["saved_model"]:
        with atomic_files.replacing(out_dir / "saved_model") as temporary:
            shutil.copytree(run_dir / saved_model, temporary)
    figures = sorted((run_dir / evaluation).glob("*.png"))
    if figures:
        (out_dir / "figures").mkdir(exist_ok=True)
        for figure in figures:
            with atomic_files.replacing(out_dir / "figures" / figure.name) as temporary:
                shutil.copyfile(figure, temporary)
        card["evaluation"]["figures"] = [f"figures/{figure.name}" for figure in figures]
    atomic_files.write_json(out_dir / "metrics.json", card)
    atomic_files.write_text(out_dir / "MODEL_CARD.md", render_card(card))
    return out_dir
