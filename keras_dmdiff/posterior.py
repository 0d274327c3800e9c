"""The posterior-sampler interface: dark-matter maps drawn given stellar-mass maps.

Everything that draws posterior samples implements `PosteriorSampler`:

- `keras_dmdiff.models.VariationalDiffusion` (a `.keras` model), which honours
  every `SamplingOptions` field;
- `keras_dmdiff.export.ExportedSampler` (a SavedModel), which honours the
  sampler (among those exported) and the batch size, with `random_shifts`
  fixed at export;
- `PosteriorFunction`, a wrapper of a plain function (another method's
  posterior, or a test's posterior of known quality).

Callers (evaluation, the bench, `dmdiff reconstruct`) take a `PosteriorSampler`
and one `SamplingOptions`; `load_posterior(path)` opens a `.keras` file or a
SavedModel folder. An option a sampler does not honour is a `ValueError`
naming it, never silently ignored.
"""

import dataclasses
import os
import pathlib
import zipfile
from typing import Protocol, runtime_checkable

import numpy as np

from keras_dmdiff.settings import from_fields


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How posterior samples are drawn, beyond their number, the steps and the seed.

    Args:
        sampler: "ancestral" (the reference), "ddim", "dpm_solver_2m" or
            "dpm_solver_2m_sde".
        eta: stochasticity of "ddim", from 0 (deterministic) to 1 (ancestral).
        noise_steps: None, or a multiple of the step count: the noise is drawn
            on this finer grid, pairing the samples with the `noise_steps`-step
            ancestral ones of the same seed.
        random_shifts: None for the sampler's own setting, or a bool: roll the
            maps by a random offset below the network's stride at every step.
        tile_size: None, or denoise overlapping periodic tiles of this size
            (bounded memory for large maps).
        tile_margin: context pixels around each tile.
        tile_batch: tiles per network call.
        batch_size: maps per network call (bounds memory; part of the seeding,
            so it changes the samples).

    Example:
        >>> options = SamplingOptions(sampler="ddim", eta=0.5)
        >>> SamplingOptions.from_dict(options.to_dict()) == options
        True
        >>> options.non_default()
        {'sampler': 'ddim', 'eta': 0.5}
    """

    sampler: str = "ancestral"
    eta: float = 0.0
    noise_steps: int | None = None
    random_shifts: bool | None = None
    tile_size: int | None = None
    tile_margin: int = 32
    tile_batch: int = 1
    batch_size: int = 16

    def __post_init__(self):
        if not isinstance(self.sampler, str):
            raise ValueError(f"`sampler` must be a name; got {self.sampler!r}.")
        for name in ("batch_size", "tile_batch"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if self.random_shifts is not None and not isinstance(self.random_shifts, (bool, np.bool_)):
            raise ValueError(f"`random_shifts` must be None or a bool; got {self.random_shifts!r}.")

    @classmethod
    def from_dict(cls, values):
        """Options from a dict of their fields (a recipe step, JSON); unknown keys are an error."""
        return from_fields(cls, values, "sampling options")

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def non_default(self):
        """The fields set to something other than their default, as a dict."""
        defaults = SamplingOptions()
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(defaults, field.name)
        }

    def check_supported(self, supported, owner, fixed=None):
        """Raises a ValueError naming each option that `owner` cannot honour.

        Args:
            supported: names of the fields `owner` honours.
            owner: what is sampled, for the message ("this SavedModel").
            fixed: {field: value} settings built into `owner`; asking for
                another value is an error, None means "as built".

        Returns:
            The options with the fixed settings filled in.
        """
        fixed = dict(fixed or {})
        for name, value in self.non_default().items():
            if name in fixed:
                if value is not None and value != fixed[name]:
                    raise ValueError(f"{owner} has {name}={fixed[name]!r} fixed; it cannot sample with {name}={value!r}.")
            elif name not in supported:
                raise ValueError(
                    f"{owner} does not support the sampling option {name}={value!r}; "
                    f"it honours {sorted(set(supported) | set(fixed))}."
                )
        return self.replace(**fixed)


@runtime_checkable
class PosteriorSampler(Protocol):
    """Draws dark-matter maps from p(dark matter | stellar mass).

    Attributes:
        stride: H and W of the maps must be multiples of it (the grid any
            network artefacts would sit on).
    """

    stride: int

    def resolve_options(self, options):
        """Checks `options` (a `SamplingOptions`) against what this sampler honours.

        Returns:
            The options in force (settings fixed in the sampler filled in).

        Raises:
            ValueError: naming an option it cannot honour.
        """

    def sample(self, stellar_mass, num_samples=1, num_steps=250, seed=0, options=None, verbose=0):
        """numpy float32 [B, num_samples, H, W] physical dark matter for [H, W] or [B, H, W] maps.

        `verbose`: 0 (silent), 1 (progress over the samples, with the time left)
        or "auto" (progress when stderr is a terminal).
        """


class PosteriorFunction:
    """A `PosteriorSampler` made of a function, e.g. another method's posterior.

    Args:
        function: called as `function(stellar_mass, num_samples=..., num_steps=...,
            seed=...)` with maps [B, H, W]; returns [B, num_samples, H, W]
            physical dark matter.
        stride: the grid its maps must fit (1: any size).
        name: how errors name it.

    Example:
        >>> truth = np.full((1, 8, 8), 1e11)
        >>> def exact(stars, num_samples, num_steps, seed):
        ...     return np.repeat(truth[:, None], num_samples, axis=1)
        >>> posterior = PosteriorFunction(exact)
        >>> posterior.sample(np.zeros((1, 8, 8)), num_samples=3).shape
        (1, 3, 8, 8)
    """

    supported_options = ()

    def __init__(self, function, stride=1, name=None):
        if not callable(function):
            raise TypeError(f"PosteriorFunction needs a callable; got {type(function).__name__}.")
        self.function = function
        self.stride = int(stride)
        self.name = name or getattr(function, "__name__", "a posterior function")

    def resolve_options(self, options):
        options = SamplingOptions() if options is None else options
        return options.check_supported(self.supported_options, f"The posterior function {self.name!r}")

    def sample(self, stellar_mass, num_samples=1, num_steps=250, seed=0, options=None, verbose=0):
        self.resolve_options(options)  # a function shows no progress: `verbose` has nothing to report
        maps = np.asarray(stellar_mass, np.float32)
        if maps.ndim == 2:
            maps = maps[None]
        samples = self.function(maps, num_samples=int(num_samples), num_steps=int(num_steps), seed=int(seed))
        return np.asarray(samples, np.float32)


def load_posterior(path):
    """Opens a `.keras` model or an exported SavedModel folder as a `PosteriorSampler`.

    Args:
        path: a `.keras` file holding a `VariationalDiffusion`, or a SavedModel
            folder written by `keras_dmdiff.export.export_saved_model`.

    Returns:
        The `VariationalDiffusion` or the `ExportedSampler`.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: naming the problem: a folder that is no SavedModel or one
            without the sampling endpoints, a file that is not a `.keras`
            archive, a `.keras` file from another package (a class this one
            does not know) or holding another kind of model.

    Example:
        >>> from keras_dmdiff.reconstruct import shipped_model_path
        >>> type(load_posterior(shipped_model_path())).__name__
        'VariationalDiffusion'
    """
    path = pathlib.Path(os.path.expanduser(os.fspath(path)))
    if not path.exists():
        raise FileNotFoundError(f"No model at {path}.")
    if path.is_dir():
        from keras_dmdiff.export import load_exported

        return load_exported(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: expected a .keras file or a SavedModel folder.")
    return load_keras_posterior(path)


def load_keras_posterior(path):
    """Loads a `.keras` `VariationalDiffusion` (to sample, export or bench), naming what is wrong otherwise.

    Raises:
        FileNotFoundError, ValueError: as `load_keras_file`.
    """
    from keras_dmdiff.models import VariationalDiffusion

    return load_keras_file(path, VariationalDiffusion, "it cannot draw posterior samples")


def load_keras_file(path, expected_class, why="it is not the model asked for"):
    """Loads a `.keras` file holding an `expected_class`, naming what is wrong otherwise.

    Args:
        path: the `.keras` file.
        expected_class: the class (or tuple of classes) the model must be an instance of.
        why: the consequence of another class, for the message.

    Raises:
        ValueError: not a zip archive (truncated, or another format), a class
            Keras cannot find (another package's model), or another class.
    """
    import keras

    import keras_dmdiff.models  # noqa: F401  (registers the classes a .keras file names)

    path = pathlib.Path(os.path.expanduser(os.fspath(path)))
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras archive (a zip file); it may be truncated or another format.")
    try:
        model = keras.saving.load_model(path)
    except TypeError as error:
        # Keras reports a class it cannot locate as a TypeError.
        raise ValueError(
            f"{path} holds a model this package cannot rebuild (a class from another package or "
            f"version?): {error}"
        ) from error
    if not isinstance(model, expected_class):
        classes = expected_class if isinstance(expected_class, tuple) else (expected_class,)
        names = " or ".join(cls.__name__ for cls in classes)
        raise ValueError(f"{path} holds a {type(model).__name__}, not a keras_dmdiff {names}: {why}.")
    return model
