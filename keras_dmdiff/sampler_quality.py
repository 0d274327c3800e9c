"""Quality of each sampler against its number of steps, paired with a reference sampler.

`quality_vs_steps` draws every (sampler, steps) pair and the reference
(250-step ancestral sampling, the reference method) on the same held-out maps,
on noise drawn from one grid where the samplers allow it, and reports the
headline statistics as evaluation defines them (`keras_dmdiff.stats.headline`)
with paired bootstrap errors.
"""

import dataclasses
import math
import pathlib
import time

import numpy as np

from keras_dmdiff.evaluation import json_safe
from keras_dmdiff.posterior import SamplingOptions
from keras_dmdiff.stats.headline import band_cross_correlation, power_ratio_error

DEFAULT_SAMPLERS = ("ancestral", "ddim", "dpm_solver_2m", "dpm_solver_2m_sde")
# Divisors of the 250-step reference, so that coupled noise needs no finer grid.
DEFAULT_QUALITY_STEPS = (10, 25, 50, 125)
#: Fields of every row of `run_bench(...)["quality"]["rows"]`.
QUALITY_FIELDS = (
    "model",
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


@dataclasses.dataclass(frozen=True)
class QualitySettings:
    """What `quality_vs_steps` draws and how it pairs the draws.

    Args:
        samplers: sampler names.
        steps: numbers of steps per sampler.
        reference_steps: steps of the reference.
        reference_sampler: the reference's sampler.
        num_samples: samples per map (>= 2, for coverage).
        seed: sampling seed (the same for every pair).
        batch_size: maps per network call.
        box_size: side of the maps in Mpc/h (None: the CMD pixel, 25 * H / 256).
        k_max: upper k (h/Mpc) of the P(k) and r(k) summaries.
        noise_floor: also redraw the reference with seed + 1.
        coupled: draw every pair with noise paired to the reference's.
        converged_steps: None, or steps of a convergence check of the reference sampler.
        random_shifts: None for `model.sample`'s default, or a bool (every
            row and the reference alike).
        ddim_etas: also rows of stochastic DDIM with each of these `eta`
            (0 < eta <= 1) at every step count.

    Example:
        >>> QualitySettings(steps=(10, 25), converged_steps=1000).noise_steps()
        1000
    """

    samplers: tuple = DEFAULT_SAMPLERS
    steps: tuple = DEFAULT_QUALITY_STEPS
    reference_steps: int = 250
    reference_sampler: str = "ancestral"
    num_samples: int = 8
    seed: int = 0
    batch_size: int = 16
    box_size: float | None = None
    k_max: float = 10.0
    noise_floor: bool = True
    coupled: bool = True
    converged_steps: int | None = None
    random_shifts: bool | None = None
    ddim_etas: tuple = ()

    def __post_init__(self):
        if int(self.num_samples) < 2:
            raise ValueError(f"Coverage needs num_samples >= 2; got {self.num_samples}.")

    def noise_steps(self):
        """The one noise grid of every draw (None: uncoupled draws)."""
        if not self.coupled:
            return None
        extra = [int(self.converged_steps)] if self.converged_steps else []
        return math.lcm(int(self.reference_steps), *map(int, self.steps), *extra)


def quality_vs_steps(model, stellar_mass, dark_matter, settings=None, students=None):
    """Quality of each sampler against its number of steps, relative to a reference sampler.

    Every (sampler, steps) pair draws `settings.num_samples` posterior samples of each
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

    With `settings.coupled` (the default), every draw takes its noise from one grid of
    `noise_steps` steps, the least common multiple of all step counts
    (`VariationalDiffusion.sample(..., noise_steps=...)`): all start from the
    same initial noise, and stochastic samplers (ancestral, DPM-Solver++ 2M
    SDE) sum the reference's own step noises. Each draw keeps its exact
    distribution, but a stochastic sampler's difference from the reference
    is then measured with a small fraction of the Monte Carlo noise of two
    independent draws; ODE samplers share only the initial noise, so their
    standard errors stay large.

    With `settings.noise_floor`, the reference is drawn a second time with another seed
    and compared with the first like any other row ("reference_repeat"): the
    scatter of two independent draws at this many maps and samples.

    With `settings.converged_steps`, the reference sampler is also run with that many
    steps (a row flagged "convergence_check"): how far the reference itself is
    from its many-step limit.

    Distilled students of `model` (`students`) add one row each: their
    deterministic DDIM with the steps they were distilled for, from the
    reference's initial noise.

    Args:
        model: a `VariationalDiffusion` (trained, for meaningful numbers).
        stellar_mass, dark_matter: held-out physical maps [M, H, W].
        settings: a `QualitySettings` (None: the defaults).
        students: None, or {name: student `VariationalDiffusion`} (each
            with `distilled_steps`), measured against `model`'s reference.

    Returns:
        dict: "reference" (its settings and statistics), "reference_repeat"
        (a row for the reference redrawn with seed + 1, or None), "rows" (one dict
        with the `QUALITY_FIELDS` per pair; "model" is "teacher" or the
        student's name), "noise_steps", "k_max", "num_maps",
        "num_samples", "box_size", "levels", "random_shifts"; JSON-serialisable.

    Example:
        >>> quality = quality_vs_steps(model, stars, dm,  # doctest: +SKIP
        ...                            QualitySettings(samplers=("ddim",), steps=(10, 25)))
    """
    run = _QualityRun(model, stellar_mass, dark_matter, QualitySettings() if settings is None else settings)
    c = run.settings
    repeat = run.row(c.reference_sampler, c.reference_steps, c.seed + 1) if c.noise_floor else None
    rows = [run.row(sampler, num_steps) for sampler in c.samplers for num_steps in c.steps]
    rows += [run.row("ddim", num_steps, eta=eta) for eta in c.ddim_etas for num_steps in c.steps]
    for name, student in (students or {}).items():
        if student.distilled_steps is None:
            raise ValueError(f"The student {name!r} is not a distilled model (its distilled_steps is None).")
        rows.append(run.row("ddim", student.distilled_steps, model=(name, student)))
    if c.converged_steps:
        rows.append(dict(run.row(c.reference_sampler, c.converged_steps), convergence_check=True))
    return json_safe(
        {
            "reference": run.reference_row(),
            "reference_repeat": repeat,
            "rows": rows,
            "noise_steps": run.noise_steps,
            "k_max": float(c.k_max),
            "num_maps": int(len(run.stellar_mass)),
            "num_samples": int(c.num_samples),
            "box_size": run.box,
            "levels": run.ref["levels"],
            "random_shifts": run.shifts,
        }
    )


class _QualityRun:
    """The reference drawn once, and every row measured against it."""

    def __init__(self, model, stellar_mass, dark_matter, settings):
        from keras_dmdiff.stats import one_point_pdf

        self.model, self.settings = model, settings
        self.stellar_mass = np.asarray(stellar_mass, np.float32)
        self.dark_matter = np.asarray(dark_matter, np.float64)
        self.box = _box_size(self.dark_matter.shape[-1], settings.box_size)
        self.noise_steps = settings.noise_steps()
        self.shifts = model.resolve_options(SamplingOptions(random_shifts=settings.random_shifts)).random_shifts
        self.pdf_true = one_point_pdf(self.dark_matter)[1].mean(axis=0)
        samples, self.ref_seconds = self.draw(settings.reference_sampler, settings.reference_steps)  # raises if it diverges
        self.ref = _sample_statistics(samples, self.dark_matter, self.box, settings.k_max)

    def draw(self, sampler, num_steps, seed=None, eta=0.0, model=None):
        c = self.settings
        model = self.model if model is None else model
        options = SamplingOptions(sampler=sampler, eta=eta, batch_size=c.batch_size, noise_steps=self.noise_steps,
                                  random_shifts=self.shifts)
        start = time.perf_counter()
        samples = model.sample(self.stellar_mass, c.num_samples, int(num_steps),
                               c.seed if seed is None else seed, options)
        return samples.astype(np.float64), time.perf_counter() - start

    def evaluations(self, num_steps):
        c = self.settings
        return int(num_steps * math.ceil(len(self.stellar_mass) * c.num_samples / c.batch_size))

    def pdf_distance(self, pdf, other):
        from keras_dmdiff.stats import DEFAULT_LOG10_SIGMA_BINS

        return float(np.sum(np.abs(pdf - other) * np.diff(DEFAULT_LOG10_SIGMA_BINS)))

    def row(self, sampler, num_steps, seed=None, eta=0.0, model=None):
        """One row of `QUALITY_FIELDS` (with "error" set, and None elsewhere, if the sampler diverged).

        `model`: None for the teacher, or a (name, student) pair.
        """
        from keras_dmdiff.models.samplers import is_stochastic

        c, ref = self.settings, self.ref
        name, model = ("teacher", None) if model is None else model
        row = {
            "model": name,
            "sampler": sampler,
            "eta": float(eta) if sampler == "ddim" else None,
            "num_steps": int(num_steps),
            "network_evaluations": self.evaluations(num_steps),
        }
        if (seed is not None and seed != c.seed) or not c.coupled:
            row["coupling"] = "none"
        else:
            stochastic = is_stochastic(sampler, eta) and is_stochastic(c.reference_sampler)
            row["coupling"] = "noise path" if stochastic else "initial noise"
        try:
            samples, row["seconds"] = self.draw(sampler, num_steps, seed, eta, model)
        except FloatingPointError as error:  # a diverging sampler is a result of the table, not a crash
            row.update({field: None for field in QUALITY_FIELDS if field not in row})
            row["error"] = str(error)
            return row
        stats = _sample_statistics(samples, self.dark_matter, self.box, c.k_max)
        low_k = ref["low_k"]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(stats["power_ratio"][low_k] / ref["power_ratio"][low_k] - 1.0)
        row.update(_paired_bootstrap(stats, ref, seed=c.seed))
        row.update(
            power_ratio_error_vs_reference=float(np.nanmean(rel)),
            power_ratio_error_vs_truth=stats["power_ratio_error"],
            r_posterior_mean=stats["r_posterior_mean"],
            r_difference_vs_reference=stats["r_posterior_mean"] - ref["r_posterior_mean"],
            pdf_distance_vs_reference=self.pdf_distance(stats["pdf"], ref["pdf"]),
            pdf_distance_vs_truth=self.pdf_distance(stats["pdf"], self.pdf_true),
            coverage=[float(v) for v in stats["coverage"]],
            coverage_difference_vs_reference_points=float(np.max(np.abs(row["coverage_difference_points"]))),
            error=None,
        )
        return row

    def reference_row(self):
        c, ref = self.settings, self.ref
        return {
            "sampler": c.reference_sampler,
            "num_steps": int(c.reference_steps),
            "network_evaluations": self.evaluations(c.reference_steps),
            "seconds": self.ref_seconds,
            "mean_power_ratio": _mean_power_ratio(ref["unit_power_ratio"]),
            "power_ratio_error_vs_truth": ref["power_ratio_error"],
            "r_posterior_mean": ref["r_posterior_mean"],
            "pdf_distance_vs_truth": self.pdf_distance(ref["pdf"], self.pdf_true),
            "coverage": [float(v) for v in ref["coverage"]],
        }


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


