"""tf.data input pipeline: CMD maps from TFDS -> batches of (stellar_mass, dark_matter).

Training batches get random augmentations that respect the data's symmetries, applied
identically to both fields of a pair: random periodic crops (a crop may cross the box edge and
wrap around, the boxes being periodic), random periodic shifts (like `np.roll`) and the 8
symmetries of the square (4 rotations x optional flip). Validation and test batches get none:
they are deterministic (full maps, or fixed crops).

Only TensorFlow ops run inside the pipeline, so it feeds `keras.Model.fit` on any backend
(TensorFlow or JAX). Maps stay in physical units; normalisation belongs to the model.

Examples:

```python
from keras_dmdiff.data import make_dataset

train = make_dataset("camels_cmd/mock_IllustrisTNG_LH", split="train", training=True,
                     crop_size=128, batch_size=12, seed=0, data_dir="~/tensorflow_datasets")
val = make_dataset("camels_cmd/mock_IllustrisTNG_LH", split="validation", batch_size=12,
                   data_dir="~/tensorflow_datasets")
model.fit(train, validation_data=val, epochs=10)
```
"""

from __future__ import annotations

import os
import random as _random

import tensorflow as tf

STELLAR_MASS = "stellar_mass"
DARK_MATTER = "dark_matter"
NUM_SYMMETRIES = 8
_EVAL_CROP_MODES = ("tile", "corner")


def load_split(
    name: str = "camels_cmd/mock_IllustrisTNG_LH",
    split: str = "train",
    *,
    data_dir=None,
    manual_dir=None,
    config=None,
    download: bool = True,
    shuffle_files: bool = False,
    read_config=None,
) -> tf.data.Dataset:
    """Build (if needed) and load one split of a TFDS dataset, offline.

    Runs `tfds.builder(name, data_dir=...)`, then `download_and_prepare` with
    `DownloadConfig(manual_dir=..., try_download_gcs=False)` (no network lookups), then
    `as_dataset(split=...)`. Importing this function's module does not need TFDS; the call
    imports `keras_dmdiff_datasets.camels_cmd`, which registers the `camels_cmd` builder.

    Args:
        name: TFDS name, `"camels_cmd/{config}"`, e.g. `"camels_cmd/IllustrisTNG_LH"` (real
            files from `manual_dir`) or `"camels_cmd/mock_IllustrisTNG_LH"` (mock maps
            generated on the first call).
        split: Split name or TFDS split expression, e.g. `"train"`, `"validation"`,
            `"test"`, `"train[:10%]"`.
        data_dir: Where TFDS stores prepared datasets (default `~/tensorflow_datasets`).
        manual_dir: Folder holding the CMD files for the real configs.
        config: Optional `CamelsCmdConfig` (or config name) passed to `tfds.builder`, for a
            custom config; then `name` should be `"camels_cmd"`.
        download: If False, only load an already prepared dataset.
        shuffle_files: Passed to `as_dataset`.
        read_config: Optional `tfds.ReadConfig` passed to `as_dataset`.

    Returns:
        A `tf.data.Dataset` of feature dicts (`stellar_mass`, `dark_matter` [256, 256]
        float32, `params` [6], `simulation`, `map_index`).

    Examples:

    >>> ds = load_split("camels_cmd/IllustrisTNG_LH", "validation",
    ...                 data_dir="/tmp/tfds", manual_dir="/data/CMD")  # doctest: +SKIP
    """
    import tensorflow_datasets as tfds

    import keras_dmdiff_datasets.camels_cmd  # noqa: F401  (registers camels_cmd)

    kwargs = {}
    if data_dir is not None:
        kwargs["data_dir"] = os.fspath(os.path.expanduser(os.fspath(data_dir)))
    if config is not None:
        kwargs["config"] = config
    builder = tfds.builder(name, **kwargs)
    if download:
        download_config = tfds.download.DownloadConfig(
            manual_dir=None if manual_dir is None else os.fspath(manual_dir),
            try_download_gcs=False,
        )
        builder.download_and_prepare(download_config=download_config)
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)


def apply_symmetry(image: tf.Tensor, k) -> tf.Tensor:
    """Apply element `k` (0-7) of the symmetry group of the square to `image` [H, W, ...].

    `k % 4` is the number of counter-clockwise quarter turns (`np.rot90(image, k % 4)`) and
    `k >= 4` adds a left-right flip afterwards. The 8 values give the 8 distinct symmetries;
    `k = 0` is the identity.

    Args:
        image: Tensor [H, W] or [H, W, C] (square if `k` is a tensor and static shapes
            matter).
        k: Python int or int tensor in [0, 8).

    Returns:
        The transformed tensor.

    Examples:

    >>> apply_symmetry(tf.reshape(tf.range(4), (2, 2)), 1).numpy().tolist()
    [[1, 3], [0, 2]]
    """
    image = tf.convert_to_tensor(image)
    squeeze = image.shape.rank == 2
    if squeeze:
        image = image[..., None]
    k = tf.cast(k, tf.int32)
    out = tf.image.rot90(image, k=k % 4)
    out = tf.cond(k >= 4, lambda: tf.reverse(out, axis=[1]), lambda: out)
    if image.shape[0] is not None and image.shape[0] == image.shape[1]:
        out.set_shape(image.shape)
    return out[..., 0] if squeeze else out


def periodic_crop(image: tf.Tensor, offset, crop_size: int) -> tf.Tensor:
    """Crop `image` [H, W, ...] at `offset` (row, column), wrapping around periodically.

    Equals `np.roll(image, (-offset[0], -offset[1]), axis=(0, 1))[:crop_size, :crop_size]`, so
    a crop may cross the edge of the box. With `crop_size` equal to the map size this is a
    periodic shift.

    Args:
        image: Tensor [H, W] or [H, W, C].
        offset: Int tensor or pair (row, column) of the crop's top-left pixel.
        crop_size: Side of the square crop, at most min(H, W).

    Returns:
        Tensor [crop_size, crop_size, ...].

    Examples:

    >>> periodic_crop(tf.reshape(tf.range(9), (3, 3)), (2, 2), 2).numpy().tolist()
    [[8, 6], [2, 0]]
    """
    image = tf.convert_to_tensor(image)
    offset = tf.cast(offset, tf.int32)
    shape = tf.shape(image)
    rows = (offset[0] + tf.range(crop_size)) % shape[0]
    cols = (offset[1] + tf.range(crop_size)) % shape[1]
    return tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)


def augment_pair(
    stellar_mass: tf.Tensor,
    dark_matter: tf.Tensor,
    seed,
    *,
    crop_size: int | None = None,
    random_shift: bool = True,
    symmetries: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly crop/shift and apply one symmetry of the square, identically to both maps.

    The crop's top-left pixel is uniform over the whole map and the crop wraps around the
    periodic box, so a random crop is a random periodic shift followed by a fixed crop.
    Randomness is stateless: the same `seed` gives the same transformation.

    Args:
        stellar_mass: Tensor [H, W].
        dark_matter: Tensor [H, W], the pair of `stellar_mass`.
        seed: Int tensor [2], a stateless random seed.
        crop_size: Side of the square crop; None keeps the full map.
        random_shift: If `crop_size` is None, roll the map by a random periodic shift.
            (Crops are always at a random periodic offset.)
        symmetries: Apply one of the 8 symmetries of the square, uniformly at random.

    Returns:
        The transformed pair `(stellar_mass, dark_matter)`.

    Examples:

    >>> x, y = augment_pair(tf.zeros((256, 256)), tf.ones((256, 256)), seed=[1, 2],
    ...                     crop_size=64)
    >>> tuple(x.shape)
    (64, 64)
    """
    pair = tf.stack([stellar_mass, dark_matter], axis=-1)  # one op for both fields
    shape = tf.shape(pair)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    if crop_size is not None or random_shift:
        offset = tf.random.stateless_uniform(
            [2], seed=seeds[0], minval=0, maxval=tf.int32.max, dtype=tf.int32
        ) % shape[:2]
        size = crop_size if crop_size is not None else None
        if size is None:
            pair = tf.roll(pair, shift=-offset, axis=[0, 1])
        else:
            pair = periodic_crop(pair, offset, size)
    if symmetries:
        k = tf.random.stateless_uniform([], seed=seeds[1], minval=0, maxval=8, dtype=tf.int32)
        pair = apply_symmetry(pair, k)
    if crop_size is not None:
        pair.set_shape([crop_size, crop_size, 2])
    return pair[..., 0], pair[..., 1]


def _tiles(pair: tf.Tensor, crop_size: int) -> tf.Tensor:
    """Non-overlapping crop_size tiles [n, c, c, 2] covering floor(H/c) x floor(W/c) of a map."""
    shape = tf.shape(pair)
    n_rows, n_cols = shape[0] // crop_size, shape[1] // crop_size
    pair = pair[: n_rows * crop_size, : n_cols * crop_size]
    pair = tf.reshape(pair, [n_rows, crop_size, n_cols, crop_size, 2])
    pair = tf.transpose(pair, [0, 2, 1, 3, 4])
    return tf.reshape(pair, [n_rows * n_cols, crop_size, crop_size, 2])


def _to_pair(element):
    if isinstance(element, dict):
        if STELLAR_MASS not in element or DARK_MATTER not in element:
            raise ValueError(
                f"Dataset elements must hold '{STELLAR_MASS}' and '{DARK_MATTER}'; "
                f"got keys {sorted(element)}."
            )
        x, y = element[STELLAR_MASS], element[DARK_MATTER]
    elif isinstance(element, (tuple, list)) and len(element) == 2:
        x, y = element
    else:
        raise ValueError(
            "Dataset elements must be dicts with 'stellar_mass' and 'dark_matter' or "
            f"(stellar_mass, dark_matter) pairs; got {type(element).__name__}."
        )
    return tf.cast(x, tf.float32), tf.cast(y, tf.float32)


def make_dataset(
    source="camels_cmd/mock_IllustrisTNG_LH",
    *,
    split: str = "train",
    training: bool = False,
    batch_size: int = 12,
    crop_size: int | None = None,
    random_shift: bool = True,
    symmetries: bool = True,
    eval_crop: str = "tile",
    shuffle_buffer: int = 256,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    cache: bool = False,
    data_dir=None,
    manual_dir=None,
    num_parallel_calls=tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Batches of `(stellar_mass, dark_matter)` physical maps for training or evaluation.

    Training (`training=True`): shuffle, then per map a random periodic crop (or, for full
    maps, a random periodic shift) and a random symmetry of the square, the same for both
    fields. Each pass over the dataset (each epoch of `fit`) draws new shuffles and new
    augmentations; a given `seed` makes the whole sequence reproducible.

    Evaluation (`training=False`): no shuffle, no randomness. Full maps if `crop_size` is
    None; else `eval_crop="tile"` cuts every map into its floor(H/c)^2 non-overlapping
    c x c tiles (all of each map is used) and `eval_crop="corner"` keeps the top-left c x c.

    Args:
        source: A TFDS name (loaded with `load_split(source, split, data_dir=...,
            manual_dir=...)`), or a `tf.data.Dataset` of feature dicts (with `stellar_mass`,
            `dark_matter`) or of `(stellar_mass, dark_matter)` pairs of [H, W] maps.
        split: Split to load when `source` is a name.
        training: Augment and shuffle (True) or stay deterministic (False).
        batch_size: Maps per batch.
        crop_size: Side of square crops; None for full maps. At most the map size.
        random_shift: Training with full maps: roll by a random periodic shift.
        symmetries: Training: apply a random one of the 8 symmetries of the square.
        eval_crop: `"tile"` or `"corner"`: how evaluation crops maps when `crop_size` is set.
        shuffle_buffer: Training shuffle buffer, in maps (each full map pair is 512 KB).
        seed: Seed of the shuffle and augmentations; None draws one at random.
        repeat: Repeat forever (then give `steps_per_epoch` to `fit`).
        drop_remainder: Drop the last incomplete batch; default True when training (static
            batch shapes), False otherwise.
        cache: Cache the decoded maps in memory (before augmentation).
        data_dir: TFDS data dir, when `source` is a name.
        manual_dir: Folder of the CMD files, when `source` names a real config.
        num_parallel_calls: Parallelism of the map steps (results stay in order).

    Returns:
        A `tf.data.Dataset` of `(stellar_mass, dark_matter)`, each float32
        [batch, crop, crop] (or [batch, H, W]).

    Raises:
        ValueError: Invalid arguments or elements without the two fields.

    Examples:

    >>> ds = make_dataset(tf.data.Dataset.from_tensor_slices(
    ...     (tf.zeros((4, 256, 256)), tf.ones((4, 256, 256)))),
    ...     training=True, crop_size=64, batch_size=2, seed=0)
    >>> [tuple(t.shape) for t in next(iter(ds))]
    [(2, 64, 64), (2, 64, 64)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if crop_size is not None and crop_size < 1:
        raise ValueError(f"crop_size must be >= 1 or None; got {crop_size}.")
    if eval_crop not in _EVAL_CROP_MODES:
        raise ValueError(f"eval_crop must be one of {_EVAL_CROP_MODES}; got {eval_crop!r}.")
    if isinstance(source, (str, os.PathLike)):
        ds = load_split(os.fspath(source), split, data_dir=data_dir, manual_dir=manual_dir)
    elif isinstance(source, tf.data.Dataset):
        ds = source
    else:
        raise ValueError(
            f"source must be a TFDS name or a tf.data.Dataset; got {type(source).__name__}."
        )
    if drop_remainder is None:
        drop_remainder = training

    ds = ds.map(lambda *e: _to_pair(e[0] if len(e) == 1 else e), num_parallel_calls=num_parallel_calls)
    spec = ds.element_spec[0]
    if crop_size is not None and spec.shape.rank == 2:
        too_small = [d for d in spec.shape if d is not None and d < crop_size]
        if too_small:
            raise ValueError(f"crop_size {crop_size} exceeds the map shape {spec.shape}.")
    if cache:
        ds = ds.cache()
    if training:
        augmentation = dict(crop_size=crop_size, random_shift=random_shift, symmetries=symmetries)
        ds = _shuffled_and_augmented(ds, augmentation, shuffle_buffer, seed, repeat, num_parallel_calls)
    else:
        ds = _cropped_for_evaluation(ds, crop_size, eval_crop, num_parallel_calls)
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def _shuffled_and_augmented(ds, augmentation, shuffle_buffer, seed, repeat, num_parallel_calls):
    """Training maps: shuffled, then each augmented with its own stateless seed (`augment_pair`)."""
    if seed is None:
        seed = _random.SystemRandom().randrange(2**31)
    ds = ds.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # One stateless seed [2] per map, new on each pass, reproducible from `seed`.
    seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def _augment(pair, element_seed):
        return augment_pair(pair[0], pair[1], element_seed, **augmentation)

    return ds.map(_augment, num_parallel_calls=num_parallel_calls, deterministic=True)


def _cropped_for_evaluation(ds, crop_size, eval_crop, num_parallel_calls):
    """Evaluation maps: whole, their top-left corner, or all their tiles (no randomness)."""
    if crop_size is None:
        return ds
    if eval_crop == "corner":
        return ds.map(
            lambda x, y: (x[:crop_size, :crop_size], y[:crop_size, :crop_size]),
            num_parallel_calls=num_parallel_calls,
        )
    ds = ds.map(
        lambda x, y: _tiles(tf.stack([x, y], axis=-1), crop_size),
        num_parallel_calls=num_parallel_calls,
    ).unbatch()
    return ds.map(lambda p: (p[..., 0], p[..., 1]))


def crop_box_size(source, crop_size, box_size, *, split="train", data_dir=None, manual_dir=None) -> float:
    """Side in Mpc/h of the `crop_size` crops of a dataset whose full maps span `box_size`.

    The full maps' size is read from the dataset's element spec, so crops of
    a 128x128 mock are as true to scale as those of CMD's 256x256 maps.

    Args:
        source: TFDS name, as in `make_dataset`.
        crop_size: crop side in pixels, or None for the full maps.
        box_size: side of the full maps in Mpc/h (CMD: 25).
        split, data_dir, manual_dir: as in `make_dataset`.

    Example:
        >>> crop_box_size("camels_cmd/IllustrisTNG_LH", 64, 25.0, manual_dir="data/cmd")  # doctest: +SKIP
        6.25
    """
    if crop_size is None:
        return float(box_size)
    full = make_dataset(source, split=split, batch_size=1, data_dir=data_dir, manual_dir=manual_dir)
    map_size = full.element_spec[0].shape[-1]
    return float(box_size) * int(crop_size) / int(map_size)
