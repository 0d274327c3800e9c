import json

import numpy as np
import pytest

from keras_dmdiff import large_volume
from keras_dmdiff.large_volume import LargeVolumeSettings, run_large_volume
from keras_dmdiff.mock import MockSettings, write_cmd_files
from keras_dmdiff.models import VariationalDiffusion, network_from_preset
from keras_dmdiff.posterior import SamplingOptions


@pytest.mark.backend_independent  # spawns its own processes, on the default backend
def test_large_box_reconstructed_whole_and_tiled(tmp_path):
    # A box 4x the side of 32-pixel "training" maps, at small size.
    data = tmp_path / "data"
    write_cmd_files(data, "IllustrisTNG", "CV", 1, MockSettings(grid_size=32, map_size=128, num_steps=3), progress=False)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0)
    model.build()
    model.save(tmp_path / "tiny.keras")
    settings = LargeVolumeSettings(box_size=25.0, num_samples=2, num_steps=3,
                                   options=SamplingOptions(tile_size=32, tile_margin=16, batch_size=1))
    metrics = run_large_volume(tmp_path / "tiny.keras", data, tmp_path / "out", settings)
    for mode in ("whole", "tiled"):
        assert metrics[mode]["seconds"] > 0 and metrics[mode]["peak_rss_gib"] > 0.1
        assert len(metrics[mode]["k"]) == len(metrics[mode]["power_ratio_mean"])
        assert np.isfinite(metrics[mode]["mean_r_1_lt_k_lt_5"])
        samples = np.load(tmp_path / "out" / f"samples_{mode}.npy")
        assert samples.shape == (2, 128, 128) and np.all(samples > 0)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["map_size"] == 128
    assert (tmp_path / "out" / "large_volume.png").stat().st_size > 20_000
    assert metrics["tiling"] == {"tile_size": 32, "tile_margin": 16, "tile_batch": 1}


@pytest.mark.backend_independent
def test_large_volume_settings_need_a_tile_size():
    import doctest

    assert doctest.testmod(large_volume).failed == 0
    with pytest.raises(ValueError, match="tile_size"):
        LargeVolumeSettings(options=SamplingOptions())
