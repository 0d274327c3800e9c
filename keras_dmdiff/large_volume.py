"""The large-volume experiment: a model trained on small boxes reconstructs a big one.

The paper applies a model trained on 25 Mpc/h CAMELS boxes to a 205 Mpc/h
volume. Here a mock box several times larger than the training box, at the
same mass and pixel resolution, is reconstructed in two ways:

- whole: the periodic network runs on the full map at every step;
- tiled: overlapping periodic tiles of bounded size (memory independent of
  the map size).

Each way runs in its own process so that its wall time and peak resident
memory are measured separately; the posterior statistics of both are compared
with the truth (P(k) ratio, r(k) of the posterior mean, one-point PDF).
"""

import dataclasses
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.posterior import SamplingOptions


@dataclasses.dataclass(frozen=True)
class LargeVolumeSettings:
    """Which large map is reconstructed, and how.

    Args:
        suite, set_name: which CMD files of the data folder.
        map_index: which map of the files.
        box_size: side of the large box in Mpc/h (for k in h/Mpc).
        num_samples, num_steps, seed: posterior samples of the map, sampler
            steps, seed (the same for both runs).
        options: the `SamplingOptions` of the tiled run (its `tile_size`,
            `tile_margin`, `tile_batch` are the tiling); the whole-map run uses
            the same options without tiles.

    Example:
        >>> settings = LargeVolumeSettings(options=SamplingOptions(tile_size=128, batch_size=1))
        >>> settings.runs()["whole"].tile_size is None, settings.runs()["tiled"].tile_size
        (True, 128)
    """

    suite: str = "IllustrisTNG"
    set_name: str = "CV"
    map_index: int = 0
    box_size: float = 100.0
    num_samples: int = 2
    num_steps: int = 50
    seed: int = 0
    options: SamplingOptions = dataclasses.field(default_factory=lambda: SamplingOptions(tile_size=256, batch_size=1))

    def __post_init__(self):
        if self.options.tile_size is None:
            raise ValueError("The tiled run needs `options.tile_size` (e.g. 256).")

    def runs(self):
        """The options of the "whole" and the "tiled" run."""
        return {"whole": self.options.replace(tile_size=None), "tiled": self.options}


def _sample_in_this_process(job):
    from keras_dmdiff.posterior import load_keras_posterior
    from keras_dmdiff.speed import peak_rss_gib

    model = load_keras_posterior(job["model"])
    stellar = np.load(job["stellar"])
    start = time.time()
    samples = model.sample(stellar, job["num_samples"], job["num_steps"], job["seed"],
                           SamplingOptions.from_dict(job["options"]))
    seconds = time.time() - start
    np.save(job["out"], samples[0])
    print(json.dumps({"seconds": seconds, "peak_rss_gib": peak_rss_gib()}))


def _measure(model, stellar_path, out_path, settings, options):
    """Samples in a process of its own, so that its wall time and peak memory are its own."""
    job = {"model": str(model), "stellar": str(stellar_path), "out": str(out_path),
           "num_samples": settings.num_samples, "num_steps": settings.num_steps, "seed": settings.seed,
           "options": options.to_dict()}
    command = [sys.executable, "-m", "keras_dmdiff.large_volume", json.dumps(job)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"Sampling failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _statistics(samples, truth, box_size):
    from keras_dmdiff.stats import cross_correlation, one_point_pdf, power_ratio, power_spectrum
    from keras_dmdiff.stats.headline import band_cross_correlation, power_ratio_error

    k, pk_true, _ = power_spectrum(truth, box_size=box_size)
    _, pk_samples, _ = power_spectrum(samples, box_size=box_size)
    ratio = power_ratio(pk_samples, pk_true)
    _, r_mean, _ = cross_correlation(samples.mean(axis=0), truth, box_size=box_size)
    centres, pdf_true = one_point_pdf(truth)
    _, pdf_samples = one_point_pdf(samples)
    return {
        "k": k.tolist(),
        "power_ratio_mean": ratio["mean"].tolist(),
        "power_ratio_low": ratio["low"].tolist(),
        "power_ratio_high": ratio["high"].tolist(),
        "r_posterior_mean": r_mean.tolist(),
        "mean_abs_power_ratio_error_k_lt_10": power_ratio_error(k, ratio["mean"]),
        "mean_r_1_lt_k_lt_5": band_cross_correlation(k, r_mean),
        "pdf_centres": centres.tolist(),
        "pdf_true": pdf_true.tolist(),
        "pdf_samples_mean": pdf_samples.mean(axis=0).tolist(),
        "pdf_l1_distance": float(np.abs(pdf_samples.mean(axis=0) - pdf_true).sum() * (centres[1] - centres[0])),
    }


def run_large_volume(model, data_dir, out_dir, settings=None):
    """Reconstructs one large mock map whole and tiled, and compares both to the truth.

    Args:
        model: .keras file of a model trained on small boxes.
        data_dir: folder with the large box's CMD files (from `dmdiff mock --box-size ...`).
        out_dir: output folder: metrics.json, samples_whole.npy, samples_tiled.npy, figure.
        settings: a `LargeVolumeSettings` (None: the defaults).

    Returns:
        The metrics dict (also written to out_dir/metrics.json).

    Example:
        >>> run_large_volume("model.keras", "data/IllustrisTNG_CV_100Mpc", "large_volume",  # doctest: +SKIP
        ...                  LargeVolumeSettings(num_samples=2, num_steps=50))
    """
    c = LargeVolumeSettings() if settings is None else settings
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = pathlib.Path(data_dir)
    stellar = np.load(data_dir / f"Maps_Mstar_{c.suite}_{c.set_name}_z=0.00.npy", mmap_mode="r")[c.map_index]
    truth = np.array(np.load(data_dir / f"Maps_Mcdm_{c.suite}_{c.set_name}_z=0.00.npy", mmap_mode="r")[c.map_index])
    stellar_path = out_dir / "stellar_mass.npy"
    with atomic_files.replacing(stellar_path) as temporary:
        np.save(temporary, np.asarray(stellar, np.float32))
    metrics = {
        "map_size": int(truth.shape[0]),
        "box_size": float(c.box_size),
        "settings": dict(num_samples=c.num_samples, num_steps=c.num_steps, sampler=c.options.sampler, seed=c.seed),
        "tiling": {"tile_size": c.options.tile_size, "tile_margin": c.options.tile_margin,
                   "tile_batch": c.options.tile_batch},
    }
    for mode, options in c.runs().items():
        path = out_dir / f"samples_{mode}.npy"
        cost = _measure(model, stellar_path, path, c, options)
        samples = np.load(path)
        metrics[mode] = {**cost, **_statistics(samples, truth, c.box_size)}
    atomic_files.write_json(out_dir / "metrics.json", metrics)
    _plot(stellar, truth, out_dir, metrics)
    return metrics


def _plot(stellar, truth, out_dir, metrics):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    whole = np.load(out_dir / "samples_whole.npy")
    tiled = np.load(out_dir / "samples_tiled.npy")
    figure, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    limits = np.percentile(np.log10(truth), [1, 99.5])
    panels = [
        (np.log10(np.asarray(stellar) + 1), "log10(1 + M*)", None),
        (np.log10(truth), "truth: log10 Mcdm", limits),
        (np.log10(whole[0]), "whole-map sample: log10 Mcdm", limits),
        (np.log10(tiled[0]), "tiled sample: log10 Mcdm", limits),
    ]
    for axis, (image, title, lim) in zip(axes.flat, panels):
        shown = axis.imshow(image, origin="lower", vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1])
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.colorbar(shown, ax=axis, fraction=0.046)
    k = np.array(metrics["whole"]["k"])
    axis = axes.flat[4]
    for mode in ("whole", "tiled"):
        axis.plot(k, metrics[mode]["power_ratio_mean"], label=f"{mode}")
        axis.fill_between(k, metrics[mode]["power_ratio_low"], metrics[mode]["power_ratio_high"], alpha=0.2)
    axis.axhline(1.0, color="k", lw=0.8)
    axis.set(xscale="log", xlabel="k [h/Mpc]", ylabel="P_sample / P_true", title="power spectrum ratio")
    axis.legend()
    axis = axes.flat[5]
    for mode in ("whole", "tiled"):
        axis.plot(k, metrics[mode]["r_posterior_mean"], label=mode)
    axis.set(xscale="log", xlabel="k [h/Mpc]", ylabel="r(k)", title="cross-correlation of the posterior mean", ylim=(0, 1.05))
    axis.legend()
    figure.suptitle(f"{metrics['box_size']:.0f} Mpc/h box, {metrics['map_size']}^2 pixels")
    figure.tight_layout()
    with atomic_files.replacing(out_dir / "large_volume.png") as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def main(argv=None):
    """Internal: samples one large map in this process; argv is [JSON of the job]."""
    (job,) = sys.argv[1:] if argv is None else argv
    _sample_in_this_process(json.loads(job))


if __name__ == "__main__":
    main()
