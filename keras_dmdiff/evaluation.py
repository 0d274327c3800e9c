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

from keras_dmdiff import atomic_files, stats
from keras_dmdiff.baselines import ConditionalMeanBaseline, periodic_gaussian_smooth, stellar_tracer
from keras_dmdiff.posterior import PosteriorSampler, SamplingOptions, load_keras_file, load_posterior
from keras_dmdiff.sample_store import SampleStore
from keras_dmdiff.stats.headline import POWER_RATIO_K_MAX, band_cross_correlation, power_ratio_error

DIFFUSION = "diffusion"
STELLAR_TRACER = "stellar_tracer"
CONDITIONAL_MEAN = "conditional_mean"
REGRESSION_UNET = "regression_unet"

# Cap on the pooled pixel features of the calibration statistics (memory:
# num_samples x this many float32).
MAX_PIXEL_FEATURES = 500_000

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
        ValueError: empty input, mismatched or non-square shapes, non-positive
            dark matter, negative stellar mass, NaN.

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
    stars = np.concatenate(stars_list)
    dm = np.concatenate(dm_list)
    if stars.shape[-1] != stars.shape[-2]:
        raise ValueError(f"Maps must be square (periodic boxes), got {stars.shape[-2:]}.")
    if not (np.all(np.isfinite(stars)) and np.all(np.isfinite(dm))):
        raise ValueError("The maps contain NaN or infinite values.")
    if np.any(dm <= 0) or np.any(stars < 0):
        raise ValueError("Dark matter must be > 0 and stellar mass >= 0 (physical maps).")
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


# ----------------------------------------------------------------------------- statistics helpers
def _band(values, axis):
    """Mean and 10-90 % quantiles, ignoring NaN (r(k) of a flat map is undefined)."""
    import warnings

    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
        return {
            "mean": np.nanmean(values, axis=axis),
            "low": np.nanquantile(values, 0.1, axis=axis),
            "high": np.nanquantile(values, 0.9, axis=axis),
        }


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


def _rank_summary(ranks, num_samples):
    ranks = np.asarray(ranks).ravel()
    num_bins = min(num_samples + 1, 20)
    counts, expected = stats.rank_histogram(ranks, num_samples, num_bins=num_bins)
    return {
        "counts": counts,
        "expected": expected,
        "num_bins": num_bins,
        "num_features": int(ranks.size),
        "pvalue": float(stats.rank_uniformity_pvalue(counts, expected)),
    }


def _calibration_block(samples, truth, num_samples):
    """Verdict + coverage curve + rank histogram for features `[S, F]` vs `[F]`."""
    verdict = stats.calibration_verdict(samples, truth)
    curve = stats.coverage_curve(samples, truth)
    ranks = stats.rank_statistic(samples, truth)
    return {
        **verdict,
        "curve": {"levels": curve["levels"], "coverage": curve["coverage"]},
        "rank_histogram": _rank_summary(ranks, num_samples),
    }


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
    pixels_per_map=2048,
    num_apertures=5,
    aperture_radius=None,
    example_index=0,
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
        pixels_per_map: pixels per map (random, fixed by `seed`) used for the
            pixel calibration statistics; bounds memory (at most
            `MAX_PIXEL_FEATURES` pixels are pooled over all maps).
        num_apertures: apertures per map, centred on the brightest stellar
            pixels (chosen from the conditioning data, so the selection does not
            bias the ranks).
        aperture_radius: in Mpc/h; default `min(1, box_size / 8)`.
        example_index: the map shown in `maps.png`.
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
        "pixels_per_map": int(pixels_per_map),
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
        # The grid any network artefacts would sit on.
        measure_settings = dict(settings, grid_period=int(posterior.stride))
        metrics = _measure(store, stars, dm, chosen, measure_settings, progress, pixels_per_map,
                           num_apertures, aperture_radius, example_index)
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


def _measure(store, stars, dm, baselines, settings, progress, pixels_per_map,
             num_apertures, aperture_radius, example_index):
    """All statistics, one map at a time (samples are read back from the store)."""
    from tqdm.auto import tqdm

    n, size, _ = stars.shape
    s = settings["num_samples"]
    box = settings["box_size"]
    edges = stats.k_bin_edges(size, box, bins="log")
    k, _, k_counts = stats.power_spectrum(dm[:1], box, bins=edges)
    nk = len(k)
    pdf_edges = stats.DEFAULT_LOG10_SIGMA_BINS
    radius = min(1.0, box / 8) if aperture_radius is None else float(aperture_radius)
    pixels = min(int(pixels_per_map), size * size, max(16, MAX_PIXEL_FEATURES // n))
    example_index = int(np.clip(example_index, 0, n - 1))

    predictions = {name: _predict_baseline(b, stars, dm) for name, b in baselines.items()}

    pk_true = np.empty((n, nk))
    pk_samples = np.empty((n, s, nk))
    pk_mean = np.empty((n, nk))
    r_mean = np.empty((n, nk))
    r_samples = np.empty((n, nk))
    pdf_truth = np.empty((n, len(pdf_edges) - 1))
    pdf_samples = np.empty_like(pdf_truth)
    pdf_mean = np.empty_like(pdf_truth)
    mse = {"diffusion_posterior_mean": [], "diffusion_posterior_log_mean": [], "diffusion_samples": []}
    grid_period = settings.get("grid_period", 16)
    grid_edges = {"diffusion_samples": [], "truth": []}
    pix_s = np.empty((s, n * pixels), np.float32)
    pix_t = np.empty((n * pixels,), np.float32)
    ap_s, ap_t = [], []
    base = {
        name: {"pk": np.empty((n, nk)), "r": np.empty((n, nk)), "pdf": np.empty_like(pdf_truth), "mse": []}
        for name in baselines
    }
    example = None

    for i in tqdm(range(n), desc="statistics", unit="map", disable=not progress):
        x, t = stars[i], dm[i].astype(np.float64)
        samples = store.samples(i).astype(np.float64)  # [S, H, W]
        log_samples = np.log10(samples)
        mean_map = samples.mean(axis=0)
        log_mean = log_samples.mean(axis=0)

        _, pk_true[i], _ = stats.power_spectrum(t, box, bins=edges)
        _, pk_samples[i], _ = stats.power_spectrum(samples, box, bins=edges)
        _, pk_mean[i], _ = stats.power_spectrum(mean_map, box, bins=edges)
        _, r_mean[i], _ = stats.cross_correlation(mean_map, t, box, bins=edges)
        _, r_each, _ = stats.cross_correlation(samples, t, box, bins=edges)
        r_samples[i] = r_each.mean(axis=0)
        _, pdf_truth[i] = stats.one_point_pdf(t, pdf_edges)
        _, pdf_each = stats.one_point_pdf(samples, pdf_edges)
        pdf_samples[i] = pdf_each.mean(axis=0)
        _, pdf_mean[i] = stats.one_point_pdf(mean_map, pdf_edges)
        log_t = np.log10(t)
        mse["diffusion_posterior_mean"].append(float(stats.mse_dex2(mean_map, t)))
        mse["diffusion_posterior_log_mean"].append(float(np.mean((log_mean - log_t) ** 2)))
        mse["diffusion_samples"].append(float(np.mean((log_samples - log_t) ** 2)))
        if grid_period >= 2 and size % grid_period == 0:  # a sampler without a grid (stride 1) has no edges
            grid_edges["diffusion_samples"].append(stats.grid_edge_ratio(samples, grid_period))
            grid_edges["truth"].append(stats.grid_edge_ratio(t, grid_period))

        # Pixel subset for calibration (fixed by seed and map index).
        rng = np.random.default_rng([settings["seed"], i])
        pick = rng.choice(size * size, size=pixels, replace=False)
        pix_s[:, i * pixels : (i + 1) * pixels] = samples.reshape(s, -1)[:, pick]
        pix_t[i * pixels : (i + 1) * pixels] = t.reshape(-1)[pick]

        # Apertures around the brightest galaxies (the conditioning data).
        if num_apertures > 0:
            centres = stats.peak_centres(x, num_apertures, 2 * radius, box)
            if len(centres):
                ap_s.append(stats.aperture_masses(samples, centres, radius, box))
                ap_t.append(stats.aperture_masses(t, centres, radius, box))

        for name, (spec_map, log_map) in predictions.items():
            _, base[name]["pk"][i], _ = stats.power_spectrum(spec_map[i], box, bins=edges)
            _, base[name]["r"][i], _ = stats.cross_correlation(spec_map[i], t, box, bins=edges)
            _, base[name]["pdf"][i] = stats.one_point_pdf(log_map[i], pdf_edges)
            base[name]["mse"].append(float(stats.mse_dex2(log_map[i], t)))

        if i == example_index:
            example = {
                "map_index": i,
                "box_size": box,
                "stellar_mass": x,
                "dark_matter_true": dm[i],
                "samples": store.samples(i)[:2],
                "posterior_mean": mean_map.astype(np.float32),
                "posterior_std_log10": log_samples.std(axis=0).astype(np.float32),
            }

    # ---- spectra, ratios, cross-correlation
    ratio_samples = pk_samples / pk_true[:, None, :]
    power_ratio = {
        "diffusion_samples": _band(ratio_samples.reshape(-1, nk), 0),
        "diffusion_posterior_mean": _band(pk_mean / pk_true, 0),
    }
    cross = {
        "diffusion_posterior_mean": _band(r_mean, 0),
        "diffusion_samples": _band(r_samples, 0),
    }
    power = {
        "truth": pk_true.mean(axis=0),
        "diffusion_samples": pk_samples.mean(axis=(0, 1)),
        "diffusion_posterior_mean": pk_mean.mean(axis=0),
    }
    pdf = {
        "log10_sigma": 0.5 * (pdf_edges[:-1] + pdf_edges[1:]),
        "truth": pdf_truth.mean(axis=0),
        "diffusion_samples": pdf_samples.mean(axis=0),
        "diffusion_posterior_mean": pdf_mean.mean(axis=0),
    }
    for name, b in base.items():
        power_ratio[name] = _band(b["pk"] / pk_true, 0)
        cross[name] = _band(b["r"], 0)
        power[name] = b["pk"].mean(axis=0)
        pdf[name] = b["pdf"].mean(axis=0)
        mse[name] = b["mse"]
    mse_summary = {
        name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in mse.items()
    }

    # ---- calibration
    calibration = {}
    summary_cal = {}
    if s >= 2:
        calibration["pixels"] = _calibration_block(pix_s, pix_t, s)
        calibration["power_spectrum"] = _calibration_block(
            np.moveaxis(pk_samples, 1, 0).reshape(s, -1), pk_true.reshape(-1), s
        )
        if ap_s:
            ap_samples = np.concatenate([a.reshape(s, -1) for a in ap_s], axis=1)
            ap_truth = np.concatenate([a.reshape(-1) for a in ap_t])
            calibration["aperture_masses"] = {
                **_calibration_block(ap_samples, ap_truth, s),
                "radius": radius,
                "apertures_per_map": int(num_apertures),
            }
        if n >= 2:
            tarp = stats.tarp_coverage(
                np.log10(np.moveaxis(pk_samples, 1, 0)), np.log10(pk_true), seed=settings["seed"]
            )
            calibration["tarp"] = {
                "features": "log10 P(k), all k bins",
                "levels": tarp["levels"],
                "coverage": tarp["coverage"],
                "max_error": tarp["max_error"],
            }
        calibration["fourier"] = stats.fourier_calibration(
            k, cross["diffusion_samples"]["mean"], cross["diffusion_posterior_mean"]["mean"], s,
            k_max=POWER_RATIO_K_MAX,
        )
        pixel_cal = calibration["pixels"]
        summary_cal = {
            "coverage": dict(
                zip([f"{int(round(100 * lv))}%" for lv in pixel_cal["levels"]], pixel_cal["coverage"])
            ),
            "coverage_error": pixel_cal["coverage_error"],
            "rank_bias": pixel_cal["rank_bias"],
            "verdict": pixel_cal["verdict"],
            "verdict_power_spectrum": calibration["power_spectrum"]["verdict"],
            "verdict_aperture_masses": calibration.get("aperture_masses", {}).get("verdict"),
            "tarp_max_error": calibration.get("tarp", {}).get("max_error"),
            "fourier_calibration_max_difference": calibration["fourier"]["max_difference"],
            "verdict_fourier": calibration["fourier"]["verdict"],
        }
    else:
        summary_cal = {"verdict": None, "coverage_error": None,
                       "note": "calibration needs num_samples >= 2"}

    summary = {
        "power_ratio_error_k_lt_10": {
            name: power_ratio_error(k, band["mean"]) for name, band in power_ratio.items()
        },
        "cross_correlation_1_k_5": {
            name: band_cross_correlation(k, band["mean"]) for name, band in cross.items()
        },
        "mse_dex2": {name: v["mean"] for name, v in mse_summary.items()},
        "grid_edge_ratio": {
            name: float(np.mean(v)) if v else None for name, v in grid_edges.items()
        },
        **summary_cal,
    }
    return {
        "summary": summary,
        "k": k,
        "k_edges": edges,
        "k_counts": k_counts,
        "power_spectrum": power,
        "power_ratio": power_ratio,
        "cross_correlation": cross,
        "pdf": pdf,
        "mse_dex2": mse_summary,
        "calibration": calibration,
        "_example": example,
    }


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
        **evaluate_kwargs: passed to `evaluate` (e.g. `pixels_per_map`).

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
