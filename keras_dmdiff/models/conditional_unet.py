"""The conditional U-Net that predicts the noise in z_t given a stellar-mass map."""

import keras
from keras import layers, ops

from keras_dmdiff.models.layers import (
    PACKAGE,
    BilinearUpsample,
    CircularConv2D,
    FourierFeatures,
    GammaEmbedding,
    GroupNorm,
    ResidualBlock,
    SelfAttention,
)

RESAMPLING = ("strided", "bilinear")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConditionalUNet(keras.Model):
    """Periodic U-Net predicting eps from (z_t, stellar-mass condition, gamma_t).

    Constructed with no arguments it is the network of Ono et al. 2024: four
    levels of widths 48-96-192-384, a 768-wide bottleneck at 1/16 resolution
    with self-attention between two residual blocks, 2x2 stride-2 convolutions
    down and 2x2 transposed convolutions up (32.66 M parameters, as the
    reference), GroupNorm(8), SiLU, dropout 0.1, a
    48-d sinusoidal embedding of the normalised gamma_t through a 48-192-192
    MLP, the condition concatenated to z_t as a channel. The output is
    `conv_out(h) + z_t`, as in the reference. All 3x3 convolutions are circular.

    The network is fully convolutional: any H, W divisible by `stride`
    (2 ** len(widths)) works, so a model trained on 64x64 crops samples
    256x256 or 2048x2048 maps.

    Args:
        widths: channels of each level, from full resolution down.
        bottleneck_width: channels at the coarsest resolution.
        blocks_per_level: residual blocks per level, on the way down and on
            the way up (where the first one also merges the skip connection).
        attention_levels: indices of levels (0 = full resolution) that get a
            self-attention block after each residual block; the bottleneck
            always has one when `bottleneck_attention` is True.
        bottleneck_attention: self-attention between the two bottleneck blocks.
        dropout: dropout rate inside residual blocks.
        groups: GroupNorm groups.
        embedding_dim: sinusoidal embedding size of gamma_t.
        embedding_hidden_dim: width of the embedding MLP.
        fourier_features: None, or (first, last) exponents of Fourier features
            appended to z_t.
        resampling: "strided", the reference's 2x2 stride-2 convolutions down
            and 2x2 transposed convolutions up; or "bilinear", 4x4 stride-2
            circular convolutions down and a 1x1 convolution then periodic
            bilinear interpolation up. A 2x2 transposed convolution gives each
            of the four output positions its own weights, so an under-trained
            network draws the 2**levels-pixel grid on its maps; bilinear
            upsampling treats every position alike.

    Call arguments:
        inputs: `[z_t, condition, gamma_normalised]`: z_t and condition
            [B, H, W, 1] float32, gamma_normalised [B] in [0, 1].
        training: enables dropout.

    Example:
        >>> unet = ConditionalUNet(widths=(8, 16), bottleneck_width=32)
        >>> z = keras.random.normal((2, 32, 32, 1))
        >>> unet([z, z, keras.ops.ones((2,))]).shape
        (2, 32, 32, 1)
    """

    def __init__(
        self,
        widths=(48, 96, 192, 384),
        bottleneck_width=768,
        blocks_per_level=1,
        attention_levels=(),
        bottleneck_attention=True,
        dropout=0.1,
        groups=8,
        embedding_dim=48,
        embedding_hidden_dim=192,
        fourier_features=None,
        resampling="strided",
        **kwargs,
    ):
        # Inputs stay float32: z_t is added back to the output in float32, and
        # the sub-layers (all built with this policy) cast where they compute.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self.widths = tuple(int(w) for w in widths)
        if not self.widths:
            raise ValueError("ConditionalUNet needs at least one level in `widths`.")
        for width in self.widths + (bottleneck_width,):
            if width % groups:
                raise ValueError(f"Every width must be divisible by groups={groups}; got {width}.")
        self.bottleneck_width = int(bottleneck_width)
        self.blocks_per_level = int(blocks_per_level)
        self.attention_levels = tuple(int(level) for level in attention_levels)
        self.bottleneck_attention = bool(bottleneck_attention)
        self.dropout = float(dropout)
        self.groups = int(groups)
        self.embedding_dim = int(embedding_dim)
        self.embedding_hidden_dim = int(embedding_hidden_dim)
        self.fourier_features = tuple(fourier_features) if fourier_features else None
        if resampling not in RESAMPLING:
            raise ValueError(f"Unknown resampling {resampling!r}; choose one of {list(RESAMPLING)}.")
        self.resampling = resampling

        policy = self.dtype_policy

        def block(filters, name):
            return ResidualBlock(filters, groups=groups, dropout=dropout, dtype=policy, name=name)

        def attention(name):
            return SelfAttention(groups, dtype=policy, name=name)

        self.gamma_embedding = GammaEmbedding(embedding_dim, embedding_hidden_dim, dtype=policy, name="gamma_embedding")
        self.fourier = (
            FourierFeatures(*self.fourier_features, dtype=policy, name="fourier") if self.fourier_features else None
        )
        self.conv_in = CircularConv2D(self.widths[0], 3, dtype=policy, name="conv_in")

        self.down_blocks, self.down_attention, self.downsamples = [], [], []
        for level, width in enumerate(self.widths):
            self.down_blocks.append([block(width, f"down_{level}_block_{i}") for i in range(self.blocks_per_level)])
            self.down_attention.append(
                [attention(f"down_{level}_attention_{i}") for i in range(self.blocks_per_level)]
                if level in self.attention_levels
                else []
            )
            # Downsampling keeps the width; the next level's first block widens it.
            self.downsamples.append(
                layers.Conv2D(width, 2, strides=2, dtype=policy, name=f"downsample_{level}")
                if resampling == "strided"
                else CircularConv2D(width, 4, strides=2, dtype=policy, name=f"downsample_{level}")
            )

        self.mid_block_1 = block(self.bottleneck_width, "mid_block_1")
        self.mid_attention = attention("mid_attention") if self.bottleneck_attention else None
        self.mid_block_2 = block(self.bottleneck_width, "mid_block_2")

        self.upsamples, self.up_blocks, self.up_attention = [], [], []
        for level in reversed(range(len(self.widths))):
            width = self.widths[level]
            self.upsamples.append(
                layers.Conv2DTranspose(width, 2, strides=2, dtype=policy, name=f"upsample_{level}")
                if resampling == "strided"
                else BilinearUpsample(width, dtype=policy, name=f"upsample_{level}")
            )
            self.up_blocks.append([block(width, f"up_{level}_block_{i}") for i in range(self.blocks_per_level)])
            self.up_attention.append(
                [attention(f"up_{level}_attention_{i}") for i in range(self.blocks_per_level)]
                if level in self.attention_levels
                else []
            )

        self.norm_out = GroupNorm(groups, dtype=policy, name="norm_out")
        self.conv_out = CircularConv2D(1, 3, kernel_initializer="zeros", dtype=policy, name="conv_out")

    @property
    def stride(self):
        """H and W of every input must be multiples of this."""
        return 2 ** len(self.widths)

    def build(self, input_shape):
        # Building by a symbolic call creates every sub-layer's weights with the
        # right shapes, whatever H and W will be later.
        z_shape = (None, None, None, 1)
        self._run(
            keras.KerasTensor(z_shape),
            keras.KerasTensor(z_shape),
            keras.KerasTensor((None,)),
            training=False,
        )

    def call(self, inputs, training=False):
        z_t, condition, gamma_normalised = inputs
        return self._run(z_t, condition, gamma_normalised, training=training)

    def _run(self, z_t, condition, gamma_normalised, training):
        compute = self.compute_dtype
        embedding = self.gamma_embedding(gamma_normalised)
        h = ops.cast(z_t, compute) if self.fourier is None else self.fourier(z_t)
        h = self.conv_in(ops.concatenate([h, ops.cast(condition, compute)], axis=-1))

        skips = []
        for blocks, attentions, downsample in zip(self.down_blocks, self.down_attention, self.downsamples):
            for i, residual in enumerate(blocks):
                h = residual([h, embedding], training=training)
                if attentions:
                    h = attentions[i](h)
            skips.append(h)
            h = downsample(h)

        h = self.mid_block_1([h, embedding], training=training)
        if self.mid_attention is not None:
            h = self.mid_attention(h)
        h = self.mid_block_2([h, embedding], training=training)

        for upsample, blocks, attentions in zip(self.upsamples, self.up_blocks, self.up_attention):
            h = ops.concatenate([upsample(h), skips.pop()], axis=-1)
            for i, residual in enumerate(blocks):
                h = residual([h, embedding], training=training)
                if attentions:
                    h = attentions[i](h)

        # The eps skip in float32, whatever the compute dtype: the output is float32.
        return ops.cast(self.conv_out(ops.silu(self.norm_out(h))), "float32") + ops.cast(z_t, "float32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            widths=list(self.widths),
            bottleneck_width=self.bottleneck_width,
            blocks_per_level=self.blocks_per_level,
            attention_levels=list(self.attention_levels),
            bottleneck_attention=self.bottleneck_attention,
            dropout=self.dropout,
            groups=self.groups,
            embedding_dim=self.embedding_dim,
            embedding_hidden_dim=self.embedding_hidden_dim,
            fourier_features=list(self.fourier_features) if self.fourier_features else None,
            resampling=self.resampling,
        )
        return config
