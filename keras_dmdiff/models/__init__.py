"""Networks, noise schedules, samplers and the variational diffusion model."""

from keras_dmdiff.models.conditional_unet import ConditionalUNet
from keras_dmdiff.models.layers import (
    CircularConv2D,
    FourierFeatures,
    GammaEmbedding,
    GroupNorm,
    ResidualBlock,
    SelfAttention,
)
from keras_dmdiff.models.noise_schedules import (
    FixedLinearSchedule,
    LearnedLinearSchedule,
    LearnedMonotoneSchedule,
    NoiseSchedule,
    get_schedule,
)
from keras_dmdiff.models.presets import PRESETS, network_from_preset, preset_config
from keras_dmdiff.models.regression_unet import RegressionUNet
from keras_dmdiff.models.samplers import SAMPLERS
from keras_dmdiff.models.variational_diffusion import VariationalDiffusion
