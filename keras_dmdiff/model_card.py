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


def _read_history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _float_or_none(value):
    return float(value) if value not in (None, "") else None


def _mean_network_facts(train_dir, config):
    """The residual mode's regression U-Net: its steps, size and wall time (empty otherwise)."""
    if not config.get("residual"):
        return {}
    done = json.loads((train_dir / "mean" / "done.json").read_text())
    history = _read_history(train_dir / "mean" / "history.csv")
    return {
        "mean_network": {
            "steps": config["mean_steps"],
            "objective": config.get("mean_objective", "log_mse"),
            "parameters": done.get("parameters"),
            "final_val_loss": _float_or_none(history[-1].get("val_loss")),
            **_wall_time(train_dir / "mean", done),
        }
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


def collect_card(run_dir, *, train="train", evaluation="evaluate", data_description="", limitations=()):
    """Gathers the facts of a run into a JSON-serialisable dict."""
    run_dir = pathlib.Path(run_dir)
    config = json.loads((run_dir / train / "config.json").read_text())
    done = json.loads((run_dir / train / "done.json").read_text())
    history = _read_history(run_dir / train / "history.csv")
    metrics = json.loads((run_dir / evaluation / "metrics.json").read_text())
    last = history[-1]
    return {
        "name": None,
        "keras_dmdiff_version": keras_dmdiff.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "dataset": config["dataset"],
            "description": data_description,
            "split_rule": "by simulation, 80/10/10 % (train/validation/test), see camels_cmd",
            "crop_size": config["crop_size"],
        },
        "training": {
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
            **_wall_time(run_dir / train, done),
            "backend": done.get("backend"),
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
            **_mean_network_facts(run_dir / train, config),
        },
        "evaluation": {
            "split": "test (held-out simulations)",
            "settings": metrics.get("settings"),
            "summary": metrics["summary"],
        },
        "limitations": list(limitations),
    }


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
    lines += ["", "## Training", ""]
    lines += [f"- {key}: {_format_value(value)}" for key, value in card["training"].items()]
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
        f'model = load_posterior("saved_models/{card["name"]}/model.keras")  # or its saved_model folder',
        "samples = model.sample(stellar_mass, num_samples=16, num_steps=100)  # physical maps [B, 16, H, W]",
        "```",
        "",
        "or, with TensorFlow alone: `tf.saved_model.load(\"saved_model\").sample(stellar_mass, num_samples, num_steps, seed)`.",
        "",
    ]
    return "\n".join(lines)


def ship_model(run_dir, out_dir, name, *, train="train", evaluation="evaluate", saved_model="saved_model", **card_kwargs):
    """Copies a finished run's model into `out_dir` with its metrics and model card.

    Args:
        run_dir: the recipe's run folder.
        out_dir: destination, e.g. saved_models/<name>.
        name: the model's name.
        train, evaluation, saved_model: sub-folders of the run.
        **card_kwargs: `data_description`, `limitations`.

    Returns:
        The destination folder.
    """
    run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
    card = collect_card(run_dir, train=train, evaluation=evaluation, **card_kwargs)
    card["name"] = name
    out_dir.mkdir(parents=True, exist_ok=True)
    # Re-saved uncompiled: the run's file also holds the optimizer state (Adam
    # moments and EMA slots, 3x the weights), which users of the model never need.
    import keras

    # Every file is written under a temporary name and renamed, the card last.
    with atomic_files.replacing(out_dir / "model.keras") as temporary:
        keras.saving.load_model(run_dir / train / "model.keras", compile=False).save(temporary)
    if (run_dir / saved_model).exists():
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
