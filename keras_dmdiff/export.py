"""Export a trained `VariationalDiffusion` as a standalone TensorFlow SavedModel.

The SavedModel takes *physical* stellar-mass maps and returns *physical*
dark-matter samples; the normalisation, the noise schedule, the network and
the reverse-diffusion loop are all inside the graph. It loads with
`tf.saved_model.load` alone: neither keras, jax nor keras_dmdiff is needed to
serve it. It can be written from the TensorFlow or the JAX backend (on JAX the
sampler is converted with jax2tf and runs as one XLA computation).

Endpoints of an exported model (for each exported sampler; ancestral is the
reference sampler and has the plain names):

- ``sample(stellar_mass, num_samples, num_steps, seed)``:
  float32 [B, H, W] physical stellar mass in (Msun/h)/(Mpc/h)^2 (H, W
  multiples of the network stride; B, H, W dynamic), int32 scalars
  -> float32 [B, num_samples, H, W] physical dark matter.
  ``sample_ddim`` is the same with the deterministic DDIM sampler.
- ``draw(stellar_mass, num_steps, seed)``: one posterior sample for each of
  N maps [N, H, W] -> [N, H, W], with `seed` used as is and *no* input
  validation (`sample` and `load_exported` validate). It holds the sampling
  graph; `sample` calls it, and `load_exported` calls it in chunks to
  reproduce `VariationalDiffusion.sample` for any batch (``draw_ddim``
  likewise).
- ``serving_default``: the signature TF Serving uses: the first exported
  sampler's ``sample``.
- ``metadata()``: a JSON string (model config, transform constants, stride,
  samplers, versions, seed semantics). Also written to
  ``<path>/assets.extra/keras_dmdiff.json``.

Seed semantics. `model.sample(maps, num_samples, num_steps, seed)` repeats each
map `num_samples` times, cuts the repeated batch in chunks of `batch_size`
and seeds chunk k with ``(seed * 1_000_003 + k) mod (2**31 - 1)``. The
`sample` endpoint runs the whole repeated batch as chunk 0, so it gives the same
numbers as `model.sample(..., batch_size >= B * num_samples)` exported from,
and compared on, the same backend (TensorFlow's Philox and JAX's threefry
streams differ). `load_exported(path)(..., batch_size=16)` chunks like
`model.sample` and so matches it for any batch.

Memory: `sample` runs all B * num_samples maps as one network batch; for
large maps or many samples use `draw` in chunks (as `load_exported` does).

This module imports neither keras nor keras_dmdiff at import time: a serving
process can load this file alone (e.g. with `importlib`), with `map_checks.py`
beside it, and use `load_exported` with TensorFlow only.
"""

import datetime
import json
import os
import sys
import time

import numpy as np

FORMAT_VERSION = 1
METADATA_FILE = os.path.join("assets.extra", "keras_dmdiff.json")
# model.sample seeds chunk k with (seed * SEED_MULTIPLIER + k) mod SEED_MODULUS.
SEED_MULTIPLIER = 1_000_003
SEED_MODULUS = 2**31 - 1


def _load_map_checks():
    """`keras_dmdiff.map_checks`, also when this file is loaded alone (it lies beside it)."""
    if __package__:
        from keras_dmdiff import map_checks

        return map_checks
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "map_checks.py")
    spec = importlib.util.spec_from_file_location("keras_dmdiff_map_checks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


map_checks = _load_map_checks()
LOG_SCALED_MAX = map_checks.LOG_SCALED_MAX


def _endpoint_names(sampler):
    suffix = "" if sampler == "ancestral" else f"_{sampler}"
    return f"sample{suffix}", f"draw{suffix}"


class _NoProgress:
    def update(self, count=1):
        pass

    def close(self):
        pass


def progress_bar(total, verbose, description):
    """A progress bar over `total` samples, with the time left, or a silent stand-in.

    Args:
        total: samples to draw.
        verbose: 0 (silent), 1 (a bar) or "auto" (a bar when stderr is a terminal).
        description: the bar's label.
    """
    show = sys.stderr.isatty() if verbose == "auto" else bool(verbose)
    if not show:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a serving environment with TensorFlow alone
        return _NoProgress()
    return tqdm(total=total, desc=description, unit="sample", leave=False)


def chunk_seed(seed, chunk):
    """The seed of chunk `chunk` of `model.sample(..., seed=seed)` (numpy ints)."""
    return np.int32((int(seed) * SEED_MULTIPLIER + int(chunk)) % SEED_MODULUS)


def _metadata(model, samplers, backend, stride, jax_platforms, random_shifts):
    import keras

    import keras_dmdiff

    def jsonable(value):
        return json.loads(json.dumps(value, default=lambda o: repr(o)))

    endpoints = {}
    for sampler in samplers:
        sample_name, draw_name = _endpoint_names(sampler)
        endpoints[sampler] = {"sample": sample_name, "draw": draw_name}
    return {
        "format": "keras_dmdiff.export",
        "format_version": FORMAT_VERSION,
        "keras_dmdiff_version": getattr(keras_dmdiff, "__version__", "unknown"),
        "keras_version": keras.__version__,
        "exported_from_backend": backend,
        "jax_platforms": list(jax_platforms) if backend == "jax" else None,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_class": type(model).__name__,
        "model_config": jsonable(model.get_config()),
        "transform": dict(model.transform.get_config()),
        "stride": int(stride),
        "samplers": list(samplers),
        "default_sampler": samplers[0],
        "random_shifts": bool(random_shifts),
        # A distilled student (models.distillation) is right only at its own DDIM step count.
        "distilled_steps": getattr(model, "distilled_steps", None),
        "endpoints": endpoints,
        "units": "stellar_mass in and dark matter out: (Msun/h)/(Mpc/h)^2, physical (not log)",
        "inputs": {
            "stellar_mass": "float32 [B, H, W], >= 0, finite, H and W multiples of stride",
            "num_samples": "int32 scalar >= 1",
            "num_steps": "int32 scalar >= 1",
            "seed": "int32 scalar",
        },
        "output": "float32 [B, num_samples, H, W]",
        "seed_semantics": (
            "sample(seed) equals VariationalDiffusion.sample(seed, batch_size >= B*num_samples, "
            f"random_shifts={bool(random_shifts)}) "
            "on the exporting backend (not across backends, nor between a TensorFlow graph with "
            "and without XLA, whose stateless RNGs differ); draw(seed) uses seed as is; "
            f"model.sample seeds chunk k with (seed * {SEED_MULTIPLIER} + k) mod {SEED_MODULUS}."
        ),
    }


# ----------------------------------------------------------------------- export
def export_saved_model(
    model,
    path,
    *,
    samplers=("ancestral", "ddim"),
    jit_compile=None,
    jax_platforms=("cpu", "cuda"),
    random_shifts=False,
    verbose=False,
):
    """Writes a standalone TensorFlow SavedModel that samples physical dark matter.

    Works on the TensorFlow and the JAX backends (on JAX through jax2tf, with
    shape-polymorphic B, H, W). The written model needs only TensorFlow to
    load and run (see `load_exported`).

    Args:
        model: a built `VariationalDiffusion` (it is built here if it is not).
        path: directory to write (created; an existing SavedModel there is
            overwritten).
        samplers: names in `keras_dmdiff.models.SAMPLERS`. "ancestral" gets
            the plain endpoint names (`sample`, `draw`), the others a suffix
            (`sample_ddim`, `draw_dpm_solver_2m`, ...). Each sampler adds
            one copy of the network graph (not of the weights) to the file.
        jit_compile: TensorFlow backend only: mark the sampling graph for XLA
            (faster on GPU; measured slower on CPU). None: XLA if this process
            sees a GPU, else not. Ignored on JAX, whose export is always one
            XLA computation.
        jax_platforms: JAX backend only: the platforms that the serialized
            XLA module is lowered for (jax2tf native serialization runs only
            on those); the default serves on CPU and on NVIDIA GPUs. A
            TensorFlow-backend export is a plain TensorFlow graph and runs
            anywhere TensorFlow does.
        random_shifts: every endpoint rolls the maps by a random offset
            below the network's stride at each step, as
            `VariationalDiffusion.sample(..., random_shifts=True)`. Fixed at
            export and written in the metadata.
        verbose: print Keras's endpoint summary.

    Returns:
        dict with "path", "seconds" (export wall time), "bytes" (size on disk)
        and "metadata".

    Raises:
        ValueError: unknown or duplicate sampler names, not a VariationalDiffusion.
        NotImplementedError: a backend other than tensorflow or jax.

    Example:
        >>> from keras_dmdiff.models import VariationalDiffusion, network_from_preset
        >>> model = VariationalDiffusion(network=network_from_preset("tiny"), seed=1)
        >>> model.build()
        >>> info = export_saved_model(model, "/tmp/dmdiff_savedmodel")
        >>> import tensorflow as tf
        >>> loaded = tf.saved_model.load("/tmp/dmdiff_savedmodel")
        >>> stars = tf.zeros([2, 32, 32]) + 1e9
        >>> loaded.sample(stars, num_samples=4, num_steps=10, seed=3).shape
        TensorShape([2, 4, 32, 32])
    """
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    backend = keras.backend.backend()
    samplers = _exportable_samplers(model, samplers, backend)
    if not model.built:
        model.build()
    stride = int(model.stride)
    if jit_compile is None:
        from keras_dmdiff.compilation import tensorflow_uses_xla

        jit_compile = tensorflow_uses_xla()
    shift_period = stride if random_shifts else None
    draw_signature = [
        tf.TensorSpec([None, None, None], tf.float32, name="stellar_mass"),
        tf.TensorSpec([], tf.int32, name="num_steps"),
        tf.TensorSpec([], tf.int32, name="seed"),
    ]
    archive = keras.export.ExportArchive()
    draw_kwargs = _draw_endpoint_options(archive, model, backend, stride, jax_platforms)
    sample_functions = []
    for sampler in samplers:
        sample_name, draw_name = _endpoint_names(sampler)
        draw_fn = _draw_function(model, sampler, shift_period)
        if backend == "tensorflow" and jit_compile:
            draw_fn = tf.function(draw_fn, jit_compile=True, autograph=False)
        draw_endpoint = archive.add_endpoint(draw_name, draw_fn, input_signature=draw_signature, **draw_kwargs)
        sample_functions.append(archive.add_endpoint(sample_name, _make_sample_function(draw_endpoint, stride)))
    # TF Serving's default signature: the first sampler's `sample` (else Keras
    # would alias the first endpoint added, a `draw`).
    archive.add_endpoint("serving_default", sample_functions[0])

    metadata = _metadata(model, samplers, backend, stride, jax_platforms, random_shifts)
    path = os.fspath(path)
    _write_archive(archive, path, metadata, verbose)
    return {
        "path": path,
        "seconds": time.perf_counter() - started,
        "bytes": _directory_size(path),
        "metadata": metadata,
    }


def _exportable_samplers(model, samplers, backend):
    """The samplers to export, as a tuple, once the backend, the model and the names are checked."""
    from keras_dmdiff.models.samplers import SAMPLERS

    if backend not in ("tensorflow", "jax"):
        raise NotImplementedError(f"export_saved_model supports the tensorflow and jax backends, not {backend!r}.")
    for attribute in ("network", "schedule", "transform", "stride"):
        if not hasattr(model, attribute):
            raise ValueError(
                f"export_saved_model needs a VariationalDiffusion (with `{attribute}`); got {type(model).__name__}."
            )
    samplers = (samplers,) if isinstance(samplers, str) else tuple(samplers)
    if not samplers:
        raise ValueError("export_saved_model needs at least one sampler.")
    if len(set(samplers)) != len(samplers):
        raise ValueError(f"Duplicate sampler names in {samplers}.")
    for sampler in samplers:
        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {sampler!r}; choose among {sorted(SAMPLERS)}.")
    distilled_steps = getattr(model, "distilled_steps", None)
    if distilled_steps is not None and samplers != ("ddim",):
        raise ValueError(
            f"This student was distilled for {distilled_steps} DDIM steps: export it with samplers=['ddim'], "
            f"not {list(samplers)}."
        )
    return samplers


def _draw_function(model, sampler, shift_period):
    """`draw(stellar_mass, num_steps, seed)`: the path of `VariationalDiffusion.sample`.

    Transform, `run_sampler` (which takes a tensor step count), the residual
    mean added back, inverse transform.
    """
    from keras import ops

    from keras_dmdiff.models.samplers import run_sampler

    transform = model.transform

    def draw(stellar_mass, num_steps, seed):
        condition = transform.stellar_to_network(ops.expand_dims(stellar_mass, -1))
        normalised = run_sampler(model.predict_noise, model.schedule, condition, seed, num_steps, sampler,
                                 shift_period=shift_period)
        normalised = normalised + model.residual_mean(condition)
        return transform.dark_matter_from_network(normalised)[..., 0]

    return draw


def _draw_endpoint_options(archive, model, backend, stride, jax_platforms):
    """The keyword arguments of `add_endpoint` for the draw endpoints (JAX: jax2tf's)."""
    if backend != "jax":
        # Not `track(model)`: the endpoints capture the variables they use,
        # which are then saved once, without the Keras object graph.
        return {}
    # jax2tf needs the variables as explicit inputs: track exactly the
    # sampler's layers (not the optimizer or metrics).
    archive.track(model.network)
    archive.track(model.schedule)
    if getattr(model, "mean_network", None) is not None:
        archive.track(model.mean_network)
    return {
        "is_static": False,
        "jax2tf_kwargs": {
            # Inference only: a reverse-mode gradient of a while loop with
            # a dynamic bound cannot be traced (and is not wanted).
            "with_gradient": False,
            # One symbol per dimension, shared by every tensor built from
            # the input (noise, concatenations); H and W multiples of the
            # stride so that down/up-sampling shapes line up.
            "polymorphic_shapes": [f"(b, {stride}*h, {stride}*w)", "()", "()"],
            "native_serialization_platforms": tuple(jax_platforms),
        },
    }


def _write_archive(archive, path, metadata, verbose):
    """Adds the metadata endpoint and writes the SavedModel whole, or not at all."""
    import tensorflow as tf

    metadata_json = json.dumps(metadata, indent=1, sort_keys=True)

    @tf.function(input_signature=[])
    def metadata_fn():
        return tf.constant(metadata_json)

    metadata_fn.get_concrete_function()
    archive.add_endpoint("metadata", metadata_fn)
    # No gradient functions: an inference-only artifact, smaller.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    # Written under a temporary name, then renamed: a kill never leaves a partial SavedModel.
    from keras_dmdiff import atomic_files  # here: loading a SavedModel must not need the package

    with atomic_files.replacing(path) as temporary:
        archive.write_out(os.fspath(temporary), options=options, verbose=verbose)
        atomic_files.write_text(temporary / METADATA_FILE, metadata_json)


def _checks(stellar_mass, num_steps, stride):
    """In-graph validation of the inputs; returns the assert ops."""
    import tensorflow as tf

    shape = tf.shape(stellar_mass)
    height, width = shape[1], shape[2]
    checks = [
        tf.debugging.assert_positive(shape[0], message="stellar_mass is an empty batch (B = 0)."),
        tf.debugging.assert_equal(
            tf.math.floormod(height, stride) + tf.math.floormod(width, stride) + tf.cast(height * width == 0, tf.int32),
            0,
            message=(
                f"stellar_mass maps must be [B, H, W] with H and W positive multiples of the network "
                f"stride {stride}."
            ),
        ),
        tf.debugging.assert_positive(num_steps, message="num_steps must be >= 1."),
        tf.debugging.assert_all_finite(stellar_mass, "stellar_mass contains NaN or infinite values."),
        tf.debugging.assert_non_negative(
            stellar_mass,
            message=(
                "stellar_mass has negative mass; expected physical surface densities in "
                "(Msun/h)/(Mpc/h)^2, >= 0."
            ),
        ),
    ]
    largest = tf.reduce_max(stellar_mass)
    checks.append(
        tf.debugging.Assert(
            tf.logical_not(tf.logical_and(largest > 0.0, largest < LOG_SCALED_MAX)),
            [
                "stellar_mass looks already log10-scaled or normalised (largest value below "
                f"{LOG_SCALED_MAX:g}); pass physical surface densities in (Msun/h)/(Mpc/h)^2. "
                "Largest value:",
                largest,
            ],
        )
    )
    return checks


def _make_sample_function(draw_endpoint, stride):
    """The `sample*` endpoint of one sampler: TensorFlow ops around its `draw*` endpoint."""
    import tensorflow as tf

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.float32, name="stellar_mass"),
            tf.TensorSpec([], tf.int32, name="num_samples"),
            tf.TensorSpec([], tf.int32, name="num_steps"),
            tf.TensorSpec([], tf.int32, name="seed"),
        ],
        autograph=False,
    )
    def sample(stellar_mass, num_samples, num_steps, seed):
        shape = tf.shape(stellar_mass)
        checks = _checks(stellar_mass, num_steps, stride)
        checks.append(tf.debugging.assert_positive(num_samples, message="num_samples must be >= 1."))
        with tf.control_dependencies(checks):
            repeated = tf.repeat(stellar_mass, num_samples, axis=0)
        # Chunk 0 of model.sample(seed=seed).
        seed = tf.cast(tf.math.floormod(tf.cast(seed, tf.int64) * SEED_MULTIPLIER, SEED_MODULUS), tf.int32)
        samples = draw_endpoint(repeated, num_steps, seed)
        return tf.reshape(samples, tf.stack([shape[0], num_samples, shape[1], shape[2]]))

    sample.get_concrete_function()
    return sample


def _directory_size(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


# ------------------------------------------------------------------------- load
class ExportedSampler:
    """A loaded SavedModel from `export_saved_model`, callable with numpy maps.

    Needs only TensorFlow (no keras, jax or keras_dmdiff import).

    Args:
        path: directory of the SavedModel.

    Call arguments:
        stellar_mass: [H, W] or [B, H, W] physical stellar mass.
        num_samples: posterior samples per map.
        num_steps: reverse-diffusion steps.
        seed: int; the same seed gives the same samples.
        sampler: one of `self.samplers` ("ancestral", "ddim" by default).
        batch_size: maps per graph call (bounds memory), chunked and seeded like
            `VariationalDiffusion.sample`, whose samples it reproduces on the
            exporting backend.

    Returns:
        numpy float32 [B, num_samples, H, W] physical dark matter.

    Attributes:
        metadata: dict (see `export_saved_model`), `stride`, `samplers`,
        `random_shifts` (fixed at export), `module` (the object from
        `tf.saved_model.load`).

    Example:
        >>> sampler = load_exported("saved_models/tng_mock/savedmodel")
        >>> samples = sampler(stars, num_samples=8, num_steps=250, seed=1)
    """

    def __init__(self, path):
        import tensorflow as tf

        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path!r} is not a SavedModel directory (no saved_model.pb).")
        self.path = path
        self.module = tf.saved_model.load(path)
        if not hasattr(self.module, "metadata"):
            raise ValueError(f"{path!r} is a SavedModel but not one written by keras_dmdiff.export_saved_model.")
        self.metadata = json.loads(self.module.metadata().numpy().decode("utf-8"))
        self.stride = int(self.metadata["stride"])
        self.samplers = list(self.metadata["samplers"])
        missing = [
            name
            for sampler in self.samplers
            for name in self.metadata["endpoints"][sampler].values()
            if not callable(getattr(self.module, name, None))
        ]
        if missing:
            raise ValueError(
                f"{path!r} lacks the sampling endpoint(s) {missing} that its metadata lists: it was "
                "not saved whole; export the .keras model again."
            )
        # Fixed at export; SavedModels written before the option existed had none.
        self.random_shifts = bool(self.metadata.get("random_shifts", False))

    # The keras_dmdiff.posterior.PosteriorSampler interface (duck-typed: this
    # module runs without the package). The sampler must be one exported.
    supported_options = ("sampler", "batch_size")

    def resolve_options(self, options):
        """Checks `SamplingOptions` against this SavedModel; returns them with `random_shifts` as exported."""
        if options.sampler not in self.samplers:
            raise ValueError(f"Sampler {options.sampler!r} was not exported; this model has {self.samplers}.")
        return options.check_supported(
            self.supported_options, f"This SavedModel ({self.path})", fixed={"random_shifts": self.random_shifts}
        )

    def sample(self, stellar_mass, num_samples=1, num_steps=250, seed=0, options=None, verbose=0):
        """`PosteriorSampler.sample`: as a call, with the sampler and batch size from `options`."""
        if options is None:
            return self(stellar_mass, num_samples, num_steps, seed, verbose=verbose)
        options = self.resolve_options(options)
        return self(stellar_mass, num_samples, num_steps, seed, options.sampler, options.batch_size, verbose)

    def __repr__(self):
        return (
            f"ExportedSampler({self.path!r}, samplers={self.samplers}, stride={self.stride}, "
            f"random_shifts={self.random_shifts})"
        )

    def __call__(
        self, stellar_mass, num_samples=1, num_steps=250, seed=0, sampler="ancestral", batch_size=16, verbose=0
    ):
        import tensorflow as tf

        if sampler not in self.samplers:
            raise ValueError(f"Sampler {sampler!r} was not exported; this model has {self.samplers}.")
        for name, value in (("num_samples", num_samples), ("num_steps", num_steps), ("batch_size", batch_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int; got {type(seed).__name__}.")
        distilled_steps = self.metadata.get("distilled_steps")
        if distilled_steps is not None and num_steps != distilled_steps:
            raise ValueError(
                f"This student was distilled for {distilled_steps} DDIM steps, not {num_steps}: "
                f"sample it with num_steps={distilled_steps}."
            )
        maps = map_checks.validate_maps(stellar_mass, "stellar_mass", stride=self.stride)
        count, height, width = maps.shape
        draw = getattr(self.module, self.metadata["endpoints"][sampler]["draw"])
        total = count * num_samples
        outputs = []
        progress = progress_bar(total, verbose, f"sampling, {num_steps} steps each")
        try:
            for chunk, start in enumerate(range(0, total, batch_size)):
                # Rows start.. of np.repeat(maps, num_samples, axis=0), as in
                # model.sample, without building the whole repeated batch.
                rows = np.arange(start, min(start + batch_size, total)) // num_samples
                outputs.append(
                    draw(
                        tf.constant(maps[rows]),
                        tf.constant(num_steps, tf.int32),
                        tf.constant(chunk_seed(seed, chunk), tf.int32),
                    ).numpy()
                )
                progress.update(len(rows))
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(error.message) from None
        finally:
            progress.close()
        samples = np.concatenate(outputs, axis=0)
        return samples.reshape(count, num_samples, height, width).astype(np.float32)


def load_exported(path):
    """Loads a SavedModel written by `export_saved_model` as a numpy sampler.

    Only TensorFlow is needed (no keras import), so this runs where the model
    is served.

    Args:
        path: directory of the SavedModel.

    Returns:
        an `ExportedSampler`: call it as
        ``sampler(stellar_mass, num_samples=1, num_steps=250, seed=0,
        sampler="ancestral", batch_size=16)`` -> numpy float32
        [B, num_samples, H, W] physical dark matter.

    Raises:
        ValueError: not a SavedModel, or not one written by this module.

    Example:
        >>> sample = load_exported("/tmp/dmdiff_savedmodel")
        >>> sample(np.full((32, 32), 0.0), num_samples=2, num_steps=10, seed=1).shape
        (1, 2, 32, 32)
    """
    return ExportedSampler(path)
