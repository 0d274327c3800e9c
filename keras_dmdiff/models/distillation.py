"""Progressive distillation of a VariationalDiffusion into fewer DDIM steps (Salimans & Ho 2022).

A student with the teacher's network shape, initialised from the teacher's
weights, learns to take in one deterministic DDIM step the two DDIM steps
its teacher takes on the same uniform time grid: for t = i / N (i = 1..N),
from z_t the teacher steps to t - 1/(2N) and then to t - 1/N, reaching
z''. The data prediction x~ for which one DDIM step of the student from z_t
lands on z'' exactly is

    x~ = (z'' - (sigma'' / sigma_t) z_t) / (alpha'' - (sigma'' / sigma_t) alpha_t),

and the student's prediction x_hat = (z_t - sigma_t eps_hat) / alpha_t is
fitted to it with the truncated-SNR weight max(alpha_t^2 / sigma_t^2, 1).
Halving the steps round after round (256 -> 128 -> ... -> 8) keeps each
round's target close to what the student already does.

The student is a `VariationalDiffusion` with `distilled_steps = N`; it
samples with `model.sample(..., num_steps=N, sampler="ddim")`, saves,
loads and exports like its teacher. The residual mode's mean network and
the noise schedule are the teacher's, frozen.
"""

import keras
from keras import ops

from keras_dmdiff.models.layers import PACKAGE
from keras_dmdiff.models.samplers import alpha_sigma, ddim_step
from keras_dmdiff.models.variational_diffusion import VariationalDiffusion

__all__ = ["ProgressiveDistillation"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProgressiveDistillation(keras.Model):
    """Trains a student to match two DDIM steps of its teacher with one of its own.

    Trains with `compile()` + `fit(x=stellar_mass, y=dark_matter)` on
    physical maps, like the teacher; the loss is the weighted squared error
    of the student's data prediction (see the module docstring). Only the
    student's network is trained.

    Args:
        teacher: a trained `VariationalDiffusion` (or its config, when a saved
            distillation is loaded). A continuous-time teacher can be halved to
            any `num_steps`; a student taken as teacher must have been
            distilled for `2 * num_steps`.
        num_steps: the student's number of DDIM steps N (the teacher takes 2N).
        seed: seed of the training times and noise.

    Attributes:
        student: the `VariationalDiffusion` being trained, `distilled_steps = N`.

    Example:
        >>> distiller = ProgressiveDistillation(teacher, num_steps=4)  # doctest: +SKIP
        >>> distiller.compile(optimizer=keras.optimizers.Adam(1e-4))  # doctest: +SKIP
        >>> distiller.fit(stars, dm, batch_size=8, epochs=10)  # doctest: +SKIP
        >>> distiller.student.sample(stars[:1], 8, num_steps=4, sampler="ddim").shape  # doctest: +SKIP
        (1, 8, 256, 256)
    """

    def __init__(self, teacher, num_steps, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(teacher, dict):
            teacher = keras.saving.deserialize_keras_object(teacher)
        if not isinstance(teacher, VariationalDiffusion):
            raise ValueError(f"The teacher must be a VariationalDiffusion; got {type(teacher).__name__}.")
        num_steps = int(num_steps)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
        if teacher.distilled_steps == 1:
            raise ValueError("The teacher is a 1-step student: it cannot be halved further.")
        if teacher.distilled_steps is not None and teacher.distilled_steps != 2 * num_steps:
            raise ValueError(
                f"The teacher is a student distilled for {teacher.distilled_steps} steps: it can teach a "
                f"student of {teacher.distilled_steps // 2} steps (half its own), not {num_steps}."
            )
        teacher.trainable = False
        self.teacher = teacher
        config = teacher.get_config()
        config["distilled_steps"] = num_steps
        self.student = VariationalDiffusion.from_config(config)
        # The teacher's frozen state is in its config: unfreeze the student's network alone.
        self.student.trainable = True
        self.student.schedule.trainable = False
        if self.student.mean_network is not None:
            self.student.mean_network.trainable = False
        self.num_steps = num_steps
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def network(self):
        """The student's network (the trained part)."""
        return self.student.network

    def build(self, input_shape=None):
        if self.built:
            return
        if not self.teacher.built:
            self.teacher.build()
        self.student.build()
        # The student starts as its teacher; a loaded file or checkpoint then overwrites every variable.
        # Copied: on JAX an assigned array would share the teacher's buffer, which a training step
        # may not donate twice.
        for student_variable, teacher_variable in zip(self.student.variables, self.teacher.variables, strict=True):
            student_variable.assign(ops.copy(teacher_variable.value))
        self.built = True

    def call(self, stellar_mass, training=False):
        return self.teacher(stellar_mass)

    def _gammas(self, index):
        """gamma at t = i/N, the teacher's midpoint and t - 1/N, each [B, 1, 1, 1]."""
        steps = float(self.num_steps)
        t = ops.cast(index, "float32") / steps
        return [ops.reshape(self.teacher.schedule(time), (-1, 1, 1, 1)) for time in (t, t - 0.5 / steps, t - 1.0 / steps)]

    def _teacher_step(self, z, condition, gamma_t, gamma_s):
        eps_hat = self.teacher.predict_noise(z, condition, self.teacher._normalised_gamma(ops.reshape(gamma_t, (-1,))))
        return ddim_step(z, eps_hat, gamma_t, gamma_s, None, None)[0]

    def distillation_target(self, z_t, condition, index):
        """The data prediction x~ whose one DDIM step from z_t equals the teacher's two [B, H, W, 1].

        Args:
            z_t: latents at t = index / N [B, H, W, 1].
            condition: normalised stellar mass [B, H, W, 1].
            index: int [B], the step i in 1..N.
        """
        gamma_t, gamma_mid, gamma_end = self._gammas(index)
        z_mid = self._teacher_step(z_t, condition, gamma_t, gamma_mid)
        z_end = self._teacher_step(z_mid, condition, gamma_mid, gamma_end)
        alpha_t, sigma_t = alpha_sigma(gamma_t)
        alpha_end, sigma_end = alpha_sigma(gamma_end)
        ratio = sigma_end / sigma_t
        return ops.stop_gradient((z_end - ratio * z_t) / (alpha_end - ratio * alpha_t))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        condition = y_pred if y_pred is not None else self(x)
        target = self.teacher.diffusion_target(condition, y)
        batch_size = ops.shape(target)[0]
        index = keras.random.randint((batch_size,), 1, self.num_steps + 1, seed=self.seed_generator)
        gamma_t = self._gammas(index)[0]
        alpha_t, sigma_t = alpha_sigma(gamma_t)
        z_t = alpha_t * target + sigma_t * keras.random.normal(ops.shape(target), seed=self.seed_generator)
        x_target = self.distillation_target(z_t, condition, index)
        eps_hat = self.student.predict_noise(
            z_t, condition, self.student._normalised_gamma(ops.reshape(gamma_t, (-1,))), training=training
        )
        x_hat = (z_t - sigma_t * eps_hat) / alpha_t
        # Truncated SNR (Salimans & Ho 2022): the x-space error, not below the eps-space one at low SNR.
        weight = ops.maximum(ops.exp(-ops.reshape(gamma_t, (-1,))), 1.0)
        loss = ops.mean(weight * ops.mean(ops.square(x_target - x_hat), axis=(1, 2, 3)))
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            teacher=keras.saving.serialize_keras_object(self.teacher),
            num_steps=self.num_steps,
            seed=self.seed,
        )
        return config
