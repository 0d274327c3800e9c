"""Speed and memory of the network on this machine: compiled forward, training step, sampling, one large map.

Every time is a median of `repeats` calls after one warm-up call (compilation
excluded), set against the matmul peak (`keras_dmdiff.flops`). These
functions run inside `dmdiff bench`'s worker processes, one backend each.
"""

import math
import resource
import sys
import time

import numpy as np

from keras_dmdiff.flops import TRAIN_FLOPS_PER_FORWARD, median_time, network_flops
from keras_dmdiff.posterior import SamplingOptions


def peak_rss_gib():
    """Peak resident memory of this process so far, in GiB.

    On Linux this is VmHWM of /proc/self/status, the high-water mark of this
    process's own memory. `getrusage`'s ru_maxrss is not used there: a process
    started by `subprocess` inherits its parent's peak at the moment of the
    spawn, so a worker of a 13 GiB parent reports >= 13 GiB whatever it uses.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # macOS: bytes, Linux: KiB




def random_maps(count, size, seed=0):
    """Physical stellar-mass and dark-matter maps with CMD-like ranges."""
    rng = np.random.default_rng(seed)
    occupied = rng.random((count, size, size)) < 0.02
    stellar = np.where(occupied, 10.0 ** rng.uniform(9.0, 11.0, (count, size, size)), 0.0).astype(np.float32)
    dark_matter = (10.0 ** (11.0 + 0.5 * rng.standard_normal((count, size, size)))).astype(np.float32)
    return stellar, dark_matter


def _device_description():
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return f"tensorflow {tf.__version__} " + (f"GPU x{len(gpus)}" if gpus else "CPU")
    if backend == "jax":
        import jax

        devices = jax.devices()
        return f"jax {jax.__version__} {devices[0].platform.upper()} x{len(devices)}"
    return backend


def _device_peak_memory_gib():
    import keras

    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30
        elif keras.backend.backend() == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                stats = device.memory_stats() or {}
                if "peak_bytes_in_use" in stats:
                    return stats["peak_bytes_in_use"] / 2**30
    except Exception:  # noqa: BLE001 - a missing statistic is not an error
        return None
    return None


def _compiled_forward(network):
    """A compiled forward call (z, condition, gamma) -> eps_hat that waits for its result."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        from keras_dmdiff.compilation import tensorflow_uses_xla

        function = tf.function(lambda z, c, g: network([z, c, g], training=False), jit_compile=tensorflow_uses_xla())
        return lambda z, c, g: function(z, c, g).numpy()
    if backend == "jax":
        import jax

        @jax.jit
        def function(trainable, non_trainable, z, c, g):
            out, _ = network.stateless_call(trainable, non_trainable, [z, c, g], training=False)
            return out

        trainable = [v.value for v in network.trainable_variables]
        non_trainable = [v.value for v in network.non_trainable_variables]
        return lambda z, c, g: function(trainable, non_trainable, z, c, g).block_until_ready()
    raise NotImplementedError(f"bench supports the tensorflow and jax backends, not {backend!r}.")


def measure_speed(
    preset="paper",
    size=64,
    repeats=5,
    batch_size=4,
    sampler="ddim",
    sampling_steps=10,
    num_samples=1,
    network_overrides=None,
):
    """Forward, training and sampling speed of one network at one map size, in this process.

    Uses the Keras backend of this process. Each time is the median of
    `repeats` calls after one warm-up (compiling) call.

    Args:
        preset: network preset ("paper", "cpu", "tiny").
        size: H = W of the maps.
        repeats: timed calls per measurement.
        batch_size: maps per training step (and per sampler network call).
        sampler: sampler timed by `VariationalDiffusion.sample`.
        sampling_steps: its number of steps.
        num_samples: samples drawn per timed `sample` call (of one map).
        network_overrides: keyword overrides of the preset.

    Returns:
        dict with the `ROW_FIELDS` except "forward_fraction_of_peak",
        "train_fraction_of_peak" (the parent adds them) and "backend" is set.
    """
    import keras

    from keras_dmdiff.models import VariationalDiffusion, network_from_preset

    keras.utils.set_random_seed(0)
    network = network_from_preset(preset, **(network_overrides or {}))
    model = VariationalDiffusion(network=network, seed=0)
    model.build()
    flops = network_flops(network, size, size, batch_size=1)

    # Forward pass, one map.
    rng = np.random.default_rng(0)
    z = keras.ops.convert_to_tensor(rng.standard_normal((1, size, size, 1)).astype(np.float32))
    condition = keras.ops.convert_to_tensor(rng.standard_normal((1, size, size, 1)).astype(np.float32))
    gamma = keras.ops.convert_to_tensor(np.full((1,), 0.5, np.float32))
    forward = _compiled_forward(network)
    forward_s = median_time(lambda: forward(z, condition, gamma), repeats)

    # One `fit` step of batch_size maps.
    stellar, dark_matter = random_maps(batch_size, size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-5, global_clipnorm=0.5))
    train_step_s = median_time(lambda: model.train_on_batch(stellar, dark_matter), repeats)

    # Sampling through the public API (its compiled sampler loop).
    def draw():
        return model.sample(
            stellar[:1], num_samples=num_samples, num_steps=sampling_steps, sampler=sampler, batch_size=batch_size
        )

    sampling_s = median_time(draw, repeats)
    evaluations = sampling_steps * math.ceil(num_samples / batch_size)
    return {
        "backend": keras.backend.backend(),
        "size": int(size),
        "parameters": int(network.count_params()),
        "forward_gflop": flops / 1e9,
        "forward_s": forward_s,
        "forward_gflops": flops / forward_s / 1e9,
        "train_batch_size": int(batch_size),
        "train_step_s": train_step_s,
        "train_maps_per_s": batch_size / train_step_s,
        "train_gflops": TRAIN_FLOPS_PER_FORWARD * flops * batch_size / train_step_s / 1e9,
        "sampler": sampler,
        "sampling_steps": int(sampling_steps),
        "sampling_num_samples": int(num_samples),
        "sampling_s": sampling_s,
        "samples_per_s": num_samples / sampling_s,
        "s_per_network_evaluation": sampling_s / evaluations,
        "peak_rss_gib": peak_rss_gib(),
        "peak_device_memory_gib": _device_peak_memory_gib(),
        "device": _device_description(),
        "error": None,
    }


def measure_large_map(preset="paper", size=2048, num_steps=1, options=None, model_path=None, network_overrides=None):
    """Samples one size x size map through overlapping tiles, in this process; time and peak memory.

    Memory, not speed, is the point: the peak resident memory of the process
    (model, compiled sampler, the map and its tiles) does not grow with the
    number of steps, so one step is enough. The compiled sampler is traced on
    the first call and timed on the second.

    Args:
        preset: network preset, used when `model_path` is None (random weights:
            time and memory do not depend on them).
        size: H = W of the map.
        num_steps: sampler steps per call.
        options: the `SamplingOptions` (sampler and tiling; None: DDIM on
            256-pixel tiles with 32-pixel margins, one map per call).
        model_path: a `.keras` VariationalDiffusion to use instead of a preset.
        network_overrides: keyword overrides of the preset.

    Returns:
        dict with "size", "parameters", "tile_size", "tile_margin", "tile_batch",
        "sampler", "num_steps", "first_call_s" (tracing included),
        "s_per_step", "rss_before_gib" (after building the model),
        "peak_rss_gib", "backend" and "error".
    """
    import keras

    import keras_dmdiff  # noqa: F401 - registers the model classes
    from keras_dmdiff.models import VariationalDiffusion, network_from_preset

    keras.utils.set_random_seed(0)
    if model_path is not None:
        from keras_dmdiff.posterior import load_keras_posterior

        model = load_keras_posterior(model_path)
    else:
        model = VariationalDiffusion(network=network_from_preset(preset, **(network_overrides or {})), seed=0)
        model.build()
    if options is None:
        options = SamplingOptions(sampler="ddim", tile_size=256, tile_margin=32, batch_size=1)
    stellar, _ = random_maps(1, size)
    rss_before = peak_rss_gib()

    def draw():
        return model.sample(stellar, 1, num_steps, 0, options)

    start = time.perf_counter()
    samples = draw()
    first_call_s = time.perf_counter() - start
    start = time.perf_counter()
    draw()
    call_s = time.perf_counter() - start
    if not np.all(np.isfinite(samples)):
        raise FloatingPointError("the large-map sample is not finite")
    return {
        "backend": keras.backend.backend(),
        "size": int(size),
        "parameters": int(model.network.count_params()),
        "tile_size": options.tile_size,
        "tile_margin": int(options.tile_margin),
        "tile_batch": int(options.tile_batch),
        "sampler": options.sampler,
        "num_steps": int(num_steps),
        "first_call_s": first_call_s,
        "s_per_step": call_s / num_steps,
        "rss_before_gib": rss_before,
        "peak_rss_gib": peak_rss_gib(),
        "error": None,
    }


