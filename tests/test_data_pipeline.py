"""Tests of the camels_cmd TFDS builder (on small files in exactly the CMD format) and of the
tf.data pipeline (`keras_dmdiff.data`).

Everything here is backend independent (numpy / TFDS / tf.data) except the `fit` smoke test,
which checks that the pipeline feeds `keras.Model.fit` on the active backend.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_dmdiff.data import (
    NUM_SYMMETRIES,
    apply_symmetry,
    augment_pair,
    load_split,
    make_dataset,
    periodic_crop,
)
from keras_dmdiff_datasets.camels_cmd import (
    CMD_MAPS_PER_SIMULATION,
    CamelsCmdConfig,
    CmdFilesFormatError,
    CmdFilesNotFoundError,
    cmd_file_names,
    read_cmd_files,
    split_simulations,
)
from keras_dmdiff_datasets.camels_cmd.fake_cmd import write_fake_cmd_files

backend_independent = pytest.mark.backend_independent

SUITE, SET = "IllustrisTNG", "LH"
NUM_SIMS, MAPS_PER_SIM = 4, 2  # LH split 2 / 1 / 1 simulations


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def no_network(monkeypatch):
    """Make any network access fail loudly."""

    def refuse(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args!r}")

    import socket

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def cmd_lh(tmp_path_factory):
    """Fake IllustrisTNG LH CMD files, built once into a TFDS data dir."""
    root = tmp_path_factory.mktemp("cmd_lh")
    manual_dir = root / "manual"
    data_dir = root / "tfds"
    write_fake_cmd_files(
        manual_dir, SUITE, SET, num_simulations=NUM_SIMS, maps_per_simulation=MAPS_PER_SIM
    )
    builder = tfds.builder(f"camels_cmd/{SUITE}_{SET}", data_dir=os.fspath(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return {"manual_dir": manual_dir, "data_dir": data_dir, "builder": builder}


def _split_examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def _numpy_symmetry(x, k):
    out = np.rot90(x, k % 4)
    return np.fliplr(out) if k >= 4 else out


def _pairs(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


def _unique_map(size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(size * size).reshape(size, size).astype(np.float32)


# --------------------------------------------------------------------------- builder


@backend_independent
def test_tfds_call_sequence_from_any_folder(tmp_path):
    """The documented call sequence, in a fresh interpreter, from an unrelated folder,
    with every socket call refused (fully offline)."""
    manual_dir = tmp_path / "manual"
    write_fake_cmd_files(manual_dir, SUITE, "CV", num_simulations=2, maps_per_simulation=1)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    script = textwrap.dedent(
        f"""
        import socket
        def refuse(*a, **k):
            raise RuntimeError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import keras_dmdiff  # registers the builder
        from tensorflow_datasets.core import registered
        print("REGISTERED_BY_KERAS_DMDIFF", "camels_cmd" in registered._DATASET_REGISTRY)
        import keras_dmdiff_datasets.camels_cmd
        import tensorflow_datasets as tfds

        b = tfds.builder("camels_cmd/{SUITE}_CV", data_dir={os.fspath(tmp_path / "tfds")!r})
        b.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir={os.fspath(manual_dir)!r}))
        ds = b.as_dataset(split="test")
        print("NUM_TEST", sum(1 for _ in ds))
        """
    )
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NUM_TEST 2" in result.stdout, result.stdout
    # `import keras_dmdiff` alone registers the builder.
    assert "REGISTERED_BY_KERAS_DMDIFF True" in result.stdout, result.stdout


@backend_independent
def test_build_splits_by_simulation_and_values_untouched(cmd_lh, no_network):
    builder = cmd_lh["builder"]
    files = read_cmd_files(cmd_lh["manual_dir"], SUITE, SET)
    counts = {"train": 2, "validation": 1, "test": 1}
    sims_per_split = {}
    for split, num_sims in counts.items():
        examples = _split_examples(builder, split)
        assert len(examples) == num_sims * MAPS_PER_SIM
        assert builder.info.splits[split].num_examples == num_sims * MAPS_PER_SIM
        sims_per_split[split] = {int(e["simulation"]) for e in examples}
        for e in examples:
            i = int(e["map_index"])
            assert int(e["simulation"]) == i // MAPS_PER_SIM
            assert e["stellar_mass"].dtype == np.float32 and e["stellar_mass"].shape == (256, 256)
            np.testing.assert_array_equal(e["stellar_mass"], files.stellar_mass[i])
            np.testing.assert_array_equal(e["dark_matter"], files.dark_matter[i])
            np.testing.assert_array_equal(e["params"], files.params[i // MAPS_PER_SIM])
        # Every map of each simulation of the split is in the split.
        assert sorted(int(e["map_index"]) for e in examples) == sorted(
            s * MAPS_PER_SIM + j for s in sims_per_split[split] for j in range(MAPS_PER_SIM)
        )
    # No simulation in two splits; all simulations used.
    all_sims = [s for sims in sims_per_split.values() for s in sims]
    assert sorted(all_sims) == list(range(NUM_SIMS))
    expected = split_simulations(NUM_SIMS, SET)
    assert {k: sorted(v) for k, v in sims_per_split.items()} == {
        k: v.tolist() for k, v in expected.items()
    }
    assert builder.info.supervised_keys == ("stellar_mass", "dark_matter")


@backend_independent
def test_files_are_memory_mapped(cmd_lh):
    files = read_cmd_files(cmd_lh["manual_dir"], SUITE, SET)
    assert isinstance(files.stellar_mass, np.memmap)
    assert isinstance(files.dark_matter, np.memmap)
    assert files.maps_per_simulation == MAPS_PER_SIM
    assert files.num_simulations == NUM_SIMS


@backend_independent
def test_split_rule():
    for n, expected in [(1000, (800, 100, 100)), (10, (8, 1, 1)), (3, (1, 1, 1)), (27, (21, 3, 3))]:
        splits = split_simulations(n, "LH")
        assert tuple(len(splits[k]) for k in ("train", "validation", "test")) == expected
        joined = np.concatenate(list(splits.values()))
        assert sorted(joined.tolist()) == list(range(n))  # disjoint and complete
        again = split_simulations(n, "LH")
        assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert list(split_simulations(27, "CV")) == ["test"]
    assert len(split_simulations(66, "1P")["test"]) == 66
    with pytest.raises(ValueError, match="at least 3"):
        split_simulations(2, "LH")
    assert CMD_MAPS_PER_SIMULATION == 15


@backend_independent
def test_configs_and_manual_instructions():
    builder_cls = tfds.builder_cls("camels_cmd")
    names = {c.name for c in builder_cls.BUILDER_CONFIGS}
    for suite in ("IllustrisTNG", "SIMBA", "Astrid"):
        for set_name in ("LH", "CV", "1P"):
            assert f"{suite}_{set_name}" in names
            assert f"mock_{suite}_{set_name}" in names
            for file_name in cmd_file_names(suite, set_name).values():
                assert file_name.replace(suite, "{suite}").replace(set_name, "{set}") in (
                    builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS
                )
    assert "Maps_Mstar_IllustrisTNG_LH_z=0.00.npy" in builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert str(builder_cls.VERSION) in builder_cls.RELEASE_NOTES
    with pytest.raises(ValueError, match="suite"):
        CamelsCmdConfig(name="x", suite="Magneticum", set_name="LH")


# --------------------------------------------------------------------------- builder errors


def _assert_lists_files(message, folder, suite=SUITE, set_name=SET):
    assert str(folder) in message
    for name in cmd_file_names(suite, set_name).values():
        assert name in message


@backend_independent
def test_missing_manual_dir_error(tmp_path, no_network):
    builder = tfds.builder(f"camels_cmd/{SUITE}_{SET}", data_dir=os.fspath(tmp_path / "tfds"))
    missing = tmp_path / "nowhere"
    with pytest.raises(CmdFilesNotFoundError) as info:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(missing))
        )
    _assert_lists_files(str(info.value), missing)
    # No manual_dir at all: the default (data_dir/downloads/manual) is named.
    with pytest.raises(CmdFilesNotFoundError, match="manual"):
        builder.download_and_prepare()


@backend_independent
def test_missing_file_error(tmp_path):
    paths = write_fake_cmd_files(tmp_path, SUITE, SET, num_simulations=3, maps_per_simulation=1)
    paths["dark_matter"].unlink()
    with pytest.raises(CmdFilesNotFoundError) as info:
        read_cmd_files(tmp_path, SUITE, SET)
    message = str(info.value)
    _assert_lists_files(message, tmp_path)
    assert f"{paths['dark_matter'].name}  [MISSING]" in message
    assert f"{paths['stellar_mass'].name}  [found]" in message


@backend_independent
@pytest.mark.parametrize(
    "corruption, match",
    [
        ("fewer_dm_maps", "same maps"),
        ("small_maps", r"expected \[n_maps, 256, 256\]"),
        ("not_divisible", "cannot be split evenly"),
        ("five_columns", "6 columns"),
        ("nan_params", "non-finite"),
        ("int_maps", "dtype"),
        ("truncated_npy", "not a readable .npy array"),
    ],
)
def test_inconsistent_files_error(tmp_path, corruption, match):
    paths = write_fake_cmd_files(tmp_path, SUITE, SET, num_simulations=2, maps_per_simulation=2)
    stellar = np.load(paths["stellar_mass"])
    params = np.loadtxt(paths["params"])
    if corruption == "fewer_dm_maps":
        np.save(paths["dark_matter"], np.load(paths["dark_matter"])[:3])
    elif corruption == "small_maps":
        np.save(paths["stellar_mass"], stellar[:, :128, :128])
    elif corruption == "not_divisible":
        np.save(paths["stellar_mass"], stellar[:3])
        np.save(paths["dark_matter"], np.load(paths["dark_matter"])[:3])
    elif corruption == "five_columns":
        np.savetxt(paths["params"], params[:, :5])
    elif corruption == "nan_params":
        params[1, 2] = np.nan
        np.savetxt(paths["params"], params)
    elif corruption == "int_maps":
        np.save(paths["stellar_mass"], (stellar > 0).astype(np.int32))
    elif corruption == "truncated_npy":  # a copy or a download cut short
        data = open(paths["dark_matter"], "rb").read()
        open(paths["dark_matter"], "wb").write(data[: len(data) // 2])
    with pytest.raises(CmdFilesFormatError, match=match) as info:
        read_cmd_files(tmp_path, SUITE, SET)
    _assert_lists_files(str(info.value), tmp_path)


PIXEL_AREA = (25.0 / 256) ** 2  # (Mpc/h)^2


@backend_independent
@pytest.mark.parametrize(
    "corruption, match",
    [
        ("nan", r"simulation 0 \(maps 0-1\) has non-finite values \(first in map 1\)"),
        ("msun_per_pixel", r"Mcdm.*simulation 0.* mean of 0\.0\d+x the mass per area"),
        ("log_scaled", r"Mcdm.*looks log10-scaled"),
        ("negative_stars", r"Mstar.*negative stellar mass"),
    ],
)
def test_unphysical_maps_are_named_during_build(tmp_path, no_network, corruption, match):
    manual_dir = tmp_path / "manual"
    paths = write_fake_cmd_files(manual_dir, SUITE, "CV", num_simulations=1, maps_per_simulation=2)
    dark, stellar = np.load(paths["dark_matter"]), np.load(paths["stellar_mass"])
    if corruption == "nan":
        dark[1, 5, 7] = np.nan
    elif corruption == "msun_per_pixel":
        dark = dark * PIXEL_AREA
    elif corruption == "log_scaled":
        dark = np.log10(dark)
    elif corruption == "negative_stars":
        stellar[0, 3, 3] = -1.0
    np.save(paths["dark_matter"], dark)
    np.save(paths["stellar_mass"], stellar)
    builder = tfds.builder(f"camels_cmd/{SUITE}_CV", data_dir=os.fspath(tmp_path / "tfds"))
    with pytest.raises(CmdFilesFormatError, match=match) as info:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        )
    _assert_lists_files(str(info.value), manual_dir, set_name="CV")


# --------------------------------------------------------------------------- mock configs


def _mock_writer():
    try:
        from keras_dmdiff.mock import write_cmd_files
    except ImportError:
        return None
    return write_cmd_files


@backend_independent
def test_mock_config_path_with_a_stand_in_writer(tmp_path, monkeypatch, no_network):
    """The mock configs call `write_cmd_files_from_fields` with the config's settings into the
    download dir, then read the files with the real-file reader (the writer is replaced by a
    fast stand-in that writes fake CMD files, after checking that the real one would accept
    every field)."""
    import dataclasses
    import inspect

    import keras_dmdiff.mock

    calls = []
    accepted = set(inspect.signature(keras_dmdiff.mock.write_cmd_files).parameters) | {
        field.name for field in dataclasses.fields(keras_dmdiff.mock.MockSettings)}

    def stand_in(out_dir, suite, **fields):
        assert set(fields) <= accepted, set(fields) - accepted
        calls.append(dict(out_dir=pathlib.Path(out_dir), suite=suite, **fields))
        return write_fake_cmd_files(out_dir, suite, fields["set_name"], num_simulations=fields["num_sims"],
                                    maps_per_simulation=2)

    monkeypatch.setattr(keras_dmdiff.mock, "write_cmd_files_from_fields", stand_in)
    builder = tfds.builder("camels_cmd/mock_SIMBA_LH", data_dir=os.fspath(tmp_path))
    builder.download_and_prepare()  # no manual_dir needed
    (call,) = calls
    assert call["suite"] == "SIMBA" and call["set_name"] == "LH"
    assert call["num_sims"] == builder.builder_config.num_simulations == 10
    assert call["map_size"] == 256 and call["box_size"] == 25.0
    assert call["out_dir"].is_relative_to(tmp_path / "downloads")
    sizes = {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
    assert sizes == {"train": 16, "validation": 2, "test": 2}  # 8 / 1 / 1 simulations


@backend_independent
def test_mock_config_without_a_writer_is_named(tmp_path, monkeypatch, no_network):
    """The builder imports nothing of keras_dmdiff: the mock writer is set from outside."""
    from keras_dmdiff_datasets.camels_cmd import camels_cmd_dataset_builder

    monkeypatch.setattr(camels_cmd_dataset_builder, "_mock_writer", None)
    builder = tfds.builder("camels_cmd/mock_SIMBA_CV", data_dir=os.fspath(tmp_path))
    with pytest.raises(RuntimeError, match="no mock writer is set: `import keras_dmdiff` first"):
        builder.download_and_prepare()


@backend_independent
@pytest.mark.skipif(_mock_writer() is None, reason="keras_dmdiff.mock.write_cmd_files not available")
def test_mock_config_builds_through_the_same_reader(tmp_path, no_network):
    config = CamelsCmdConfig(
        name="mock_IllustrisTNG_LH_test",
        suite="IllustrisTNG",
        set_name="LH",
        mock=True,
        num_simulations=3,
        mock_grid_size=32,
        mock_num_steps=2,
        mock_workers=1,
    )
    builder = tfds.builder("camels_cmd", config=config, data_dir=os.fspath(tmp_path))
    builder.download_and_prepare()
    sims = {}
    for split in ("train", "validation", "test"):
        examples = _split_examples(builder, split)
        assert len(examples) == CMD_MAPS_PER_SIMULATION
        sims[split] = {int(e["simulation"]) for e in examples}
        for e in examples[:2]:
            assert e["stellar_mass"].shape == (256, 256)
            assert np.all(np.isfinite(e["dark_matter"])) and e["dark_matter"].sum() > 0
            assert np.all(e["stellar_mass"] >= 0)
    assert sorted(s for v in sims.values() for s in v) == [0, 1, 2]
    written = list((tmp_path / "downloads" / "camels_cmd_mock").glob("*/*"))
    assert {p.name for p in written} >= set(cmd_file_names("IllustrisTNG", "LH").values())


# --------------------------------------------------------------------------- pipeline ops


@backend_independent
def test_apply_symmetry_matches_numpy_and_gives_8_distinct():
    x = _unique_map(5)
    outs = []
    for k in range(NUM_SYMMETRIES):
        out = apply_symmetry(tf.constant(x), tf.constant(k)).numpy()
        np.testing.assert_array_equal(out, _numpy_symmetry(x, k))
        outs.append(out.tobytes())
    assert len(set(outs)) == NUM_SYMMETRIES


@backend_independent
def test_periodic_crop_matches_roll():
    x = _unique_map(7)
    for offset in [(0, 0), (5, 6), (6, 1), (3, 3)]:
        out = periodic_crop(tf.constant(x), offset, 4).numpy()
        np.testing.assert_array_equal(out, np.roll(x, (-offset[0], -offset[1]), (0, 1))[:4, :4])


# --------------------------------------------------------------------------- pipeline


def _augmented(x, y, n, **kwargs):
    ds = make_dataset(
        _pairs(np.repeat(x[None], n, 0), np.repeat(y[None], n, 0)),
        training=True,
        batch_size=n,
        **kwargs,
    )
    xs, ys = next(iter(ds))
    return xs.numpy(), ys.numpy()


@backend_independent
def test_pairs_stay_aligned_under_augmentation():
    x = _unique_map(32, seed=1) / 100.0
    y = (3.0 * x + 1.0).astype(np.float32)  # dark_matter = f(stellar_mass), pixelwise
    for crop_size in (None, 20, 32):
        xs, ys = _augmented(x, y, 48, crop_size=crop_size, seed=3)
        np.testing.assert_array_equal(ys, (3.0 * xs + 1.0).astype(np.float32))
        # The augmentation did something (not all identical to the input corner).
        assert len({a.tobytes() for a in xs}) > 1


@backend_independent
def test_all_8_symmetries_occur():
    x = _unique_map(16)
    xs, _ = _augmented(x, x, 128, random_shift=False, seed=0)
    found = set()
    for out in xs:
        matches = [k for k in range(8) if np.array_equal(out, _numpy_symmetry(x, k))]
        assert len(matches) == 1
        found.add(matches[0])
    assert found == set(range(8))


@backend_independent
def test_crops_wrap_periodically():
    size, crop = 16, 10
    x = _unique_map(size, seed=2)
    xs, _ = _augmented(x, x, 64, crop_size=crop, symmetries=False, seed=5)
    wrapped = 0
    offsets = set()
    for out in xs:
        i, j = map(int, np.argwhere(x == out[0, 0])[0])
        np.testing.assert_array_equal(out, np.roll(x, (-i, -j), (0, 1))[:crop, :crop])
        wrapped += (i + crop > size) or (j + crop > size)
        offsets.add((i, j))
    assert wrapped > 0  # some crops cross the box edge
    assert len(offsets) > 10


@backend_independent
def test_random_periodic_shifts_of_full_maps():
    x = _unique_map(12, seed=4)
    xs, _ = _augmented(x, x, 32, symmetries=False, seed=6)
    shifts = set()
    for out in xs:
        i, j = map(int, np.argwhere(x == out[0, 0])[0])
        np.testing.assert_array_equal(out, np.roll(x, (-i, -j), (0, 1)))
        shifts.add((i, j))
    assert len(shifts) > 5
    # Without shifts and symmetries, training leaves full maps untouched.
    xs, _ = _augmented(x, x, 4, symmetries=False, random_shift=False, seed=6)
    assert all(np.array_equal(out, x) for out in xs)


@backend_independent
def test_training_is_reproducible_and_changes_each_pass():
    rng = np.random.default_rng(0)
    x = rng.random((6, 16, 16), dtype=np.float32)

    def build():
        return make_dataset(_pairs(x, x), training=True, crop_size=8, batch_size=3, seed=11)

    first = [b[0].numpy() for b in build()]
    again = [b[0].numpy() for b in build()]
    ds = build()
    pass1 = [b[0].numpy() for b in ds]
    pass2 = [b[0].numpy() for b in ds]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.array_equal(a, b) for a, b in zip(first, pass1))
    assert not all(np.array_equal(a, b) for a, b in zip(pass1, pass2))


@backend_independent
def test_evaluation_is_deterministic_and_unaugmented():
    rng = np.random.default_rng(1)
    x = rng.random((5, 20, 20), dtype=np.float32)
    y = x + 1
    ds = make_dataset(_pairs(x, y), training=False, batch_size=2)
    batches = [(a.numpy(), b.numpy()) for a, b in ds]
    again = [(a.numpy(), b.numpy()) for a, b in ds]
    assert [b[0].shape for b in batches] == [(2, 20, 20), (2, 20, 20), (1, 20, 20)]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    for (a1, b1), (a2, b2) in zip(batches, again):
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)

    # Tiles: floor(20 / 8)^2 = 4 non-overlapping tiles per map, row-major.
    tiles = np.concatenate(
        [a.numpy() for a, _ in make_dataset(_pairs(x, y), crop_size=8, batch_size=7)]
    )
    assert tiles.shape == (20, 8, 8)
    expected = [m[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] for m in x for r in range(2) for c in range(2)]
    np.testing.assert_array_equal(tiles, np.stack(expected))
    corner = np.concatenate(
        [a.numpy() for a, _ in make_dataset(_pairs(x, y), crop_size=8, eval_crop="corner")]
    )
    np.testing.assert_array_equal(corner, x[:, :8, :8])


@backend_independent
def test_batch_shapes_dtypes_and_dict_source():
    rng = np.random.default_rng(2)
    x = rng.random((7, 24, 24))  # float64 input is cast to float32
    source = tf.data.Dataset.from_tensor_slices(
        {"stellar_mass": x, "dark_matter": x * 2, "params": np.zeros((7, 6))}
    )
    ds = make_dataset(source, training=True, crop_size=16, batch_size=3, seed=0)
    assert ds.element_spec[0].shape.as_list() == [3, 16, 16]
    assert ds.element_spec[0].dtype == tf.float32
    batches = list(ds)
    assert len(batches) == 2  # drop_remainder while training
    for xs, ys in batches:
        np.testing.assert_allclose(ys.numpy(), 2 * xs.numpy(), rtol=1e-6)
    repeated = make_dataset(source, training=True, batch_size=4, seed=0, repeat=True)
    assert len(list(repeated.take(5))) == 5


@backend_independent
def test_make_dataset_errors():
    x = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="exceeds"):
        make_dataset(_pairs(x, x), crop_size=9)
    with pytest.raises(ValueError, match="eval_crop"):
        make_dataset(_pairs(x, x), crop_size=4, eval_crop="middle")
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(_pairs(x, x), batch_size=0)
    with pytest.raises(ValueError, match="source"):
        make_dataset(np.zeros(3))
    with pytest.raises(ValueError, match="dark_matter"):
        make_dataset(tf.data.Dataset.from_tensor_slices({"stellar_mass": x}))


@backend_independent
def test_load_split_and_make_dataset_from_tfds(cmd_lh, no_network):
    kwargs = dict(data_dir=cmd_lh["data_dir"], manual_dir=cmd_lh["manual_dir"])
    val = load_split(f"camels_cmd/{SUITE}_{SET}", "validation", **kwargs)
    assert len(list(val)) == MAPS_PER_SIM
    train = make_dataset(
        f"camels_cmd/{SUITE}_{SET}", split="train", training=True, crop_size=64, batch_size=2,
        seed=0, **kwargs,
    )
    batches = list(train)
    assert len(batches) == 2
    assert batches[0][0].shape == (2, 64, 64)
    for xs, ys in batches:
        assert np.all(ys.numpy() > 0)  # dark matter stays in physical units
    test = make_dataset(f"camels_cmd/{SUITE}_{SET}", split="test", batch_size=8, **kwargs)
    (xs, ys), = list(test)
    assert xs.shape == (2, 256, 256)


# --------------------------------------------------------------------------- Keras


def test_pipeline_feeds_keras_fit():
    """Runs on the active Keras backend (TensorFlow and JAX passes)."""
    import keras

    rng = np.random.default_rng(3)
    x = rng.random((8, 32, 32), dtype=np.float32)
    ds = make_dataset(_pairs(x, 2 * x), training=True, crop_size=16, batch_size=4, seed=0)
    model = keras.Sequential(
        [
            keras.Input((16, 16)),
            keras.layers.Reshape((16, 16, 1)),
            keras.layers.Conv2D(1, 3, padding="same"),
            keras.layers.Reshape((16, 16)),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["loss"][-1])
