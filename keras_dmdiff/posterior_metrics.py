"""The metrics of posterior samples against the truth: what `metrics.json` holds.

`measure` reads the samples of N maps one map at a time (from a
`sample_store.SampleStore`, so memory stays at one map's samples) and returns
the spectra, cross-correlations, one-point PDFs, MSEs, calibration blocks and
the headline `summary` of the posterior samples, their mean and each
baseline's prediction. `MeasurePlan` holds what every map is measured on: the
k bins, the pixel subset, the apertures and the network's grid.

Units: maps in (Msun/h)/(Mpc/h)^2, k in h/Mpc, P(k) in (Mpc/h)^2, aperture
masses in Msun/h, MSE in dex^2.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = 10.0 ** rng.normal(0.0, 0.3, (2, 32, 32))
    >>> samples = truth[:, None] * 10.0 ** rng.normal(0.0, 0.05, (2, 4, 32, 32))
    >>> plan = MeasurePlan.for_maps(2, 32, num_samples=4, box_size=25.0, seed=0)
    >>> metrics = measure(lambda i: samples[i], truth, truth, plan, predictions={})
    >>> metrics["summary"]["cross_correlation_1_k_5"]["diffusion_posterior_mean"] > 0.99
    True
"""

import dataclasses
import warnings

import numpy as np

from keras_dmdiff import stats
from keras_dmdiff.stats.headline import POWER_RATIO_K_MAX, band_cross_correlation, power_ratio_error

# Cap on the pooled pixel features of the calibration statistics (memory:
# num_samples x this many float32).
MAX_PIXEL_FEATURES = 500_000


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
    """What a caller chooses about the measurement (the rest follows from the maps).

    Args:
        pixels_per_map: pixels per map (random, fixed by the seed) pooled for
            the pixel calibration; bounds memory (at most `MAX_PIXEL_FEATURES`
            pixels over all maps).
        num_apertures: apertures per map, centred on the brightest stellar
            pixels (chosen from the conditioning data, so the selection does
            not bias the ranks); 0: none.
        aperture_radius: in Mpc/h; None: `min(1, box_size / 8)`.
        example_index: the map shown in `maps.png`.
    """

    pixels_per_map: int = 2048
    num_apertures: int = 5
    aperture_radius: float | None = None
    example_index: int = 0


@dataclasses.dataclass(frozen=True)
class MeasurePlan:
    """What every map is measured on.

    Args:
        num_samples: posterior samples per map.
        box_size: side of the maps in Mpc/h.
        seed: fixes the pixel subset of each map and the TARP reference points.
        k_edges: the k bins (h/Mpc) of every spectrum.
        pixels: pixels per map pooled for the pixel calibration.
        num_apertures: apertures per map around the brightest stellar pixels.
        aperture_radius: their radius in Mpc/h.
        grid_period: the sampler's stride, on whose grid network artefacts
            would sit (< 2: no grid to measure).
        example_index: the map returned for `maps.png`.
    """

    num_samples: int
    box_size: float
    seed: int
    k_edges: np.ndarray
    pixels: int
    num_apertures: int = 5
    aperture_radius: float = 1.0
    grid_period: int = 16
    example_index: int = 0

    @classmethod
    def for_maps(cls, num_maps, map_size, *, num_samples, box_size, seed, grid_period=16, settings=None):
        """The plan for `num_maps` square maps of `map_size` pixels (log k bins).

        Args:
            num_maps, map_size: the maps measured.
            num_samples, box_size, seed, grid_period: as the fields.
            settings: a `MeasureSettings` (None: the defaults).
        """
        settings = MeasureSettings() if settings is None else settings
        radius = settings.aperture_radius
        return cls(
            num_samples=int(num_samples),
            box_size=float(box_size),
            seed=int(seed),
            k_edges=stats.k_bin_edges(map_size, box_size, bins="log"),
            pixels=min(int(settings.pixels_per_map), map_size * map_size, max(16, MAX_PIXEL_FEATURES // num_maps)),
            num_apertures=int(settings.num_apertures),
            aperture_radius=min(1.0, box_size / 8) if radius is None else float(radius),
            grid_period=int(grid_period),
            example_index=int(np.clip(settings.example_index, 0, num_maps - 1)),
        )


def band(values, axis):
    """Mean and 10-90 % quantiles, ignoring NaN (r(k) of a flat map is undefined)."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
        return {
            "mean": np.nanmean(values, axis=axis),
            "low": np.nanquantile(values, 0.1, axis=axis),
            "high": np.nanquantile(values, 0.9, axis=axis),
        }


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


def _calibration_by_stars(samples, truth, stars):
    """The pixels' calibration where the stellar map is empty and where it holds stars.

    The split is by the conditioning data, so each part of a calibrated
    posterior covers at the nominal levels (a split by the truth would not).
    A part with fewer than 2 pixels is None.
    """
    parts = {"no_stars": stars <= 0, "stars": stars > 0}
    return {
        name: stats.calibration_verdict(samples[:, where], truth[where]) if where.sum() >= 2 else None
        for name, where in parts.items()
    }


class _MapStatistics:
    """Per-map statistics of the samples, their mean and each baseline, filled one map at a time."""

    def __init__(self, plan, num_maps, baseline_names):
        self.plan = plan
        n, s = num_maps, plan.num_samples
        self.pdf_edges = stats.DEFAULT_LOG10_SIGMA_BINS
        nk, nb = len(plan.k_edges) - 1, len(self.pdf_edges) - 1
        self.pk_true, self.pk_mean = np.empty((n, nk)), np.empty((n, nk))
        self.pk_samples = np.empty((n, s, nk))
        self.r_mean, self.r_samples = np.empty((n, nk)), np.empty((n, nk))
        self.pdf_truth, self.pdf_samples, self.pdf_mean = np.empty((n, nb)), np.empty((n, nb)), np.empty((n, nb))
        self.mse = {"diffusion_posterior_mean": [], "diffusion_posterior_log_mean": [], "diffusion_samples": []}
        self.grid_edges = {"diffusion_samples": [], "truth": []}
        self.pixel_samples = np.empty((s, n * plan.pixels), np.float32)
        self.pixel_truth = np.empty((n * plan.pixels,), np.float32)
        self.pixel_stars = np.empty((n * plan.pixels,), np.float32)
        self.aperture_samples, self.aperture_truth = [], []
        self.mass_samples, self.mass_truth = np.empty((s, n)), np.empty((n,))
        self.baselines = {
            name: {"pk": np.empty((n, nk)), "r": np.empty((n, nk)), "pdf": np.empty((n, nb)), "mse": []}
            for name in baseline_names
        }

    def add(self, i, stars, truth, samples, predictions):
        """Measures map `i`: `samples` [S, H, W] float64, `predictions` {name: (spectra map, log map)}."""
        plan, box, edges, pdf_edges = self.plan, self.plan.box_size, self.plan.k_edges, self.pdf_edges
        size = truth.shape[-1]
        log_samples = np.log10(samples)
        mean_map = samples.mean(axis=0)
        log_t = np.log10(truth)

        _, self.pk_true[i], _ = stats.power_spectrum(truth, box, bins=edges)
        _, self.pk_samples[i], _ = stats.power_spectrum(samples, box, bins=edges)
        _, self.pk_mean[i], _ = stats.power_spectrum(mean_map, box, bins=edges)
        _, self.r_mean[i], _ = stats.cross_correlation(mean_map, truth, box, bins=edges)
        _, r_each, _ = stats.cross_correlation(samples, truth, box, bins=edges)
        self.r_samples[i] = r_each.mean(axis=0)
        _, self.pdf_truth[i] = stats.one_point_pdf(truth, pdf_edges)
        _, pdf_each = stats.one_point_pdf(samples, pdf_edges)
        self.pdf_samples[i] = pdf_each.mean(axis=0)
        _, self.pdf_mean[i] = stats.one_point_pdf(mean_map, pdf_edges)
        self.mse["diffusion_posterior_mean"].append(float(stats.mse_dex2(mean_map, truth)))
        self.mse["diffusion_posterior_log_mean"].append(float(np.mean((log_samples.mean(axis=0) - log_t) ** 2)))
        self.mse["diffusion_samples"].append(float(np.mean((log_samples - log_t) ** 2)))
        if plan.grid_period >= 2 and size % plan.grid_period == 0:
            self.grid_edges["diffusion_samples"].append(stats.grid_edge_ratio(samples, plan.grid_period))
            self.grid_edges["truth"].append(stats.grid_edge_ratio(truth, plan.grid_period))

        # Pixel subset for calibration (fixed by seed and map index).
        pick = np.random.default_rng([plan.seed, i]).choice(size * size, size=plan.pixels, replace=False)
        where = slice(i * plan.pixels, (i + 1) * plan.pixels)
        self.pixel_samples[:, where] = samples.reshape(len(samples), -1)[:, pick]
        self.pixel_truth[where] = truth.reshape(-1)[pick]
        self.pixel_stars[where] = np.asarray(stars).reshape(-1)[pick]

        # The map's mass (its mean density): the coarsest mode, which the pixels' and P(k)'s checks miss.
        self.mass_samples[:, i], self.mass_truth[i] = samples.mean(axis=(1, 2)), truth.mean()

        # Apertures around the brightest galaxies (the conditioning data, so
        # the selection does not bias the ranks).
        if plan.num_apertures > 0:
            centres = stats.peak_centres(stars, plan.num_apertures, 2 * plan.aperture_radius, box)
            if len(centres):
                self.aperture_samples.append(stats.aperture_masses(samples, centres, plan.aperture_radius, box))
                self.aperture_truth.append(stats.aperture_masses(truth, centres, plan.aperture_radius, box))

        for name, (spec_map, log_map) in predictions.items():
            b = self.baselines[name]
            _, b["pk"][i], _ = stats.power_spectrum(spec_map[i], box, bins=edges)
            _, b["r"][i], _ = stats.cross_correlation(spec_map[i], truth, box, bins=edges)
            _, b["pdf"][i] = stats.one_point_pdf(log_map[i], pdf_edges)
            b["mse"].append(float(stats.mse_dex2(log_map[i], truth)))
        return mean_map, log_samples

    def spectra(self):
        """Bands of P ratio and r(k), mean spectra and PDFs, and MSEs, per method."""
        nk = self.pk_true.shape[1]
        power_ratio = {
            "diffusion_samples": band((self.pk_samples / self.pk_true[:, None, :]).reshape(-1, nk), 0),
            "diffusion_posterior_mean": band(self.pk_mean / self.pk_true, 0),
        }
        cross = {"diffusion_posterior_mean": band(self.r_mean, 0), "diffusion_samples": band(self.r_samples, 0)}
        power = {
            "truth": self.pk_true.mean(axis=0),
            "diffusion_samples": self.pk_samples.mean(axis=(0, 1)),
            "diffusion_posterior_mean": self.pk_mean.mean(axis=0),
        }
        pdf = {
            "log10_sigma": 0.5 * (self.pdf_edges[:-1] + self.pdf_edges[1:]),
            "truth": self.pdf_truth.mean(axis=0),
            "diffusion_samples": self.pdf_samples.mean(axis=0),
            "diffusion_posterior_mean": self.pdf_mean.mean(axis=0),
        }
        mse = dict(self.mse)
        for name, b in self.baselines.items():
            power_ratio[name] = band(b["pk"] / self.pk_true, 0)
            cross[name] = band(b["r"], 0)
            power[name] = b["pk"].mean(axis=0)
            pdf[name] = b["pdf"].mean(axis=0)
            mse[name] = b["mse"]
        mse = {name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in mse.items()}
        return power_ratio, cross, power, pdf, mse

    def calibration(self, k, cross):
        """Calibration blocks of pixels, P(k), map masses, apertures, TARP and the Fourier check (needs S >= 2)."""
        s, n = self.plan.num_samples, len(self.pk_true)
        calibration = {
            "pixels": _calibration_block(self.pixel_samples, self.pixel_truth, s),
            "pixels_by_stars": _calibration_by_stars(self.pixel_samples, self.pixel_truth, self.pixel_stars),
            "power_spectrum": _calibration_block(
                np.moveaxis(self.pk_samples, 1, 0).reshape(s, -1), self.pk_true.reshape(-1), s
            ),
        }
        calibration["map_mass"] = {
            **_calibration_block(self.mass_samples, self.mass_truth, s),
            "error_to_spread": stats.error_to_spread(np.log10(self.mass_samples), np.log10(self.mass_truth)),
        }
        if self.aperture_samples:
            calibration["aperture_masses"] = {
                **_calibration_block(
                    np.concatenate([a.reshape(s, -1) for a in self.aperture_samples], axis=1),
                    np.concatenate([a.reshape(-1) for a in self.aperture_truth]),
                    s,
                ),
                "radius": self.plan.aperture_radius,
                "apertures_per_map": self.plan.num_apertures,
            }
        if n >= 2:
            tarp = stats.tarp_coverage(
                np.log10(np.moveaxis(self.pk_samples, 1, 0)), np.log10(self.pk_true), seed=self.plan.seed
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
        return calibration


def _coverage_by_level(block):
    """A calibration block's coverage keyed by level, e.g. {"50%": 0.48, ...}."""
    return dict(zip([f"{int(round(100 * lv))}%" for lv in block["levels"]], block["coverage"]))


def _verdict_summary(block, **extra):
    """A calibration block's coverage by level, rank bias and verdict (and `extra`) for the summary."""
    return {"coverage": _coverage_by_level(block), "rank_bias": block["rank_bias"], **extra, "verdict": block["verdict"]}


def _calibration_summary(calibration):
    """The calibration numbers of the headline summary."""
    pixels = calibration["pixels"]
    return {
        "coverage": _coverage_by_level(pixels),
        "coverage_error": pixels["coverage_error"],
        "rank_bias": pixels["rank_bias"],
        "verdict": pixels["verdict"],
        # Where the stellar map is empty (most pixels) and where it holds stars: which the miscalibration lives in.
        "pixels_by_stars": {
            name: None if part is None else _verdict_summary(part, fraction=part["num_features"] / pixels["num_features"])
            for name, part in calibration["pixels_by_stars"].items()
        },
        # One feature per map: its ranks are few, the error-to-spread ratio says by how much.
        "map_mass": _verdict_summary(calibration["map_mass"], error_to_spread=calibration["map_mass"]["error_to_spread"]),
        "verdict_power_spectrum": calibration["power_spectrum"]["verdict"],
        "verdict_aperture_masses": calibration.get("aperture_masses", {}).get("verdict"),
        "tarp_max_error": calibration.get("tarp", {}).get("max_error"),
        "fourier_calibration_max_difference": calibration["fourier"]["max_difference"],
        "verdict_fourier": calibration["fourier"]["verdict"],
    }


def measure(samples_of, stars, dark_matter, plan, predictions, progress=False):
    """All metrics of the posterior samples of N maps, read one map at a time.

    Args:
        samples_of: function `i -> samples of map i` [S, H, W] (e.g.
            `SampleStore.samples`).
        stars: stellar-mass maps [N, H, W] (apertures are centred on their peaks).
        dark_matter: the true dark-matter maps [N, H, W].
        plan: a `MeasurePlan`.
        predictions: `{baseline name: (maps for spectra, maps for log
            statistics)}`, each [N, H, W].
        progress: show a tqdm progress bar.

    Returns:
        A dict with `summary`, `k`, `k_edges`, `k_counts`, `power_spectrum`,
        `power_ratio`, `cross_correlation`, `pdf`, `mse_dex2`, `calibration`
        and `_example` (the arrays of `plan.example_index` for `maps.png`).
    """
    from tqdm.auto import tqdm

    n = len(stars)
    k, _, k_counts = stats.power_spectrum(dark_matter[:1], plan.box_size, bins=plan.k_edges)
    per_map = _MapStatistics(plan, n, predictions)
    example = None
    for i in tqdm(range(n), desc="statistics", unit="map", disable=not progress):
        samples = np.asarray(samples_of(i))
        mean_map, log_samples = per_map.add(
            i, stars[i], dark_matter[i].astype(np.float64), samples.astype(np.float64), predictions
        )
        if i == plan.example_index:
            example = {
                "map_index": i,
                "box_size": plan.box_size,
                "stellar_mass": stars[i],
                "dark_matter_true": dark_matter[i],
                "samples": samples[:2],
                "posterior_mean": mean_map.astype(np.float32),
                "posterior_std_log10": log_samples.std(axis=0).astype(np.float32),
            }

    power_ratio, cross, power, pdf, mse = per_map.spectra()
    if plan.num_samples >= 2:
        calibration = per_map.calibration(k, cross)
        summary_calibration = _calibration_summary(calibration)
    else:
        calibration = {}
        summary_calibration = {"verdict": None, "coverage_error": None, "note": "calibration needs num_samples >= 2"}
    summary = {
        "power_ratio_error_k_lt_10": {name: power_ratio_error(k, b["mean"]) for name, b in power_ratio.items()},
        "cross_correlation_1_k_5": {name: band_cross_correlation(k, b["mean"]) for name, b in cross.items()},
        "mse_dex2": {name: v["mean"] for name, v in mse.items()},
        "grid_edge_ratio": {name: float(np.mean(v)) if v else None for name, v in per_map.grid_edges.items()},
        **summary_calibration,
    }
    return {
        "summary": summary,
        "k": k,
        "k_edges": plan.k_edges,
        "k_counts": k_counts,
        "power_spectrum": power,
        "power_ratio": power_ratio,
        "cross_correlation": cross,
        "pdf": pdf,
        "mse_dex2": mse,
        "calibration": calibration,
        "_example": example,
    }
