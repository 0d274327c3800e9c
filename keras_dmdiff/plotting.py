"""Figures of an evaluation (matplotlib, no pyplot state, PNG via Agg).

Every `plot_*` function takes the metrics dict of `evaluation.evaluate` (or
`json.load` of its `metrics.json`) and returns a `matplotlib.figure.Figure`;
`save_figures` writes them all. Figures are built with
`matplotlib.figure.Figure` directly, so nothing touches the user's pyplot
backend and plotting works headless.

Units on the axes: k [h/Mpc], P(k) [(Mpc/h)^2], log10 Sigma
[(Msun/h)/(Mpc/h)^2], positions [Mpc/h].

Examples:
    >>> import json  # doctest: +SKIP
    >>> metrics = json.load(open("eval/metrics.json"))  # doctest: +SKIP
    >>> plot_cross_correlation(metrics).savefig("r.png", dpi=120)  # doctest: +SKIP
"""

import os
import pathlib

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from keras_dmdiff import atomic_files

K_LABEL = r"$k$ [$h$/Mpc]"
PK_LABEL = r"$P(k)$ [(Mpc/$h$)$^2$]"
LOG_SIGMA_LABEL = r"$\log_{10}\,\Sigma$ [(M$_\odot/h$)/(Mpc/$h$)$^2$]"
POSITION_LABEL = "[Mpc/$h$]"

# One colour / style per method, the same in every figure.
STYLES = {
    "truth": dict(color="black", lw=2.0, label="truth"),
    "diffusion_samples": dict(color="C0", lw=2.0, label="diffusion samples"),
    "diffusion_posterior_mean": dict(color="C0", lw=1.5, ls="--", label="diffusion posterior mean"),
    "stellar_tracer": dict(color="C2", lw=1.5, ls="-.", label="(c) stellar tracer"),
    "conditional_mean": dict(color="C1", lw=1.5, ls=":", label="(b) conditional mean"),
    "regression_unet": dict(color="C3", lw=1.5, ls=(0, (5, 1, 1, 1)), label="(a) regression U-Net"),
}
_EXTRA_COLOURS = ["C4", "C5", "C6", "C7", "C8", "C9"]

FIGURE_FILES = {
    "maps": "maps.png",
    "power_spectrum": "power_spectrum.png",
    "cross_correlation": "cross_correlation.png",
    "pdf": "pdf.png",
    "coverage": "coverage.png",
    "rank_histograms": "rank_histograms.png",
}


def _arr(values):
    """Array of floats; JSON nulls become NaN."""
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))],
                    dtype=np.float64).reshape(np.shape(values))


def _log_k_axis(ax):
    """Log k axis with plain tick labels (0.5, 1, 2, 5, 10, 20)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ratio_limits(curves):
    """y limits of a log ratio axis: the data, at least [0.5, 2], at most [1e-3, 1e3]."""
    values = np.concatenate([np.ravel(c) for c in curves]) if curves else np.ones(1)
    values = values[np.isfinite(values) & (values > 0)]
    lo = min(0.5, values.min() / 1.5) if values.size else 0.5
    hi = max(2.0, values.max() * 1.5) if values.size else 2.0
    return max(lo, 1e-3), min(hi, 1e3)


def _style(name, extra_index=0):
    if name in STYLES:
        return dict(STYLES[name])
    return dict(color=_EXTRA_COLOURS[extra_index % len(_EXTRA_COLOURS)], lw=1.5, label=name)


def _methods(block, first=("diffusion_samples", "diffusion_posterior_mean")):
    """Method names of a per-method block, the diffusion ones first."""
    names = [m for m in first if m in block]
    return names + sorted(m for m in block if m not in names and m not in ("truth", "log10_sigma"))


def _title(metrics, what):
    meta = metrics.get("metadata", {}) or {}
    settings = metrics.get("settings", {}) or {}
    parts = [what]
    if meta.get("dataset"):
        parts.append(f"{meta['dataset']}:{meta.get('split', '')}")
    if settings.get("num_maps") is not None:
        parts.append(f"{settings['num_maps']} maps x {settings.get('num_samples')} samples")
    return "  |  ".join(parts)


def plot_maps(example, box_size=None):
    """Stars, truth, two samples, posterior mean and posterior std of one map.

    Args:
        example: dict with `stellar_mass`, `dark_matter_true` `[H, W]`,
            `samples` `[>=1, H, W]`, `posterior_mean` `[H, W]`,
            `posterior_std_log10` `[H, W]` (dex), optional `map_index` and
            `box_size` (Mpc/h).
        box_size: side of the map in Mpc/h (default `example["box_size"]`).

    Returns:
        A `Figure` with 6 panels. Dark-matter panels share one log10 colour
        scale; the stellar panel shows `log10(1 + Mstar)`; the last panel the
        per-pixel standard deviation of `log10 Sigma` over the samples.
    """
    box = float(box_size if box_size is not None else example.get("box_size", 25.0))
    extent = [0.0, box, box, 0.0]  # rows go down, as in stats.maps
    truth = np.log10(np.asarray(example["dark_matter_true"], np.float64))
    samples = np.log10(np.asarray(example["samples"], np.float64))
    mean = np.log10(np.asarray(example["posterior_mean"], np.float64))
    std = np.asarray(example["posterior_std_log10"], np.float64)
    stars = np.log10(1.0 + np.asarray(example["stellar_mass"], np.float64))
    vmin, vmax = np.percentile(truth, [0.5, 99.5])
    norm = Normalize(vmin, vmax)

    fig = Figure(figsize=(15, 9.5), layout="constrained")
    axes = fig.subplots(2, 3)
    panels = [
        (stars, r"stars: $\log_{10}(1 + \Sigma_\star)$", "magma", None),
        (truth, r"truth: $\log_{10}\Sigma_{\rm cdm}$", "viridis", norm),
        (samples[0], "posterior sample 1", "viridis", norm),
        (samples[min(1, len(samples) - 1)], "posterior sample 2", "viridis", norm),
        (mean, "posterior mean (of $\\Sigma$)", "viridis", norm),
        (std, r"posterior std of $\log_{10}\Sigma$ [dex]", "cividis", None),
    ]
    for ax, (image, title, cmap, nrm) in zip(axes.flat, panels):
        im = ax.imshow(image, extent=extent, cmap=cmap, norm=nrm, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel(f"x {POSITION_LABEL}")
        ax.set_ylabel(f"y {POSITION_LABEL}")
        bar = fig.colorbar(im, ax=ax, shrink=0.85)
        if nrm is norm:
            bar.set_label(LOG_SIGMA_LABEL)
        elif cmap == "magma":
            bar.set_label(r"$\log_{10}(1+\Sigma_\star)$ [(M$_\odot/h$)/(Mpc/$h$)$^2$]")
        else:
            bar.set_label("dex")
    index = example.get("map_index")
    fig.suptitle(f"map {index}" if index is not None else "example map")
    return fig


def plot_power_spectrum(metrics):
    """P(k) of truth, samples and baselines (top) and P_method / P_true (bottom).

    The ratio panel shows the mean over maps and samples of the per-sample
    ratio with its 10-90 % band for the diffusion samples, and the mean ratio
    of the posterior mean and of each baseline (their bands are omitted for
    clarity; they are in the metrics).

    Returns:
        A `Figure` with 2 panels.
    """
    k = _arr(metrics["k"])
    fig = Figure(figsize=(7.5, 8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.2, 1])
    power = metrics["power_spectrum"]
    top.loglog(k, _arr(power["truth"]), **STYLES["truth"])
    for i, name in enumerate(_methods(power)):
        top.loglog(k, _arr(power[name]), **_style(name, i))
    top.set_ylabel(PK_LABEL)
    top.legend(fontsize=8)
    top.set_title(_title(metrics, "power spectrum of the overdensity"))

    ratio = metrics["power_ratio"]
    band = ratio["diffusion_samples"]
    bottom.fill_between(k, _arr(band["low"]), _arr(band["high"]), color="C0", alpha=0.25,
                        label="diffusion samples, 10-90 %")
    curves = [_arr(band["low"]), _arr(band["high"])]
    for i, name in enumerate(_methods(ratio)):
        curves.append(_arr(ratio[name]["mean"]))
        bottom.plot(k, curves[-1], **_style(name, i))
    bottom.axhline(1.0, color="black", lw=0.8)
    bottom.set_yscale("log")
    bottom.set_ylim(*_ratio_limits(curves))
    _log_k_axis(top)
    _log_k_axis(bottom)
    bottom.set_xlabel(K_LABEL)
    bottom.set_ylabel(r"$P_{\rm method}(k)\,/\,P_{\rm true}(k)$")
    bottom.legend(fontsize=8)
    return fig


def plot_cross_correlation(metrics):
    """r(k) with the truth: diffusion posterior mean, single samples, baselines.

    The shaded band is the 10-90 % range over maps of the posterior mean's r(k).

    Returns:
        A `Figure`.
    """
    k = _arr(metrics["k"])
    cross = metrics["cross_correlation"]
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    band = cross["diffusion_posterior_mean"]
    ax.fill_between(k, _arr(band["low"]), _arr(band["high"]), color="C0", alpha=0.2,
                    label="posterior mean, 10-90 % over maps")
    for i, name in enumerate(_methods(cross, first=("diffusion_posterior_mean", "diffusion_samples"))):
        ax.plot(k, _arr(cross[name]["mean"]), **_style(name, i))
    ax.axhline(1.0, color="black", lw=0.8)
    _log_k_axis(ax)
    low = _arr(band["low"])
    ax.set_ylim(min(0.0, np.nanmin(low)) if np.isfinite(low).any() else 0.0, 1.05)
    ax.set_xlabel(K_LABEL)
    ax.set_ylabel(r"$r(k) = P_\times / \sqrt{P_{\rm true} P_{\rm method}}$")
    ax.set_title(_title(metrics, "cross-correlation with the truth"))
    ax.legend(fontsize=8)
    return fig


def plot_pdf(metrics):
    """One-point PDFs of log10 Sigma_cdm: truth, samples, posterior mean, baselines.

    Returns:
        A `Figure` (log y axis).
    """
    pdf = metrics["pdf"]
    x = _arr(pdf["log10_sigma"])
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, _arr(pdf["truth"]), **STYLES["truth"])
    for i, name in enumerate(_methods(pdf)):
        ax.plot(x, _arr(pdf[name]), **_style(name, i))
    truth = _arr(pdf["truth"])
    positive = truth[truth > 0]
    if positive.size:
        ax.set_ylim(positive.min() * 0.3, truth.max() * 3)
    ax.set_yscale("log")
    ax.set_xlabel(LOG_SIGMA_LABEL)
    ax.set_ylabel("PDF [per dex]")
    ax.set_title(_title(metrics, "one-point PDF"))
    ax.legend(fontsize=8)
    return fig


def plot_coverage(metrics):
    """Coverage of central credible intervals (left) and TARP (right).

    Left: empirical against nominal coverage for pixels, P(k) bins and aperture
    masses; above the diagonal = over-dispersed (too wide), below =
    under-dispersed (overconfident). Right: the TARP expected-coverage
    probability against the credibility level.

    Returns:
        A `Figure` with 2 panels (empty with a note when there is no
        calibration, i.e. fewer than 2 samples).
    """
    calibration = metrics.get("calibration") or {}
    fig = Figure(figsize=(11, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    labels = {"pixels": "pixels", "power_spectrum": "P(k) bins", "aperture_masses": "aperture masses"}
    for i, (key, label) in enumerate(labels.items()):
        block = calibration.get(key)
        if not block:
            continue
        curve = block["curve"]
        left.plot(_arr(curve["levels"]), _arr(curve["coverage"]), color=f"C{i}", marker="o", ms=3,
                  label=f"{label}: {block['verdict']}")
    left.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="calibrated")
    left.set_xlabel("nominal coverage of the central credible interval")
    left.set_ylabel("empirical coverage")
    left.set_title("coverage (above: too wide, below: overconfident)")
    tarp = calibration.get("tarp")
    if tarp:
        right.plot(_arr(tarp["levels"]), _arr(tarp["coverage"]), color="C0",
                   label=f"TARP, log10 P(k); max error {tarp['max_error']:.3f}")
    right.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="calibrated")
    right.set_xlabel(r"credibility level $1-\alpha$")
    right.set_ylabel("expected coverage probability")
    right.set_title("TARP expected coverage")
    for ax in (left, right):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.legend(fontsize=8, loc="upper left")
    if not calibration:
        left.text(0.5, 0.5, "no calibration (needs >= 2 samples)", ha="center", transform=left.transAxes)
    fig.suptitle(_title(metrics, "calibration"))
    return fig


def plot_rank_histograms(metrics):
    """SBC rank histograms for pixels, P(k) bins and aperture masses.

    Bars are counts divided by the count expected for uniform ranks (1 =
    calibrated), with the +-2 sigma binomial band. A U shape means the
    posterior is too narrow, a dome too wide, a slope a bias (rising: the
    truth tends to lie above the samples).

    Returns:
        A `Figure` with one panel per feature.
    """
    calibration = metrics.get("calibration") or {}
    keys = [k for k in ("pixels", "power_spectrum", "aperture_masses") if calibration.get(k)]
    titles = {"pixels": "pixel values", "power_spectrum": "P(k) per k bin", "aperture_masses": "aperture masses"}
    fig = Figure(figsize=(4.5 * max(1, len(keys)), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(keys))))
    for ax, key in zip(axes, keys):
        hist = calibration[key]["rank_histogram"]
        counts = _arr(hist["counts"])
        expected = _arr(hist["expected"])
        nb = len(counts)
        x = (np.arange(nb) + 0.5) / nb
        ax.bar(x, counts / expected, width=1.0 / nb, color="C0", alpha=0.7, edgecolor="white", zorder=2)
        total = counts.sum()
        p = expected / max(total, 1.0)
        sigma = np.sqrt(total * p * (1 - p)) / expected
        ax.fill_between([0, 1], max(0.0, 1 - 2 * sigma.mean()), 1 + 2 * sigma.mean(), zorder=1,
                        color="grey", alpha=0.3, label=r"$\pm 2\sigma$ (independent features)")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalised rank of the truth among the samples")
        ax.set_ylabel("count / expected")
        ax.set_title(f"{titles[key]} (p = {hist['pvalue']:.2g}, n = {hist['num_features']})", fontsize=10)
        ax.legend(fontsize=8)
    if not keys:
        axes[0].text(0.5, 0.5, "no ranks (needs >= 2 samples)", ha="center", transform=axes[0].transAxes)
    fig.suptitle(_title(metrics, "rank histograms"))
    return fig


def save_figures(metrics, example, out_dir, dpi=110):
    """Writes every figure of an evaluation as PNG files.

    Args:
        metrics: the metrics dict of `evaluate` (or a loaded metrics.json).
        example: the maps of one test map for `plot_maps` (None: skip it).
        out_dir: folder to write into.
        dpi: resolution.

    Returns:
        The list of file names written (relative to `out_dir`).

    Examples:
        >>> save_figures(metrics, None, "eval/")  # doctest: +SKIP
        ['power_spectrum.png', 'cross_correlation.png', 'pdf.png', ...]
    """
    folder = pathlib.Path(os.fspath(out_dir))
    folder.mkdir(parents=True, exist_ok=True)
    makers = {
        "maps": (lambda: plot_maps(example)) if example is not None else None,
        "power_spectrum": lambda: plot_power_spectrum(metrics),
        "cross_correlation": lambda: plot_cross_correlation(metrics),
        "pdf": lambda: plot_pdf(metrics),
        "coverage": lambda: plot_coverage(metrics),
        "rank_histograms": lambda: plot_rank_histograms(metrics),
    }
    written = []
    for key, make in makers.items():
        if make is None:
            continue
        fig = make()
        with atomic_files.replacing(folder / FIGURE_FILES[key]) as temporary:
            fig.savefig(temporary, dpi=dpi)
        written.append(FIGURE_FILES[key])
    return written
