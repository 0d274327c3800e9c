"""The pretrained model that ships in saved_models/ loads and reconstructs the example map."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_dmdiff.reconstruct import example_stellar_mass, reconstruct, shipped_model_path


def test_shipped_model_reconstructs_the_example_map(tmp_path):
    path = shipped_model_path()
    card = json.loads((path.parent / "metrics.json").read_text())
    assert card["name"] == path.parent.name and card["training"]["steps"] > 0
    assert (path.parent / "MODEL_CARD.md").read_text().startswith(f"# {card['name']}")
    outputs = reconstruct(example=True, num_samples=2, num_steps=4, out=tmp_path / "example.h5", png=tmp_path / "example.png")
    import h5py

    with h5py.File(outputs["samples"]) as handle:
        samples = handle["samples"][...]
    assert samples.shape == (1, 2, 256, 256) and np.all(np.isfinite(samples)) and np.all(samples > 0)
    # Physical dark-matter surface densities, around CMD's 10^11 (Msun/h)/(Mpc/h)^2.
    assert 9.5 < np.log10(samples).mean() < 12.5
    assert outputs["figure"].exists()


@pytest.mark.backend_independent  # TensorFlow alone, in its own process
def test_shipped_saved_model_runs_without_keras(tmp_path):
    folder = shipped_model_path().parent / "saved_model"
    np.save(tmp_path / "stars.npy", example_stellar_mass()[:64, :64])
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("keras", "keras_dmdiff", "jax"):
            sys.modules[name] = None  # importing any of them now fails
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load({str(folder)!r})
        stars = tf.constant(np.load({str(tmp_path / "stars.npy")!r})[None])
        a = model.sample(stars, tf.constant(2), tf.constant(3), tf.constant(1)).numpy()
        b = model.sample(stars, tf.constant(2), tf.constant(3), tf.constant(2)).numpy()
        assert a.shape == (1, 2, 64, 64) and (a > 0).all() and not np.allclose(a, b)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_the_shipped_student_samples_in_its_eight_steps_and_its_card_says_so():
    from keras_dmdiff.posterior import SamplingOptions, load_posterior

    folder = shipped_model_path().parent.parent / "tng_mock_cpu_ddim8"
    card = json.loads((folder / "metrics.json").read_text())
    distillation = card["distillation"]
    assert distillation["teacher"] == shipped_model_path().parent.name
    assert distillation["student_steps"] == 8 and distillation["rounds"][-1] == 8
    assert 0 < distillation["wall_time_fraction_of_teacher_training"] < 1
    summary = card["evaluation"]["summary"]["cross_correlation_1_k_5"]
    assert summary["diffusion_posterior_mean"] > summary["stellar_tracer"]
    student = load_posterior(folder / "model.keras")
    stars = example_stellar_mass()[:64, :64]
    ddim = SamplingOptions(sampler="ddim")
    samples = student.sample(stars, num_samples=2, num_steps=8, seed=1, options=ddim)
    assert samples.shape == (1, 2, 64, 64) and np.all(samples > 0)
    assert not np.allclose(samples[0, 0], samples[0, 1])  # diversity from the initial noise
    with pytest.raises(ValueError, match="distilled for 8"):
        student.sample(stars, num_samples=1, num_steps=16, seed=1, options=ddim)
