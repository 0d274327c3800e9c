"""The science monitor reports evaluation's headline statistics of the model it watches."""

import math

import numpy as np

from keras_dmdiff.posterior import PosteriorFunction
from keras_dmdiff.science_monitor import LOG_KEYS, MonitorConfig, PosteriorMonitor


def fake_maps(num_maps=2, size=32, seed=0):
    rng = np.random.default_rng(seed)
    dm = 10.0 ** (10.0 + 0.5 * rng.standard_normal((num_maps, size, size)))
    stars = (1e-2 * dm).astype(np.float32)
    return stars, dm.astype(np.float32)


def noisy_truth(maps, width):
    """Samples the truth times 10^(width N(0, 1)): a posterior of known quality."""
    index = {s.tobytes(): d for s, d in zip(*maps)}

    def sample(stellar_mass, num_samples=1, num_steps=1, seed=0):
        rng = np.random.default_rng(seed)
        truth = np.stack([index[s.tobytes()] for s in stellar_mass])[:, None]
        return truth * 10.0 ** (width * rng.standard_normal((len(truth), num_samples) + truth.shape[2:]))

    return PosteriorFunction(sample)


def measure(width):
    maps = fake_maps()
    monitor = PosteriorMonitor(maps, box_size=25.0 * 32 / 256,
                               config=MonitorConfig(every_epochs=1, maps=2, samples=8, steps=1))
    monitor.set_model(noisy_truth(maps, width))
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert set(logs) == set(LOG_KEYS) and all(math.isfinite(v) for v in logs.values())
    return logs


def test_a_sharper_posterior_scores_higher():
    sharp, blurred = measure(0.01), measure(0.5)
    assert sharp["science_r_mean"] > 0.999 and sharp["science_r_sample"] > 0.99
    assert blurred["science_r_sample"] < blurred["science_r_mean"] < sharp["science_r_mean"]
    assert sharp["science_power_error"] < 0.01 < blurred["science_power_error"]


def test_off_by_default_and_only_on_its_epochs():
    maps = fake_maps()
    for config, epoch in ((MonitorConfig(), 0), (MonitorConfig(every_epochs=3), 1)):
        monitor = PosteriorMonitor(maps, box_size=3.125, config=config)
        monitor.set_model(noisy_truth(maps, 0.1))
        logs = {}
        monitor.on_epoch_end(epoch, logs)
        assert logs == {}
