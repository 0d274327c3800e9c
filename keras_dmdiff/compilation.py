"""How the package compiles its TensorFlow graphs: XLA on GPU only.

Measured on the project's CPUs, XLA made the U-Net slower than TensorFlow's
oneDNN kernels (docs/benchmarks.md); on GPU it wins. The sampler, the bench's
timed forward pass and the SavedModel export all ask this one function.
"""


def tensorflow_uses_xla():
    """Whether a TensorFlow graph should be marked `jit_compile=True` here: a GPU is visible.

    Example:
        >>> isinstance(tensorflow_uses_xla(), bool)
        True
    """
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))
