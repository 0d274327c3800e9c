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
def _prepare_baselines(baselines, train_batches, regression_model, box_size, max_train_maps):
    """Normalises the `baselines` argument into `{name: object}`."""
    if baselines is None:
        chosen = {STELLAR_TRACER: STELLAR_TRACER}
        if train_batches is not None:
            chosen[CONDITIONAL_MEAN] = ConditionalMeanBaseline(box_size=box_size)
        if regression_model is not None:
            chosen[REGRESSION_UNET] = regression_model
    elif isinstance(baselines, dict):
        chosen = dict(baselines)
    else:
        chosen = {}
        for name in baselines:
            if name == STELLAR_TRACER:
                chosen[name] = STELLAR_TRACER
            elif name == CONDITIONAL_MEAN:
                chosen[name] = ConditionalMeanBaseline(box_size=box_size)
            elif name == REGRESSION_UNET:
                if regression_model is None:
                    raise ValueError("Baseline 'regression_unet' needs `regression_model`.")
                chosen[name] = regression_model
            else:
                raise ValueError(
                    f"Unknown baseline {name!r}; choose from {STELLAR_TRACER!r}, "
                    f"{CONDITIONAL_MEAN!r}, {REGRESSION_UNET!r}, or pass a dict of objects."
                )
    if DIFFUSION in chosen:
        raise ValueError(f"{DIFFUSION!r} is reserved for the model being evaluated.")
    unfitted = [
        name for name, b in chosen.items() if isinstance(b, ConditionalMeanBaseline) and not b.is_fitted
    ]
    if unfitted:
        if train_batches is None:
            raise ValueError(f"Baselines {unfitted} must be fitted: pass `train_batches`.")
        train_stars, train_dm = collect_maps(train_batches, max_train_maps)
        for name in unfitted:
            chosen[name].fit(train_stars, train_dm)
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
def evaluate(
    posterior,
    dataset_batches,
    *,
    num_samples=16,
    num_steps=250,
    seed=0,
    options=None,
    box_size=25.0,
    baselines=None,
    train_batches=None,
    regression_model=None,
    max_maps=None,
    max_train_maps=64,
    out_dir=None,
    metadata=None,
    maps_per_call=None,
    measure_settings=None,
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
        num_samples: posterior samples per map (the paper: 100; >= 2 for
            calibration).
        num_steps: reverse-diffusion steps.
        seed: base seed; each group of maps gets its own seed from it.
        options: a `keras_dmdiff.posterior.SamplingOptions` (None: the
            defaults, the reference ancestral sampler); the options in force
            are recorded in the settings.
        box_size: side of the evaluated maps in Mpc/h (25 for full CMD maps,
            `25 * crop / 256` for crops; crops are not periodic, so their
            spectra carry some edge leakage).
        baselines: None (default): the stellar tracer (c), plus the
            conditional mean (b) when `train_batches` is given and the
            regression U-Net (a) when `regression_model` is given. Or a list
            of names among `"stellar_tracer"`, `"conditional_mean"`,
            `"regression_unet"`, or a dict `{name: baseline}` whose values
            are `"stellar_tracer"`, a `ConditionalMeanBaseline` (fitted, or
            fitted here on `train_batches`), an object with `predict_maps`
            (`RegressionUNet`), or a function `stellar [N, H, W] -> dark matter
            [N, H, W]`.
        train_batches: training maps (same forms as `dataset_batches`) to fit
            the conditional-mean baseline on; never the test maps.
        regression_model: a trained `RegressionUNet` (baseline (a)).
        max_maps: evaluate at most this many test maps (the first ones; a
            resumed `samples.h5` keeps any further maps it already holds).
        max_train_maps: at most this many training maps for baseline (b).
        out_dir: folder for `metrics.json`, `samples.h5` and the figures; also
            enables resuming. None: a temporary folder, deleted at the end.
        metadata: extra metadata for `samples.h5` and `metrics.json` (model
            path, dataset, split, ...).
        maps_per_call: maps per sampler call (and per resume step); default
            `max(1, options.batch_size // num_samples)`.
        measure_settings: a `posterior_metrics.MeasureSettings` (pixels per
            map for the pixel calibration, apertures, the example map); None:
            the defaults.
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
        `rank_bias` and `verdict` (pixels), `verdict_power_spectrum`,
        `verdict_aperture_masses`, `tarp_max_error`. Methods:
        `diffusion_samples`, `diffusion_posterior_mean` and each baseline.

    Raises:
        ValueError: bad arguments, samples of the wrong shape or non-finite,
            an existing `samples.h5` written with other settings or maps.

    Examples:
        >>> metrics = evaluate(model, (stars, dm), num_samples=8, num_steps=100,  # doctest: +SKIP
        ...                    train_batches=(train_stars, train_dm), out_dir="eval")
        >>> metrics["summary"]["cross_correlation_1_k_5"]  # doctest: +SKIP
        {'diffusion_posterior_mean': 0.93, 'diffusion_samples': 0.88,
         'stellar_tracer': 0.85, 'conditional_mean': 0.89}
    """
    import tempfile

    num_samples = int(num_samples)
    if num_samples < 1 or int(num_steps) < 1:
        raise ValueError("`num_samples` and `num_steps` must be >= 1.")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int, got {type(seed).__name__}.")
    box_size = float(box_size)
    if not (math.isfinite(box_size) and box_size > 0):
        raise ValueError(f"`box_size` must be > 0 (Mpc/h), got {box_size}.")
    if not isinstance(posterior, PosteriorSampler):
        raise TypeError(
            f"Expected a PosteriorSampler (a VariationalDiffusion, a loaded SavedModel or a "
            f"keras_dmdiff.posterior.PosteriorFunction); got {type(posterior).__name__}."
        )
    options = posterior.resolve_options(SamplingOptions() if options is None else options)
    measure_settings = MeasureSettings() if measure_settings is None else measure_settings
    stars, dm = collect_maps(dataset_batches, max_maps)
    n, size, _ = stars.shape
    if maps_per_call is None:
        maps_per_call = max(1, options.batch_size // num_samples)
    maps_per_call = int(maps_per_call)
    if maps_per_call < 1:
        raise ValueError("`maps_per_call` must be >= 1.")
    chosen = _prepare_baselines(baselines, train_batches, regression_model, box_size, max_train_maps)

    settings = {
        "num_samples": num_samples,
        "num_steps": int(num_steps),
        "seed": int(seed),
        "sampler": options.sampler,
        "random_shifts": options.random_shifts,
        "eta": options.eta,
        "noise_steps": options.noise_steps,
        "tile_size": options.tile_size,
        "tile_margin": options.tile_margin,
        "batch_size": options.batch_size,
        "maps_per_call": maps_per_call,
        "box_size": box_size,
        "num_maps": n,
        "map_size": size,
        "pixels_per_map": int(measure_settings.pixels_per_map),
    }
    meta = {**_metadata_defaults(), **(metadata or {})}

    temporary = None
    if out_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="dmdiff_eval_")
        folder = pathlib.Path(temporary.name)
    else:
        folder = pathlib.Path(os.path.expanduser(os.fspath(out_dir)))
    folder.mkdir(parents=True, exist_ok=True)
    store = SampleStore(
        folder / SAMPLES_FILE, stars, dm, num_samples,
        resume={key: settings[key] for key in _RESUME_KEYS}, attrs={**meta, **settings},
        resume_defaults=_RESUME_DEFAULTS,
    )
    try:
        _draw_missing(store, posterior, options, stars, settings, progress)
        store.finish()
        plan = MeasurePlan.for_maps(
            n, size, num_samples=num_samples, box_size=box_size, seed=seed, settings=measure_settings,
            grid_period=posterior.stride,  # the grid any network artefacts would sit on
        )
        predictions = {name: _predict_baseline(b, stars, dm) for name, b in chosen.items()}
        metrics = measure(store.samples, stars, dm, plan, predictions, progress)
    finally:
        store.close()
    metrics["metadata"] = meta
    metrics["settings"] = settings
    metrics["baselines"] = sorted(chosen)
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
def run_evaluation(
    model_path,
    dataset,
    split,
    out_dir,
    *,
    num_samples=16,
    num_steps=250,
    seed=0,
    options=None,
    max_maps=None,
    data_dir=None,
    manual_dir=None,
    train_split_for_baselines="train",
    regression_model_path=None,
    train_dataset_for_baselines=None,
    max_train_maps=64,
    crop_size=None,
    batch_size=8,
    box_size=25.0,
    progress=True,
    **evaluate_kwargs,
):
    """Evaluates a saved model on a TFDS split and writes everything to `out_dir`.

    The entry point of `dmdiff evaluate` and `recipes/evaluate.toml`.

    Args:
        model_path: a `.keras` file or an exported SavedModel folder.
        dataset: TFDS name, e.g. `"camels_cmd/mock_IllustrisTNG_LH"`.
        split: split to evaluate, e.g. `"test"`.
        out_dir: output folder (created; a rerun resumes from its samples.h5).
        num_samples: posterior samples per map.
        num_steps: reverse-diffusion steps.
        seed: base seed of the samples.
        options: a `keras_dmdiff.posterior.SamplingOptions`; None: the
            defaults with `batch_size` maps per network call.
        max_maps: evaluate at most this many maps (tiles, with `crop_size`).
        data_dir: TFDS data folder.
        manual_dir: folder of the real CMD files, for real configs.
        train_split_for_baselines: split to fit the conditional-mean baseline
            (b) on; None skips it.
        regression_model_path: a `.keras` `RegressionUNet`, baseline (a).
        train_dataset_for_baselines: TFDS name for baseline (b)'s training
            maps, default `dataset`. For a cross-suite test, give the suite the
            model was trained on, so the baseline learns what the model learnt.
        max_train_maps: training maps used for baseline (b).
        crop_size: evaluate `crop_size`^2 tiles of every map instead of the full
            maps (faster; the tiles are not periodic).
        batch_size: maps per batch when reading the data (and per network
            call, unless `options` says otherwise).
        box_size: side of the *full* stored maps in Mpc/h (CMD: 25); the box
            of a tile is `box_size * crop_size / map_size`.
        progress: show progress bars.
        **evaluate_kwargs: passed to `evaluate` (e.g. `measure_settings`).

    Returns:
        The metrics dict (also written to `out_dir/metrics.json`).

    Examples:
        >>> run_evaluation("runs/cpu/model.keras", "camels_cmd/mock_IllustrisTNG_LH", "test",  # doctest: +SKIP
        ...                "eval/cpu", num_samples=10, num_steps=100, max_maps=20)
    """
    from keras_dmdiff.data import crop_box_size, make_dataset

    loaded = load_posterior(model_path)
    if options is None:
        options = SamplingOptions(batch_size=batch_size)
    common = dict(data_dir=data_dir, manual_dir=manual_dir)
    test = make_dataset(
        dataset, split=split, training=False, batch_size=batch_size, crop_size=crop_size, eval_crop="tile",
        **common,
    )
    eval_box = crop_box_size(dataset, crop_size, box_size, split=split, **common)
    train_batches = None
    if train_split_for_baselines is not None:
        train_batches = make_dataset(
            train_dataset_for_baselines or dataset,
            split=train_split_for_baselines,
            training=False,
            batch_size=batch_size,
            crop_size=crop_size,
            eval_crop="tile",
            **common,
        )
    regression_model = None
    if regression_model_path is not None:
        regression_model = load_regression_model(regression_model_path)
    metadata = {
        "model_path": os.fspath(model_path),
        "model_class": type(loaded).__name__,
        "dataset": dataset,
        "split": split,
        "crop_size": crop_size,
        "train_split_for_baselines": train_split_for_baselines,
        "train_dataset_for_baselines": train_dataset_for_baselines or dataset,
        "regression_model_path": None if regression_model_path is None else os.fspath(regression_model_path),
    }
    return evaluate(
        loaded,
        test,
        num_samples=num_samples,
        num_steps=num_steps,
        seed=seed,
        options=options,
        box_size=eval_box,
        train_batches=train_batches,
        regression_model=regression_model,
        max_maps=max_maps,
        max_train_maps=max_train_maps,
        out_dir=out_dir,
        metadata=metadata,
        progress=progress,
        **evaluate_kwargs,
    )


def load_regression_model(path):
    """Loads a `.keras` `RegressionUNet` (baseline (a)).

    Returns:
        The model.

    Raises:
        ValueError: if the file is damaged or holds another kind of model.
    """
    from keras_dmdiff.models.regression_unet import RegressionUNet

    return load_keras_file(path, RegressionUNet, "it cannot serve as the regression baseline")
