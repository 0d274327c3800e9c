import h5py
import numpy as np
import pytest

from keras_dmdiff.sample_store import SampleStore

pytestmark = pytest.mark.backend_independent


def _maps(n=3, size=4):
    rng = np.random.default_rng(0)
    return rng.uniform(1, 2, (n, size, size)).astype(np.float32), rng.uniform(1, 2, (n, size, size)).astype(np.float32)


def _samples(start, count, num_samples=2, size=4):
    # Distinct values per map, so a sample read back from the wrong map is caught.
    values = np.arange(start, start + count, dtype=np.float32)[:, None, None, None] + 10.0
    return np.broadcast_to(values, (count, num_samples, size, size)).copy()


def test_groups_survive_a_reopen_and_finish_writes_one_complete_file(tmp_path):
    stars, dm = _maps()
    path = tmp_path / "samples.h5"
    store = SampleStore(path, stars, dm, 2, resume={"seed": 0, "sampler": "ancestral"}, attrs={"date": "today"})
    store.write(0, _samples(0, 2))
    # A kill here keeps the first group: a new store adopts it and draws map 2 only.
    again = SampleStore(path, stars, dm, 2, resume={"seed": 0, "sampler": "ancestral"}, attrs={"date": "today"})
    assert again.done.tolist() == [True, True, False]
    np.testing.assert_array_equal(again.samples(1), _samples(1, 1)[0])
    again.write(2, _samples(2, 1))
    again.finish()
    again.close()
    assert not (tmp_path / "samples.h5.parts").exists()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["samples"][:, 0, 0, 0], [10.0, 11.0, 12.0])
        np.testing.assert_array_equal(f["stellar_mass"][:], stars)
        assert f.attrs["sampler"] == "ancestral" and f.attrs["date"] == "today" and f.attrs["seed"] == 0
    finished = SampleStore(path, stars, dm, 2, resume={"seed": 0, "sampler": "ancestral"})
    assert finished.done.all()
    np.testing.assert_array_equal(finished.samples(2), _samples(2, 1)[0])
    finished.close()


def test_samples_of_other_settings_or_maps_are_refused(tmp_path):
    stars, dm = _maps()
    path = tmp_path / "samples.h5"
    store = SampleStore(path, stars, dm, 2, resume={"seed": 0})
    store.write(0, _samples(0, 1))
    with pytest.raises(ValueError, match="drawn with seed='0', not '1'"):
        SampleStore(path, stars, dm, 2, resume={"seed": 1})
    with pytest.raises(ValueError, match="other maps than this dataset's maps 0..0"):
        SampleStore(path, stars[::-1].copy(), dm, 2, resume={"seed": 0})
    store.write(1, _samples(1, 2))
    store.finish()
    store.close()
    with pytest.raises(ValueError, match="drawn with seed='0', not '1'"):
        SampleStore(path, stars, dm, 2, resume={"seed": 1})
    with pytest.raises(ValueError, match="holds other maps"):
        SampleStore(path, stars, dm * 2, 2, resume={"seed": 0})


def test_a_file_written_before_a_setting_existed_resumes_with_its_default(tmp_path):
    stars, dm = _maps(1)
    path = tmp_path / "samples.h5"
    store = SampleStore(path, stars, dm, 2, resume={"seed": 0})
    store.write(0, _samples(0, 1))
    store.finish()
    store.close()
    new = {"seed": 0, "eta": 0.0}
    assert SampleStore(path, stars, dm, 2, resume=new, resume_defaults={"eta": 0.0}).done.all()
    with pytest.raises(ValueError, match="eta='0.0', not '1.0'"):
        SampleStore(path, stars, dm, 2, resume={"seed": 0, "eta": 1.0}, resume_defaults={"eta": 0.0})


def test_a_damaged_file_is_a_clear_error_and_finish_needs_every_map(tmp_path):
    stars, dm = _maps()
    (tmp_path / "samples.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="damaged or not an HDF5 file"):
        SampleStore(tmp_path / "samples.h5", stars, dm, 2, resume={})
    store = SampleStore(tmp_path / "other.h5", stars, dm, 2, resume={})
    store.write(0, _samples(0, 1))
    with pytest.raises(RuntimeError, match="before every map was drawn"):
        store.finish()


def test_docstring_example_runs():
    import doctest

    from keras_dmdiff import sample_store

    result = doctest.testmod(sample_store)
    assert result.attempted > 0 and result.failed == 0
