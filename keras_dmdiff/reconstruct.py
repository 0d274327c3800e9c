"""Reconstruct dark matter for a user's stellar-mass maps: the package's main job.

    dmdiff reconstruct my_stars.npy --num-samples 16 --out dm.h5
    dmdiff reconstruct --example

Inputs are physical stellar-mass surface densities in (Msun/h)/(Mpc/h)^2 on a
periodic grid with the training pixel size (97.66 kpc/h for CMD-trained
models); outputs are posterior samples of the dark-matter surface density in
the same units, with their mean and standard deviation.
"""

import datetime
import importlib.resources
import json
import pathlib

import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.posterior import SamplingOptions, load_posterior
from keras_dmdiff.map_checks import validate_maps

SHIPPED_MODEL = "tng_mock_cpu"
EXAMPLE_MAP = "example_stellar_mass.npz"


def shipped_model_path():
    """Path of the pretrained model that ships with the package."""
    root = importlib.resources.files("keras_dmdiff_saved_models")
    path = pathlib.Path(str(root / SHIPPED_MODEL / "model.keras"))
    if not path.exists():
        raise FileNotFoundError(f"The shipped model is missing from this installation (looked for {path}).")
    return path


def example_stellar_mass():
    """The example stellar-mass map [256, 256] (a held-out mock IllustrisTNG slab)."""
    path = importlib.resources.files("keras_dmdiff") / "assets" / EXAMPLE_MAP
    with importlib.resources.as_file(path) as file, np.load(file) as data:
        return data["stellar_mass"]


def read_maps(path, h5_dataset="stellar_mass"):
    """Reads stellar-mass maps from .npy, .npz (key `stellar_mass`) or HDF5.

    Returns:
        float array [H, W] or [B, H, W] (validated later).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No stellar-mass file at {path}.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if suffix == ".npz":
        with np.load(path) as data:
            if "stellar_mass" not in data:
                raise ValueError(f"{path} has no array named 'stellar_mass' (found {sorted(data)}).")
            return data["stellar_mass"]
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as handle:
            if h5_dataset not in handle:
                raise ValueError(f"{path} has no dataset {h5_dataset!r} (found {sorted(handle)}).")
            return handle[h5_dataset][...]
    raise ValueError(f"Unsupported map file {path}: use .npy, .npz or .h5.")


def reconstruct(
    maps=None,
    *,
    example=False,
    h5_dataset="stellar_mass",
    model=None,
    num_samples=8,
    num_steps=250,
    seed=0,
    options=None,
    out="reconstruction.h5",
    png=None,
    verbose="auto",
):
    """Posterior dark-matter samples for stellar-mass maps, written to HDF5 (and a PNG).

    Args:
        maps: array [H, W] / [B, H, W] or a path (.npy, .npz, .h5); ignored with `example`.
        example: use the example map shipped with the package.
        h5_dataset: dataset name inside an HDF5 input.
        model: .keras file, SavedModel folder, a `PosteriorSampler`, or None
            (the shipped model).
        num_samples, num_steps, seed: sampling settings.
        options: a `keras_dmdiff.posterior.SamplingOptions` (sampler, eta,
            random shifts, tiles for large maps, batch size); None: the
            defaults. An option the model cannot honour (tiles or eta of a
            SavedModel) is a ValueError.
        out: output HDF5 path.
        png: figure path, or None for no figure.
        verbose: progress over the samples with the time left: 1, 0 (silent)
            or "auto" (when stderr is a terminal).

    Returns:
        dict of written paths ("samples", and "figure" when drawn).

    Example:
        >>> paths = reconstruct(example=True, num_samples=4, out="example.h5", png="example.png")  # doctest: +SKIP
        >>> sorted(paths)  # doctest: +SKIP
        ['figure', 'samples']
    """
    stellar, source = _input_maps(maps, example, h5_dataset)
    posterior, description = _open_posterior(model)
    options = posterior.resolve_options(SamplingOptions() if options is None else options)
    description.update(options.non_default())
    description["random_shifts"] = options.random_shifts
    samples = np.asarray(posterior.sample(stellar, num_samples, num_steps, seed, options, verbose=verbose))
    if samples.shape != (stellar.shape[0], num_samples) + stellar.shape[1:]:
        raise RuntimeError(f"The model returned samples of shape {samples.shape}; expected [B, S, H, W].")
    attrs = {
        "units": "(Msun/h)/(Mpc/h)^2",
        "source": source,
        "num_samples": num_samples,
        "num_steps": num_steps,
        "sampler": options.sampler,
        "seed": seed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": json.dumps(description),
    }
    outputs = {"samples": _write_samples(pathlib.Path(out), stellar, samples, attrs)}
    if png:
        outputs["figure"] = plot_reconstruction(stellar[0], samples[0], png)
    return outputs


def _input_maps(maps, example, h5_dataset):
    """`(stellar_mass [B, H, W], where it came from)`, validated."""
    if example:
        stellar, source = example_stellar_mass(), "example"
    elif isinstance(maps, (str, pathlib.Path)):
        stellar, source = read_maps(maps, h5_dataset), str(maps)
    elif maps is not None:
        stellar, source = maps, "array"
    else:
        raise ValueError("Give stellar-mass maps (a path or an array) or example=True.")
    return validate_maps(stellar, "stellar_mass"), source


def _open_posterior(model):
    """`(PosteriorSampler, description)` of a path, a sampler, or None (the shipped model)."""
    if model is None or isinstance(model, (str, pathlib.Path)):
        path = shipped_model_path() if model is None else pathlib.Path(model)
        return load_posterior(path), {"model": str(path), "format": "SavedModel" if path.is_dir() else "keras"}
    return model, {"model": type(model).__name__}


def _write_samples(out, stellar, samples, attrs):
    """The samples, their mean and spread (dex) in one HDF5 file, written whole."""
    import h5py

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_files.replacing(out) as temporary, h5py.File(temporary, "w") as handle:
        handle.create_dataset("stellar_mass", data=stellar, compression="gzip")
        handle.create_dataset("samples", data=samples, compression="gzip", chunks=True)
        handle.create_dataset("posterior_mean", data=samples.mean(axis=1), compression="gzip")
        handle.create_dataset("posterior_std_dex", data=np.log10(samples).std(axis=1), compression="gzip")
        handle.attrs.update(attrs)
    return out


def plot_reconstruction(stellar, samples, path):
    """Stars, two samples, posterior mean and std (dex) of one map, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_samples = np.log10(samples)
    panels = [
        (np.log10(stellar + 1.0), "log10(1 + M*)", "magma"),
        (log_samples[0], "sample 1: log10 Mcdm", "viridis"),
        (log_samples[min(1, len(samples) - 1)], "sample 2: log10 Mcdm", "viridis"),
        (np.log10(samples.mean(axis=0)), "posterior mean: log10 Mcdm", "viridis"),
        (log_samples.std(axis=0), "posterior std [dex]", "cividis"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    dm_range = np.percentile(log_samples, [1, 99.5])
    for axis, (image, title, cmap) in zip(axes, panels):
        limits = dm_range if "Mcdm" in title else (None, None)
        shown = axis.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1], origin="lower")
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    figure.suptitle("Posterior dark matter [(Msun/h)/(Mpc/h)^2] given stellar mass", fontsize=11)
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_files.replacing(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return path
