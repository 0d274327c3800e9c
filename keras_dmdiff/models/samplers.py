"""Reverse-diffusion samplers for a variance-preserving VDM, in `keras.ops`.

A sampler walks t from 1 to 0 on a uniform grid of `num_steps` steps. Each
step is a pure function of (z_t, eps_hat, gamma_t, gamma_s, noise), so the
same code runs inside `VariationalDiffusion.sample` (compiled per backend) and
inside an exported SavedModel.

Randomness comes from `stateless_normal(shape, seed, counter)`: the backend's
counter-based RNG keyed by a *tensor* seed, so one compiled function gives new
samples for each new seed (keras.random only takes Python ints or a
SeedGenerator, which cannot vary per call inside a compiled function).
"""

import functools

import keras
from keras import ops

from keras_dmdiff.models.layers import wrap_pad


def _stateless_seed(seed, counter):
    """The backend's counter-based RNG seed for (seed, counter): a TensorFlow seed pair or a JAX key."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.stack([tf.cast(seed, tf.int32), tf.cast(counter, tf.int32)])
    if backend == "jax":
        import jax

        return jax.random.fold_in(jax.random.PRNGKey(ops.cast(seed, "uint32")), ops.cast(counter, "uint32"))
    raise NotImplementedError(f"Sampling is implemented for the tensorflow and jax backends, not {backend!r}.")


def stateless_normal(shape, seed, counter):
    """Standard normal noise from an integer tensor seed and a step counter.

    Args:
        shape: output shape (may contain tensors for dynamic sizes).
        seed: int32 scalar tensor (or int).
        counter: int32 scalar tensor (or int), e.g. the sampler step.

    Returns:
        float32 tensor of `shape`.
    """
    key = _stateless_seed(seed, counter)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # An explicit algorithm: XLA would otherwise pick another one, and the
        # same seed would give other samples on GPU or in an XLA export.
        return tf.random.stateless_normal(shape, seed=key, dtype=tf.float32, alg="philox")
    import jax

    return jax.random.normal(key, shape, dtype="float32")


# Counters of the shift stream start here, far above any step or noise-grid counter.
_SHIFT_COUNTER_OFFSET = 2**30


def stateless_shift(seed, counter, period):
    """Two integers in [0, period) from an integer tensor seed and a step counter (its own stream)."""
    key = _stateless_seed(seed, ops.cast(counter, "int32") + _SHIFT_COUNTER_OFFSET)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform([2], seed=key, minval=0, maxval=period, dtype=tf.int32, alg="philox")
    import jax

    return jax.random.randint(key, (2,), 0, period, dtype="int32")


def randomly_shifted(denoise, seed, period):
    """Wraps a denoiser so that each call sees the maps rolled by a random periodic offset.

    A U-Net of total stride `period` is shift-equivariant only for multiples
    of its stride; an under-trained one leaves edges on its coarsest grid
    (every `period` pixels) in the samples. Rolling z_t and the condition by
    a fresh random offset in [0, period)^2 at every step, and rolling the
    prediction back, is exact on periodic maps and spreads that grid over
    all positions, so no edge accumulates. It costs two rolls per step.

    Args:
        denoise: callable (z, condition, gamma_normalised, step) -> eps_hat.
        seed: int32 scalar tensor.
        period: the network's stride.

    Returns:
        A callable with the same signature.
    """

    def shifted(z, condition, gamma_normalised, step):
        offset = stateless_shift(seed, step, period)
        inputs = ops.roll(ops.concatenate([z, condition], axis=-1), (offset[0], offset[1]), axis=(1, 2))
        eps = denoise(inputs[..., :1], inputs[..., 1:], gamma_normalised, step)
        return ops.roll(eps, (-offset[0], -offset[1]), axis=(1, 2))

    return shifted


def alpha_sigma(gamma):
    """alpha_t, sigma_t of a variance-preserving process from gamma = log SNR^-1."""
    return ops.sqrt(ops.sigmoid(-gamma)), ops.sqrt(ops.sigmoid(gamma))


def ancestral_variance(gamma_t, gamma_s):
    """Variance of q(z_s | z_t, x), s < t: sigma_s^2 (1 - SNR_t / SNR_s).

    Written with sigmoid(gamma_s) and expm1, not 1 - alpha_s^2 and 1 - exp:
    near t = 0 (gamma_s ~ -13) 1 - sigmoid(-gamma_s) keeps only ~2 significant
    digits in float32.
    """
    return ops.sigmoid(gamma_s) * -ops.expm1(gamma_s - gamma_t)


def ancestral_step(z_t, eps_hat, gamma_t, gamma_s, noise, history):
    """One draw from p(z_s | z_t) (Kingma et al. 2021, eq. 32), s < t.

    Args:
        z_t: current latent.
        eps_hat: network's noise prediction at (z_t, t).
        gamma_t, gamma_s: log-SNR^-1 at t and at the next, less noisy time s.
        noise: standard normal of z_t's shape.
        history: multistep state (x_hat of the previous step, its log-SNR
            half-step, whether it exists); passed through unchanged here.

    Returns:
        (z_s, history).
    """
    alpha_s_sq = ops.sigmoid(-gamma_s)
    alpha_t_sq = ops.sigmoid(-gamma_t)
    c = -ops.expm1(gamma_s - gamma_t)
    sigma_t = ops.sqrt(ops.sigmoid(gamma_t))
    mean = ops.sqrt(alpha_s_sq / alpha_t_sq) * (z_t - sigma_t * c * eps_hat)
    return mean + ops.sqrt(ancestral_variance(gamma_t, gamma_s)) * noise, history


def ddim_step(z_t, eps_hat, gamma_t, gamma_s, noise, history, eta=0.0):
    """DDIM step (Song et al. 2021): jump to the predicted x at s, keep part of eps, add fresh noise.

    With `eta` = 0 it is deterministic (the probability-flow ODE's first-order
    step); with `eta` = 1 the fresh noise has the variance of
    q(z_s | z_t, x) and the step equals `ancestral_step`; in between, a
    fraction eta^2 of that variance is fresh noise and the rest is the
    predicted eps.
    """
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    alpha_s, sigma_s = alpha_sigma(gamma_s)
    x_hat = (z_t - sigma_t * eps_hat) / alpha_t
    if not eta:
        return alpha_s * x_hat + sigma_s * eps_hat, history
    fresh = float(eta) ** 2 * ancestral_variance(gamma_t, gamma_s)
    kept = ops.sqrt(ops.relu(ops.sigmoid(gamma_s) - fresh))
    return alpha_s * x_hat + kept * eps_hat + ops.sqrt(fresh) * noise, history


def dpm_solver_2m_step(z_t, eps_hat, gamma_t, gamma_s, noise, history):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep, data prediction.

    In log-SNR lambda = -gamma / 2 with step h = lambda_s - lambda_t, it
    extrapolates the data prediction linearly from the previous step, which
    makes it accurate with 10-25 network evaluations. The first step is
    first order (it is DDIM).
    """
    del noise
    x_previous, h_previous, has_previous = history
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    alpha_s, sigma_s = alpha_sigma(gamma_s)
    x_hat = (z_t - sigma_t * eps_hat) / alpha_t
    h = 0.5 * (gamma_t - gamma_s)
    # Guarded so the unused branch of the first step never divides by zero.
    half_inverse_ratio = 0.5 * h / ops.where(has_previous > 0, h_previous, h)
    corrected = (1.0 + half_inverse_ratio) * x_hat - half_inverse_ratio * x_previous
    data = ops.where(has_previous > 0, corrected, x_hat)
    z_s = (sigma_s / sigma_t) * z_t - alpha_s * ops.expm1(-h) * data
    return z_s, (x_hat, h, ops.ones_like(has_previous))


def dpm_solver_2m_sde_step(z_t, eps_hat, gamma_t, gamma_s, noise, history):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, midpoint form): a second-order ancestral step.

    Its first-order part is exactly `ancestral_step` written with the data
    prediction x_hat (the same mean and the same noise scale); the second-order
    part adds half the change of x_hat since the previous step, scaled by the
    ratio of log-SNR steps. It therefore consumes the same noise as ancestral
    sampling, which lets `coupled_noise` pair it with a finer ancestral run.
    """
    x_previous, h_previous, has_previous = history
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    alpha_s, _ = alpha_sigma(gamma_s)
    x_hat = (z_t - sigma_t * eps_hat) / alpha_t
    h = 0.5 * (gamma_t - gamma_s)
    kept = ops.exp(gamma_s - gamma_t)  # exp(-2h): the share of z_t that the step keeps
    # Guarded so the unused branch of the first step never divides by zero.
    ratio = h / ops.where(has_previous > 0, h_previous, h)
    data = x_hat + ops.where(has_previous > 0, 0.5 * ratio * (x_hat - x_previous), ops.zeros_like(x_hat))
    noise_scale = ops.sqrt(ancestral_variance(gamma_t, gamma_s))  # sigma_s sqrt(1 - kept)
    z_s = (alpha_s / alpha_t) * kept * z_t + alpha_s * (1.0 - kept) * data + noise_scale * noise
    return z_s, (x_hat, h, ops.ones_like(has_previous))


SAMPLERS = {
    "ancestral": ancestral_step,
    "ddim": ddim_step,
    "dpm_solver_2m": dpm_solver_2m_step,
    "dpm_solver_2m_sde": dpm_solver_2m_sde_step,
}
# Samplers that consume fresh noise at every step; the others are ODE solvers.
STOCHASTIC_SAMPLERS = frozenset({"ancestral", "dpm_solver_2m_sde"})


def get_step(sampler, eta=0.0):
    """The step function of `sampler`; `eta` (0 to 1) is the stochasticity of "ddim" only."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}.")
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be between 0 (deterministic DDIM) and 1 (ancestral); got {eta}.")
    if not eta:
        return SAMPLERS[sampler]
    if sampler != "ddim":
        raise ValueError(f"eta sets the stochasticity of the 'ddim' sampler; {sampler!r} has none to set.")
    return functools.partial(ddim_step, eta=eta)


def is_stochastic(sampler, eta=0.0):
    """Whether `sampler` (with this `eta`) consumes fresh noise at every step."""
    return sampler in STOCHASTIC_SAMPLERS or (sampler == "ddim" and float(eta) > 0)


def noise_group(num_steps, noise_steps):
    """Fine noise steps per sampler step; checks that `noise_steps` is a multiple of `num_steps`."""
    if noise_steps is None:
        return 1
    num_steps, noise_steps = int(num_steps), int(noise_steps)
    if noise_steps < num_steps or noise_steps % num_steps:
        raise ValueError(
            f"noise_steps ({noise_steps}) must be a multiple of num_steps ({num_steps}) "
            "so that every step's noise sums whole steps of the finer grid."
        )
    return noise_steps // num_steps


def coupled_noise(shape, seed, step, group, noise_steps, schedule):
    """The noise of one coarse ancestral step, built from `group` steps of a finer grid.

    The fine grid has `noise_steps` uniform steps, and its step j draws
    `stateless_normal(shape, seed, j)`, exactly as a `noise_steps`-step
    ancestral sampler does. The coarse step `step` covers fine steps
    step * group ... step * group + group - 1 and returns their noises summed
    with the weights that the fine sampler gives them (its per-step standard
    deviations), renormalised to unit variance. The result is still exactly
    standard normal, so the coarse sampler is unchanged in distribution; it
    is only strongly correlated with the fine sampler of the same seed, like
    the coarse and fine levels of multilevel Monte Carlo.
    """
    total = float(noise_steps)

    def body(m, state):
        weighted, weight_sq = state
        j = step * group + m
        t = (total - ops.cast(j, "float32")) / total
        s = (total - ops.cast(j, "float32") - 1.0) / total
        gamma_t, gamma_s = schedule(t), schedule(s)
        variance = ancestral_variance(gamma_t, gamma_s)
        return weighted + ops.sqrt(variance) * stateless_normal(shape, seed, j), weight_sq + variance

    weighted, weight_sq = ops.fori_loop(0, group, body, (ops.zeros(shape), ops.zeros(())))
    return weighted / ops.sqrt(weight_sq)


def run_sampler(
    denoise,
    schedule,
    condition,
    seed,
    num_steps,
    sampler="ancestral",
    noise_steps=None,
    shift_period=None,
    eta=0.0,
):
    """Draws z_0 / alpha_0 given the condition, in the network's normalised space.

    Args:
        denoise: callable (z_t, condition, gamma_normalised [B]) -> eps_hat.
        schedule: noise schedule layer, gamma(t).
        condition: [B, H, W, 1] normalised stellar-mass maps.
        seed: int32 scalar tensor seed.
        num_steps: number of uniform steps from t=1 to t=0: a Python int or an
            int32 scalar tensor (an exported endpoint takes it at run time).
        sampler: a name in `SAMPLERS`.
        noise_steps: None, or a Python int multiple of `num_steps`: draw the
            initial noise and every step's noise on a grid of this many steps
            (`coupled_noise`), so that the result is paired with the
            `noise_steps`-step ancestral sample of the same seed. Equal to
            `num_steps` it changes nothing.
        shift_period: None, or the network's stride: roll the maps by a random
            offset below it at every step (`randomly_shifted`).
        eta: "ddim" only: 0 deterministic, 1 the ancestral step, in between
            a share of fresh noise (`ddim_step`).

    Returns:
        [B, H, W, 1] samples of the normalised target.
    """
    step = get_step(sampler, eta)
    stochastic = is_stochastic(sampler, eta)
    group = noise_group(num_steps, noise_steps)
    gamma_0 = schedule(ops.zeros(()))
    gamma_1 = schedule(ops.ones(()))
    shape = ops.shape(condition)
    batch = shape[0]
    total = ops.cast(num_steps, "float32")
    # The initial noise's counter is the noise grid's length, past every step's counter.
    z = stateless_normal(shape, seed, num_steps if noise_steps is None else noise_steps)
    history = (ops.zeros_like(z), ops.zeros(()), ops.zeros(()))

    def network(z, condition, gamma_normalised, step):
        del step
        return denoise(z, condition, gamma_normalised)

    if shift_period is not None and int(shift_period) > 1:
        network = randomly_shifted(network, seed, int(shift_period))

    def step_noise(i):
        if not stochastic:
            return ops.zeros(shape)  # an ODE step ignores it: do not spend time drawing it
        if group == 1:
            return stateless_normal(shape, seed, i)
        return coupled_noise(shape, seed, i, group, noise_steps, schedule)

    def body(i, state):
        z, history = state
        # i counts 0..num_steps-1; the step goes from t to s = t - 1/N.
        t = (total - ops.cast(i, "float32")) / total
        s = (total - ops.cast(i, "float32") - 1.0) / total
        gamma_t = schedule(t)
        gamma_s = schedule(s)
        gamma_normalised = ops.ones((batch,)) * ((gamma_t - gamma_0) / (gamma_1 - gamma_0))
        eps_hat = network(z, condition, gamma_normalised, i)
        return step(z, eps_hat, gamma_t, gamma_s, step_noise(i), history)

    z, _ = ops.fori_loop(0, num_steps, body, (z, history))
    alpha_0, _ = alpha_sigma(gamma_0)
    return z / alpha_0


def tiled_denoiser(denoise, tile_size, margin, tile_batch=1):
    """Wraps a denoiser so that it runs on overlapping periodic tiles.

    The map is cut into tile_size x tile_size cores, each extended by `margin`
    pixels on every side (wrapping around the periodic box), denoised, and the
    cores are stitched back. The network sees at most `tile_batch` tiles at a
    time (a loop, not parallel branches), so memory is bounded by the tile size
    whatever the map size. With a margin of the network's receptive field the
    result equals the whole-map one except for the global attention context.

    Args:
        denoise: callable (z, condition, gamma_normalised) -> eps_hat.
        tile_size: side of the tile cores; must divide H and W.
        margin: context pixels on each side of a core.
        tile_batch: tiles per network call.

    Returns:
        A callable with the signature of `denoise`, for inputs of static H, W.
    """

    def tiled(z, condition, gamma_normalised):
        batch = ops.shape(z)[0]
        height, width = z.shape[1], z.shape[2]
        if height % tile_size or width % tile_size:
            raise ValueError(f"tile_size {tile_size} must divide the map size {height}x{width}.")
        rows, cols = height // tile_size, width // tile_size
        window = tile_size + 2 * margin
        padded = wrap_pad(ops.concatenate([z, condition], axis=-1), margin)
        tiles = ops.concatenate(
            [
                padded[:, i * tile_size : i * tile_size + window, j * tile_size : j * tile_size + window]
                for i in range(rows)
                for j in range(cols)
            ],
            axis=0,
        )  # [rows * cols * B, window, window, 2], tile-major
        num_tiles = rows * cols
        group = max(g for g in range(1, min(tile_batch, num_tiles) + 1) if num_tiles % g == 0)
        gamma_group = ops.tile(gamma_normalised, (group,))

        def body(index, cores):
            start = index * group * batch
            chunk = ops.slice(tiles, (start, 0, 0, 0), (group * batch, window, window, 2))
            eps = denoise(chunk[..., :1], chunk[..., 1:], gamma_group)
            core = eps[:, margin : margin + tile_size, margin : margin + tile_size]
            return ops.slice_update(cores, (start, 0, 0, 0), core)

        cores = ops.fori_loop(0, num_tiles // group, body, ops.zeros((num_tiles * batch, tile_size, tile_size, 1)))
        cores = ops.reshape(cores, (rows, cols, batch, tile_size, tile_size, 1))
        cores = ops.transpose(cores, (2, 0, 3, 1, 4, 5))
        return ops.reshape(cores, (batch, height, width, 1))

    return tiled
