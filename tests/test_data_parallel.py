"""Data-parallel training over 2 virtual CPU devices on JAX (keras.distribution.DataParallel).

XLA_FLAGS=--xla_force_host_platform_device_count=2 splits the host CPU into two
JAX devices, a real test of the multi-device path (batches sharded across
devices, variables replicated). The flag and the backend must be set before
JAX starts, so each test runs a fresh JAX process; they run once (under the
TensorFlow pass: they do not depend on the backend of the pass that starts them).
The check of `keras_dmdiff.training`'s `data_parallel` flag (TFDS data, a
second compilation) is marked slow.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras

    from keras_dmdiff.models import VariationalDiffusion, network_from_preset

    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    stellar = np.where(rng.random((8, 16, 16)) < 0.05, 1e10, 0.0).astype("float32")
    dark = (10.0 ** (11.0 + 0.3 * rng.standard_normal((8, 16, 16)))).astype("float32")
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0)
    model.adapt(stellar, dark)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, global_clipnorm=0.5))
    history = model.fit(stellar, dark, batch_size=4, epochs=2, verbose=0)  # 2 steps per epoch, 2 maps per device
    kernel = model.network.conv_in.conv.kernel.value
    out = {
        "devices": [str(d) for d in devices],
        "distribution": type(keras.distribution.distribution()).__name__,
        "losses": [float(v) for v in history.history["loss"]],
        "kernel_devices": len(kernel.sharding.device_set),
    }

    if sys.argv[1:] == ["--train"]:
        # keras_dmdiff.training with data_parallel=True on tiny fake CMD files.
        import pathlib, tempfile
        from keras_dmdiff.training import train
        from keras_dmdiff_datasets.camels_cmd.fake_cmd import write_fake_cmd_files

        keras.distribution.set_distribution(None)
        root = pathlib.Path(tempfile.mkdtemp())
        write_fake_cmd_files(root / "manual", "IllustrisTNG", "LH", num_simulations=3, maps_per_simulation=2)
        trained = train(
            dict(dataset="camels_cmd/IllustrisTNG_LH", manual_dir=str(root / "manual"), data_dir=str(root / "tfds"),
                 preset="tiny", crop_size=32, batch_size=4, steps=2, steps_per_epoch=2, checkpoint_every=2,
                 validation_batches=1, ema_momentum=None, data_parallel=True),
            root / "run", verbose=0,
        )
        rows = (root / "run" / "history.csv").read_text().splitlines()
        out["train_distribution"] = type(keras.distribution.distribution()).__name__
        out["train_loss"] = float(rows[-1].split(",")[rows[0].split(",").index("loss")])
    print("RESULT " + json.dumps(out))
    """
)


def run_on_two_jax_devices(*args):
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.backend_independent
def test_fit_under_data_parallel_on_two_virtual_cpu_devices():
    out = run_on_two_jax_devices()
    assert len(out["devices"]) == 2, out["devices"]
    assert out["distribution"] == "DataParallel"
    # Variables are replicated on both devices.
    assert out["kernel_devices"] == 2
    assert len(out["losses"]) == 2 and all(abs(v) < float("inf") for v in out["losses"])  # finite, not NaN


@pytest.mark.slow
@pytest.mark.backend_independent
def test_training_data_parallel_flag_on_two_virtual_cpu_devices():
    # Slow (a TFDS build and a second compilation, ~1 minute on 2 busy cores): run with `-m slow`.
    out = run_on_two_jax_devices("--train")
    assert len(out["devices"]) == 2
    # keras_dmdiff.training's `data_parallel` flag sets the same distribution and trains.
    assert out["train_distribution"] == "DataParallel"
    assert abs(out["train_loss"]) < float("inf")
