"""Atomic writes: the target is the old file or the new one, never a part."""

import json

import numpy as np
import pytest

from keras_dmdiff import atomic_files

pytestmark = pytest.mark.backend_independent


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_files.write_json(path, {"r": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_files.replacing(path) as temporary:
            temporary.write_text('{"r": 0.')  # half-written when the failure strikes
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"r": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_temporary_keeps_the_suffix_so_writers_infer_the_format(tmp_path):
    with atomic_files.replacing(tmp_path / "maps.npy") as temporary:
        assert temporary.suffix == ".npy" and temporary.parent == tmp_path
        np.save(temporary, np.arange(3.0))
    np.testing.assert_array_equal(np.load(tmp_path / "maps.npy"), [0.0, 1.0, 2.0])


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with atomic_files.replacing(target) as temporary:
        temporary.mkdir()
        (temporary / "new.pb").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.pb"]
    # A stale temporary from a killed writer is cleared before the next one.
    stale = atomic_files.temporary_sibling(target)
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic_files.replacing(target) as temporary:
        temporary.mkdir()
    assert not stale.exists() and list(target.iterdir()) == []
