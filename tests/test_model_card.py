"""The model card records what was trained: the objective, the ELBO and, in residual mode, the mean network."""

import json

import pytest

from keras_dmdiff.model_card import collect_card, render_card

pytestmark = pytest.mark.backend_independent


def write_run(root, residual):
    train = root / "train"
    (train / "mean").mkdir(parents=True)
    config = {"dataset": "camels_cmd/IllustrisTNG_LH", "crop_size": 128, "preset": "cpu", "steps": 200,
              "batch_size": 12, "learning_rate": 5e-4, "ema_momentum": 0.999, "prediction": "v",
              "loss_weighting": "sigmoid", "residual": residual, "mean_steps": 300 if residual else 0}
    (train / "config.json").write_text(json.dumps(config))
    (train / "done.json").write_text(json.dumps({"steps": 200, "parameters": 1000, "backend": "tensorflow",
                                                 "wall_time_s_last_session": 12.5}))
    # Epoch 0 was written before epochs were timed; the total counts the timed ones only.
    (train / "history.csv").write_text(
        "epoch,loss,val_loss,val_elbo_bpd,epoch_seconds\n0,-1.5,-1.25,-3.5,\n1,-2.0,-1.75,-3.75,40.5\n"
    )
    (train / "mean" / "done.json").write_text(json.dumps({"steps": 300, "parameters": 900,
                                                          "wall_time_s_last_session": 7.0}))
    (train / "mean" / "history.csv").write_text("epoch,loss,val_loss,epoch_seconds\n0,0.75,0.5,3.5\n")
    (root / "evaluate").mkdir()
    (root / "evaluate" / "metrics.json").write_text(json.dumps({"settings": {"num_samples": 2},
                                                                "summary": {"verdict": "calibrated"}}))


def test_the_card_names_the_objective_the_elbo_and_the_mean_network(tmp_path):
    write_run(tmp_path, residual=True)
    card = collect_card(tmp_path, data_description="d", limitations=["l"])
    training = card["training"]
    assert training["objective"] == "sigmoid weighting, v-prediction"
    assert training["final_loss"] == -2.0 and training["final_val_elbo_bpd"] == -3.75
    assert training["mean_network"] == {"steps": 300, "objective": "log_mse", "parameters": 900,
                                        "final_val_loss": 0.5, "wall_time_s": 3.5,
                                        "epochs_timed": "1 of 1", "wall_time_s_last_session": 7.0}
    assert (training["wall_time_s"], training["epochs_timed"]) == (40.5, "1 of 2")
    # In all: the diffusion network's 200 steps; its 40.5 s and its mean network's 3.5 s.
    assert (training["total_steps"], training["total_wall_time_s"]) == (200, 44.0)
    card["name"] = "tiny"
    text = render_card(card)
    assert text.startswith("# tiny") and "- mean_network: steps: 300" in text and "load_posterior" in text


def test_a_plain_run_has_no_mean_network(tmp_path):
    write_run(tmp_path, residual=False)
    assert "mean_network" not in collect_card(tmp_path)["training"]


def test_a_residual_run_without_its_finished_mean_network_is_not_packaged(tmp_path):
    write_run(tmp_path, residual=True)
    (tmp_path / "train" / "mean" / "done.json").unlink()
    with pytest.raises(FileNotFoundError, match="no finished mean network"):
        collect_card(tmp_path)


def write_distillation(root, teacher_dir):
    distill = root / "distill"
    config = {"teacher": str(teacher_dir / "model.keras"), "teacher_steps": 32, "student_steps": 4, "steps": 50,
              "dataset": "camels_cmd/IllustrisTNG_LH", "crop_size": 128, "batch_size": 6,
              "learning_rate": 1e-4, "ema_momentum": 0.995}
    for steps, loss in ((16, 0.5), (8, 0.25), (4, 0.125)):
        (distill / f"steps_{steps}").mkdir(parents=True)
        (distill / f"steps_{steps}" / "history.csv").write_text(
            f"epoch,loss,val_loss,epoch_seconds\n0,{loss},{loss / 2},10.0\n")
    (distill / "config.json").write_text(json.dumps(config))
    (distill / "done.json").write_text(json.dumps({
        "teacher": config["teacher"], "rounds": [16, 8, 4], "steps_per_round": 50, "wall_time_s": 60.0,
        "wall_time_s_per_round": {"16": 10.0, "8": 20.0, "4": 30.0}, "backend": "tensorflow"}))
    (root / "evaluate_8").mkdir()
    (root / "evaluate_8" / "metrics.json").write_text(json.dumps({"settings": {"num_steps": 8},
                                                                  "summary": {"verdict": "calibrated"}}))


def test_a_distilled_students_card_sets_its_cost_against_the_teachers_training(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    # A shipped teacher: its training and its mean network's, from its own metrics.json.
    (teacher / "metrics.json").write_text(json.dumps({"name": "tng", "training": {"wall_time_s": 150.0,
                                                                   "mean_network": {"wall_time_s": 50.0}}}))
    write_distillation(tmp_path, teacher)
    card = collect_card(tmp_path, train="distill", evaluation="evaluate_8", student_steps=8)
    facts = card["distillation"]
    assert "training" not in card and facts["student_steps"] == 8 and facts["rounds"] == [16, 8]
    assert facts["teacher"] == "tng"
    assert facts["wall_time_s"] == 30.0 and facts["teacher_training_wall_time_s"] == 200.0
    assert facts["wall_time_fraction_of_teacher_training"] == 0.15
    assert (facts["final_loss"], facts["final_val_loss"]) == (0.25, 0.125)
    # Without student_steps the card is the last student's.
    assert collect_card(tmp_path, train="distill", evaluation="evaluate_8")["distillation"]["wall_time_s"] == 60.0
    card["name"] = "student"
    text = render_card(card)
    assert "## Distillation" in text and "num_steps=8" in text and 'sampler="ddim"' in text
    with pytest.raises(ValueError, match="no 2-step student"):
        collect_card(tmp_path, train="distill", evaluation="evaluate_8", student_steps=2)


def test_a_teacher_trained_in_a_run_folder_is_timed_from_its_histories(tmp_path):
    write_run(tmp_path / "teacher_run", residual=True)
    write_distillation(tmp_path, tmp_path / "teacher_run" / "train")
    facts = collect_card(tmp_path, train="distill", evaluation="evaluate_8")["distillation"]
    assert facts["teacher_training_wall_time_s"] == 40.5 + 3.5  # the diffusion's timed epochs + the mean's
    assert facts["teacher"].endswith("model.keras")


def test_a_fine_tuned_runs_card_names_its_initial_model_and_keeps_its_mean_network(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    mean = {"steps": 3000, "parameters": 900, "wall_time_s": 50.0}
    (shipped / "metrics.json").write_text(json.dumps({"name": "tng", "training": {"steps": 2000, "wall_time_s": 150.0,
                                                                                  "mean_network": mean}}))
    write_run(tmp_path / "run", residual=True)
    config_file = tmp_path / "run" / "train" / "config.json"
    config = dict(json.loads(config_file.read_text()), init_model=str(shipped / "model.keras"), mean_steps=0)
    config_file.write_text(json.dumps(config))
    training = collect_card(tmp_path / "run")["training"]
    # The run trained no mean network of its own: the card's is the initial model's.
    assert training["mean_network"] == mean
    assert training["initial_model"] == {"name": "tng", "training_steps": 2000, "training_wall_time_s": 200.0}
    assert training["wall_time_s"] == 40.5
    assert (training["total_steps"], training["total_wall_time_s"]) == (2200, 240.5)


def test_a_shipped_fine_tuned_model_is_followed_by_its_totals_without_counting_its_mean_network_twice(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    mean = {"steps": 3000, "parameters": 900, "wall_time_s": 50.0}
    # Its 100 s and 2000 steps, after an initial model of 200 s (mean network included) and 2000 steps.
    training = {"steps": 2000, "wall_time_s": 100.0, "mean_network": mean, "total_steps": 4000,
                "total_wall_time_s": 300.0,
                "initial_model": {"name": "tng", "training_steps": 2000, "training_wall_time_s": 200.0}}
    (shipped / "metrics.json").write_text(json.dumps({"name": "tng", "training": training}))
    write_run(tmp_path / "run", residual=True)
    config_file = tmp_path / "run" / "train" / "config.json"
    config = dict(json.loads(config_file.read_text()), init_model=str(shipped / "model.keras"), mean_steps=0)
    config_file.write_text(json.dumps(config))
    card = collect_card(tmp_path / "run")["training"]
    assert card["initial_model"] == {"name": "tng", "training_steps": 4000, "training_wall_time_s": 300.0}
    assert (card["total_steps"], card["total_wall_time_s"]) == (4200, 340.5)


def test_a_second_fine_tuning_round_follows_its_initial_run_back_to_the_shipped_model(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    mean = {"steps": 3000, "parameters": 900, "wall_time_s": 50.0}
    (shipped / "metrics.json").write_text(json.dumps({"name": "tng", "training": {"wall_time_s": 150.0,
                                                                                  "mean_network": mean}}))
    write_run(tmp_path / "run", residual=True)
    # Round 1 started from the shipped model; round 2 (train_2) from round 1's run folder.
    round_1 = tmp_path / "run" / "train" / "config.json"
    round_1.write_text(json.dumps(dict(json.loads(round_1.read_text()), init_model=str(shipped / "model.keras"))))
    (tmp_path / "run" / "train_2").mkdir()
    for name in ("config.json", "done.json", "history.csv"):
        (tmp_path / "run" / "train_2" / name).write_bytes((tmp_path / "run" / "train" / name).read_bytes())
    round_2 = tmp_path / "run" / "train_2" / "config.json"
    round_2.write_text(json.dumps(dict(json.loads(round_2.read_text()),
                                       init_model=str(tmp_path / "run" / "train" / "model.keras"))))
    training = collect_card(tmp_path / "run", train="train_2")["training"]
    assert training["mean_network"] == mean
    # Round 1's own 40.5 s, then the shipped model's 150 s and its mean network's 50 s.
    assert training["initial_model"]["training_wall_time_s"] == 40.5 + 150.0 + 50.0
    assert training["initial_model"]["name"].endswith("train/model.keras")
    assert training["wall_time_s"] == 40.5
