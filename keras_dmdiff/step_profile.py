"""Where a training step spends its time, per class of operation (TensorFlow backend).

A few `train_on_batch` steps of `VariationalDiffusion` run under TensorFlow's
profiler; the self-time of every op is summed by class (convolutions forward
and both gradients, normalisation and elementwise arithmetic, circular padding
and its gradient, random numbers, the optimiser and EMA updates) and
set against the measured step and the float32 matmul peak of the same run.
Run it with one inter-op thread (`TF_NUM_INTEROP_THREADS=1`) so that op
self-times add up to the wall time; "host idle" is then the time no op ran
(Python dispatch and the step's bookkeeping).

    TF_NUM_INTRAOP_THREADS=2 TF_NUM_INTEROP_THREADS=1 python -m keras_dmdiff.step_profile --preset cpu --crop 128
"""

import argparse
import collections
import dataclasses
import glob
import json
import os
import tempfile
import time

import numpy as np

# TensorFlow op types -> the classes of the table, in its order.
OP_CLASSES = {
    # oneDNN's names (_Mkl*) and Eigen's, which TensorFlow runs with TF_ENABLE_ONEDNN_OPTS=0.
    "convolution forward": ("_MklNativeFusedConv2D", "_MklNativeConv2D", "_MklFusedConv2D", "Conv2D",
                            "_MklNativeConv2DWithBias", "_FusedConv2D"),
    # Conv2DTranspose (the upsampling) runs as a backprop-input op forward too.
    "convolution gradient (input), transposed convolutions": ("_MklNativeConv2DBackpropInput", "Conv2DBackpropInput"),
    "convolution gradient (filter)": ("_MklNativeConv2DBackpropFilterWithBias", "_MklNativeConv2DBackpropFilter",
                                      "Conv2DBackpropFilter", "BiasAddGrad"),
    "random numbers (dropout masks, times, noise)": ("StatelessRandomUniformV2", "StatelessRandomNormalV2"),
    "circular padding, skips, their gradients": ("Slice", "StridedSlice", "StridedSliceGrad", "ConcatV2", "Pad"),
    "normalisation, SiLU, elementwise": ("Mul", "AddV2", "Add", "AddN", "Sub", "Sum", "Mean", "Square", "Rsqrt",
                                         "Sigmoid", "_MklSwish", "SigmoidGrad", "RealDiv", "Maximum", "Tile",
                                         "BiasAdd", "Neg", "Exp", "Log", "Softplus", "Reshape", "Cast",
                                         "GreaterEqual", "SelectV2"),
    "optimiser, EMA, variables": ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "Assign",
                                  "ReadVariableOp", "AssignAdd", "AssignSub", "ResourceApplyAdam", "Sqrt"),
    "host idle (no op running)": ("IDLE",),
}


@dataclasses.dataclass
class ProfileConfig:
    """What is profiled.

    Args:
        preset: network preset ("cpu", "paper", "tiny").
        crop_size: side of the training maps.
        batch_size: maps per step.
        steps: profiled steps (after as many warm-up steps).
        prediction, loss_weighting, importance_sampling: the objective
            (see `VariationalDiffusion`); the shipped recipe's by default.
    """

    preset: str = "cpu"
    crop_size: int = 128
    batch_size: int = 12
    steps: int = 3
    prediction: str = "v"
    loss_weighting: str = "sigmoid"
    importance_sampling: bool = True


def _op_stats(xplane_path):
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

    data, ok = profiler_plugin.xspace_to_tools_data([xplane_path], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"TensorFlow could not convert the profile {xplane_path}.")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    return [dict(zip(columns, [cell.get("v") for cell in row["c"]])) for row in table["rows"]]


def profile_training_step(config=None):
    """Profiles `config.steps` training steps; returns the time per step by op class.

    Returns:
        dict: "step_seconds" (median wall time of an unprofiled step), "peak_gflops"
        (the numpy matmul peak measured here), "train_flops" (3 forward passes'
        FLOPs per step), "fraction_of_peak", "classes" ({class: ms per step}),
        "total_ms" (all ops' self-time per step), "top_ops" ([(op type, ms per step)], the 12 largest), "config".

    Example:
        >>> profile = profile_training_step(ProfileConfig(preset="tiny", crop_size=32, batch_size=2, steps=1))  # doctest: +SKIP
        >>> sorted(profile["classes"])[:2]  # doctest: +SKIP
        ['circular padding, skips, their gradients', 'convolution forward']
    """
    import keras
    import tensorflow as tf

    from keras_dmdiff.flops import matmul_peak, network_flops
    from keras_dmdiff.speed import random_maps
    from keras_dmdiff.models import VariationalDiffusion, network_from_preset

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("The step profile reads TensorFlow's profiler: run it with KERAS_BACKEND=tensorflow.")
    config = config or ProfileConfig()
    stars, dm = random_maps(config.batch_size, config.crop_size)
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(
        network=network_from_preset(config.preset), seed=0, prediction=config.prediction,
        loss_weighting=config.loss_weighting, importance_sampling=config.importance_sampling,
    ).adapt(stars, dm)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, global_clipnorm=0.5, use_ema=True, ema_momentum=0.999))
    times = []
    for _ in range(2 * config.steps + 1):
        start = time.perf_counter()
        model.train_on_batch(stars, dm)
        times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times[1:]))
    with tempfile.TemporaryDirectory(prefix="dmdiff_profile_") as folder:
        tf.profiler.experimental.start(folder)
        for _ in range(config.steps):
            model.train_on_batch(stars, dm)
        tf.profiler.experimental.stop()
        (xplane,) = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
        rows = _op_stats(xplane)
    by_type = collections.Counter()
    for row in rows:
        by_type[row["type"]] += row["total_self_time"] / 1e3 / config.steps  # ms per step
    classes = {name: 0.0 for name in OP_CLASSES}
    classes["other"] = 0.0
    for op_type, ms in by_type.items():
        name = next((n for n, types in OP_CLASSES.items() if op_type in types), "other")
        classes[name] += ms
    peak = matmul_peak()["gflops"]
    flops = 3 * network_flops(model.network, config.crop_size, batch_size=config.batch_size)
    return {
        "config": dataclasses.asdict(config),
        "step_seconds": step_seconds,
        "peak_gflops": peak,
        "train_flops": flops,
        "fraction_of_peak": flops / step_seconds / (peak * 1e9),
        # As set for this process (0 or unset: TensorFlow's default, all cores).
        "threads": {name: os.environ.get(name, "default") for name in
                    ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")},
        "classes": classes,
        "total_ms": float(sum(by_type.values())),
        "top_ops": by_type.most_common(12),
    }


def format_profile(profile):
    """The profile as a Markdown table (ms per step and share of the profiled time)."""
    total = sum(profile["classes"].values())
    c = profile["config"]
    lines = [
        f"{c['preset']} preset, {c['crop_size']}x{c['crop_size']}, batch {c['batch_size']}: step "
        f"{profile['step_seconds']:.3f} s, {profile['fraction_of_peak']:.0%} of the matmul peak "
        f"({profile['peak_gflops']:.0f} GFLOP/s; 3 forward passes of FLOPs per step); threads "
        f"{profile['threads']}.",
        "",
        "| op class | ms per step | share |",
        "|---|---|---|",
    ]
    for name, ms in profile["classes"].items():
        lines.append(f"| {name} | {ms:.1f} | {ms / total:.1%} |")
    lines += ["", "Largest op types: " + ", ".join(f"{t} {ms:.1f} ms" for t, ms in profile["top_ops"]) + "."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ProfileConfig()
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--crop", type=int, default=defaults.crop_size)
    parser.add_argument("--batch", type=int, default=defaults.batch_size)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--json", help="also write the profile here")
    args = parser.parse_args(argv)
    profile = profile_training_step(
        ProfileConfig(preset=args.preset, crop_size=args.crop, batch_size=args.batch, steps=args.steps)
    )
    print(format_profile(profile))
    if args.json:
        from keras_dmdiff import atomic_files

        atomic_files.write_json(args.json, profile)


if __name__ == "__main__":
    main()
