import keras
import numpy as np
import pytest
from keras import ops

from keras_dmdiff.models import RegressionUNet, VariationalDiffusion, network_from_preset
from keras_dmdiff.models.distillation import ProgressiveDistillation
from keras_dmdiff.models.samplers import alpha_sigma, ddim_step


def toy_data(n=64, size=16, seed=0):
    """log10 dm = 11 + 0.5 [star in pixel] + smooth noise: a posterior with structure to learn."""
    rng = np.random.default_rng(seed)
    has_star = rng.random((n, size, size)) < 0.2
    stars = (has_star * 1e9).astype("float32")
    noise = rng.normal(size=(n, size, size))
    noise = 0.5 * (noise + np.roll(noise, 1, axis=1))
    dm = (10 ** (11 + 0.5 * has_star + 0.2 * noise)).astype("float32")
    return stars, dm


@pytest.fixture(scope="module")
def teacher():
    stars, dm = toy_data()
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=1, prediction="v")
    model.adapt(stars, dm)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, global_clipnorm=1.0))
    model.fit(stars, dm, batch_size=16, epochs=15, verbose=0)
    return model, (stars, dm)


def test_the_student_starts_as_its_teacher(teacher):
    model, (stars, _) = teacher
    distiller = ProgressiveDistillation(model, num_steps=2, seed=0)
    distiller.build()
    assert distiller.student.distilled_steps == 2 and distiller.num_steps == 2
    assert [v.name for v in distiller.trainable_variables] == [v.name for v in distiller.student.network.trainable_variables]
    condition = model(stars[:2])
    z = keras.random.normal(ops.shape(condition), seed=3)
    gamma = ops.full((2,), 0.4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(distiller.student.predict_noise(z, condition, gamma)),
        ops.convert_to_numpy(model.predict_noise(z, condition, gamma)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_one_student_step_on_the_target_lands_where_two_teacher_steps_do(teacher):
    model, (stars, _) = teacher
    distiller = ProgressiveDistillation(model, num_steps=4, seed=0)
    distiller.build()
    condition = model(stars[:3])
    z_t = keras.random.normal(ops.shape(condition), seed=5)
    index = ops.convert_to_tensor(np.array([1, 2, 4]), "int32")
    x_target = distiller.distillation_target(z_t, condition, index)
    gamma_t, gamma_mid, gamma_end = distiller._gammas(index)
    two_steps = distiller._teacher_step(distiller._teacher_step(z_t, condition, gamma_t, gamma_mid), condition,
                                        gamma_mid, gamma_end)
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    eps = (z_t - alpha_t * x_target) / sigma_t  # the eps of a student whose data prediction is the target
    one_step, _ = ddim_step(z_t, eps, gamma_t, gamma_end, None, None)
    np.testing.assert_allclose(ops.convert_to_numpy(one_step), ops.convert_to_numpy(two_steps), rtol=1e-4, atol=1e-4)


def test_the_student_in_n_steps_follows_the_teacher_in_2n(teacher, tmp_path):
    model, (stars, dm) = teacher
    keras.utils.set_random_seed(0)
    distiller = ProgressiveDistillation(model, num_steps=1, seed=0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = distiller.fit(stars, dm, batch_size=16, epochs=30, verbose=0).history["loss"]
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:3])
    # The same initial noise for every run: the 2-step grid's (noise_steps=2).
    teacher_2 = model.sample(stars[:8], 2, num_steps=2, seed=9, sampler="ddim")
    teacher_1 = model.sample(stars[:8], 2, num_steps=1, seed=9, sampler="ddim", noise_steps=2)
    student_1 = distiller.student.sample(stars[:8], 2, num_steps=1, seed=9, sampler="ddim", noise_steps=2)
    untrained_error = np.mean((np.log10(teacher_1) - np.log10(teacher_2)) ** 2)
    student_error = np.mean((np.log10(student_1) - np.log10(teacher_2)) ** 2)
    print(f"1 step against the teacher's 2: teacher {untrained_error:.5f}, student {student_error:.5f}")
    assert student_error < 0.3 * untrained_error

    path = tmp_path / "student.keras"
    distiller.student.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.distilled_steps == 1
    np.testing.assert_allclose(
        restored.sample(stars[:2], 1, num_steps=1, seed=1, sampler="ddim"),
        distiller.student.sample(stars[:2], 1, num_steps=1, seed=1, sampler="ddim"),
        rtol=1e-5,
    )
    # A saved distillation reloads with the trained student's weights.
    distiller.save(tmp_path / "distiller.keras")
    reloaded = keras.saving.load_model(tmp_path / "distiller.keras", compile=False)
    np.testing.assert_allclose(
        reloaded.student.sample(stars[:2], 1, num_steps=1, seed=1, sampler="ddim"),
        distiller.student.sample(stars[:2], 1, num_steps=1, seed=1, sampler="ddim"),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="1-step student: it cannot be halved"):
        ProgressiveDistillation(restored, num_steps=1)


def test_a_student_refuses_what_it_was_not_distilled_for(teacher):
    model, (stars, _) = teacher
    student = ProgressiveDistillation(model, num_steps=2).student
    student.build()
    with pytest.raises(ValueError, match="distilled for 2 DDIM steps, not 4"):
        student.sample(stars[:1], 1, num_steps=4, sampler="ddim")
    with pytest.raises(ValueError, match="sampler='ddim'"):
        student.sample(stars[:1], 1, num_steps=2, sampler="ancestral")
    with pytest.raises(ValueError, match="sampler='ddim'"):
        student.sample(stars[:1], 1, num_steps=2, sampler="ddim", eta=0.5)
    with pytest.raises(ValueError, match="teach a student of 1 steps"):
        ProgressiveDistillation(student, num_steps=2)
    with pytest.raises(ValueError, match="must be a VariationalDiffusion"):
        ProgressiveDistillation(RegressionUNet(network=network_from_preset("tiny")), num_steps=2)
    with pytest.raises(ValueError, match="distilled_steps"):
        VariationalDiffusion(network=network_from_preset("tiny"), distilled_steps=0)


def test_a_student_exports_its_ddim_steps_only(teacher, tmp_path):
    from keras_dmdiff.export import export_saved_model, load_exported

    model, (stars, _) = teacher
    student = ProgressiveDistillation(model, num_steps=2).student
    student.build()
    with pytest.raises(ValueError, match="samplers=\\['ddim'\\]"):
        export_saved_model(student, tmp_path / "both", samplers=("ancestral", "ddim"))
    export_saved_model(student, tmp_path / "student", samplers=("ddim",))
    exported = load_exported(tmp_path / "student")
    assert exported.metadata["distilled_steps"] == 2
    np.testing.assert_allclose(
        exported(stars[:2], 2, num_steps=2, seed=4, sampler="ddim"),
        student.sample(stars[:2], 2, num_steps=2, seed=4, sampler="ddim"),
        rtol=2e-4,
    )
    with pytest.raises(ValueError, match="distilled for 2 DDIM steps, not 8"):
        exported(stars[:1], 1, num_steps=8, sampler="ddim")
