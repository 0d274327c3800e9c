"""Named network configurations.

- "paper": the network of Ono et al. 2024 (32.66 M parameters), for GPUs.
- "cpu": a 4-level, ~1.9 M-parameter network that trains on 64x64 crops on a
  2-core CPU in hours.
- "tiny": a few thousand parameters, for tests and the quickstart.
"""

import copy

from keras_dmdiff.models.conditional_unet import ConditionalUNet

PRESETS = {
    "paper": {},
    "cpu": {
        "widths": [16, 32, 64, 128],
        "bottleneck_width": 128,
        "blocks_per_level": 1,
        "dropout": 0.1,
        "embedding_dim": 32,
        "embedding_hidden_dim": 128,
    },
    "tiny": {
        "widths": [8, 16],
        "bottleneck_width": 32,
        "blocks_per_level": 1,
        "dropout": 0.0,
        "embedding_dim": 16,
        "embedding_hidden_dim": 32,
    },
}


def preset_config(name):
    """Returns a copy of the ConditionalUNet keyword arguments of preset `name`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])


def network_from_preset(name, **overrides):
    """Builds a `ConditionalUNet` from a preset, with keyword overrides.

    Example:
        >>> unet = network_from_preset("tiny", dropout=0.1)
    """
    config = preset_config(name)
    config.update(overrides)
    return ConditionalUNet(**config)
