"""`dmdiff bench`: speed, memory and sampling quality, measured against the machine's limits.

One run measures, on this machine and in this order:

1. the float32 matmul peak (numpy, 2048^3, median of `repeats`), the roofline
   every network figure is compared with;
2. per Keras backend, each in its own worker process (the backend is fixed per
   process; ``python -m keras_dmdiff.bench --worker speed ...``), and per map
   size (by default one process per size, so peak memory is per size):

   - the compiled forward pass of the network on one map (`tf.function` on
     TensorFlow, XLA only on GPU; `jax.jit` of `stateless_call` on JAX), its
     median time, achieved GFLOP/s and fraction of the matmul peak, the FLOPs
     counted by `network_flops`;
   - one training step of `batch_size` maps, the step `fit` runs
     (`train_on_batch`: AdamW, weight decay 1e-5, global clip 0.5, no EMA),
     as maps/s;
   - sampling throughput through `VariationalDiffusion.sample` (samples/s for
     `sampling_steps` steps, and seconds per network evaluation);
   - the worker's peak resident memory (`resource.getrusage`, GiB) and, on a
     GPU, the device's peak memory;

3. one large map (default 2048x2048) sampled through overlapping tiles
   (`VariationalDiffusion.sample(..., tile_size=...)`) in its own worker:
   seconds per sampler step and the worker's peak resident memory, the
   figure behind "a 2048x2048 map in under 8 GiB on CPU" (`measure_large_map`);

4. optionally, the quality of each sampler against its number of steps on
   held-out maps, relative to `reference_steps`-step ancestral sampling (the
   reference method: 250 steps): P(k) ratio error for k < 10 h/Mpc, r(k) of
   the posterior mean, one-point PDF distance, pixel coverage
   (`quality_vs_steps`).

Every time is a median of `repeats` calls after one warm-up call (compilation
excluded). These machines are noisy: compare ratios and medians from one run,
never absolute times from different runs.

FLOP convention (`count_flops`): 2 FLOPs per multiply-add of every
convolution (periodic, strided, transposed; the useful H x W outputs only,
not the padding a backend may compute), dense layer and the two attention
matmuls (`Q K^T` and `A V`: 4 B N^2 C for N pixels of C channels). Biases,
normalisations, activations, softmax and the sampler's arithmetic are left out
(they are a few percent of the count, though not of the time). With this
convention the paper's network costs 68.0 GFLOP per 256x256 forward pass.

Example:
    >>> result = run_bench(preset="tiny", sizes=(32,), repeats=2, backends=("tensorflow",))  # doctest: +SKIP
    >>> result["rows"][0]["forward_fraction_of_peak"]   # doctest: +SKIP
"""

import argparse
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.evaluation import json_safe
from keras_dmdiff.posterior import SamplingOptions
from keras_dmdiff.stats.headline import band_cross_correlation, power_ratio_error

DEFAULT_SIZES = (64, 128, 256)
DEFAULT_BACKENDS = ("tensorflow", "jax")
DEFAULT_SAMPLERS = ("ancestral", "ddim", "dpm_solver_2m", "dpm_solver_2m_sde")
# Divisors of the 250-step reference, so that coupled noise needs no finer grid.
DEFAULT_QUALITY_STEPS = (10, 25, 50, 125)
#: Fields of every row of `run_bench(...)["rows"]` (one per backend and size).
ROW_FIELDS = (
    "backend",
    "size",
    "parameters",
    "forward_gflop",
    "forward_s",
    "forward_gflops",
    "forward_fraction_of_peak",
    "train_batch_size",
    "train_step_s",
    "train_maps_per_s",
    "train_gflops",
    "train_fraction_of_peak",
    "sampler",
    "sampling_steps",
    "sampling_num_samples",
    "sampling_s",
    "samples_per_s",
    "s_per_network_evaluation",
    "peak_rss_gib",
    "peak_device_memory_gib",
    "device",
    "error",
)
#: Fields of every row of `run_bench(...)["quality"]["rows"]`.
QUALITY_FIELDS = (
    "sampler",
    "eta",
    "num_steps",
    "network_evaluations",
    "coupling",
    "seconds",
    "mean_power_ratio",
    "mean_power_ratio_difference",
    "mean_power_ratio_difference_se",
    "power_ratio_error_vs_reference",
    "power_ratio_error_vs_truth",
    "r_posterior_mean",
    "r_difference_vs_reference",
    "pdf_distance_vs_reference",
    "pdf_distance_vs_truth",
    "coverage",
    "coverage_difference_points",
    "coverage_difference_se_points",
    "coverage_difference_vs_reference_points",
    "error",
)
_JSON_PREFIX = "DMDIFF_BENCH_JSON "
# A training step does ~3x the forward FLOPs (forward, and the backward pass
# through activations and weights): the usual estimate, used for train GFLOP/s.
TRAIN_FLOPS_PER_FORWARD = 3.0


# --------------------------------------------------------------------- helpers
def _median_time(function, repeats, warmup=1):
    """Median wall time of `function()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(max(int(repeats), 1)):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def matmul_peak(size=2048, repeats=5):
    """The float32 matmul throughput of this machine (numpy, its BLAS, all cores).

    Args:
        size: n of the n x n by n x n product (2 n^3 FLOPs).
        repeats: timed products; the median is reported.

    Returns:
        dict: "gflops" (median GFLOP/s), "seconds" (median time), "size", "repeats".

    Example:
        >>> matmul_peak(size=256, repeats=2)["gflops"] > 0
        True
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    seconds = _median_time(lambda: a @ b, repeats, warmup=1)
    return {"gflops": 2.0 * size**3 / seconds / 1e9, "seconds": seconds, "size": int(size), "repeats": int(repeats)}


# ---------------------------------------------------------------- FLOP counting
def count_flops(layer, inputs, **call_kwargs):
    """Counts the multiply-add FLOPs of one call of a Keras layer, from shapes only.

    The layer is traced symbolically (no arithmetic is done, so the paper's
    network at 2048^2 costs nothing) while every convolution and dense layer
    records its input and output shapes. Counted (2 FLOPs per multiply-add):

    - `Conv2D`, `CircularConv2D`: 2 * prod(output[:-1]) * kh * kw * C_in * C_out
      (a circular convolution counts its H x W outputs, not the padded ones
      that the JAX path computes and crops);
    - `Conv2DTranspose`: 2 * prod(input[:-1]) * kh * kw * C_in * C_out;
    - `Dense`: 2 * prod(input[:-1]) * C_in * C_out;
    - `SelfAttention`: its dense layers as above, plus 4 * B * N^2 * C for the
      two matmuls of N = H * W tokens.

    Biases, normalisations, activations and softmax are not counted.

    Args:
        layer: a built or unbuilt Keras layer or model.
        inputs: the call's input shapes: a shape tuple, or a list of them
            (e.g. `[(1, 256, 256, 1), (1, 256, 256, 1), (1,)]` for a
            `ConditionalUNet`).
        **call_kwargs: passed to `layer.call` (e.g. `training=False`).

    Returns:
        dict: "total" (int FLOPs) and "by_type" (FLOPs per layer class).

    Example:
        >>> conv = keras.layers.Conv2D(8, 3, padding="same")
        >>> count_flops(conv, (1, 16, 16, 4))["total"] == 2 * 16 * 16 * 9 * 4 * 8
        True
    """
    import keras
    from keras.src.backend import compute_output_spec

    from keras_dmdiff.models.layers import CircularConv2D, SelfAttention

    leaf_types = (CircularConv2D, keras.layers.Conv2DTranspose, keras.layers.Conv2D, keras.layers.Dense)
    by_type = {}
    active = [0]  # depth inside a counted layer: its inner layers are not counted again

    def add(kind, flops):
        by_type[kind] = by_type.get(kind, 0) + int(flops)

    def leaf_flops(sub, x, out):
        if isinstance(sub, keras.layers.Conv2DTranspose):
            kh, kw, c_out, c_in = sub.kernel.shape
            return 2 * math.prod(x.shape[:-1]) * kh * kw * c_in * c_out
        if isinstance(sub, CircularConv2D):
            kh, kw, c_in, c_out = sub.conv.kernel.shape
            return 2 * math.prod(out.shape[:-1]) * kh * kw * c_in * c_out
        if isinstance(sub, keras.layers.Conv2D):
            kh, kw, c_in, c_out = sub.kernel.shape
            return 2 * math.prod(out.shape[:-1]) * kh * kw * c_in * c_out
        c_in, c_out = sub.kernel.shape
        return 2 * math.prod(x.shape[:-1]) * c_in * c_out

    def wrap(sub):
        original = sub.call

        if isinstance(sub, SelfAttention):

            def call(x, *args, **kwargs):
                out = original(x, *args, **kwargs)
                if not active[0]:
                    batch, height, width, channels = x.shape
                    tokens = height * width
                    add("SelfAttention (QK^T, AV)", 4 * batch * tokens * tokens * channels)
                return out

        else:

            def call(x, *args, **kwargs):
                active[0] += 1
                try:
                    out = original(x, *args, **kwargs)
                finally:
                    active[0] -= 1
                if not active[0]:
                    add(type(sub).__name__, leaf_flops(sub, x, out))
                return out

        sub.call = call
        return sub

    def to_tensor(shape):
        return keras.KerasTensor(tuple(shape))

    single = isinstance(inputs, tuple) and all(isinstance(d, (int, type(None))) for d in inputs)
    symbolic = to_tensor(inputs) if single else [to_tensor(shape) for shape in inputs]
    if not layer.built:
        layer.build(inputs if single else [tuple(shape) for shape in inputs])
    layers = [sub for sub in layer._flatten_layers(include_self=True, recursive=True)]
    patched = [wrap(sub) for sub in layers if isinstance(sub, leaf_types + (SelfAttention,))]
    try:
        compute_output_spec(layer.call, symbolic, **call_kwargs)
    finally:
        for sub in patched:
            del sub.call  # back to the class's method
    return {"total": int(sum(by_type.values())), "by_type": by_type}


def network_flops(network, height, width=None, batch_size=1):
    """FLOPs of one forward pass of a `ConditionalUNet` (see `count_flops`).

    Args:
        network: a `ConditionalUNet`.
        height, width: map size (width defaults to height).
        batch_size: maps per call.

    Returns:
        int FLOPs (about 68.0e9 for the paper's network at 256x256, batch 1).

    Example:
        >>> network_flops(network_from_preset("tiny"), 32)   # doctest: +SKIP
    """
    width = height if width is None else width
    shape = (batch_size, height, width, 1)
    return count_flops(network, [shape, shape, (batch_size,)], training=False)["total"]


# ------------------------------------------------------------- speed (worker)
def _random_maps(count, size, seed=0):
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
    forward_s = _median_time(lambda: forward(z, condition, gamma), repeats)

    # One `fit` step of batch_size maps.
    stellar, dark_matter = _random_maps(batch_size, size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-5, global_clipnorm=0.5))
    train_step_s = _median_time(lambda: model.train_on_batch(stellar, dark_matter), repeats)

    # Sampling through the public API (its compiled sampler loop).
    def draw():
        return model.sample(
            stellar[:1], num_samples=num_samples, num_steps=sampling_steps, sampler=sampler, batch_size=batch_size
        )

    sampling_s = _median_time(draw, repeats)
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


def measure_large_map(
    preset="paper",
    size=2048,
    tile_size=256,
    tile_margin=32,
    tile_batch=1,
    num_steps=1,
    sampler="ddim",
    model_path=None,
    network_overrides=None,
):
    """Samples one size x size map through overlapping tiles, in this process; time and peak memory.

    Memory, not speed, is the point: the peak resident memory of the process
    (model, compiled sampler, the map and its tiles) does not grow with the
    number of steps, so one step is enough. The compiled sampler is traced on
    the first call and timed on the second.

    Args:
        preset: network preset, used when `model_path` is None (random weights:
            time and memory do not depend on them).
        size: H = W of the map.
        tile_size, tile_margin, tile_batch: the tiling of `VariationalDiffusion.sample`.
        num_steps: sampler steps per call.
        sampler: the sampler.
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
        model = keras.saving.load_model(model_path)
    else:
        model = VariationalDiffusion(network=network_from_preset(preset, **(network_overrides or {})), seed=0)
        model.build()
    stellar, _ = _random_maps(1, size)
    rss_before = peak_rss_gib()

    def draw():
        return model.sample(
            stellar,
            num_samples=1,
            num_steps=num_steps,
            sampler=sampler,
            batch_size=1,
            tile_size=tile_size,
            tile_margin=tile_margin,
            tile_batch=tile_batch,
        )

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
        "tile_size": int(tile_size),
        "tile_margin": int(tile_margin),
        "tile_batch": int(tile_batch),
        "sampler": sampler,
        "num_steps": int(num_steps),
        "first_call_s": first_call_s,
        "s_per_step": call_s / num_steps,
        "rss_before_gib": rss_before,
        "peak_rss_gib": peak_rss_gib(),
        "error": None,
    }


# ------------------------------------------------------------------- quality
def _box_size(map_size, box_size):
    # CMD: 256 pixels of 97.66 kpc/h cover 25 Mpc/h; a crop keeps the pixel size.
    return 25.0 * map_size / 256.0 if box_size is None else float(box_size)


def _sample_statistics(samples, truth, box_size, k_max):
    """Per-(sampler, steps) statistics: samples [M, S, H, W], truth [M, H, W].

    Besides the pooled numbers it keeps per-map pieces ("unit_power_ratio"
    [M, S, K] and "map_coverage" [M, L]) for the paired bootstrap of
    `_paired_bootstrap`.
    """
    from keras_dmdiff.stats import (
        cross_correlation,
        interval_coverage,
        one_point_pdf,
        power_spectrum,
    )

    k, pk_true, _ = power_spectrum(truth, box_size=box_size)
    _, pk_samples, _ = power_spectrum(samples, box_size=box_size)
    low_k = k < k_max
    unit_ratio = pk_samples / pk_true[:, None]
    ratio = np.mean(unit_ratio, axis=(0, 1))  # mean over maps and samples
    _, r_mean, _ = cross_correlation(samples.mean(axis=1), truth, box_size=box_size)
    _, pdf = one_point_pdf(samples)
    # Maps have equal pixel counts, so the mean over maps is the pooled coverage.
    per_map = [interval_coverage(samples[m], truth[m], sample_axis=0) for m in range(len(truth))]
    map_coverage = np.stack([c["coverage"] for c in per_map])
    return {
        "k": k,
        "low_k": low_k,
        "power_ratio": ratio,
        "unit_power_ratio": unit_ratio[..., low_k],
        # The headline statistics, as evaluation defines them.
        "r_posterior_mean": band_cross_correlation(k, np.nanmean(r_mean, axis=0)),
        "power_ratio_error": power_ratio_error(k, ratio, k_max),
        "pdf": pdf.reshape(-1, pdf.shape[-1]).mean(axis=0),
        "coverage": map_coverage.mean(axis=0),
        "map_coverage": map_coverage,
        "levels": per_map[0]["levels"],
    }


def _mean_power_ratio(unit_power_ratio):
    """Mean over k < k_max of R(k), the mean over maps and samples of P_sample / P_true."""
    return float(np.nanmean(np.mean(unit_power_ratio, axis=(0, 1))))


def _paired_bootstrap(stats, ref, resamples=500, seed=0):
    """Paired differences from the reference and their standard errors.

    Maps are resampled with replacement, the same maps for the row and for the
    reference (a cluster bootstrap: a map's samples and pixels stay together).
    With coupled noise the two draws of a map move together, so the standard
    error of their difference is far below that of either.

    Returns:
        dict: "mean_power_ratio", "mean_power_ratio_difference" (relative:
        this / reference - 1), its "_se", and "coverage_difference_points"
        (signed, per level) with its "_se_points".
    """
    rng = np.random.default_rng(seed)
    maps = len(stats["map_coverage"])
    ours, theirs = stats["unit_power_ratio"], ref["unit_power_ratio"]
    mean_power_ratio = _mean_power_ratio(ours)
    difference = mean_power_ratio / _mean_power_ratio(theirs) - 1.0
    coverage_difference = 100.0 * (stats["map_coverage"] - ref["map_coverage"])
    boot_ratio, boot_coverage = [], []
    for _ in range(resamples):
        pick = rng.integers(0, maps, maps)
        boot_ratio.append(_mean_power_ratio(ours[pick]) / _mean_power_ratio(theirs[pick]) - 1.0)
        boot_coverage.append(coverage_difference[pick].mean(axis=0))
    return {
        "mean_power_ratio": mean_power_ratio,
        "mean_power_ratio_difference": float(difference),
        "mean_power_ratio_difference_se": float(np.std(boot_ratio)),
        "coverage_difference_points": [float(c) for c in coverage_difference.mean(axis=0)],
        "coverage_difference_se_points": [float(c) for c in np.std(boot_coverage, axis=0)],
    }


def quality_vs_steps(
    model,
    stellar_mass,
    dark_matter,
    samplers=DEFAULT_SAMPLERS,
    steps=DEFAULT_QUALITY_STEPS,
    reference_steps=250,
    reference_sampler="ancestral",
    num_samples=8,
    seed=0,
    batch_size=16,
    box_size=None,
    k_max=10.0,
    noise_floor=True,
    coupled=True,
    converged_steps=None,
    random_shifts=None,
    ddim_etas=(),
):
    """Quality of each sampler against its number of steps, relative to a reference sampler.

    Every (sampler, steps) pair draws `num_samples` posterior samples of each
    held-out map; the reference (by default 250-step ancestral sampling, the
    reference method) draws as many. Reported per pair:

    - `mean_power_ratio_difference`: the target of issue 6 (|.| <= 0.01 at
      25 steps): this pair's mean P ratio over k < `k_max` (the mean over k
      of R(k), R = mean over maps and samples of P_sample(k) / P_true(k))
      relative to the reference's, minus 1, and its standard error
      (`_se`, bootstrap over maps, paired with the reference);
    - `power_ratio_error_vs_reference`: mean over k < `k_max` of
      |R(k) / R_ref(k) - 1| (scale by scale, so never below the noise);
    - `power_ratio_error_vs_truth`: mean over k < `k_max` of |R(k) - 1|
      (`keras_dmdiff.stats.headline.power_ratio_error`);
    - `r_posterior_mean`: r(k) between the posterior mean and the truth,
      averaged over maps, then over 1 < k < 5 h/Mpc (evaluation's headline,
      `keras_dmdiff.stats.headline.band_cross_correlation`), and
      `r_difference_vs_reference` (this minus the reference's);
    - `pdf_distance_vs_reference` / `_vs_truth`: L1 distance (integral of
      |difference|) between the one-point PDFs of log10 Sigma_cdm, pooled over
      maps and samples;
    - `seconds`: wall time of the `sample` call (including its one-off
      compilation: use the speed table for throughput);
    - `coverage`: pixel coverage of the central 50/68/90/95 % intervals;
      `coverage_difference_points` (signed, per level) and its `_se_points`;
      `coverage_difference_vs_reference_points`: the largest |difference|
      over the levels (target: <= 2).

    With `coupled` (the default), every draw takes its noise from one grid of
    `noise_steps` steps, the least common multiple of all step counts
    (`VariationalDiffusion.sample(..., noise_steps=...)`): all start from the
    same initial noise, and stochastic samplers (ancestral, DPM-Solver++ 2M
    SDE) sum the reference's own step noises. Each draw keeps its exact
    distribution, but a stochastic sampler's difference from the reference
    is then measured with a small fraction of the Monte Carlo noise of two
    independent draws; ODE samplers share only the initial noise, so their
    standard errors stay large.

    With `noise_floor`, the reference is drawn a second time with another seed
    and compared with the first like any other row ("reference_repeat"): the
    scatter of two independent draws at this many maps and samples.

    With `converged_steps`, the reference sampler is also run with that many
    steps (a row flagged "convergence_check"): how far the reference itself is
    from its many-step limit.

    Args:
        model: a `VariationalDiffusion` (trained, for meaningful numbers).
        stellar_mass, dark_matter: held-out physical maps [M, H, W].
        samplers: sampler names.
        steps: numbers of steps per sampler.
        reference_steps: steps of the reference.
        reference_sampler: the reference's sampler.
        num_samples: samples per map.
        seed: sampling seed (the same for every pair).
        batch_size: maps per network call.
        box_size: side of the maps in Mpc/h (default: the CMD pixel, 25 * H / 256).
        k_max: upper k (h/Mpc) of the P(k) and r(k) summaries.
        noise_floor: also redraw the reference with seed + 1.
        coupled: draw every pair with noise paired to the reference's.
        converged_steps: None, or steps of a convergence check of the reference sampler.
        random_shifts: None for `model.sample`'s default, or a bool (every
            row and the reference alike).
        ddim_etas: also rows of stochastic DDIM with each of these `eta`
            (0 < eta <= 1) at every step count.

    Returns:
        dict: "reference" (its settings and statistics), "reference_repeat"
        (a row for the reference redrawn with seed + 1, or None), "rows" (one dict
        with the `QUALITY_FIELDS` per pair), "noise_steps", "k_max", "num_maps",
        "num_samples", "box_size", "levels", "random_shifts"; JSON-serialisable.

    Example:
        >>> quality = quality_vs_steps(model, stars, dm, samplers=("ddim",), steps=(10, 25))  # doctest: +SKIP
    """
    if int(num_samples) < 2:
        raise ValueError(f"Coverage needs num_samples >= 2; got {num_samples}.")
    stellar_mass = np.asarray(stellar_mass, np.float32)
    dark_matter = np.asarray(dark_matter, np.float64)
    box = _box_size(dark_matter.shape[-1], box_size)
    all_steps = [int(reference_steps), *map(int, steps)] + ([int(converged_steps)] if converged_steps else [])
    noise_steps = math.lcm(*all_steps) if coupled else None
    shifts = model.resolve_options(SamplingOptions(random_shifts=random_shifts)).random_shifts

    def draw(sampler, num_steps, draw_seed=seed, eta=0.0):
        start = time.perf_counter()
        samples = model.sample(
            stellar_mass,
            num_samples=num_samples,
            num_steps=num_steps,
            seed=draw_seed,
            sampler=sampler,
            eta=eta,
            batch_size=batch_size,
            noise_steps=noise_steps,
            random_shifts=shifts,
        )
        seconds = time.perf_counter() - start
        return samples.astype(np.float64), seconds

    def evaluations(num_steps):
        return int(num_steps * math.ceil(len(stellar_mass) * num_samples / batch_size))

    ref_samples, ref_seconds = draw(reference_sampler, reference_steps)  # raises if it diverges
    ref = _sample_statistics(ref_samples, dark_matter, box, k_max)
    low_k = ref["low_k"]
    from keras_dmdiff.models.samplers import is_stochastic
    from keras_dmdiff.stats import DEFAULT_LOG10_SIGMA_BINS, one_point_pdf

    pdf_true = one_point_pdf(dark_matter)[1].mean(axis=0)

    width = np.diff(DEFAULT_LOG10_SIGMA_BINS)

    def measure(sampler, num_steps, draw_seed=seed, eta=0.0):
        row = {
            "sampler": sampler,
            "eta": float(eta) if sampler == "ddim" else None,
            "num_steps": int(num_steps),
            "network_evaluations": evaluations(num_steps),
        }
        if draw_seed != seed or not coupled:
            row["coupling"] = "none"
        else:
            stochastic = is_stochastic(sampler, eta) and is_stochastic(reference_sampler)
            row["coupling"] = "noise path" if stochastic else "initial noise"
        try:
            samples, row["seconds"] = draw(sampler, int(num_steps), draw_seed, eta)
        except FloatingPointError as error:  # a diverging sampler is a result of the table, not a crash
            row.update({field: None for field in QUALITY_FIELDS if field not in row})
            row["error"] = str(error)
            return row
        stats = _sample_statistics(samples, dark_matter, box, k_max)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(stats["power_ratio"][low_k] / ref["power_ratio"][low_k] - 1.0)
        row.update(_paired_bootstrap(stats, ref, seed=seed))
        row.update(
            power_ratio_error_vs_reference=float(np.nanmean(rel)),
            power_ratio_error_vs_truth=stats["power_ratio_error"],
            r_posterior_mean=stats["r_posterior_mean"],
            r_difference_vs_reference=stats["r_posterior_mean"] - ref["r_posterior_mean"],
            pdf_distance_vs_reference=float(np.sum(np.abs(stats["pdf"] - ref["pdf"]) * width)),
            pdf_distance_vs_truth=float(np.sum(np.abs(stats["pdf"] - pdf_true) * width)),
            coverage=[float(c) for c in stats["coverage"]],
            coverage_difference_vs_reference_points=float(np.max(np.abs(row["coverage_difference_points"]))),
            error=None,
        )
        return row

    repeat = measure(reference_sampler, reference_steps, seed + 1) if noise_floor else None
    rows = [measure(sampler, num_steps) for sampler in samplers for num_steps in steps]
    rows += [measure("ddim", num_steps, eta=eta) for eta in ddim_etas for num_steps in steps]
    if converged_steps:
        rows.append(dict(measure(reference_sampler, converged_steps), convergence_check=True))
    reference = {
        "sampler": reference_sampler,
        "num_steps": int(reference_steps),
        "network_evaluations": evaluations(reference_steps),
        "seconds": ref_seconds,
        "mean_power_ratio": _mean_power_ratio(ref["unit_power_ratio"]),
        "power_ratio_error_vs_truth": ref["power_ratio_error"],
        "r_posterior_mean": ref["r_posterior_mean"],
        "pdf_distance_vs_truth": float(np.sum(np.abs(ref["pdf"] - pdf_true) * width)),
        "coverage": [float(c) for c in ref["coverage"]],
    }
    return json_safe(
        {
            "reference": reference,
            "reference_repeat": repeat,
            "rows": rows,
            "noise_steps": noise_steps,
            "k_max": float(k_max),
            "num_maps": int(len(stellar_mass)),
            "num_samples": int(num_samples),
            "box_size": box,
            "levels": ref["levels"],
            "random_shifts": shifts,
        }
    )


def load_quality_data(path, max_maps=None, suite="IllustrisTNG", set_name="CV", crop_size=None):
    """Held-out physical maps for `quality_vs_steps`.

    Args:
        path: an .npz with arrays "stellar_mass" and "dark_matter" ([M, H, W],
            physical units), or a folder of CMD files
            (`Maps_Mstar_<suite>_<set>_z=0.00.npy`, `Maps_Mcdm_...`, e.g. mock
            simulations that the model did not see in training).
        max_maps: keep the first `max_maps` maps.
        suite, set_name: which CMD files to read from a folder.
        crop_size: keep the top-left crop_size x crop_size corner (None: whole maps).

    Returns:
        (stellar_mass, dark_matter) float32 arrays [M, H, W].

    Example:
        >>> stars, dm = load_quality_data("data/IllustrisTNG_CV", max_maps=4, crop_size=128)  # doctest: +SKIP
    """
    path = pathlib.Path(path)
    if path.is_dir():
        from keras_dmdiff_datasets.camels_cmd.camels_cmd_dataset_builder import cmd_file_names

        names = cmd_file_names(suite, set_name)
        files = {key: path / names[key] for key in ("stellar_mass", "dark_matter")}
        for file in files.values():
            if not file.exists():
                raise FileNotFoundError(f"No {file} (CMD files of {suite} {set_name}).")
        stellar = np.load(files["stellar_mass"], mmap_mode="r")
        dark = np.load(files["dark_matter"], mmap_mode="r")
    else:
        with np.load(path) as data:
            missing = {"stellar_mass", "dark_matter"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks the arrays {sorted(missing)} (has {data.files}).")
            stellar, dark = data["stellar_mass"], data["dark_matter"]
    if stellar.shape != dark.shape or stellar.ndim != 3:
        raise ValueError(f"{path}: stellar_mass {stellar.shape} and dark_matter {dark.shape} must be equal [M, H, W].")
    if max_maps is not None:
        stellar, dark = stellar[:max_maps], dark[:max_maps]
    if crop_size is not None:
        stellar, dark = stellar[:, :crop_size, :crop_size], dark[:, :crop_size, :crop_size]
    return np.array(stellar, np.float32), np.array(dark, np.float32)


# ----------------------------------------------------------------- workers
def _run_worker(backend, arguments, timeout=None):
    """Runs `python -m keras_dmdiff.bench --worker ...` under `backend`; returns its JSON or an error."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    command = [sys.executable, "-m", "keras_dmdiff.bench", "--worker", *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_JSON_PREFIX):
            return json.loads(line[len(_JSON_PREFIX) :])
    tail = (result.stderr or result.stdout or "").strip().splitlines()[-15:]
    return {"error": f"worker exited with {result.returncode}: " + "\n".join(tail)}


def _worker_main(argv):
    parser = argparse.ArgumentParser(prog="python -m keras_dmdiff.bench --worker")
    parser.add_argument("kind", choices=("speed", "quality", "large_map"))
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--sizes", default="64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--network", default="{}", help="JSON preset overrides")
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--max-maps", type=int)
    parser.add_argument("--suite", default="IllustrisTNG")
    parser.add_argument("--set", dest="set_name", default="CV")
    parser.add_argument("--crop-size", type=int)
    parser.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS))
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_QUALITY_STEPS)))
    parser.add_argument("--reference-steps", type=int, default=250)
    parser.add_argument("--reference-sampler", default="ancestral")
    parser.add_argument("--converged-steps", type=int)
    parser.add_argument("--independent", action="store_true", help="no coupled noise between rows")
    parser.add_argument("--no-noise-floor", action="store_true")
    parser.add_argument("--random-shifts", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--ddim-etas", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--tile-margin", type=int, default=32)
    args = parser.parse_args(argv)

    if args.kind == "speed":
        rows = []
        for size in [int(s) for s in args.sizes.split(",") if s]:
            try:
                rows.append(
                    measure_speed(
                        preset=args.preset,
                        size=size,
                        repeats=args.repeats,
                        batch_size=args.batch_size,
                        sampler=args.sampler,
                        sampling_steps=args.sampling_steps,
                        num_samples=args.num_samples,
                        network_overrides=json.loads(args.network),
                    )
                )
            except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
                rows.append({"size": size, "error": f"{type(error).__name__}: {error}"})
        output = {"rows": rows}
    elif args.kind == "large_map":
        output = measure_large_map(
            preset=args.preset,
            size=args.size,
            tile_size=args.tile_size,
            tile_margin=args.tile_margin,
            tile_batch=args.batch_size,
            num_steps=args.sampling_steps,
            sampler=args.sampler,
            model_path=args.model,
            network_overrides=json.loads(args.network),
        )
    else:
        import keras

        import keras_dmdiff  # noqa: F401 - registers the model classes

        model = keras.saving.load_model(args.model)
        stellar, dark = load_quality_data(args.data, args.max_maps, args.suite, args.set_name, args.crop_size)
        output = quality_vs_steps(
            model,
            stellar,
            dark,
            samplers=[s for s in args.samplers.split(",") if s],
            steps=[int(s) for s in args.steps.split(",") if s],
            reference_steps=args.reference_steps,
            reference_sampler=args.reference_sampler,
            num_samples=args.num_samples,
            seed=args.seed,
            batch_size=args.batch_size,
            noise_floor=not args.no_noise_floor,
            coupled=not args.independent,
            converged_steps=args.converged_steps,
            random_shifts=args.random_shifts,
            ddim_etas=[float(eta) for eta in args.ddim_etas.split(",") if eta],
        )
        output["backend"] = keras.backend.backend()
    print(_JSON_PREFIX + json.dumps(json_safe(output)), flush=True)


# ---------------------------------------------------------------- the bench
def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def format_table(result):
    """The result of `run_bench` as markdown tables (speed, then quality when present).

    Args:
        result: the dict returned by `run_bench` (or read back from its JSON).

    Returns:
        str.
    """
    settings = result["settings"]
    peak = result["matmul_peak"]
    lines = [
        f"## dmdiff bench: preset {settings['preset']}, training batch {settings['batch_size']}, "
        f"{result['machine']['cpu_count']} CPU cores",
        "",
        f"float32 matmul peak (numpy {peak['size']}^3, median of {peak['repeats']}): {peak['gflops']:.1f} GFLOP/s",
        "",
        "| backend | size | fwd GFLOP | fwd s | fwd GFLOP/s | fwd % peak | train step s | train maps/s "
        "| train % peak | sampling | samples/s | s / eval | peak RSS GiB | device GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row.get("error"):
            lines.append(f"| {row['backend']} | {row['size']} | error: {row['error'].splitlines()[-1][:120]} |")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    row["backend"],
                    str(row["size"]),
                    _fmt(row["forward_gflop"], ".3g"),
                    _fmt(row["forward_s"], ".4g"),
                    _fmt(row["forward_gflops"], ".1f"),
                    _fmt(None if row["forward_fraction_of_peak"] is None else 100 * row["forward_fraction_of_peak"], ".0f"),
                    _fmt(row["train_step_s"], ".4g"),
                    _fmt(row["train_maps_per_s"], ".3g"),
                    _fmt(None if row["train_fraction_of_peak"] is None else 100 * row["train_fraction_of_peak"], ".0f"),
                    f"{row['sampler']} {row['sampling_steps']} steps",
                    _fmt(row["samples_per_s"], ".3g"),
                    _fmt(row["s_per_network_evaluation"], ".4g"),
                    _fmt(row["peak_rss_gib"], ".2f"),
                    _fmt(row["peak_device_memory_gib"], ".2f"),
                ]
            )
            + " |"
        )
    large = result.get("large_map") or []
    if large:
        lines += [
            "",
            "### One large map through overlapping tiles",
            "",
            "| backend | size | parameters | tiles (core + margin) | sampler | s / step | first call s "
            "| RSS before GiB | peak RSS GiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in large:
            if row.get("error"):
                lines.append(f"| {row['backend']} | {row.get('size')} | error: {row['error'].splitlines()[-1][:120]} |")
                continue
            lines.append(
                f"| {row['backend']} | {row['size']} | {row['parameters']:,} "
                f"| {row['tile_size']} + 2x{row['tile_margin']}, {row['tile_batch']} per call "
                f"| {row['sampler']} | {row['s_per_step']:.2f} | {row['first_call_s']:.1f} "
                f"| {row['rss_before_gib']:.2f} | {row['peak_rss_gib']:.2f} |"
            )
    quality = result.get("quality")
    if quality:
        lines += ["", "### Quality against steps"]
        if quality.get("error"):
            lines.append(f"error: {quality['error']}")
        else:
            ref = quality["reference"]
            coupling = (
                f"noise on one grid of {quality['noise_steps']} steps (coupled draws)"
                if quality.get("noise_steps")
                else "independent noise per row"
            )
            if quality.get("random_shifts") is not None:
                coupling += "; random shifts " + ("on" if quality["random_shifts"] else "off")
            lines += [
                "",
                f"Reference: {ref['sampler']} with {ref['num_steps']} steps ({ref['seconds']:.1f} s); "
                f"{quality['num_maps']} maps x {quality['num_samples']} samples; k < {quality['k_max']:g} h/Mpc; "
                f"{coupling}; reference mean P ratio {_fmt(ref.get('mean_power_ratio'), '.3f')}, "
                f"P-ratio error vs truth {_fmt(ref['power_ratio_error_vs_truth'], '.3f')}, "
                f"r(1 < k < 5) of the posterior mean {_fmt(ref['r_posterior_mean'], '.3f')}, coverage "
                + "/".join(_fmt(c, ".2f") for c in ref["coverage"])
                + f" at {'/'.join(format(lv, 'g') for lv in quality['levels'])}.",
            ]
            repeat = quality.get("reference_repeat")
            if repeat and not repeat.get("error"):
                lines.append(
                    "Noise floor (the reference redrawn with another seed, independent noise): mean P ratio "
                    f"{_fmt(repeat.get('mean_power_ratio_difference'), '+.4f')} "
                    f"+- {_fmt(repeat.get('mean_power_ratio_difference_se'), '.4f')}, P-ratio err "
                    f"{repeat['power_ratio_error_vs_reference']:.4f}, r - r_ref "
                    f"{repeat['r_difference_vs_reference']:+.3f}, PDF dist {repeat['pdf_distance_vs_reference']:.4f}, "
                    f"max cov diff {repeat['coverage_difference_vs_reference_points']:.1f} pts."
                )

            def worst_level(row):
                # The level with the largest |coverage difference|, with its standard error.
                differences = row.get("coverage_difference_points")
                if not differences:
                    return _fmt(row["coverage_difference_vs_reference_points"], ".1f")
                worst = int(np.argmax(np.abs(differences)))
                return f"{differences[worst]:+.1f} +- {row['coverage_difference_se_points'][worst]:.1f}"

            lines += [
                "",
                "| sampler | steps | evals | coupling | s | mean P ratio / ref - 1 | P-ratio err vs ref (per k) "
                "| P-ratio err vs truth | r(k) of mean | r - r_ref | PDF dist vs ref | PDF dist vs truth | coverage "
                "| largest cov diff (pts) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for row in quality["rows"]:
                if row.get("error"):
                    lines.append(f"| {row['sampler']} | {row['num_steps']} | error: {row['error']} |")
                    continue
                check = " (convergence check)" if row.get("convergence_check") else ""
                if row.get("eta"):
                    check += f" (eta {row['eta']:g})"
                lines.append(
                    f"| {row['sampler']}{check} | {row['num_steps']} | {row['network_evaluations']} "
                    f"| {row.get('coupling', '-')} | {row['seconds']:.2f} "
                    f"| {_fmt(row.get('mean_power_ratio_difference'), '+.4f')} "
                    f"+- {_fmt(row.get('mean_power_ratio_difference_se'), '.4f')} "
                    f"| {_fmt(row['power_ratio_error_vs_reference'], '.4f')} "
                    f"| {_fmt(row['power_ratio_error_vs_truth'], '.4f')} | {_fmt(row['r_posterior_mean'], '.3f')} "
                    f"| {_fmt(row['r_difference_vs_reference'], '+.3f')} "
                    f"| {_fmt(row['pdf_distance_vs_reference'], '.4f')} | {_fmt(row['pdf_distance_vs_truth'], '.4f')} "
                    f"| {'/'.join(_fmt(c, '.2f') for c in row['coverage'])} "
                    f"| {worst_level(row)} |"
                )
    return "\n".join(lines)


def run_bench(
    preset="paper",
    sizes=DEFAULT_SIZES,
    repeats=5,
    backends=DEFAULT_BACKENDS,
    batch_size=4,
    json_path=None,
    quality_model=None,
    quality_data=None,
    *,
    sampler="ddim",
    sampling_steps=10,
    num_samples=1,
    network_overrides=None,
    process_per_size=True,
    matmul_size=2048,
    samplers=DEFAULT_SAMPLERS,
    quality_steps=DEFAULT_QUALITY_STEPS,
    reference_steps=250,
    reference_sampler="ancestral",
    quality_samples=8,
    quality_maps=4,
    quality_crop=None,
    quality_suite="IllustrisTNG",
    quality_set="CV",
    quality_backend="tensorflow",
    quality_batch_size=16,
    quality_converged_steps=None,
    quality_coupled=True,
    quality_noise_floor=True,
    quality_random_shifts=None,
    quality_ddim_etas=(),
    large_map_size=2048,
    large_map_tile=256,
    large_map_margin=32,
    large_map_steps=1,
    timeout=None,
    verbose=True,
):
    """Measures speed, memory and (optionally) sampling quality; prints a table; returns a dict.

    Args:
        preset: network preset ("paper": 32.7 M parameters; "cpu"; "tiny").
        sizes: map sizes (H = W), multiples of the network's stride.
        repeats: timed calls per measurement (the median is reported).
        backends: Keras backends, each measured in its own worker processes.
        batch_size: maps per training step and per sampler network call.
        json_path: also write the result as JSON here.
        quality_model: a `.keras` VariationalDiffusion for the quality table
            (None: no quality table).
        quality_data: held-out maps, required with `quality_model`: an .npz
            ("stellar_mass", "dark_matter", [M, H, W] physical) or a folder of
            CMD files (see `load_quality_data`).
        sampler, sampling_steps, num_samples: the sampling-throughput
            measurement (one map, `num_samples` samples per timed call).
        network_overrides: keyword overrides of the preset.
        process_per_size: one worker process per (backend, size), so peak
            memory is per size; False: one per backend (faster; the peak
            memory is then cumulative over the sizes measured so far).
        matmul_size: n of the n^3 matmul peak measurement.
        samplers, quality_steps: samplers and step counts of the quality table.
        reference_steps, reference_sampler: the quality reference (250-step
            ancestral sampling, the reference method).
        quality_samples: posterior samples per held-out map.
        quality_maps: held-out maps used (the first ones; None: all).
        quality_crop: crop the held-out maps to this size (None: whole maps).
        quality_suite, quality_set: CMD files to read when `quality_data` is a folder.
        quality_backend: backend of the quality worker.
        quality_batch_size: maps per network call while sampling for quality.
        quality_converged_steps: also run the reference sampler with this many
            steps, to show how far the reference is from its converged limit.
        quality_coupled: pair every quality row's noise with the reference's
            (see `quality_vs_steps`).
        quality_noise_floor: also redraw the reference with another seed.
        quality_random_shifts: None for `model.sample`'s default, or a bool.
        quality_ddim_etas: also rows of stochastic DDIM with these `eta`.
        large_map_size: side of the large map sampled through tiles, per
            backend, for its peak memory (0 or None: skip).
        large_map_tile, large_map_margin: its tile cores and their margin.
        large_map_steps: its sampler steps per timed call.
        timeout: seconds allowed to each worker process (None: no limit).
        verbose: print the table (and progress).

    Returns:
        dict: "machine" (platform, cores, versions), "settings", "matmul_peak"
        (`matmul_peak`), "rows" (one dict of `ROW_FIELDS` per backend and size;
        a failed measurement has its message in "error"), and "quality" (see
        `quality_vs_steps`, or None). Non-finite numbers are stored as None.

    Example:
        >>> result = run_bench(preset="tiny", sizes=(16, 32), repeats=1, json_path="bench.json")  # doctest: +SKIP
    """
    sizes = [int(size) for size in sizes]
    backends = list(backends)
    if (quality_model is None) != (quality_data is None):
        raise ValueError("Give both quality_model and quality_data, or neither.")
    settings = {
        "preset": preset,
        "sizes": sizes,
        "repeats": int(repeats),
        "backends": backends,
        "batch_size": int(batch_size),
        "sampler": sampler,
        "sampling_steps": int(sampling_steps),
        "num_samples": int(num_samples),
        "network_overrides": network_overrides or {},
        "process_per_size": bool(process_per_size),
        "large_map": {"size": large_map_size, "tile": large_map_tile, "margin": large_map_margin},
        "flop_convention": "2 per multiply-add of convolutions, dense layers and attention matmuls; "
        f"training step = {TRAIN_FLOPS_PER_FORWARD:g} x forward",
    }
    say = print if verbose else (lambda *a, **k: None)
    say(f"[bench] float32 matmul peak ({matmul_size}^3) ...", flush=True)
    peak = matmul_peak(matmul_size, repeats)
    say(f"[bench] {peak['gflops']:.1f} GFLOP/s", flush=True)

    common = [
        "--preset", preset, "--repeats", str(repeats), "--batch-size", str(batch_size),
        "--sampler", sampler, "--sampling-steps", str(sampling_steps), "--num-samples", str(num_samples),
        "--network", json.dumps(network_overrides or {}),
    ]  # fmt: skip
    groups = [[size] for size in sizes] if process_per_size else [sizes]
    rows = []
    for backend in backends:
        for group in groups:
            say(f"[bench] {backend} {','.join(map(str, group))} ...", flush=True)
            output = _run_worker(backend, ["speed", "--sizes", ",".join(map(str, group)), *common], timeout)
            worker_rows = output.get("rows") or [{"size": size, "error": output.get("error")} for size in group]
            for row in worker_rows:
                full = {field: None for field in ROW_FIELDS}
                full.update(row)
                full["backend"] = backend
                if full["error"] is None:
                    full["forward_fraction_of_peak"] = full["forward_gflops"] / peak["gflops"]
                    full["train_fraction_of_peak"] = full["train_gflops"] / peak["gflops"]
                rows.append(full)

    large_map = []
    if large_map_size:
        for backend in backends:
            say(f"[bench] {backend} one {large_map_size}x{large_map_size} map in {large_map_tile}-pixel tiles ...", flush=True)
            arguments = [
                "large_map", "--preset", preset, "--network", json.dumps(network_overrides or {}),
                "--size", str(large_map_size), "--tile-size", str(large_map_tile),
                "--tile-margin", str(large_map_margin), "--batch-size", "1",
                "--sampler", sampler, "--sampling-steps", str(large_map_steps),
            ]  # fmt: skip
            output = _run_worker(backend, arguments, timeout)
            output["backend"] = backend
            output.setdefault("size", int(large_map_size))
            output.setdefault("error", None)
            large_map.append(output)

    quality = None
    if quality_model is not None:
        say(f"[bench] quality against steps ({quality_backend}) ...", flush=True)
        arguments = [
            "quality", "--model", str(quality_model), "--data", str(quality_data),
            "--samplers", ",".join(samplers), "--steps", ",".join(map(str, quality_steps)),
            "--reference-steps", str(reference_steps), "--reference-sampler", reference_sampler,
            "--num-samples", str(quality_samples), "--batch-size", str(quality_batch_size),
        ]  # fmt: skip
        arguments += ["--suite", quality_suite, "--set", quality_set]
        if quality_maps is not None:
            arguments += ["--max-maps", str(quality_maps)]
        if quality_crop is not None:
            arguments += ["--crop-size", str(quality_crop)]
        if quality_converged_steps:
            arguments += ["--converged-steps", str(quality_converged_steps)]
        if not quality_coupled:
            arguments.append("--independent")
        if not quality_noise_floor:
            arguments.append("--no-noise-floor")
        if quality_ddim_etas:
            arguments += ["--ddim-etas", ",".join(map(str, quality_ddim_etas))]
        if quality_random_shifts is not None:
            arguments.append("--random-shifts" if quality_random_shifts else "--no-random-shifts")
        quality = _run_worker(quality_backend, arguments, timeout)

    import keras  # already imported by keras_dmdiff; only its version is read

    result = json_safe(
        {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "keras": keras.__version__,
            },
            "settings": settings,
            "matmul_peak": peak,
            "rows": rows,
            "large_map": large_map,
            "quality": quality,
        }
    )
    if json_path is not None:
        path = pathlib.Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.write_json(path, result)
    say(format_table(result), flush=True)
    return result


def load_bench_json(path):
    """Reads a `run_bench` JSON file back into the dict `run_bench` returned."""
    return json.loads(pathlib.Path(path).read_text())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2:])
    else:
        print("Use `dmdiff bench` (or `python -m keras_dmdiff.bench --worker ...` for one worker).", file=sys.stderr)
        sys.exit(2)
