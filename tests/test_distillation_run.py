import json

import keras
import numpy as np
import pytest

from keras_dmdiff.distillation import DistillConfig, distill, round_steps
from keras_dmdiff.training import train
from keras_dmdiff_datasets.camels_cmd.fake_cmd import write_fake_cmd_files


# The rounds' run folders and settings are the same on every backend (the TensorFlow pass runs them);
# the distillation step itself is tested on both backends in test_distillation.
pytestmark = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil")
    write_fake_cmd_files(root / "manual", "IllustrisTNG", "LH", num_simulations=3, maps_per_simulation=2)
    data = {"dataset": "camels_cmd/IllustrisTNG_LH", "manual_dir": str(root / "manual"), "data_dir": str(root / "tfds"),
            "crop_size": 32, "batch_size": 4, "validation_batches": 1}
    train({**data, "preset": "tiny", "steps": 4, "steps_per_epoch": 2, "checkpoint_every": 2}, root / "teacher",
          verbose=0)
    return root, data


def distil_config(root, data, **overrides):
    return {"teacher": str(root / "teacher" / "model.keras"), "teacher_steps": 4, "student_steps": 1, "steps": 4,
            "steps_per_epoch": 2, "checkpoint_every": 2, "learning_rate": 1e-3, **data, **overrides}


def test_a_distillation_run_halves_round_by_round(teacher_run, tmp_path):
    root, data = teacher_run
    whole = distill(distil_config(root, data), tmp_path / "whole", verbose=0)
    assert whole.distilled_steps == 1
    for steps in (2, 1):
        round_dir = tmp_path / "whole" / f"steps_{steps}"
        assert keras.saving.load_model(round_dir / "student.keras", compile=False).distilled_steps == steps
        assert len((round_dir / "history.csv").read_text().splitlines()) == 3  # a header and 2 epochs
    done = json.loads((tmp_path / "whole" / "done.json").read_text())
    assert done["rounds"] == [2, 1] and done["wall_time_s"] == pytest.approx(sum(done["wall_time_s_per_round"].values()))
    stars = np.full((1, 32, 32), 1e9, np.float32)
    assert whole.sample(stars, 2, num_steps=1, sampler="ddim").shape == (1, 2, 32, 32)

    # A finished run is loaded, not redone; another configuration in its folder is refused.
    assert distill(distil_config(root, data), tmp_path / "whole", verbose=0).distilled_steps == 1
    with pytest.raises(ValueError, match="another configuration"):
        distill(distil_config(root, data, steps=6), tmp_path / "whole", verbose=0)


def test_bad_distillation_settings_are_named(teacher_run, tmp_path):
    root, data = teacher_run
    with pytest.raises(ValueError, match="power of two"):
        round_steps(24, 8)
    with pytest.raises(ValueError, match="power of two"):
        DistillConfig.from_dict({"teacher": "t.keras", "teacher_steps": 8, "student_steps": 8})
    with pytest.raises(ValueError, match="Unknown distillation settings"):
        DistillConfig.from_dict({"teacher": "t.keras", "preset": "cpu"})
    with pytest.raises(FileNotFoundError, match="train it first"):
        distill(distil_config(root, data, teacher=str(tmp_path / "missing.keras")), tmp_path / "run", verbose=0)


@pytest.mark.slow
def test_a_stopped_distillation_resumes_to_the_same_student(teacher_run, tmp_path):
    root, data = teacher_run
    whole = tmp_path / "whole"
    distill(distil_config(root, data, student_steps=2), whole, verbose=0)
    # Stopped by the time limit after its first epoch, then resumed to the round's end: the same student.
    interrupted = tmp_path / "interrupted"
    assert distill(distil_config(root, data, student_steps=2), interrupted, verbose=0, time_limit_s=0.0) is None
    assert not (interrupted / "steps_2" / "student.keras").exists()
    assert distill(distil_config(root, data, student_steps=2), interrupted, verbose=0, time_limit_s=0.0).distilled_steps == 2
    resumed = keras.saving.load_model(interrupted / "steps_2" / "student.keras", compile=False)
    uninterrupted = keras.saving.load_model(tmp_path / "whole" / "steps_2" / "student.keras", compile=False)
    for a, b in zip(resumed.network.get_weights(), uninterrupted.network.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
