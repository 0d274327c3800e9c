"""Posterior samples stored as they are drawn, so that a killed evaluation loses at most one group of maps.

`SampleStore` keeps the samples of N maps towards one `samples.h5`:

    samples.h5          stellar_mass, dark_matter_true [N, H, W], samples
                        [N, S, H, W] (float32, gzip), done [N]; the settings
                        and metadata in the file attributes
    samples.h5.parts/   maps_<first map>.npz for each group drawn so far, and
                        settings.json; removed once samples.h5 is complete

Every file is written atomically (a temporary file, then a rename), and a
store opened on an existing folder adopts only what was drawn with the same
settings (`resume`) and the same maps.

Example:
    >>> import numpy as np, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> stars = dm = np.ones((2, 4, 4), np.float32)
    >>> store = SampleStore(f"{folder}/samples.h5", stars, dm, 3, resume={"seed": 0})
    >>> store.write(0, np.full((1, 3, 4, 4), 2.0, np.float32))
    >>> SampleStore(f"{folder}/samples.h5", stars, dm, 3, resume={"seed": 0}).done.tolist()
    [True, False]
"""

import json
import pathlib
import shutil
import sys

import numpy as np

from keras_dmdiff import atomic_files


def _h5_value(value):
    if value is None:
        return "None"
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


class SampleStore:
    """samples.h5 and the groups drawn towards it: a kill at any instant loses at most one group.

    Each group of maps drawn is written at once, atomically, to
    `samples.h5.parts/maps_<first map>.npz` (its stellar maps and samples);
    `finish` writes the complete `samples.h5` (a temporary file, then a
    rename) and removes the parts. A rerun trusts a part only when its maps
    equal the dataset's, and an existing `samples.h5` only when it opens and
    was drawn with the same settings and maps.

    Args:
        path: the samples.h5 to write; its parts go beside it.
        stars, dm: the stellar-mass and true dark-matter maps [N, H, W].
        num_samples: samples per map.
        resume: the settings that must match for stored samples to be
            reused (name -> value), also written as attributes.
        attrs: further attributes of samples.h5 (metadata).
        resume_defaults: the value of a `resume` setting that a samples.h5
            written before that setting existed was drawn with.
    """

    def __init__(self, path, stars, dm, num_samples, resume, attrs=None, resume_defaults=None):
        self.path = pathlib.Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.stars, self.dm = stars, dm
        self.num_samples = int(num_samples)
        self.attrs = {key: _h5_value(value) for key, value in {**(attrs or {}), **resume}.items()}
        self.resume = {key: str(_h5_value(value)) for key, value in resume.items()}
        self.resume_defaults = dict(resume_defaults or {})
        self.num_maps = len(stars)
        self._source = {}  # map index -> (file, index in it), for the maps drawn so far
        self._finished = None  # the open samples.h5 once complete
        if self.path.exists():
            self._adopt_finished()
        if self.parts.exists():
            self._adopt_parts()

    def _adopt_finished(self):
        import h5py

        try:
            f = h5py.File(self.path, "r")
        except OSError as error:
            raise ValueError(
                f"{self.path} is damaged or not an HDF5 file ({error}). This package writes it "
                "complete or not at all, so it came from elsewhere: move it away or use another "
                "output folder."
            ) from None
        missing = {"stellar_mass", "dark_matter_true", "samples"} - set(f)
        if missing:
            f.close()
            raise ValueError(
                f"{self.path} is not a keras_dmdiff samples file (no {sorted(missing)}): move it "
                "away or use another output folder."
            )
        try:
            self._check_settings(
                self.path, {key: str(f.attrs.get(key, _h5_value(self.resume_defaults.get(key)))) for key in self.resume}
            )
            if f["stellar_mass"].shape[1:] != self.stars.shape[1:]:
                raise ValueError(f"{self.path} holds maps of another size; use another output folder.")
            m = min(f["stellar_mass"].shape[0], self.num_maps)
            if not (np.array_equal(f["stellar_mass"][:m], self.stars[:m])
                    and np.array_equal(f["dark_matter_true"][:m], self.dm[:m])):
                raise ValueError(f"{self.path} holds other maps than this dataset's: use another output folder.")
        except ValueError:
            f.close()
            raise
        done = np.asarray(f["done"][:m], bool) if "done" in f else np.ones(m, bool)
        for i in np.flatnonzero(done):
            self._source[int(i)] = (self.path, int(i))
        self._finished = f

    def _check_settings(self, source, stored):
        """Refuses samples in `source` drawn with other settings than this run's."""
        for key, wanted in self.resume.items():
            if key in stored and stored[key] != wanted:
                raise ValueError(
                    f"{source} holds samples drawn with {key}={stored[key]!r}, not {wanted!r}: use "
                    "another output folder, delete it, or rerun with the original settings to resume."
                )

    def _adopt_parts(self):
        settings_path = self.parts / "settings.json"
        self._check_settings(self.parts, json.loads(settings_path.read_text()) if settings_path.exists() else {})
        for part in sorted(self.parts.glob("maps_*.npz")):
            start = int(part.stem.split("_")[1])
            try:
                with np.load(part) as data:
                    part_stars = data["stellar_mass"]
                    shape = data["samples"].shape
            except Exception as error:  # written atomically, so damage came from outside
                print(f"warning: {part} is unreadable ({error}); its maps are drawn again.", file=sys.stderr)
                continue
            stop = start + len(part_stars)
            if (stop > self.num_maps or shape[1] != self.num_samples
                    or not np.array_equal(part_stars, self.stars[start:stop])):
                raise ValueError(
                    f"{part} holds samples of other maps than this dataset's maps {start}..{stop - 1}: "
                    "use another output folder."
                )
            for i in range(start, stop):
                self._source[i] = (part, i - start)

    @property
    def done(self):
        return np.array([i in self._source for i in range(self.num_maps)], bool)

    def write(self, start, samples):
        """Stores the samples [G, S, H, W] of maps start..start+G-1, atomically."""
        if not self.parts.exists():
            self.parts.mkdir(parents=True)
            atomic_files.write_json(self.parts / "settings.json", self.resume)
        stop = start + len(samples)
        part = self.parts / f"maps_{start:06d}.npz"
        with atomic_files.replacing(part) as temporary:
            np.savez(temporary, stellar_mass=self.stars[start:stop], samples=samples)
        for i in range(start, stop):
            self._source[i] = (part, i - start)

    def finish(self):
        """Writes the complete samples.h5 (atomically) and removes the parts."""
        import h5py

        if len(self._source) < self.num_maps:
            raise RuntimeError("finish() before every map was drawn")
        complete = self._finished is not None and all(
            self._source[i][0] == self.path for i in range(self.num_maps)
        ) and self._finished["stellar_mass"].shape[0] == self.num_maps
        if not complete:
            n, h, w = self.stars.shape
            s = self.num_samples
            gzip = dict(compression="gzip", compression_opts=4, shuffle=True)
            with atomic_files.replacing(self.path) as temporary, h5py.File(temporary, "w") as f:
                f.create_dataset("stellar_mass", data=self.stars, chunks=(1, h, w), **gzip)
                f.create_dataset("dark_matter_true", data=self.dm, chunks=(1, h, w), **gzip)
                out = f.create_dataset("samples", shape=(n, s, h, w), dtype="float32",
                                       chunks=(1, 1, h, w), **gzip)
                for i in range(n):
                    out[i] = self.samples(i)
                f.create_dataset("done", data=np.ones(n, bool))
                for name in ("stellar_mass", "dark_matter_true", "samples"):
                    f[name].attrs["units"] = "(Msun/h)/(Mpc/h)^2"
                out.attrs["axes"] = "map, sample, row, column"
                for key, value in self.attrs.items():
                    f.attrs[key] = value
            if self._finished is not None:
                self._finished.close()
            self._finished = h5py.File(self.path, "r")
            self._source = {i: (self.path, i) for i in range(n)}
        if self.parts.exists():
            shutil.rmtree(self.parts)

    def samples(self, index):
        """The samples [S, H, W] of map `index`."""
        source, j = self._source[index]
        if source == self.path:
            return np.asarray(self._finished["samples"][j])
        with np.load(source) as data:
            return np.asarray(data["samples"][j])

    def close(self):
        if self._finished is not None:
            self._finished.close()
            self._finished = None
