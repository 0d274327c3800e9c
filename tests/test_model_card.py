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
    card["name"] = "tiny"
    text = render_card(card)
    assert text.startswith("# tiny") and "- mean_network: steps: 300" in text and "load_posterior" in text


def test_a_plain_run_has_no_mean_network(tmp_path):
    write_run(tmp_path, residual=False)
    assert "mean_network" not in collect_card(tmp_path)["training"]
