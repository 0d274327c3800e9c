"""The `dmdiff` command line.

    dmdiff mock         write mock CAMELS (CMD) map files
    dmdiff train        train a model (flags or a recipe's [train] table)
    dmdiff distill      distil a trained model into fewer sampling steps
    dmdiff run          run a recipe file (recipes/*.toml) end to end
    dmdiff reconstruct  stellar-mass map(s) -> posterior dark-matter samples (HDF5 + PNG)
    dmdiff evaluate     statistics and calibration of a model on a dataset split
    dmdiff export       .keras model -> TensorFlow SavedModel
    dmdiff bench        speed and memory table

Every subcommand has --help, whose defaults are read from the functions the
subcommands call, so a default is written once.
"""

import argparse
import inspect
import json
import os
import pathlib
import sys


def _add_mock(subparsers):
    parser = subparsers.add_parser(
        "mock",
        help="write mock CMD files (Maps_Mstar_*, Maps_Mcdm_*, params_*)",
        description="Run particle-mesh simulations and write their maps in exactly the CMD file format, "
        "so the camels_cmd dataset reads them like real CAMELS files. Resumable: a killed run skips "
        "finished simulations.",
    )
    parser.add_argument("--suite", default="IllustrisTNG", help="IllustrisTNG, SIMBA or Astrid (mock suite)")
    parser.add_argument("--set-name", default="LH", help="LH, CV or 1P parameter table")
    parser.add_argument("--num-sims", type=int, default=None, help="first N rows of the table (default: all)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    from keras_dmdiff.mock.generate import MockSettings

    default = MockSettings()
    parser.add_argument("--grid-size", type=int, default=default.grid_size, help="particles per side")
    parser.add_argument("--map-size", type=int, default=default.map_size, help="map pixels per side")
    parser.add_argument("--box-size", type=float, default=default.box_size, help="box side in Mpc/h")
    parser.add_argument("--steps", dest="num_steps", type=int, default=default.num_steps, help="particle-mesh steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_mock)


def _run_mock(args):
    from keras_dmdiff.mock import MockSettings, write_cmd_files

    settings = MockSettings(grid_size=args.grid_size, map_size=args.map_size, box_size=args.box_size,
                            num_steps=args.num_steps)
    paths = write_cmd_files(args.out, args.suite, args.set_name, args.num_sims, settings, seed=args.seed,
                            workers=args.workers, progress=True)
    for name, path in paths.items():
        print(f"{name}: {path}")


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a model into a run folder (resumable)",
        description="Train a VariationalDiffusion model. Settings come from --recipe (its [train] table) "
        "and/or --set KEY=VALUE pairs (JSON values). Re-running resumes a killed run.",
    )
    parser.add_argument("--recipe", help="a recipe .toml with a [train] table")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--verbose", type=int, default=2, help="1: progress bar, 2: one line per epoch")
    parser.add_argument("--mean-only", action="store_true",
                        help="residual runs: train only the mean network (OUT/mean); rerun without it to go on")
    _add_time_limit(parser)
    parser.set_defaults(func=_run_train)


def _parse_settings(pairs):
    settings = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE; got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def _run_train(args):
    from keras_dmdiff.recipes import load_recipe
    from keras_dmdiff.training import train

    settings = {}
    if args.recipe:
        settings.update(load_recipe(args.recipe).get("train", {}))
    settings.update(_parse_settings(args.settings))
    if train(settings, args.out, verbose=args.verbose, time_limit_s=args.time_limit, mean_only=args.mean_only) is None:
        print(f"stopped by the time limit; rerun the same command to resume {args.out}")
        return
    print(f"model: {pathlib.Path(args.out) / ('mean' if args.mean_only else '') / 'model.keras'}")


def _add_distill(subparsers):
    parser = subparsers.add_parser(
        "distill",
        help="distil a trained model into a few-step student (resumable)",
        description="Progressive distillation: halve a trained model's DDIM steps round after round "
        "(--set teacher=PATH teacher_steps=256 student_steps=8 steps=...; the other keys are "
        "keras_dmdiff.distillation.DistillConfig's, JSON values). Re-running resumes a killed run.",
    )
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--verbose", type=int, default=2, help="1: progress bar, 2: one line per epoch")
    _add_time_limit(parser)
    parser.set_defaults(func=_run_distill)


def _run_distill(args):
    from keras_dmdiff.distillation import distill

    student = distill(_parse_settings(args.settings), args.out, verbose=args.verbose, time_limit_s=args.time_limit)
    if student is None:
        print(f"stopped by the time limit; rerun the same command to resume {args.out}")
        return
    print(f"student: {pathlib.Path(args.out) / 'model.keras'} ({student.distilled_steps} DDIM steps)")


def _add_time_limit(parser):
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="wall-time seconds for training in this call: stop cleanly at the last checkpoint that fits; "
        "rerun to resume",
    )


def _add_run(subparsers):
    parser = subparsers.add_parser(
        "run",
        help="run a recipe (recipes/*.toml) end to end",
        description="Run every step of a recipe into one run folder beside a copy of the recipe. "
        "Each step is resumable, so re-running continues where a killed run stopped.",
    )
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    _add_time_limit(parser)
    parser.set_defaults(func=_run_recipe)


def _run_recipe(args):
    from keras_dmdiff.recipes import run_recipe

    out = run_recipe(args.recipe, args.out, time_limit_s=args.time_limit)
    print(f"run folder: {out}")


def _defaults_of(function):
    """The defaults of `function`'s arguments: the flags show them, and never repeat them."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _add_reconstruct(subparsers):
    from keras_dmdiff.reconstruct import reconstruct

    parser = subparsers.add_parser(
        "reconstruct",
        help="posterior dark-matter samples for stellar-mass maps",
        description="Read physical stellar-mass maps ((Msun/h)/(Mpc/h)^2; .npy [H,W] or [B,H,W], or .h5 "
        "with --dataset) and write posterior dark-matter samples [B, S, H, W] to HDF5, plus a PNG.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("maps", nargs="?", help=".npy or .h5 file of stellar-mass maps")
    source.add_argument("--example", action="store_true", help="use the example map shipped with the package")
    parser.add_argument("--dataset", default="stellar_mass", help="dataset name inside an .h5 input")
    parser.add_argument("--model", help=".keras file or SavedModel folder (default: the shipped model)")
    default = _defaults_of(reconstruct)
    parser.add_argument("--num-samples", type=int, default=default["num_samples"])
    parser.add_argument("--steps", dest="num_steps", type=int, default=default["num_steps"],
                        help="reverse-diffusion steps")
    parser.add_argument("--seed", type=int, default=default["seed"])
    parser.add_argument("--out", default="reconstruction.h5", help="output HDF5 file")
    parser.add_argument("--png", help="also write a figure here (default: next to --out)")
    parser.add_argument("--no-png", action="store_true", help="do not write a figure")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown on a terminal)")
    _add_sampling_options(parser)
    parser.set_defaults(func=_run_reconstruct)


def _add_sampling_options(parser):
    """The `SamplingOptions` fields as flags, with the dataclass's defaults."""
    from keras_dmdiff.posterior import SamplingOptions

    defaults = SamplingOptions()
    group = parser.add_argument_group("sampling options (keras_dmdiff.posterior.SamplingOptions)")
    group.add_argument(
        "--sampler",
        default=defaults.sampler,
        help="ancestral, ddim, dpm_solver_2m or dpm_solver_2m_sde (a SavedModel has the ones it was exported with)",
    )
    group.add_argument(
        "--eta", type=float, default=defaults.eta,
        help="with --sampler ddim: 0 deterministic ... 1 ancestral (.keras models)",
    )
    group.add_argument(
        "--noise-steps", type=int, default=defaults.noise_steps,
        help="draw the noise on this finer step grid (a multiple of --steps), paired with its ancestral samples",
    )
    group.add_argument(
        "--random-shifts",
        action=argparse.BooleanOptionalAction,
        default=defaults.random_shifts,
        help="roll the maps by a random offset below the network's stride at every step, which removes the "
        "grid edges of an under-trained network (default: off for a .keras model; a SavedModel has the "
        "setting it was exported with)",
    )
    group.add_argument(
        "--tile-size", type=int, default=defaults.tile_size,
        help="sample large maps through overlapping periodic tiles of this size (.keras models)",
    )
    group.add_argument("--tile-margin", type=int, default=defaults.tile_margin, help="context pixels around each tile")
    group.add_argument(
        "--batch-size", type=int, default=None,
        help=f"maps per network call (bounds memory; part of the seeding); default {defaults.batch_size}, "
        "or 1 with --tile-size, so that tiles bound the memory",
    )


def _sampling_options(args):
    from keras_dmdiff.posterior import SamplingOptions

    batch_size = args.batch_size
    if batch_size is None:
        batch_size = 1 if args.tile_size else SamplingOptions().batch_size
    return SamplingOptions(
        sampler=args.sampler, eta=args.eta, noise_steps=args.noise_steps, random_shifts=args.random_shifts,
        tile_size=args.tile_size, tile_margin=args.tile_margin, batch_size=batch_size,
    )


def _run_reconstruct(args):
    from keras_dmdiff.reconstruct import reconstruct

    outputs = reconstruct(
        maps=None if args.example else args.maps,
        example=args.example,
        h5_dataset=args.dataset,
        model=args.model,
        num_samples=args.num_samples,
        num_steps=args.num_steps,
        seed=args.seed,
        options=_sampling_options(args),
        out=args.out,
        png=None if args.no_png else (args.png or os.path.splitext(args.out)[0] + ".png"),
        verbose=0 if args.quiet else "auto",
    )
    for name, path in outputs.items():
        print(f"{name}: {path}")


def _add_evaluate(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="statistics and calibration of a model on a dataset split",
        description="Draw posterior samples for every map of a split and write metrics.json, samples.h5 "
        "and figures (P(k) ratio, r(k), PDFs, coverage, rank histograms) into --out.",
    )
    from keras_dmdiff.evaluation import EvaluationData, EvaluationSettings

    data, default = EvaluationData(), EvaluationSettings()
    parser.add_argument("--model", required=True, help=".keras file or SavedModel folder")
    parser.add_argument("--dataset", default=data.dataset, help="TFDS name")
    parser.add_argument("--split", default=data.split)
    parser.add_argument("--data-dir", help="TFDS data dir")
    parser.add_argument("--manual-dir", help="folder of the CMD files")
    parser.add_argument("--num-samples", type=int, default=default.num_samples)
    parser.add_argument("--steps", dest="num_steps", type=int, default=default.num_steps)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--max-maps", type=int, default=default.max_maps)
    parser.add_argument("--out", required=True, help="output folder")
    _add_sampling_options(parser)
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args):
    from keras_dmdiff.evaluation import EvaluationData, EvaluationSettings, run_evaluation

    data = EvaluationData(args.dataset, args.split, data_dir=args.data_dir, manual_dir=args.manual_dir)
    settings = EvaluationSettings(num_samples=args.num_samples, num_steps=args.num_steps, seed=args.seed,
                                  max_maps=args.max_maps, options=_sampling_options(args))
    run_evaluation(args.model, data, args.out, settings)
    print(f"metrics: {pathlib.Path(args.out) / 'metrics.json'}")


def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model as a TensorFlow SavedModel",
        description="Write a SavedModel whose `sample(stellar_mass, num_samples, num_steps, seed)` endpoint "
        "maps physical stellar mass [B,H,W] to physical dark matter [B,S,H,W]; it loads with "
        "tf.saved_model.load alone (no keras).",
    )
    parser.add_argument("--model", required=True, help=".keras file")
    parser.add_argument("--out", required=True, help="SavedModel folder")
    parser.add_argument(
        "--random-shifts",
        action="store_true",
        help="endpoints that roll the maps by a random offset below the stride at every step, as "
        "model.sample(..., random_shifts=True) (fixed at export)",
    )
    parser.set_defaults(func=_run_export)


def _run_export(args):
    from keras_dmdiff.export import export_saved_model
    from keras_dmdiff.posterior import load_keras_posterior

    model = load_keras_posterior(args.model)
    export_saved_model(model, args.out, random_shifts=args.random_shifts)
    print(f"SavedModel: {args.out}")


def _listed(values):
    return ",".join(map(str, values))


def _add_bench(subparsers):
    from keras_dmdiff.bench import BenchConfig

    defaults = BenchConfig()
    parser = subparsers.add_parser(
        "bench",
        help="speed and memory benchmark table",
        description="Measure training and sampling throughput and peak memory at several map sizes, with "
        "the machine's float32 matmul peak measured in the same run (keras_dmdiff.bench.BenchConfig).",
    )
    _add_bench_speed_arguments(parser, defaults)
    _add_bench_quality_arguments(parser.add_argument_group("sampler quality against steps"), defaults)
    _add_bench_large_map_arguments(parser.add_argument_group("one large map's peak memory"), defaults)
    parser.set_defaults(func=_run_bench)


def _add_bench_speed_arguments(parser, d):
    parser.add_argument("--preset", default=d.preset, help="network preset")
    parser.add_argument("--sizes", default=_listed(d.sizes), help="comma-separated map sizes")
    parser.add_argument("--repeats", type=int, default=d.repeats)
    parser.add_argument("--json", dest="json_path", help="also write the table as JSON here")
    parser.add_argument("--backends", default=_listed(d.backends), help="comma-separated Keras backends")
    parser.add_argument("--tensorflow-kernels", default=_listed(d.tensorflow_kernels),
                        help="TensorFlow's CPU kernels to time: onednn and/or eigen")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="maps per training step and sampler call")
    parser.add_argument("--sampler", default=d.sampler, help="sampler of the sampling-throughput column")
    parser.add_argument("--sampling-steps", type=int, default=d.sampling_steps, help="its number of steps")
    parser.add_argument("--num-samples", type=int, default=d.num_samples, help="samples per timed sampling call")
    parser.add_argument(
        "--one-process", action="store_true", help="one worker per backend instead of one per size (faster)"
    )


def _add_bench_quality_arguments(group, d):
    group.add_argument("--quality-model", help=".keras model: also measure quality against steps")
    group.add_argument("--quality-students", default=_listed(d.quality_students),
                       help="comma-separated .keras students distilled from --quality-model, measured beside it")  # fmt: skip
    group.add_argument("--quality-backend", default=d.quality_backend, help="backend of the quality worker")
    group.add_argument("--quality-batch-size", type=int, default=d.quality_batch_size,
                       help="maps per network call while sampling for quality")  # fmt: skip
    group.add_argument("--quality-data", help="held-out maps: .npz (stellar_mass, dark_matter) or a CMD folder")
    group.add_argument("--quality-set", default=d.quality_set, help="CMD set read from a --quality-data folder")
    group.add_argument("--quality-suite", default=d.quality_suite, help="CMD suite read from a --quality-data folder")
    group.add_argument("--samplers", default=_listed(d.samplers), help="samplers of the quality table")
    group.add_argument("--quality-steps", default=_listed(d.quality_steps), help="step counts of the quality table")
    group.add_argument("--reference-steps", type=int, default=d.reference_steps, help="steps of the reference sampler")
    group.add_argument("--reference-sampler", default=d.reference_sampler, help="sampler of the quality reference")
    group.add_argument(
        "--converged-steps", type=int, help="also run the reference sampler with this many steps (its own error)"
    )
    group.add_argument(
        "--independent-noise", action="store_true", help="draw each quality row with its own noise (not coupled)"
    )
    group.add_argument("--no-noise-floor", action="store_true", help="skip redrawing the reference with another seed")
    group.add_argument(
        "--quality-random-shifts",
        action=argparse.BooleanOptionalAction,
        default=d.quality_random_shifts,
        help="sample the quality table with (or without) random shifts (default: model.sample's default)",
    )
    group.add_argument(
        "--ddim-etas", default=_listed(d.quality_ddim_etas),
        help="also quality rows of stochastic DDIM with these comma-separated eta",
    )
    group.add_argument("--quality-samples", type=int, default=d.quality_samples, help="posterior samples per held-out map")
    group.add_argument("--quality-maps", type=int, default=d.quality_maps, help="held-out maps used")
    group.add_argument("--quality-crop", type=int, default=d.quality_crop, help="crop held-out maps to this size")


def _add_bench_large_map_arguments(group, d):
    group.add_argument(
        "--large-map-size", type=int, default=d.large_map_size,
        help="one map this large sampled in tiles for its peak memory (0: skip)",
    )
    group.add_argument("--large-map-tile", type=int, default=d.large_map_tile, help="its tile cores")
    group.add_argument("--large-map-margin", type=int, default=d.large_map_margin, help="context pixels around each tile")


def _run_bench(args):
    from keras_dmdiff.bench import run_bench

    run_bench(_bench_config(args), json_path=args.json_path)


def _bench_config(args):
    from keras_dmdiff.bench import BenchConfig

    def split(text, kind=str):
        return [kind(item) for item in text.split(",") if item]

    return BenchConfig(
        preset=args.preset,
        sizes=split(args.sizes, int),
        repeats=args.repeats,
        backends=split(args.backends),
        tensorflow_kernels=split(args.tensorflow_kernels),
        batch_size=args.batch_size,
        quality_model=args.quality_model,
        quality_students=split(args.quality_students),
        quality_backend=args.quality_backend,
        quality_batch_size=args.quality_batch_size,
        reference_sampler=args.reference_sampler,
        quality_data=args.quality_data,
        sampler=args.sampler,
        sampling_steps=args.sampling_steps,
        num_samples=args.num_samples,
        process_per_size=not args.one_process,
        samplers=split(args.samplers),
        quality_steps=split(args.quality_steps, int),
        reference_steps=args.reference_steps,
        quality_samples=args.quality_samples,
        quality_maps=args.quality_maps,
        quality_crop=args.quality_crop,
        quality_suite=args.quality_suite,
        quality_set=args.quality_set,
        quality_converged_steps=args.converged_steps,
        quality_coupled=not args.independent_noise,
        quality_noise_floor=not args.no_noise_floor,
        quality_random_shifts=args.quality_random_shifts,
        quality_ddim_etas=split(args.ddim_etas, float),
        large_map_size=args.large_map_size,
        large_map_tile=args.large_map_tile,
        large_map_margin=args.large_map_margin,
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dmdiff",
        description="Posterior dark-matter maps from stellar-mass maps (conditional variational diffusion).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_mock, _add_train, _add_distill, _add_run, _add_reconstruct, _add_evaluate, _add_export, _add_bench):
        add(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"dmdiff {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
