"""Evaluation of a posterior sampler: statistics, calibration, baselines, figures.

`evaluate` takes any sampler of dark-matter maps given stellar-mass maps (a
`VariationalDiffusion`, a reloaded `.keras` file, an exported SavedModel, or a
plain function) and a set of test maps, draws `num_samples` posterior samples
per map and measures what a cosmologist needs to trust them:

* the power spectrum ratio `P_sample / P_true` (mean and 10-90 % band), for
  the samples, the posterior mean and every baseline;
* the cross-correlation `r(k)` of the posterior mean (and of single samples)
  with the truth, against every baseline;
* the one-point PDF of `log10 Sigma_cdm`, MSE in dex^2;
* calibration: coverage of central credible intervals (50/68/90/95 %) and SBC
  rank histograms for pixel values, P(k) per k bin and aperture masses around
  the brightest galaxies, the TARP expected-coverage curve on `log10 P(k)`, and
  `stats.calibration_verdict`.

Baselines (issue 4): (a) the regression U-Net (`keras_dmdiff.models.RegressionUNet`),
(b) the conditional mean of log10 Mcdm in bins of smoothed stellar mass
(`baselines.ConditionalMeanBaseline`, fitted on a *training* split),
(c) the stellar-mass map itself (`baselines.stellar_tracer`).

`run_evaluation` is the file-level entry point used by `dmdiff evaluate` and
`recipes/evaluate.toml`: it loads a model and a TFDS split and writes one
output folder:

    out_dir/
      metrics.json                 all statistics (JSON), with a `summary`
      samples.h5                   stellar_mass, dark_matter_true [N, H, W] and
                                   samples [N, S, H, W] (float32, gzip), metadata
                                   in the file attributes
      maps.png, power_spectrum.png, cross_correlation.png, pdf.png,
      coverage.png, rank_histograms.png

Sampling is the expensive part, so it is resumable (`sample_store.SampleStore`):
the samples of each group of maps are written (atomically) to
`samples.h5.parts/` as soon as they are drawn, `samples.h5` is written whole
once every map is drawn, and a rerun with the same settings skips the maps
already drawn (a killed run loses at most one group of maps). Each group of maps is sampled with its own seed derived from
`seed` and the index of its first map, so results do not depend on where a run
was interrupted.

Units: maps in (Msun/h)/(Mpc/h)^2, k in h/Mpc, P(k) in (Mpc/h)^2, aperture
masses in Msun/h, MSE in dex^2.
"""

import dataclasses
import datetime
import math
import os
import pathlib
import sys

import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.baselines import ConditionalMeanBaseline, periodic_gaussian_smooth, stellar_tracer
from keras_dmdiff.map_checks import validate_maps
from keras_dmdiff.posterior import PosteriorSampler, SamplingOptions, load_keras_file, load_posterior
from keras_dmdiff.posterior_metrics import MeasurePlan, MeasureSettings, measure
from keras_dmdiff.sample_store import SampleStore
from keras_dmdiff.stats._checks import check_box_size

DIFFUSION = "diffusion"
STELLAR_TRACER = "stellar_tracer"
CONDITIONAL_MEAN = "conditional_mean"
REGRESSION_UNET = "regression_unet"

# What `dmdiff evaluate` and a recipe's evaluate step read unless told.
DEFAULT_DATASET = "camels_cmd/IllustrisTNG_LH"
DEFAULT_SPLIT = "test"

SAMPLES_FILE = "samples.h5"
METRICS_FILE = "metrics.json"

# Attributes of samples.h5 that must match for a run to resume from it.
_RESUME_KEYS = ("num_samples", "num_steps", "seed", "sampler", "random_shifts", "eta", "noise_steps",
                "tile_size", "tile_margin", "maps_per_call")
# What a samples.h5 written before a setting existed was drawn with.
_RESUME_DEFAULTS = {"random_shifts": False, "eta": 0.0, "noise_steps": None, "tile_size": None, "tile_margin": 32}


# ----------------------------------------------------------------------------- data
def _to_numpy(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value, dtype=np.float32)


def collect_maps(dataset_batches, max_maps=None):
    """Gathers `(stellar_mass, dark_matter)` batches into two arrays.

    Args:
        dataset_batches: a `tf.data.Dataset` or any iterable of
            `(stellar_mass, dark_matter)` batches `[B, H, W]`, or one pair of
            arrays `(stellar_mass [N, H, W], dark_matter [N, H, W])`.
        max_maps: keep at most this many maps (None: all).

    Returns:
        `(stellar_mass, dark_matter)`, float32 numpy arrays `[N, H, W]`.

    Raises:
        ValueError: empty input, mismatched or non-square shapes, or maps
            that `map_checks.validate_maps` rejects (NaN, negative or
            log10-scaled values; dark matter must be > 0).

    Examples:
        >>> stars, dm = collect_maps(make_dataset("camels_cmd/mock_IllustrisTNG_LH",  # doctest: +SKIP
        ...                                       split="test"), max_maps=10)
    """
    if max_maps is not None and int(max_maps) < 1:
        raise ValueError(f"`max_maps` must be >= 1 or None, got {max_maps}.")
    if (
        isinstance(dataset_batches, tuple)
        and len(dataset_batches) == 2
        and all(hasattr(a, "shape") and len(a.shape) >= 2 for a in dataset_batches)
    ):
        batches = [dataset_batches]
    elif hasattr(dataset_batches, "as_numpy_iterator"):
        batches = dataset_batches.as_numpy_iterator()
    else:
        batches = dataset_batches
    stars_list, dm_list, count = [], [], 0
    for batch in batches:
        stars, dm = (_to_numpy(b) for b in batch)
        if stars.ndim == 2:
            stars, dm = stars[None], dm[None]
        if stars.shape != dm.shape or stars.ndim != 3:
            raise ValueError(
                f"Batches must be pairs of [B, H, W] maps of one shape; got {stars.shape} and {dm.shape}."
            )
        if max_maps is not None:
            stars, dm = stars[: int(max_maps) - count], dm[: int(max_maps) - count]
        stars_list.append(stars)
        dm_list.append(dm)
        count += len(stars)
        if max_maps is not None and count >= int(max_maps):
            break
    if count == 0:
        raise ValueError("No maps to evaluate (empty dataset).")
    stars = validate_maps(np.concatenate(stars_list), "stellar_mass", allow_rank2=False)
    dm = validate_maps(np.concatenate(dm_list), "dark_matter", strictly_positive=True, allow_rank2=False)
    if stars.shape[-1] != stars.shape[-2]:
        raise ValueError(f"Maps must be square (periodic boxes), got {stars.shape[-2:]}.")
    return stars, dm


# ----------------------------------------------------------------------------- baselines
@dataclasses.dataclass(frozen=True)
class Baselines:
    """What the posterior is compared with.

    Args:
        names: None: the stellar tracer (c), plus the conditional mean (b)
            when `train_batches` is given and the regression U-Net (a) when
            `regression_model` is given. Or a list of names among
            `"stellar_tracer"`, `"conditional_mean"`, `"regression_unet"`, or
            a dict `{name: baseline}` whose values are `"stellar_tracer"`, a
            `ConditionalMeanBaseline` (fitted, or fitted on `train_batches`),
            an object with `predict_maps` (`RegressionUNet`), or a function
            `stellar [N, H, W] -> dark matter [N, H, W]`.
        train_batches: training maps (the forms of `collect_maps`) to fit the
            conditional-mean baseline on; never the test maps.
        regression_model: a trained `RegressionUNet` (baseline (a)).
        max_train_maps: at most this many training maps for baseline (b).

    Example:
        >>> sorted(Baselines(names=["stellar_tracer"]).prepare(box_size=25.0))
        ['stellar_tracer']
    """

    names: object = None
    train_batches: object = None
    regression_model: object = None
    max_train_maps: int = 64

    def prepare(self, box_size):
        """`{name: baseline}`, every conditional mean fitted.

        Raises:
            ValueError: an unknown name, a name whose model or data is missing,
                or the reserved name "diffusion".
        """
        chosen = self._chosen(box_size)
        if DIFFUSION in chosen:
            raise ValueError(f"{DIFFUSION!r} is reserved for the model being evaluated.")
        unfitted = [
            name for name, b in chosen.items() if isinstance(b, ConditionalMeanBaseline) and not b.is_fitted
        ]
        if unfitted:
            if self.train_batches is None:
                raise ValueError(f"Baselines {unfitted} must be fitted: pass `train_batches`.")
            train_stars, train_dm = collect_maps(self.train_batches, self.max_train_maps)
            for name in unfitted:
                chosen[name].fit(train_stars, train_dm)
        return chosen

    def _chosen(self, box_size):
        if isinstance(self.names, dict):
            return dict(self.names)
        if self.names is None:
            chosen = {STELLAR_TRACER: STELLAR_TRACER}
            if self.train_batches is not None:
                chosen[CONDITIONAL_MEAN] = ConditionalMeanBaseline(box_size=box_size)
            if self.regression_model is not None:
                chosen[REGRESSION_UNET] = self.regression_model
            return chosen
        chosen = {}
        for name in self.names:
            if name == STELLAR_TRACER:
                chosen[name] = STELLAR_TRACER
            elif name == CONDITIONAL_MEAN:
                chosen[name] = ConditionalMeanBaseline(box_size=box_size)
            elif name == REGRESSION_UNET:
                if self.regression_model is None:
                    raise ValueError("Baseline 'regression_unet' needs `regression_model`.")
                chosen[name] = self.regression_model
            else:
                raise ValueError(
                    f"Unknown baseline {name!r}; choose from {STELLAR_TRACER!r}, "
                    f"{CONDITIONAL_MEAN!r}, {REGRESSION_UNET!r}, or pass a dict of objects."
                )
        return chosen


def _predict_baseline(baseline, stars, dm):
    """`(maps for spectra, maps for log statistics)` of one baseline, float32 [N, H, W]."""
    if isinstance(baseline, str) and baseline == STELLAR_TRACER:
        means = dm.astype(np.float64).mean(axis=(-2, -1))
        # A map without stars cannot trace anything: it gets a flat map.
        has_stars = stars.reshape(len(stars), -1).max(axis=1) > 0
        safe = np.where(has_stars[:, None, None], stars, 1.0)
        raw = stellar_tracer(safe, means)
        # Stars leave most pixels empty: log statistics (PDF, MSE) use the tracer
        # smoothed by a Gaussian of one pixel (box_size = N pixels, scale = 1
        # pixel), floored at 1e-3 of the mean. Spectra use the raw tracer.
        n = stars.shape[-1]
        smooth = periodic_gaussian_smooth(raw, 1.0, float(n))
        smooth = np.maximum(smooth, 1e-3 * means[:, None, None])
        return raw.astype(np.float32), smooth.astype(np.float32)
    if isinstance(baseline, ConditionalMeanBaseline):
        pred = baseline.predict(stars)
    elif hasattr(baseline, "predict_maps"):
        pred = baseline.predict_maps(stars)
    elif callable(baseline):
        pred = baseline(stars)
    else:
        raise TypeError(f"Cannot use {type(baseline).__name__} as a baseline.")
    pred = np.asarray(pred, dtype=np.float32).reshape(stars.shape)
    if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
        raise ValueError("A baseline returned non-finite or non-positive dark-matter maps.")
    return pred, pred


# ----------------------------------------------------------------------------- storage
def _metadata_defaults():
    import keras_dmdiff

    backend = None
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
    return {
        "keras_dmdiff_version": keras_dmdiff.__version__,
        "backend": backend or os.environ.get("KERAS_BACKEND", "tensorflow"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _group_seed(seed, start):
    """Seed of the group of maps starting at map `start` (fits int32)."""
    return int((int(seed) * 1_000_033 + 7_919 * int(start) + 1) % (2**31 - 1))


# ----------------------------------------------------------------------------- JSON
def json_safe(value):
    """Numpy scalars/arrays -> Python values, non-finite floats -> None (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------- evaluate
@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """How many posterior samples are drawn for which maps, and how they are measured.

    Args:
        num_samples: posterior samples per map (the paper: 100; >= 2 for
            calibration).
        num_steps: reverse-diffusion steps.
        seed: base seed; each group of maps gets its own seed from it.
        max_maps: evaluate at most this many test maps (the first ones; a
            resumed `samples.h5` keeps any further maps it already holds).
        maps_per_call: maps per sampler call (and per resume step); None:
            `max(1, options.batch_size // num_samples)`.
        options: a `keras_dmdiff.posterior.SamplingOptions` (default: the
            reference ancestral sampler).
        measure: a `posterior_metrics.MeasureSettings` (pixels per map for the
            pixel calibration, apertures, the example map).

    Example:
        >>> settings = EvaluationSettings(num_samples=8, num_steps=100)
        >>> settings.calls_of(SamplingOptions(batch_size=32))
        4
    """

    num_samples: int = 16
    num_steps: int = 250
    seed: int = 0
    max_maps: int | None = None
    maps_per_call: int | None = None
    options: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)
    measure: MeasureSettings = dataclasses.field(default_factory=MeasureSettings)

    def __post_init__(self):
        for name in ("num_samples", "num_steps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ValueError(f"`seed` must be an int, got {type(self.seed).__name__}.")
        for name in ("max_maps", "maps_per_call"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"`{name}` must be an int >= 1 or None; got {value!r}.")

    def calls_of(self, options):
        """Maps per sampler call under `options` (the options in force)."""
        if self.maps_per_call is not None:
            return int(self.maps_per_call)
        return max(1, options.batch_size // self.num_samples)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def evaluate(
    posterior,
    dataset_batches,
    settings=None,
    *,
    baselines=None,
    box_size=25.0,
    out_dir=None,
    metadata=None,
    figures=True,
    progress=True,
):
    """Draws posterior samples for test maps and measures them against the truth.

    Args:
        posterior: a `keras_dmdiff.posterior.PosteriorSampler`: a
            `VariationalDiffusion`, a loaded SavedModel (`load_posterior`), or
            a `PosteriorFunction`.
        dataset_batches: test data: a `tf.data.Dataset` / iterable of
            `(stellar_mass, dark_matter)` physical batches `[B, H, W]`, or one
            pair of arrays `[N, H, W]` (see `collect_maps`).
        settings: an `EvaluationSettings` (None: the defaults); the sampling
            options in force are recorded in the metrics' settings.
        baselines: a `Baselines`, or its `names` alone (a list or dict); None:
            the stellar tracer alone.
        box_size: side of the evaluated maps in Mpc/h (25 for full CMD maps,
            `25 * crop / 256` for crops; crops are not periodic, so their
            spectra carry some edge leakage).
        out_dir: folder for `metrics.json`, `samples.h5` and the figures; also
            enables resuming. None: a temporary folder, deleted at the end.
        metadata: extra metadata for `samples.h5` and `metrics.json` (model
            path, dataset, split, ...).
        figures: write the PNG figures (needs `out_dir`).
        progress: show tqdm progress bars.

    Returns:
        The metrics dict (JSON-serialisable; NaN written as null), with keys
        `summary` (headline numbers), `settings`, `metadata`, `k`,
        `power_spectrum`, `power_ratio`, `cross_correlation`, `pdf`,
        `mse_dex2`, `calibration`, `figures`. `summary` holds:
        `power_ratio_error_k_lt_10` (mean over k < 10 h/Mpc of
        |mean P ratio - 1|, per method), `cross_correlation_1_k_5` (mean r(k)
        for 1 < k < 5 h/Mpc, per method), `mse_dex2` (per method),
        `coverage` (pixel coverage at 50/68/90/95 %), `coverage_error`,
        `rank_bias` and `verdict` (pixels), `pixels_by_stars` (the same
        where the stellar map is empty and where it holds stars),
        `verdict_power_spectrum`, `verdict_aperture_masses`,
        `tarp_max_error`. Methods:
        `diffusion_samples`, `diffusion_posterior_mean` and each baseline.

    Raises:
        ValueError: bad arguments, samples of the wrong shape or non-finite,
            an existing `samples.h5` written with other settings or maps.

    Examples:
        >>> metrics = evaluate(model, (stars, dm), EvaluationSettings(num_samples=8, num_steps=100),  # doctest: +SKIP
        ...                    baselines=Baselines(train_batches=(train_stars, train_dm)), out_dir="eval")
        >>> metrics["summary"]["cross_correlation_1_k_5"]  # doctest: +SKIP
        {'diffusion_posterior_mean': 0.93, 'diffusion_samples': 0.88,
         'stellar_tracer': 0.85, 'conditional_mean': 0.89}
    """
    import tempfile

    settings = EvaluationSettings() if settings is None else settings
    box_size = check_box_size(box_size)
    _check_posterior(posterior)
    options = posterior.resolve_options(settings.options)
    stars, dm = collect_maps(dataset_batches, settings.max_maps)
    if not isinstance(baselines, Baselines):
        baselines = Baselines() if baselines is None else Baselines(names=baselines)
    chosen = baselines.prepare(box_size)
    record = _settings_record(settings, options, box_size, stars.shape)
    meta = {**_metadata_defaults(), **(metadata or {})}

    temporary = tempfile.TemporaryDirectory(prefix="dmdiff_eval_") if out_dir is None else None
    folder = pathlib.Path(temporary.name if out_dir is None else os.path.expanduser(os.fspath(out_dir)))
    folder.mkdir(parents=True, exist_ok=True)
    store = SampleStore(
        folder / SAMPLES_FILE, stars, dm, settings.num_samples,
        resume={key: record[key] for key in _RESUME_KEYS}, attrs={**meta, **record},
        resume_defaults=_RESUME_DEFAULTS,
    )
    try:
        _draw_missing(store, posterior, options, stars, record, progress)
        store.finish()
        plan = MeasurePlan.for_maps(
            len(stars), stars.shape[-1], num_samples=settings.num_samples, box_size=box_size,
            seed=settings.seed, settings=settings.measure,
            grid_period=posterior.stride,  # the grid any network artefacts would sit on
        )
        predictions = {name: _predict_baseline(b, stars, dm) for name, b in chosen.items()}
        metrics = measure(store.samples, stars, dm, plan, predictions, progress)
    finally:
        store.close()
    metrics.update(metadata=meta, settings=record, baselines=sorted(chosen))
    example = metrics.pop("_example")
    metrics["figures"] = []
    if figures and out_dir is not None:
        from keras_dmdiff import plotting

        metrics["figures"] = plotting.save_figures(metrics, example, folder)
    metrics = json_safe(metrics)
    if out_dir is not None:
        atomic_files.write_json(folder / METRICS_FILE, metrics, indent=1)
    if temporary is not None:
        temporary.cleanup()
    return metrics


def _check_posterior(posterior):
    if not isinstance(posterior, PosteriorSampler):
        raise TypeError(
            f"Expected a PosteriorSampler (a VariationalDiffusion, a loaded SavedModel or a "
            f"keras_dmdiff.posterior.PosteriorFunction); got {type(posterior).__name__}."
        )


def _settings_record(settings, options, box_size, shape):
    """The settings written to samples.h5 and metrics.json (the options in force)."""
    n, size, _ = shape
    return {
        "num_samples": int(settings.num_samples),
        "num_steps": int(settings.num_steps),
        "seed": int(settings.seed),
        "sampler": options.sampler,
        "random_shifts": options.random_shifts,
        "eta": options.eta,
        "noise_steps": options.noise_steps,
        "tile_size": options.tile_size,
        "tile_margin": options.tile_margin,
        "batch_size": options.batch_size,
        "maps_per_call": settings.calls_of(options),
        "box_size": box_size,
        "num_maps": n,
        "map_size": size,
        "pixels_per_map": int(settings.measure.pixels_per_map),
    }


def _draw_missing(store, posterior, options, stars, settings, progress):
    """Samples every group of maps not yet flagged done in the store."""
    from tqdm.auto import tqdm

    n, h, w = stars.shape
    s = settings["num_samples"]
    m = settings["maps_per_call"]
    done = store.done
    with tqdm(total=n, initial=int(done.sum()), desc="sampling", unit="map", disable=not progress) as bar:
        for start in range(0, n, m):
            stop = min(start + m, n)
            if done[start:stop].all():
                continue
            out = posterior.sample(
                stars[start:stop], s, settings["num_steps"], _group_seed(settings["seed"], start), options
            )
            out = np.asarray(out, dtype=np.float32)
            if out.shape != (stop - start, s, h, w):
                raise ValueError(
                    f"The sampler returned shape {out.shape}; expected {(stop - start, s, h, w)} "
                    "[maps, samples, H, W]."
                )
            if not np.all(np.isfinite(out)) or np.any(out <= 0):
                raise ValueError(
                    f"The sampler returned non-finite or non-positive dark matter for maps "
                    f"{start}..{stop - 1}; nothing was stored for them."
                )
            store.write(start, out)
            bar.update(int((~done[start:stop]).sum()))


# ----------------------------------------------------------------------------- files
@dataclasses.dataclass(frozen=True)
class EvaluationData:
    """The TFDS maps an evaluation reads: the test split, and the training maps of baseline (b).

    Args:
        dataset: TFDS name, e.g. `"camels_cmd/mock_IllustrisTNG_LH"`.
        split: split to evaluate, e.g. `"test"`.
        data_dir: TFDS data folder.
        manual_dir: folder of the CMD files.
        crop_size: evaluate `crop_size`^2 tiles of every map instead of the
            full maps (faster; the tiles are not periodic).
        box_size: side of the *full* stored maps in Mpc/h (CMD: 25); the box
            of a tile is `box_size * crop_size / map_size`.
        train_split_for_baselines: split to fit the conditional-mean baseline
            (b) on; None skips it.
        train_dataset_for_baselines: TFDS name for baseline (b)'s training
            maps, default `dataset`. For a cross-suite test, give the suite the
            model was trained on, so the baseline learns what the model learnt.
        max_train_maps: training maps used for baseline (b).

    Example:
        >>> EvaluationData(split="validation").replace(crop_size=64).crop_size
        64
    """

    dataset: str = DEFAULT_DATASET
    split: str = DEFAULT_SPLIT
    data_dir: str | None = None
    manual_dir: str | None = None
    crop_size: int | None = None
    box_size: float = 25.0
    train_split_for_baselines: str | None = "train"
    train_dataset_for_baselines: str | None = None
    max_train_maps: int = 64

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def batches(self, split, batch_size, dataset=None):
        """The maps of `split` (of `dataset`, default this one's) in batches, tiled like the test maps."""
        from keras_dmdiff.data import make_dataset

        return make_dataset(
            dataset or self.dataset, split=split, training=False, batch_size=batch_size,
            crop_size=self.crop_size, eval_crop="tile", data_dir=self.data_dir, manual_dir=self.manual_dir,
        )

    def metadata(self):
        return {
            "dataset": self.dataset,
            "split": self.split,
            "crop_size": self.crop_size,
            "train_split_for_baselines": self.train_split_for_baselines,
            "train_dataset_for_baselines": self.train_dataset_for_baselines or self.dataset,
        }


def run_evaluation(model_path, data, out_dir, settings=None, *, regression_model_path=None, progress=True):
    """Evaluates a saved model on a TFDS split and writes everything to `out_dir`.

    The entry point of `dmdiff evaluate` and the recipes' evaluate steps.

    Args:
        model_path: a `.keras` file or an exported SavedModel folder.
        data: an `EvaluationData`: the split evaluated and the training maps
            of the conditional-mean baseline.
        out_dir: output folder (created; a rerun resumes from its samples.h5).
        settings: an `EvaluationSettings` (None: the defaults); its options'
            batch size is also the reading batch.
        regression_model_path: a `.keras` `RegressionUNet`, baseline (a).
        progress: show progress bars.

    Returns:
        The metrics dict (also written to `out_dir/metrics.json`).

    Examples:
        >>> run_evaluation("runs/cpu/model.keras", EvaluationData("camels_cmd/mock_IllustrisTNG_LH"),  # doctest: +SKIP
        ...                "eval/cpu", EvaluationSettings(num_samples=10, num_steps=100, max_maps=20))
    """
    from keras_dmdiff.data import crop_box_size

    settings = EvaluationSettings() if settings is None else settings
    loaded = load_posterior(model_path)
    batch_size = settings.options.batch_size
    test = data.batches(data.split, batch_size)
    eval_box = crop_box_size(data.dataset, data.crop_size, data.box_size, split=data.split,
                             data_dir=data.data_dir, manual_dir=data.manual_dir)
    train_batches = None
    if data.train_split_for_baselines is not None:
        train_batches = data.batches(data.train_split_for_baselines, batch_size, data.train_dataset_for_baselines)
    regression_model = None
    if regression_model_path is not None:
        regression_model = load_regression_model(regression_model_path)
    metadata = {
        "model_path": os.fspath(model_path),
        "model_class": type(loaded).__name__,
        **data.metadata(),
        "regression_model_path": None if regression_model_path is None else os.fspath(regression_model_path),
    }
    baselines = Baselines(train_batches=train_batches, regression_model=regression_model,
                          max_train_maps=data.max_train_maps)
    return evaluate(loaded, test, settings, baselines=baselines, box_size=eval_box, out_dir=out_dir,
                    metadata=metadata, progress=progress)


def load_regression_model(path):
    """Loads a `.keras` `RegressionUNet` (baseline (a)), or a residual model's mean network.

    A residual `VariationalDiffusion` carries the regression U-Net it was
    trained on: that network is the baseline its posterior is measured against.

    Returns:
        The RegressionUNet.

    Raises:
        ValueError: if the file is damaged or holds another kind of model, or a
            VariationalDiffusion without a mean network.
    """
    from keras_dmdiff.models import VariationalDiffusion
    from keras_dmdiff.models.regression_unet import RegressionUNet

    why = "it cannot serve as the regression baseline"
    model = load_keras_file(path, (RegressionUNet, VariationalDiffusion), why)
    if isinstance(model, VariationalDiffusion):
        if model.mean_network is None:
            raise ValueError(f"{path} is a VariationalDiffusion without a mean network: {why}.")
        return model.mean_network
    return model
