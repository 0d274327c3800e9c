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

The measurements live in their own modules: `keras_dmdiff.flops` (the FLOP
convention, `count_flops`, the matmul peak), `keras_dmdiff.speed` (the worker's
speed and memory rows, the large map) and `keras_dmdiff.sampler_quality` (the
quality rows); this module runs them in worker processes, one backend each,
and writes the tables.

Example:
    >>> result = run_bench(preset="tiny", sizes=(32,), repeats=2, backends=("tensorflow",))  # doctest: +SKIP
    >>> result["rows"][0]["forward_fraction_of_peak"]   # doctest: +SKIP
"""

import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.evaluation import json_safe
from keras_dmdiff.flops import TRAIN_FLOPS_PER_FORWARD, matmul_peak, network_flops
from keras_dmdiff.sampler_quality import (
    DEFAULT_QUALITY_STEPS,
    DEFAULT_SAMPLERS,
    QUALITY_FIELDS,
    QualitySettings,
    load_quality_data,
    quality_vs_steps,
)
from keras_dmdiff.settings import from_fields
from keras_dmdiff.speed import measure_large_map, measure_speed

DEFAULT_SIZES = (64, 128, 256)
DEFAULT_BACKENDS = ("tensorflow", "jax")
#: Fields of every row of `run_bench(...)["rows"]` (one per backend and size).
ROW_FIELDS = (
    "backend",
    "kernels",
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
_JSON_PREFIX = "DMDIFF_BENCH_JSON "
#: TensorFlow's CPU kernels the bench can time, and the value of `ONEDNN_VARIABLE` that selects each.
TENSORFLOW_KERNELS = {"onednn": "1", "eigen": "0"}
# Read once, when TensorFlow is imported: each choice needs a worker process of its own.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


@dataclasses.dataclass
class BenchConfig:
    """What `dmdiff bench` measures (the keys of a recipe's bench step, the flags of `dmdiff bench`).

    Args:
        preset: network preset ("paper": 32.7 M parameters; "cpu"; "tiny").
        sizes: map sizes (H = W), multiples of the network's stride.
        repeats: timed calls per measurement (the median is reported).
        backends: Keras backends, each measured in its own worker processes.
        tensorflow_kernels: TensorFlow's CPU kernels to time, each in its own
            speed rows: "onednn" (`TF_ENABLE_ONEDNN_OPTS=1`) and/or "eigen"
            (`=0`). TensorFlow's own choice depends on the processor (oneDNN
            on x86 CPUs with AVX-512 VNNI, Eigen without), and neither wins
            every workload (docs/benchmarks.md); the large-map and quality
            workers run the first.
        batch_size: maps per training step and per sampler network call.
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
        quality_students: `.keras` students distilled from `quality_model`,
            each a row of its own DDIM steps against the teacher's reference.
        large_map_size: side of the large map sampled through tiles, per
            backend, for its peak memory (0 or None: skip).
        large_map_tile, large_map_margin: its tile cores and their margin.
        large_map_steps: its sampler steps per timed call.
        timeout: seconds allowed to each worker process (None: no limit).

    Example:
        >>> config = BenchConfig(preset="tiny", sizes=[32])
        >>> BenchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        True
    """

    preset: str = "paper"
    sizes: list = dataclasses.field(default_factory=lambda: list(DEFAULT_SIZES))
    repeats: int = 5
    backends: list = dataclasses.field(default_factory=lambda: list(DEFAULT_BACKENDS))
    tensorflow_kernels: list = dataclasses.field(default_factory=lambda: list(TENSORFLOW_KERNELS))
    batch_size: int = 4
    quality_model: str | None = None
    quality_data: str | None = None
    sampler: str = "ddim"
    sampling_steps: int = 10
    num_samples: int = 1
    network_overrides: dict = dataclasses.field(default_factory=dict)
    process_per_size: bool = True
    matmul_size: int = 2048
    samplers: list = dataclasses.field(default_factory=lambda: list(DEFAULT_SAMPLERS))
    quality_steps: list = dataclasses.field(default_factory=lambda: list(DEFAULT_QUALITY_STEPS))
    reference_steps: int = 250
    reference_sampler: str = "ancestral"
    quality_samples: int = 8
    quality_maps: int | None = 4
    quality_crop: int | None = None
    quality_suite: str = "IllustrisTNG"
    quality_set: str = "CV"
    quality_backend: str = "tensorflow"
    quality_batch_size: int = 16
    quality_converged_steps: int | None = None
    quality_coupled: bool = True
    quality_noise_floor: bool = True
    quality_random_shifts: bool | None = None
    quality_ddim_etas: list = dataclasses.field(default_factory=list)
    quality_students: list = dataclasses.field(default_factory=list)
    large_map_size: int | None = 2048
    large_map_tile: int = 256
    large_map_margin: int = 32
    large_map_steps: int = 1
    timeout: float | None = None

    def __post_init__(self):
        # Sequences as lists, paths as strings: the config travels to the workers as JSON.
        for name in ("sizes", "backends", "tensorflow_kernels", "samplers", "quality_steps", "quality_ddim_etas"):
            setattr(self, name, list(getattr(self, name)))
        unknown = sorted(set(self.tensorflow_kernels) - set(TENSORFLOW_KERNELS))
        if unknown or not self.tensorflow_kernels:
            raise ValueError(f"tensorflow_kernels must be some of {sorted(TENSORFLOW_KERNELS)}, got "
                             f"{self.tensorflow_kernels}.")  # fmt: skip
        self.quality_students = [os.fspath(path) for path in self.quality_students]
        self.sizes = [int(size) for size in self.sizes]
        for name in ("quality_model", "quality_data"):
            if getattr(self, name) is not None:
                setattr(self, name, os.fspath(getattr(self, name)))
        self.network_overrides = dict(self.network_overrides or {})
        if (self.quality_model is None) != (self.quality_data is None):
            raise ValueError("Give both quality_model and quality_data, or neither.")
        if self.quality_students and self.quality_model is None:
            raise ValueError("quality_students are measured against their teacher: give quality_model too.")

    @classmethod
    def from_dict(cls, values):
        """A config from a dict of its fields; an unknown key is an error naming it."""
        return from_fields(cls, values, "bench settings")

    def to_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------- workers
def _kernels(backend, config, kernels=None):
    """The kernels a worker of `backend` runs: TensorFlow's `kernels` (default: the config's first), else `backend`."""
    return (kernels or config.tensorflow_kernels[0]) if backend == "tensorflow" else backend


def _run_worker(backend, kind, config, sizes=(), kernels=None):
    """Runs `python -m keras_dmdiff.bench --worker KIND CONFIG_JSON` under `backend`; returns its JSON or an error."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "tensorflow":
        env[ONEDNN_VARIABLE] = TENSORFLOW_KERNELS[_kernels(backend, config, kernels)]
    payload = json.dumps({"config": config.to_dict(), "sizes": [int(size) for size in sizes]})
    command = [sys.executable, "-m", "keras_dmdiff.bench", "--worker", kind, payload]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=config.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {config.timeout} s"}
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_JSON_PREFIX):
            return json.loads(line[len(_JSON_PREFIX) :])
    tail = (result.stderr or result.stdout or "").strip().splitlines()[-15:]
    return {"error": f"worker exited with {result.returncode}: " + "\n".join(tail)}


def _speed_worker(config, sizes):
    rows = []
    for size in sizes:
        try:
            rows.append(
                measure_speed(
                    preset=config.preset,
                    size=size,
                    repeats=config.repeats,
                    batch_size=config.batch_size,
                    sampler=config.sampler,
                    sampling_steps=config.sampling_steps,
                    num_samples=config.num_samples,
                    network_overrides=config.network_overrides,
                )
            )
        except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
            rows.append({"size": size, "error": f"{type(error).__name__}: {error}"})
    return {"rows": rows}


def _large_map_worker(config, sizes):
    from keras_dmdiff.posterior import SamplingOptions

    options = SamplingOptions(sampler=config.sampler, tile_size=config.large_map_tile,
                              tile_margin=config.large_map_margin, tile_batch=1, batch_size=1)
    return measure_large_map(preset=config.preset, size=config.large_map_size, num_steps=config.large_map_steps,
                             options=options, network_overrides=config.network_overrides)


def _quality_worker(config, sizes):
    import keras

    from keras_dmdiff.posterior import load_keras_posterior

    model = load_keras_posterior(config.quality_model)
    stellar, dark = load_quality_data(
        config.quality_data, config.quality_maps, config.quality_suite, config.quality_set, config.quality_crop
    )
    settings = QualitySettings(
        samplers=tuple(config.samplers),
        steps=tuple(config.quality_steps),
        reference_steps=config.reference_steps,
        reference_sampler=config.reference_sampler,
        num_samples=config.quality_samples,
        batch_size=config.quality_batch_size,
        noise_floor=config.quality_noise_floor,
        coupled=config.quality_coupled,
        converged_steps=config.quality_converged_steps,
        random_shifts=config.quality_random_shifts,
        ddim_etas=tuple(config.quality_ddim_etas),
    )
    students = {path: load_keras_posterior(path) for path in config.quality_students}
    output = quality_vs_steps(model, stellar, dark, settings, students)
    output["backend"] = keras.backend.backend()
    return output


_WORKERS = {"speed": _speed_worker, "quality": _quality_worker, "large_map": _large_map_worker}


def _worker_main(argv):
    """A worker: `argv` is [kind, JSON of {"config": BenchConfig fields, "sizes": [...]}]; prints its JSON."""
    kind, payload = argv
    if kind not in _WORKERS:
        raise ValueError(f"Unknown bench worker {kind!r}; expected speed, quality or large_map.")
    payload = json.loads(payload)
    output = _WORKERS[kind](BenchConfig.from_dict(payload["config"]), payload["sizes"])
    print(_JSON_PREFIX + json.dumps(json_safe(output)), flush=True)


# ---------------------------------------------------------------- the bench
def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def _row(cells):
    return "| " + " | ".join(cells) + " |"


def _percent(fraction):
    return _fmt(None if fraction is None else 100 * fraction, ".0f")


def _speed_table(result):
    settings, peak = result["settings"], result["matmul_peak"]
    lines = [
        f"## dmdiff bench: preset {settings['preset']}, training batch {settings['batch_size']}, "
        f"{result['machine']['cpu_count']} CPU cores",
        "",
        f"float32 matmul peak (numpy {peak['size']}^3, median of {peak['repeats']}): {peak['gflops']:.1f} GFLOP/s",
        "",
        "| backend | kernels | size | fwd GFLOP | fwd s | fwd GFLOP/s | fwd % peak | train step s | train maps/s "
        "| train % peak | sampling | samples/s | s / eval | peak RSS GiB | device GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row.get("error"):
            lines.append(f"| {row['backend']} | {_fmt(row.get('kernels'), '')} | {row['size']} | "
                         f"error: {row['error'].splitlines()[-1][:120]} |")  # fmt: skip
            continue
        lines.append(_row([
            row["backend"], _fmt(row.get("kernels"), ""), str(row["size"]), _fmt(row["forward_gflop"], ".3g"),
            _fmt(row["forward_s"], ".4g"), _fmt(row["forward_gflops"], ".1f"), _percent(row["forward_fraction_of_peak"]),
            _fmt(row["train_step_s"], ".4g"), _fmt(row["train_maps_per_s"], ".3g"),
            _percent(row["train_fraction_of_peak"]), f"{row['sampler']} {row['sampling_steps']} steps",
            _fmt(row["samples_per_s"], ".3g"), _fmt(row["s_per_network_evaluation"], ".4g"),
            _fmt(row["peak_rss_gib"], ".2f"), _fmt(row["peak_device_memory_gib"], ".2f"),
        ]))  # fmt: skip
    return lines


def _large_map_table(large):
    lines = [
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
    return lines


def _quality_header(quality):
    """The reference's line and the noise floor's, above the quality table."""
    ref = quality["reference"]
    coupling = (
        f"noise on one grid of {quality['noise_steps']} steps (coupled draws)"
        if quality.get("noise_steps")
        else "independent noise per row"
    )
    if quality.get("random_shifts") is not None:
        coupling += "; random shifts " + ("on" if quality["random_shifts"] else "off")
    lines = [
        "",
        f"Reference: {ref['sampler']} with {ref['num_steps']} steps ({ref['seconds']:.1f} s, "
        f"{quality['num_maps'] * quality['num_samples'] / ref['seconds']:.3g} samples/s); "
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
    return lines


def _worst_level(row):
    """The level with the largest |coverage difference|, with its standard error."""
    differences = row.get("coverage_difference_points")
    if not differences:
        return _fmt(row["coverage_difference_vs_reference_points"], ".1f")
    worst = int(np.argmax(np.abs(differences)))
    return f"{differences[worst]:+.1f} +- {row['coverage_difference_se_points'][worst]:.1f}"


def _quality_section(quality):
    lines = ["", "### Quality against steps"]
    if quality.get("error"):
        return lines + [f"error: {quality['error']}"]
    lines += _quality_header(quality) + [
        "",
        "| sampler | steps | evals | coupling | s | samples/s | x ref | mean P ratio / ref - 1 "
        "| P-ratio err vs ref (per k) | P-ratio err vs truth | r(k) of mean | r - r_ref | PDF dist vs ref "
        "| PDF dist vs truth | coverage | largest cov diff (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    samples = quality["num_maps"] * quality["num_samples"]
    for row in quality["rows"]:
        if row.get("error"):
            lines.append(f"| {row['sampler']} | {row['num_steps']} | error: {row['error']} |")
            continue
        check = " (convergence check)" if row.get("convergence_check") else ""
        if row.get("model", "teacher") != "teacher":
            check += f" (student {'/'.join(pathlib.PurePath(row['model']).parts[-2:])})"
        if row.get("eta"):
            check += f" (eta {row['eta']:g})"
        lines.append(_row([
            f"{row['sampler']}{check}", str(row["num_steps"]), str(row["network_evaluations"]),
            str(row.get("coupling", "-")), f"{row['seconds']:.2f}", _fmt(samples / row["seconds"], ".3g"),
            _fmt(quality["reference"]["seconds"] / row["seconds"], ".1f"),
            f"{_fmt(row.get('mean_power_ratio_difference'), '+.4f')} "
            f"+- {_fmt(row.get('mean_power_ratio_difference_se'), '.4f')}",
            _fmt(row["power_ratio_error_vs_reference"], ".4f"), _fmt(row["power_ratio_error_vs_truth"], ".4f"),
            _fmt(row["r_posterior_mean"], ".3f"), _fmt(row["r_difference_vs_reference"], "+.3f"),
            _fmt(row["pdf_distance_vs_reference"], ".4f"), _fmt(row["pdf_distance_vs_truth"], ".4f"),
            "/".join(_fmt(c, ".2f") for c in row["coverage"]), _worst_level(row),
        ]))  # fmt: skip
    return lines


def format_table(result):
    """The result of `run_bench` as markdown tables (speed, then quality when present).

    Args:
        result: the dict returned by `run_bench` (or read back from its JSON).

    Returns:
        str.
    """
    lines = _speed_table(result)
    if result.get("large_map"):
        lines += _large_map_table(result["large_map"])
    if result.get("quality"):
        lines += _quality_section(result["quality"])
    return "\n".join(lines)


def _speed_rows(config, peak, say):
    """Every backend's speed rows, one worker per group of sizes, as fractions of `peak` too."""
    groups = [[size] for size in config.sizes] if config.process_per_size else [config.sizes]
    variants = [(backend, kernels) for backend in config.backends
                for kernels in (config.tensorflow_kernels if backend == "tensorflow" else [backend])]  # fmt: skip
    rows = []
    for backend, kernels in variants:
        for group in groups:
            say(f"[bench] {backend} ({kernels}) {','.join(map(str, group))} ...", flush=True)
            output = _run_worker(backend, "speed", config, sizes=group, kernels=kernels)
            worker_rows = output.get("rows") or [{"size": size, "error": output.get("error")} for size in group]
            for row in worker_rows:
                full = {field: None for field in ROW_FIELDS}
                full.update(row)
                full["backend"], full["kernels"] = backend, kernels
                if full["error"] is None:
                    full["forward_fraction_of_peak"] = full["forward_gflops"] / peak["gflops"]
                    full["train_fraction_of_peak"] = full["train_gflops"] / peak["gflops"]
                rows.append(full)
    return rows


def _large_map_rows(config, say):
    """One row per backend for the large tiled map (none unless `large_map_size` is set)."""
    rows = []
    if config.large_map_size:
        for backend in config.backends:
            say(f"[bench] {backend} one {config.large_map_size}x{config.large_map_size} map in "
                f"{config.large_map_tile}-pixel tiles ...", flush=True)  # fmt: skip
            output = _run_worker(backend, "large_map", config)
            output["backend"], output["kernels"] = backend, _kernels(backend, config)
            output.setdefault("size", int(config.large_map_size))
            output.setdefault("error", None)
            rows.append(output)
    return rows


def _settings_record(config):
    """The settings a bench result was measured with, as stored beside its rows."""
    c = config
    return {
        "preset": c.preset,
        "sizes": c.sizes,
        "repeats": int(c.repeats),
        "backends": c.backends,
        "tensorflow_kernels": c.tensorflow_kernels,
        "batch_size": int(c.batch_size),
        "sampler": c.sampler,
        "sampling_steps": int(c.sampling_steps),
        "num_samples": int(c.num_samples),
        "network_overrides": c.network_overrides,
        "process_per_size": bool(c.process_per_size),
        "large_map": {"size": c.large_map_size, "tile": c.large_map_tile, "margin": c.large_map_margin},
        "flop_convention": "2 per multiply-add of convolutions, dense layers and attention matmuls; "
        f"training step = {TRAIN_FLOPS_PER_FORWARD:g} x forward",
    }


def _machine():
    """The machine and the versions that a bench result was measured on."""
    import keras  # already imported by keras_dmdiff; only its version is read

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "keras": keras.__version__,
    }


def run_bench(config=None, *, json_path=None, verbose=True, **settings):
    """Measures speed, memory and (optionally) sampling quality; prints a table; returns a dict.

    Args:
        config: a `BenchConfig` (or its dict); None: one made of `settings`.
        json_path: also write the result as JSON here.
        verbose: print the table (and progress).
        **settings: `BenchConfig` fields, for short calls without a config.

    Returns:
        dict: "machine" (platform, cores, versions), "settings", "matmul_peak"
        (`matmul_peak`), "rows" (one dict of `ROW_FIELDS` per backend and size;
        a failed measurement has its message in "error"), and "quality" (see
        `quality_vs_steps`, or None). Non-finite numbers are stored as None.

    Example:
        >>> result = run_bench(preset="tiny", sizes=(16, 32), repeats=1, json_path="bench.json")  # doctest: +SKIP
    """
    if isinstance(config, dict):
        config = BenchConfig.from_dict(config)
    if config is None:
        config = BenchConfig.from_dict(settings)
    elif settings:
        raise ValueError("Give a BenchConfig or its fields as keywords, not both.")
    c = config
    say = print if verbose else (lambda *a, **k: None)
    say(f"[bench] float32 matmul peak ({c.matmul_size}^3) ...", flush=True)
    peak = matmul_peak(c.matmul_size, c.repeats)
    say(f"[bench] {peak['gflops']:.1f} GFLOP/s", flush=True)

    rows = _speed_rows(c, peak, say)
    large_map = _large_map_rows(c, say)
    quality = None
    if c.quality_model is not None:
        say(f"[bench] quality against steps ({c.quality_backend}) ...", flush=True)
        quality = _run_worker(c.quality_backend, "quality", c)

    result = json_safe(
        {
            "machine": _machine(),
            "settings": _settings_record(c),
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
