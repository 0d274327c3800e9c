"""The conditional variational diffusion model (Kingma et al. 2021; Ono et al. 2024)."""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_dmdiff.models.conditional_unet import ConditionalUNet
from keras_dmdiff.models import loss_weightings
from keras_dmdiff.models.multiscale_loss import multiscale_squared_error
from keras_dmdiff.models.layers import PACKAGE
from keras_dmdiff.models.noise_schedules import FixedLinearSchedule, LearnedLinearSchedule, get_schedule
from keras_dmdiff.models.regression_unet import RegressionUNet
from keras_dmdiff.export import chunk_seed, progress_bar
from keras_dmdiff.posterior import SamplingOptions
from keras_dmdiff.models.samplers import alpha_sigma, get_step, noise_group, run_sampler, tiled_denoiser
from keras_dmdiff.map_checks import validate_maps
from keras_dmdiff.transforms import MapTransform


PREDICTIONS = ("eps", "v")


@keras.saving.register_keras_serializable(package=PACKAGE)
class VariationalDiffusion(keras.Model):
    """p(dark matter | stars) as a continuous-time variational diffusion model.

    Trains with plain `compile()` + `fit(x=stellar_mass, y=dark_matter)` on
    physical maps [B, H, W] in (Msun/h)/(Mpc/h)^2 (numpy or tf.data). The model
    carries its own normalisation (`transform`, fitted by `adapt`), so users
    give and get physical maps.

    The loss is the VDM ELBO in bits per dimension, with its three terms
    reported as metrics:
      - `diffusion_bpd`: 0.5 gamma'(t) ||eps - eps_hat||^2 at a time t drawn per
        example (antithetic: the batch covers [0, 1) evenly);
      - `latent_bpd`: KL(q(z_1 | y) || N(0, 1));
      - `reconstruction_bpd`: -log N(y; z_0 / alpha_0, sigma_rec^2);
      - `elbo_bpd`: their sum.
    With a `loss_weighting` other than "elbo" the optimised diffusion term is
    0.5 w(gamma) gamma'(t) ||eps - eps_hat||^2 (VDM++, see `loss_weightings`),
    reported as `weighted_diffusion_bpd`; `diffusion_bpd` and `elbo_bpd` stay
    the unweighted ELBO, so likelihoods compare across objectives.

    Residual mode (CorrDiff, Mardani et al.): given a trained, frozen
    `RegressionUNet` as `mean_network`, the diffusion models the residual
    y - mu(stars) in normalised log space, and sampling adds mu back. The
    posterior mean then comes from the fast-converging regression.

    Args:
        network: a `ConditionalUNet` or its config; default: the paper's network.
        schedule: noise schedule: "learned_linear" (default, the reference),
            "fixed_linear", "learned_monotone", or a schedule layer.
        gamma_min, gamma_max: initial gamma(0) and gamma(1) of the schedule.
        transform: a `MapTransform` (or its config); default: published TNG moments.
        reconstruction_sigma: standard deviation of the Gaussian decoder at t=0,
            in normalised units.
        antithetic_time_sampling: stratify t across the batch (lower variance).
        seed: seed of the model's own `SeedGenerator` (training noise and times).
        prediction: what the network predicts: "eps" (the reference) or "v"
            (Salimans & Ho 2022, v = alpha eps - sigma y; then
            eps_hat = sigma z_t + alpha v_hat, and v_hat = 0 means the
            prediction y_hat = alpha z_t, the optimum for unit-variance data).
        loss_weighting: "elbo" (the reference), "sigmoid" or "min_snr".
        weighting_bias: the weighting's constant: b of sigmoid(gamma + b),
            the SNR cap of min_snr; None: 2 and 5.
        importance_sampling: draw gamma with density proportional to the
            weighting instead of uniformly (needs a linear schedule).
        multiscale_weight: 0 (the reference), or the extra weight per 2x2
            pooling level of the optimised error (`multiscale_loss`): the
            coarse modes, up to the mass of a map, weigh more; the ELBO
            terms stay unweighted.
        mean_network: None, or a trained `RegressionUNet` (or its config) with
            the same normalisation: residual mode. It is frozen.
        distilled_steps: None, or the number of deterministic DDIM steps a
            distilled student was trained for (`models.distillation`): it then
            samples only with `sampler="ddim"` (eta 0) and that many steps.

    Call arguments:
        stellar_mass: physical maps [B, H, W] (or [B, H, W, 1]). Returns the
            normalised condition [B, H, W, 1]; `fit` uses it and computes the
            diffusion loss in `compute_loss`, where the target is available.

    Example:
        >>> model = VariationalDiffusion(network=network_from_preset("tiny"))
        >>> model.adapt(stars, dm)
        >>> model.compile(optimizer=keras.optimizers.AdamW(1e-4, global_clipnorm=0.5))
        >>> model.fit(stars, dm, batch_size=8, epochs=1)
        >>> samples = model.sample(stars[:2], num_samples=4, num_steps=50, seed=1)
        >>> samples.shape   # [B, num_samples, H, W], physical units
    """

    def __init__(
        self,
        network=None,
        schedule="learned_linear",
        gamma_min=-13.3,
        gamma_max=13.3,
        transform=None,
        reconstruction_sigma=1e-3,
        antithetic_time_sampling=True,
        seed=None,
        prediction="eps",
        loss_weighting="elbo",
        weighting_bias=None,
        importance_sampling=False,
        multiscale_weight=0.0,
        mean_network=None,
        distilled_steps=None,
        **kwargs,
    ):
        # The schedule, the ELBO and the maps' log transform stay float32; the
        # network's own dtype policy (e.g. "mixed_bfloat16") sets its compute dtype.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if prediction not in PREDICTIONS:
            raise ValueError(f"Unknown prediction {prediction!r}; choose one of {PREDICTIONS}.")
        if weighting_bias is None:
            weighting_bias = loss_weightings.DEFAULT_BIAS.get(loss_weighting, 0.0)
        loss_weightings.check_weighting(loss_weighting, float(weighting_bias))
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.weighting_bias = float(weighting_bias)
        self.importance_sampling = bool(importance_sampling)
        if not multiscale_weight >= 0:
            raise ValueError(f"multiscale_weight must be >= 0; got {multiscale_weight}.")
        self.multiscale_weight = float(multiscale_weight)
        if network is None:
            network = ConditionalUNet()
        elif isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        self.network = network
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        self.schedule = get_schedule(
            schedule, gamma_min=self.gamma_min, gamma_max=self.gamma_max, dtype=self.dtype_policy
        )
        if self.importance_sampling and not isinstance(self.schedule, (FixedLinearSchedule, LearnedLinearSchedule)):
            raise ValueError(
                "importance_sampling maps gamma back to t, which needs a linear schedule "
                f"('learned_linear' or 'fixed_linear'); got {type(self.schedule).__name__}."
            )
        if transform is None:
            transform = MapTransform()
        elif isinstance(transform, dict):
            transform = MapTransform.from_config(transform)
        self.transform = transform
        if reconstruction_sigma <= 0:
            raise ValueError(f"reconstruction_sigma must be > 0; got {reconstruction_sigma}.")
        self.reconstruction_sigma = float(reconstruction_sigma)
        self.antithetic_time_sampling = bool(antithetic_time_sampling)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.diffusion_tracker = keras.metrics.Mean(name="diffusion_bpd")
        self.latent_tracker = keras.metrics.Mean(name="latent_bpd")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_bpd")
        self.elbo_tracker = keras.metrics.Mean(name="elbo_bpd")
        self.weighted_tracker = keras.metrics.Mean(name="weighted_diffusion_bpd")
        if isinstance(mean_network, dict):
            mean_network = keras.saving.deserialize_keras_object(mean_network)
        if mean_network is not None:
            if not isinstance(mean_network, RegressionUNet):
                raise ValueError(f"mean_network must be a RegressionUNet; got {type(mean_network).__name__}.")
            mean_network.trainable = False
        self.mean_network = mean_network
        self.check_mean_network()
        if distilled_steps is not None and int(distilled_steps) < 1:
            raise ValueError(f"distilled_steps must be None or >= 1; got {distilled_steps}.")
        self.distilled_steps = None if distilled_steps is None else int(distilled_steps)
        self._compiled_samplers = {}

    def check_mean_network(self):
        """Raises a ValueError if the residual mode's mean network normalises maps differently."""
        if self.mean_network is None:
            return
        ours, theirs = self.transform.get_config(), self.mean_network.transform.get_config()
        if ours != theirs:
            raise ValueError(
                "The mean network's normalisation differs from the diffusion model's "
                f"({theirs} vs {ours}): a residual model needs both fitted on the same maps."
            )
        if self.network.stride % self.mean_network.stride:
            raise ValueError(
                f"The mean network's stride {self.mean_network.stride} does not divide the "
                f"diffusion network's {self.network.stride}."
            )

    @property
    def stride(self):
        return self.network.stride

    def adapt(self, stellar_mass, dark_matter=None):
        """Fits the normalisation on training maps (see `MapTransform.adapt`)."""
        self.transform.adapt(stellar_mass, dark_matter)
        return self

    def build(self, input_shape=None):
        self.network.build(None)
        self.schedule.build(())
        if self.mean_network is not None:
            if not self.mean_network.built:
                self.mean_network.build()
            # A network deserialised with trainable=False keeps the sublayers it builds trainable:
            # its variables are frozen one by one, so no optimiser slot or EMA copy is made for them.
            for variable in self.mean_network.variables:
                variable.trainable = False
        self.built = True

    def call(self, stellar_mass, training=False):
        stellar_mass = ops.convert_to_tensor(stellar_mass, "float32")
        if len(stellar_mass.shape) == 3:
            stellar_mass = ops.expand_dims(stellar_mass, -1)
        return self.transform.stellar_to_network(stellar_mass)

    def _normalised_gamma(self, gamma):
        gamma_0 = self.schedule(ops.zeros(()))
        gamma_1 = self.schedule(ops.ones(()))
        return (gamma - gamma_0) / (gamma_1 - gamma_0)

    def _uniform_times(self, batch_size):
        if self.antithetic_time_sampling:
            offset = keras.random.uniform((), seed=self.seed_generator)
            steps = ops.arange(batch_size, dtype="float32") / ops.cast(batch_size, "float32")
            return ops.mod(offset + steps, 1.0)
        return keras.random.uniform((batch_size,), seed=self.seed_generator)

    def _sample_times(self, batch_size):
        """Times t [B] and, with importance sampling, W(gamma_1) - W(gamma_0) (else None)."""
        u = self._uniform_times(batch_size)
        if not self.importance_sampling:
            return u, None
        name, bias = self.loss_weighting, self.weighting_bias
        gamma_0 = self.schedule(ops.zeros(()))
        gamma_1 = self.schedule(ops.ones(()))
        low = loss_weightings.integral(name, gamma_0, bias)
        total = loss_weightings.integral(name, gamma_1, bias) - low
        gamma = loss_weightings.inverse_integral(name, low + u * total, bias)
        # Clipped against float rounding at the ends of the inverse.
        return ops.clip((gamma - gamma_0) / (gamma_1 - gamma_0), 0.0, 1.0), total

    def residual_mean(self, condition):
        """mu(stars) in normalised log space [B, H, W, 1] (zeros without a mean network)."""
        if self.mean_network is None:
            return ops.zeros_like(condition)
        mean = self.mean_network.predict_normalised(condition)
        return ops.stop_gradient(ops.cast(mean, "float32"))

    def predict_noise(self, z_t, condition, gamma_normalised, training=False):
        """eps_hat(z_t) from the network, whatever it predicts (see `prediction`)."""
        output = self.network([z_t, condition, gamma_normalised], training=training)
        if self.prediction == "eps":
            return output
        gamma_0 = self.schedule(ops.zeros(()))
        gamma_1 = self.schedule(ops.ones(()))
        gamma = gamma_0 + ops.reshape(gamma_normalised, (-1, 1, 1, 1)) * (gamma_1 - gamma_0)
        alpha, sigma = alpha_sigma(gamma)
        # The network adds z_t to its output (the eps skip); v_hat is the rest.
        return sigma * z_t + alpha * (output - z_t)

    def loss_terms(self, condition, target, training=False):
        """The three ELBO terms per example, in bits per dimension.

        Args:
            condition: normalised stellar mass [B, H, W, 1].
            target: normalised dark matter [B, H, W, 1].
            training: passed to the network (dropout).

        Returns:
            dict of [B] tensors: "diffusion" (the ELBO's term), "weighted_diffusion"
            (the optimised one; equal to "diffusion" for the "elbo" weighting),
            "latent", "reconstruction".
        """
        batch_size = ops.shape(target)[0]
        dims = ops.cast(ops.prod(ops.shape(target)[1:]), "float32")
        nats_to_bpd = 1.0 / (dims * math.log(2.0))

        t, weight_total = self._sample_times(batch_size)
        gamma_t = self.schedule(t)
        gamma_slope = self.schedule.derivative(t)
        eps = keras.random.normal(ops.shape(target), seed=self.seed_generator)
        alpha_t, sigma_t = alpha_sigma(ops.reshape(gamma_t, (-1, 1, 1, 1)))
        z_t = alpha_t * target + sigma_t * eps
        eps_hat = self.predict_noise(z_t, condition, self._normalised_gamma(gamma_t), training=training)
        error = eps - eps_hat
        squared_error = ops.sum(ops.square(error), axis=(1, 2, 3))
        optimised_error = multiscale_squared_error(error, self.multiscale_weight) if self.multiscale_weight else squared_error
        w = loss_weightings.weight(self.loss_weighting, gamma_t, self.weighting_bias)
        if weight_total is None:
            diffusion = 0.5 * gamma_slope * squared_error
            weighted = w * 0.5 * gamma_slope * optimised_error
        else:
            # t was drawn with density w(gamma(t)) gamma'(t) / weight_total.
            weighted = 0.5 * weight_total * optimised_error
            diffusion = 0.5 * weight_total * squared_error / w

        gamma_1 = self.schedule(ops.ones(()))
        sigma_1_sq = ops.sigmoid(gamma_1)
        alpha_1_sq = ops.sigmoid(-gamma_1)
        latent = 0.5 * ops.sum(
            sigma_1_sq + alpha_1_sq * ops.square(target) - ops.log(sigma_1_sq) - 1.0, axis=(1, 2, 3)
        )

        gamma_0 = self.schedule(ops.zeros(()))
        alpha_0, sigma_0 = alpha_sigma(gamma_0)
        eps_0 = keras.random.normal(ops.shape(target), seed=self.seed_generator)
        decoded = (alpha_0 * target + sigma_0 * eps_0) / alpha_0
        s = self.reconstruction_sigma
        reconstruction = ops.sum(
            0.5 * ops.square((target - decoded) / s) + math.log(s) + 0.5 * math.log(2 * math.pi),
            axis=(1, 2, 3),
        )
        return {
            "diffusion": diffusion * nats_to_bpd,
            "weighted_diffusion": weighted * nats_to_bpd,
            "latent": latent * nats_to_bpd,
            "reconstruction": reconstruction * nats_to_bpd,
        }

    def diffusion_target(self, condition, dark_matter):
        """What the diffusion models [B, H, W, 1]: normalised log dark matter, less mu(stars) in residual mode.

        Args:
            condition: normalised stellar mass [B, H, W, 1].
            dark_matter: physical maps [B, H, W] (or [B, H, W, 1]), the `y` of `fit`.
        """
        if dark_matter is None:
            raise ValueError(f"{type(self).__name__} needs the dark-matter maps as `y` in fit/evaluate.")
        target = ops.convert_to_tensor(dark_matter, "float32")
        if len(target.shape) == 3:
            target = ops.expand_dims(target, -1)
        return self.transform.dark_matter_to_network(target) - self.residual_mean(condition)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        condition = y_pred if y_pred is not None else self(x)
        target = self.diffusion_target(condition, y)
        terms = self.loss_terms(condition, target, training=training)
        self.diffusion_tracker.update_state(terms["diffusion"])
        self.latent_tracker.update_state(terms["latent"])
        self.reconstruction_tracker.update_state(terms["reconstruction"])
        self.weighted_tracker.update_state(terms["weighted_diffusion"])
        self.elbo_tracker.update_state(terms["diffusion"] + terms["latent"] + terms["reconstruction"])
        loss = ops.mean(terms["weighted_diffusion"] + terms["latent"] + terms["reconstruction"])
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    @property
    def metrics(self):
        return super().metrics + [
            self.diffusion_tracker,
            self.latent_tracker,
            self.reconstruction_tracker,
            self.elbo_tracker,
            self.weighted_tracker,
        ]

    def predict(self, *args, **kwargs):
        raise NotImplementedError(
            "VariationalDiffusion draws posterior samples with `model.sample(stellar_mass, "
            "num_samples=..., num_steps=..., seed=...)`, not `predict`."
        )

    # ------------------------------------------------------------------ sampling
    def _sampler_function(self, sampler, num_steps, tiling=None, noise_steps=None, random_shifts=False, eta=0.0):
        key = (sampler, num_steps, tiling, noise_steps, random_shifts, eta)
        if key in self._compiled_samplers:
            return self._compiled_samplers[key]

        def denoise(z, condition, gamma_normalised):
            return self.predict_noise(z, condition, gamma_normalised)

        if tiling is not None:
            denoise = tiled_denoiser(denoise, *tiling)

        def draw(condition, seed):
            shift_period = self.stride if random_shifts else None
            residual = run_sampler(
                denoise, self.schedule, condition, seed, num_steps, sampler, noise_steps, shift_period, eta
            )
            return residual + self.residual_mean(condition)

        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            from keras_dmdiff.compilation import tensorflow_uses_xla

            # Tiling needs static H and W, so it traces once per map shape.
            function = tf.function(
                draw, jit_compile=tensorflow_uses_xla(), reduce_retracing=tiling is None, autograph=False
            )
        elif backend == "jax":
            import jax

            variables = self.network.variables + self.schedule.variables
            if self.mean_network is not None:
                variables = variables + self.mean_network.variables

            @jax.jit
            def stateless_draw(values, condition, seed):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return draw(condition, seed)

            def function(condition, seed):
                return stateless_draw([v.value for v in variables], condition, seed)

        else:
            raise NotImplementedError(f"Sampling supports the tensorflow and jax backends, not {backend!r}.")
        self._compiled_samplers[key] = function
        return function

    # Every SamplingOptions field: the reference implementation of the interface.
    supported_options = tuple(field.name for field in dataclasses.fields(SamplingOptions))

    def resolve_options(self, options=None, **option_keywords):
        """The `SamplingOptions` in force, checked against this model.

        Args:
            options: a `keras_dmdiff.posterior.SamplingOptions`, or None (defaults).
            **option_keywords: fields of `SamplingOptions` that override `options`.

        Returns:
            The options, `random_shifts` resolved (off unless asked for).

        Raises:
            ValueError: an unknown option, sampler or eta, or tiles that do not
                fit the network's stride.
        """
        options = SamplingOptions() if options is None else options
        if option_keywords:
            options = SamplingOptions.from_dict({**options.to_dict(), **option_keywords})
        get_step(options.sampler, options.eta)  # checks the sampler name and eta
        if self.distilled_steps is not None and (options.sampler != "ddim" or options.eta):
            raise ValueError(
                f"This student was distilled for {self.distilled_steps} deterministic DDIM steps: sample it "
                f"with sampler='ddim' (eta 0), not {options.sampler!r} (eta {options.eta})."
            )
        if options.tile_size is not None:
            tile_size, tile_margin = int(options.tile_size), int(options.tile_margin)
            if tile_size % self.stride or (2 * tile_margin) % self.stride or tile_margin < 0:
                raise ValueError(
                    f"tile_size ({tile_size}) must be a multiple of the stride {self.stride} and "
                    f"tile_margin ({tile_margin}) a non-negative multiple of {self.stride // 2 or 1}."
                )
        return options.replace(random_shifts=bool(options.random_shifts))

    def sample(
        self, stellar_mass, num_samples=1, num_steps=250, seed=0, options=None, verbose=0, **option_keywords
    ):
        """Draws posterior dark-matter maps for physical stellar-mass maps.

        Args:
            stellar_mass: [H, W] or [B, H, W] physical stellar mass in
                (Msun/h)/(Mpc/h)^2, numpy or tensor; H and W multiples of `stride`.
            num_samples: posterior samples per map.
            num_steps: reverse-diffusion steps from t=1 to 0.
            seed: int; the same seed gives the same samples.
            options: a `keras_dmdiff.posterior.SamplingOptions` (None: defaults).
            verbose: 0 (silent), 1 (a progress bar over the samples, with the
                time left) or "auto" (a bar when stderr is a terminal).
            **option_keywords: its fields, for short calls
                (`model.sample(stars, 8, 25, sampler="ddim")`):
                - sampler: "ancestral" (the reference), "ddim" (deterministic,
                  or stochastic with `eta`), "dpm_solver_2m" (deterministic,
                  second order) or "dpm_solver_2m_sde" (stochastic, second order).
                - batch_size: maps per network call; bounds memory.
                - tile_size: None to denoise whole maps; else run the network on
                  overlapping periodic tiles of this size at every step, so
                  memory stays bounded for large maps (e.g. 2048x2048);
                  tile_margin: context pixels around each tile (a multiple of
                  stride / 2); tile_batch: tiles per network call.
                - noise_steps: None, or a multiple of `num_steps`: draw the
                  noise on a grid of this many steps, so that these samples are
                  paired with the `noise_steps`-step ancestral samples of the
                  same seed (same initial noise; each ancestral step's noise sums
                  the fine steps' noises). Each sample keeps its exact
                  distribution; only comparisons between samplers become less noisy.
                - random_shifts: roll the maps by a random offset below the
                  network's stride at every step and roll the prediction back
                  (exact on periodic maps; two rolls per step). A U-Net is
                  shift-equivariant only for multiples of its stride, and an
                  under-trained one leaves edges every `stride` pixels in its
                  samples; the shifts spread them out. They change the
                  statistics of an under-trained model's samples, not only the
                  edges: see docs/benchmarks.md. Off by default, as in the
                  reference method.
                - eta: stochasticity of the "ddim" sampler, from 0
                  (deterministic) to 1 (the ancestral step): a share eta^2 of
                  each step's posterior variance is fresh noise.

        Returns:
            numpy float32 [B, num_samples, H, W] physical dark matter.

        Raises:
            ValueError: bad maps or arguments, or an unknown option.
            FloatingPointError: the sampler diverged (infinite or zero dark matter).

        Example:
            >>> reference = model.sample(stars, num_samples=8, num_steps=250)  # doctest: +SKIP
            >>> fast = model.sample(stars, num_samples=8, num_steps=25, noise_steps=250)  # doctest: +SKIP
        """
        options = self.resolve_options(options, **option_keywords)
        sampler, batch_size = options.sampler, int(options.batch_size)
        if int(num_samples) < 1 or int(num_steps) < 1:
            raise ValueError("num_samples and num_steps must be >= 1.")
        if self.distilled_steps is not None and int(num_steps) != self.distilled_steps:
            raise ValueError(
                f"This student was distilled for {self.distilled_steps} DDIM steps, not {int(num_steps)}: "
                f"sample it with num_steps={self.distilled_steps}, or sample its teacher."
            )
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int; got {type(seed).__name__}.")
        noise_steps = options.noise_steps
        if noise_steps is not None:
            noise_group(num_steps, noise_steps)
            noise_steps = int(noise_steps)
        tiling = None
        if options.tile_size is not None:
            tiling = (int(options.tile_size), int(options.tile_margin), int(options.tile_batch))
        maps = validate_maps(
            keras.ops.convert_to_numpy(stellar_mass) if not isinstance(stellar_mass, np.ndarray) else stellar_mass,
            "stellar_mass",
            stride=self.stride,
        )
        if not self.built:
            self.build()
        self.check_mean_network()
        count, height, width = maps.shape
        if tiling is not None and (height % tiling[0] or width % tiling[0]):
            raise ValueError(f"tile_size {tiling[0]} must divide the map size {height}x{width}.")
        repeated = np.repeat(maps, num_samples, axis=0)
        draw = self._sampler_function(
            sampler, int(num_steps), tiling, noise_steps, bool(options.random_shifts), float(options.eta)
        )
        outputs = []
        progress = progress_bar(len(repeated), verbose, f"sampling, {int(num_steps)} steps each")
        try:
            for chunk, start in enumerate(range(0, len(repeated), batch_size)):
                condition = self(repeated[start : start + batch_size])
                # Each chunk gets its own stream, derived as the SavedModel derives it.
                normalised = draw(condition, ops.convert_to_tensor(chunk_seed(seed, chunk), "int32"))
                outputs.append(ops.convert_to_numpy(self.transform.dark_matter_from_network(normalised)))
                progress.update(int(condition.shape[0]))
        finally:
            progress.close()
        samples = np.concatenate(outputs, axis=0)[..., 0].astype(np.float32)
        broken = ~np.isfinite(samples) | (samples <= 0)
        if broken.any():
            # 10**x overflows or underflows only when the sampler has left the data's range.
            raise FloatingPointError(
                f"{broken.mean():.2%} of the sampled dark-matter pixels are infinite, NaN or zero: the "
                f"{sampler!r} sampler diverged with {int(num_steps)} steps. Use more steps or "
                "sampler='ancestral', and check that the model is trained."
            )
        return samples.reshape(count, num_samples, height, width)

    # ------------------------------------------------------------- serialization
    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            schedule=keras.saving.serialize_keras_object(self.schedule),
            gamma_min=self.gamma_min,
            gamma_max=self.gamma_max,
            transform=self.transform.get_config(),
            reconstruction_sigma=self.reconstruction_sigma,
            antithetic_time_sampling=self.antithetic_time_sampling,
            seed=self.seed,
            prediction=self.prediction,
            loss_weighting=self.loss_weighting,
            weighting_bias=self.weighting_bias,
            importance_sampling=self.importance_sampling,
            multiscale_weight=self.multiscale_weight,
            mean_network=None if self.mean_network is None else keras.saving.serialize_keras_object(self.mean_network),
            distilled_steps=self.distilled_steps,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
