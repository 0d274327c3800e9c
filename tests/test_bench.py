"""dmdiff bench: FLOP counting, the table's fields, JSON, the quality part (tiny sizes, no timed assertions)."""

import json
import os

import keras
import numpy as np
import pytest

from keras_dmdiff import bench, flops, sampler_quality, speed
from keras_dmdiff.models import CircularConv2D, SelfAttention, VariationalDiffusion, network_from_preset
from keras_dmdiff.recipes import load_recipe

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def test_flop_count_matches_hand_counts_of_single_layers():
    # 2 FLOPs per multiply-add: outputs x kernel taps x C_in x C_out.
    conv = keras.layers.Conv2D(8, 3, padding="same")
    assert flops.count_flops(conv, (1, 16, 16, 4))["total"] == 2 * 16 * 16 * 3 * 3 * 4 * 8
    # A circular conv counts its H x W outputs, not the padded ones, on both backends.
    circular = CircularConv2D(8, 3)
    assert flops.count_flops(circular, (2, 16, 16, 4))["total"] == 2 * 2 * 16 * 16 * 3 * 3 * 4 * 8
    strided = keras.layers.Conv2D(6, 2, strides=2)
    assert flops.count_flops(strided, (1, 16, 16, 4))["total"] == 2 * 8 * 8 * 2 * 2 * 4 * 6
    transposed = keras.layers.Conv2DTranspose(6, 2, strides=2)
    assert flops.count_flops(transposed, (1, 8, 8, 4))["total"] == 2 * 8 * 8 * 2 * 2 * 4 * 6
    dense = keras.layers.Dense(5)
    assert flops.count_flops(dense, (3, 7))["total"] == 2 * 3 * 7 * 5
    # Attention: qkv (3C) and projection (C) dense layers + Q K^T and A V.
    tokens, channels = 4 * 4, 8
    attention = SelfAttention(groups=4)
    expected = 2 * tokens * channels * (3 * channels) + 2 * tokens * channels * channels + 4 * tokens**2 * channels
    assert flops.count_flops(attention, (1, 4, 4, channels))["total"] == expected


def test_network_flops_scale_with_area_and_batch():
    network = network_from_preset("tiny", bottleneck_attention=False)

    def by_type(size, batch=1):
        shape = (batch, size, size, 1)
        return flops.count_flops(network, [shape, shape, (batch,)], training=False)["by_type"]

    small, large, batched = by_type(16), by_type(32), by_type(16, batch=3)
    assert set(small) == {"CircularConv2D", "Conv2D", "Conv2DTranspose", "Dense"}
    # Convolutions scale with the number of pixels; the gamma-embedding MLP (the
    # only dense layers without attention) does not; everything scales with the batch.
    for kind in ("CircularConv2D", "Conv2D", "Conv2DTranspose"):
        assert large[kind] == 4 * small[kind]
    assert large["Dense"] == small["Dense"]
    assert batched == {kind: 3 * flops for kind, flops in small.items()}
    assert flops.network_flops(network, 16) == sum(small.values())


def test_matmul_peak_is_positive():
    peak = flops.matmul_peak(size=128, repeats=2)
    assert peak["gflops"] > 0 and peak["size"] == 128 and peak["repeats"] == 2


def test_run_bench_table_has_every_field_and_json_round_trips(tmp_path, capsys):
    # One worker process (this pass's backend: the JAX pass covers the other one)
    # at one size: its compilations dominate the test's time on 2 cores.
    path = tmp_path / "bench.json"
    result = bench.run_bench(
        preset="tiny",
        sizes=(16,),
        repeats=2,
        backends=(BACKEND,),
        tensorflow_kernels=("onednn",),
        batch_size=2,
        json_path=path,
        sampling_steps=2,
        matmul_size=256,
        large_map_size=64,
        large_map_tile=32,
        large_map_margin=8,
    )
    printed = capsys.readouterr().out
    kernels = "onednn" if BACKEND == "tensorflow" else BACKEND
    assert [(row["backend"], row["kernels"], row["size"]) for row in result["rows"]] == [(BACKEND, kernels, 16)]
    for row in result["rows"]:
        assert set(row) == set(bench.ROW_FIELDS)
        assert row["error"] is None, row["error"]
        for field in ("forward_s", "forward_gflops", "train_step_s", "train_maps_per_s", "samples_per_s",
                      "s_per_network_evaluation", "peak_rss_gib"):  # fmt: skip
            assert row[field] > 0, field
        assert row["forward_fraction_of_peak"] == pytest.approx(row["forward_gflops"] / result["matmul_peak"]["gflops"])
        assert row["train_maps_per_s"] == pytest.approx(2 / row["train_step_s"])
        assert row["parameters"] > 0 and row["sampler"] == "ddim" and row["sampling_steps"] == 2
    # FLOPs come from the worker's own count.
    assert result["rows"][0]["forward_gflop"] * 1e9 == pytest.approx(
        flops.network_flops(network_from_preset("tiny"), 16)
    )
    assert result["quality"] is None
    (large,) = result["large_map"]
    assert large["error"] is None, large["error"]
    assert (large["backend"], large["size"], large["tile_size"], large["tile_margin"]) == (BACKEND, 64, 32, 8)
    assert large["s_per_step"] > 0 and large["peak_rss_gib"] >= large["rss_before_gib"] > 0
    assert bench.load_bench_json(path) == result
    assert json.loads(json.dumps(result)) == result
    table = bench.format_table(result)
    assert "GFLOP/s" in table and f"| {BACKEND} | {kernels} | 16 |" in table
    assert f"| {BACKEND} | 64 |" in table and "32 + 2x8" in table
    assert table in printed


@pytest.mark.backend_independent
def test_each_tensorflow_kernel_choice_is_timed_in_a_worker_of_its_own(monkeypatch):
    # The workers' environments, not their timings: each TensorFlow kernel choice
    # reaches its worker as TF_ENABLE_ONEDNN_OPTS, and JAX's worker is left alone.
    seen = []

    def fake_run(command, env, **kwargs):
        seen.append((env["KERAS_BACKEND"], env.get("TF_ENABLE_ONEDNN_OPTS")))
        row = {"size": 16, "error": None, "forward_gflops": 1.0, "train_gflops": 2.0}
        stdout = bench._JSON_PREFIX + json.dumps({"rows": [row]})
        return type("Completed", (), {"stdout": stdout, "stderr": "", "returncode": 0})()

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    config = bench.BenchConfig(sizes=[16], backends=["tensorflow", "jax"], tensorflow_kernels=["onednn", "eigen"])
    rows = bench._speed_rows(config, {"gflops": 4.0}, lambda *a, **k: None)
    assert seen == [("tensorflow", "1"), ("tensorflow", "0"), ("jax", None)]
    assert [(row["backend"], row["kernels"]) for row in rows] == [
        ("tensorflow", "onednn"), ("tensorflow", "eigen"), ("jax", "jax")]
    assert [row["train_fraction_of_peak"] for row in rows] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="tensorflow_kernels.*mkl"):
        bench.BenchConfig(tensorflow_kernels=["mkl"])


def test_quality_against_steps_on_a_tiny_untrained_model(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = VariationalDiffusion(network=network_from_preset("tiny"), seed=0)
    model.build()
    model.save(tmp_path / "model.keras")
    stellar, dark = speed.random_maps(3, 16, seed=1)
    np.savez(tmp_path / "held_out.npz", stellar_mass=stellar, dark_matter=dark)
    # Through the worker's entry point: loading, three samplers x two step counts, a convergence check, JSON out.
    config = bench.BenchConfig(
        quality_model=tmp_path / "model.keras", quality_data=tmp_path / "held_out.npz",
        samplers=["ancestral", "ddim", "dpm_solver_2m_sde"], quality_steps=[2, 4], reference_steps=4,
        quality_converged_steps=8, quality_samples=2, quality_batch_size=4, quality_maps=2, quality_ddim_etas=[1.0],
    )  # fmt: skip
    bench._worker_main(["quality", json.dumps({"config": config.to_dict(), "sizes": []})])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(bench._JSON_PREFIX)][-1]
    quality = json.loads(line[len(bench._JSON_PREFIX) :])
    assert quality["num_maps"] == 2 and quality["num_samples"] == 2
    assert quality["reference"]["sampler"] == "ancestral" and quality["reference"]["num_steps"] == 4
    assert quality["noise_steps"] == 8  # the least common multiple of 2, 4 and 8
    assert [(row["sampler"], row["num_steps"], row["coupling"]) for row in quality["rows"]] == [
        ("ancestral", 2, "noise path"), ("ancestral", 4, "noise path"),
        ("ddim", 2, "initial noise"), ("ddim", 4, "initial noise"),
        ("dpm_solver_2m_sde", 2, "noise path"), ("dpm_solver_2m_sde", 4, "noise path"),
        ("ddim", 2, "noise path"), ("ddim", 4, "noise path"),
        ("ancestral", 8, "noise path"),
    ]  # fmt: skip
    assert [row["eta"] for row in quality["rows"]] == [None, None, 0.0, 0.0, None, None, 1.0, 1.0, None]
    # DDIM with eta = 1 is the ancestral step: at the reference's steps it redraws the reference.
    assert abs(quality["rows"][7]["mean_power_ratio_difference"]) < 1e-3
    assert quality["rows"][-1]["convergence_check"] is True
    for row in quality["rows"]:
        assert set(row) - {"convergence_check"} == set(sampler_quality.QUALITY_FIELDS)
        assert row["error"] is None
        assert row["power_ratio_error_vs_reference"] >= 0 and row["pdf_distance_vs_reference"] >= 0
        assert row["mean_power_ratio_difference_se"] >= 0
        assert len(row["coverage"]) == len(row["coverage_difference_points"]) == len(quality["levels"])
        assert all(0 <= c <= 1 for c in row["coverage"])
        assert -1 <= row["r_posterior_mean"] <= 1
    # The reference sampler at the reference's steps, coupled, is the reference itself: no difference, no noise.
    same = quality["rows"][1]
    assert same["mean_power_ratio_difference"] == 0 and same["mean_power_ratio_difference_se"] == 0
    assert same["coverage_difference_vs_reference_points"] == 0
    assert quality["rows"][0]["mean_power_ratio_difference"] != 0
    # The noise floor: the reference redrawn with another seed differs from it, but not by construction.
    repeat = quality["reference_repeat"]
    assert (repeat["sampler"], repeat["num_steps"], repeat["coupling"], repeat["error"]) == ("ancestral", 4, "none", None)
    assert repeat["power_ratio_error_vs_reference"] > 0
    result = {
        "machine": {"cpu_count": 2},
        "settings": {"preset": "tiny", "batch_size": 2},
        "matmul_peak": {"size": 256, "repeats": 1, "gflops": 1.0},
        "rows": [],
        "quality": quality,
    }
    table = bench.format_table(result)
    assert "mean P ratio / ref - 1" in table and "| dpm_solver_2m_sde | 4 |" in table
    assert "| ancestral (convergence check) | 8 |" in table and "one grid of 8 steps" in table
    assert "| ddim (eta 1) | 4 |" in table
    assert "Noise floor" in table
    # Throughput beside quality: 2 maps x 2 samples over each row's wall time, and the reference's time over it.
    first = quality["rows"][0]
    speed_cells = f"| {first['seconds']:.2f} | {4 / first['seconds']:.3g} | {quality['reference']['seconds'] / first['seconds']:.1f} |"
    assert speed_cells in table


def test_quality_needs_two_samples_and_both_inputs():
    with pytest.raises(ValueError, match="num_samples"):
        sampler_quality.QualitySettings(num_samples=1)
    with pytest.raises(ValueError, match="both"):
        bench.run_bench(preset="tiny", quality_model="model.keras")


@pytest.mark.backend_independent
def test_load_quality_data_reads_npz_and_cmd_folders(tmp_path):
    from keras_dmdiff_datasets.camels_cmd.fake_cmd import write_fake_cmd_files

    write_fake_cmd_files(tmp_path / "cmd", "IllustrisTNG", "CV", num_simulations=2, maps_per_simulation=2)
    stellar, dark = sampler_quality.load_quality_data(tmp_path / "cmd", max_maps=3, set_name="CV", crop_size=64)
    assert stellar.shape == dark.shape == (3, 64, 64) and stellar.dtype == np.float32
    np.savez(tmp_path / "maps.npz", stellar_mass=stellar, dark_matter=dark)
    again = sampler_quality.load_quality_data(tmp_path / "maps.npz", max_maps=2)
    np.testing.assert_array_equal(again[1], dark[:2])
    np.savez(tmp_path / "bad.npz", stellar_mass=stellar)
    with pytest.raises(ValueError, match="dark_matter"):
        sampler_quality.load_quality_data(tmp_path / "bad.npz")


@pytest.mark.backend_independent
def test_bench_recipe_is_a_known_step_kind():
    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "recipes", "bench.toml"))
    step = [s for s in recipe["steps"] if s["kind"] == "bench"][0]
    config = bench.BenchConfig.from_dict({k: v for k, v in step.items() if k not in ("kind", "out")})
    assert config.quality_maps == step["quality_maps"] and config.sizes == step["sizes"]
    with pytest.raises(ValueError, match=r"Unknown bench settings \['quality_mapz'\]"):
        bench.BenchConfig.from_dict({"quality_mapz": 3})


@pytest.mark.backend_independent
def test_paper_network_costs_68_gflop_at_256():
    # The reference network: ~68 GFLOP per 256x256 forward pass (the count is the same
    # on both backends; building the 32.7 M-parameter network is cheapest on TF).
    network = network_from_preset("paper")
    assert flops.network_flops(network, 256) / 1e9 == pytest.approx(68.0, abs=0.5)


@pytest.mark.backend_independent
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's")
def test_a_worker_reports_its_own_peak_memory_not_its_parents():
    import subprocess
    import sys

    # Raise this process's high-water mark by ~1 GiB more than a small child could reach.
    ballast = np.ones(2**28, np.float32)  # 1 GiB, touched
    parent_peak = speed.peak_rss_gib()
    child = subprocess.run(
        [sys.executable, "-c", "from keras_dmdiff.speed import peak_rss_gib; print(peak_rss_gib())"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, KERAS_BACKEND=BACKEND),
    )
    del ballast
    child_peak = float(child.stdout.strip().splitlines()[-1])
    assert parent_peak > 1.0
    assert 0.01 < child_peak < parent_peak - 0.5


@pytest.mark.backend_independent
def test_quality_settings_example_runs():
    import doctest

    result = doctest.testmod(sampler_quality)
    assert result.failed == 0 and result.attempted >= 1


def test_a_students_row_is_its_ddim_steps_against_the_teachers_reference(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    teacher = VariationalDiffusion(network=network_from_preset("tiny"), seed=0)
    teacher.build()
    teacher.save(tmp_path / "teacher.keras")
    # A "student" with its teacher's weights: its 2 DDIM steps are the teacher's, on the same initial noise.
    student = VariationalDiffusion.from_config({**teacher.get_config(), "distilled_steps": 2})
    student.build()
    student.set_weights(teacher.get_weights())
    student.save(tmp_path / "student.keras")
    stellar, dark = speed.random_maps(2, 16, seed=1)
    np.savez(tmp_path / "held_out.npz", stellar_mass=stellar, dark_matter=dark)
    config = bench.BenchConfig(
        quality_model=tmp_path / "teacher.keras", quality_data=tmp_path / "held_out.npz",
        quality_students=[tmp_path / "student.keras"], samplers=["ddim"], quality_steps=[2], reference_steps=4,
        quality_samples=2, quality_batch_size=4, quality_noise_floor=False,
    )  # fmt: skip
    bench._worker_main(["quality", json.dumps({"config": config.to_dict(), "sizes": []})])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(bench._JSON_PREFIX)][-1]
    teacher_row, student_row = json.loads(line[len(bench._JSON_PREFIX) :])["rows"]
    assert (teacher_row["model"], student_row["model"]) == ("teacher", str(tmp_path / "student.keras"))
    assert (student_row["sampler"], student_row["num_steps"], student_row["coupling"]) == ("ddim", 2, "initial noise")
    for field in ("mean_power_ratio_difference", "r_posterior_mean", "coverage", "pdf_distance_vs_reference"):
        assert student_row[field] == pytest.approx(teacher_row[field], abs=1e-6)
    with pytest.raises(ValueError, match="give quality_model"):
        bench.BenchConfig(quality_students=["student.keras"])
    table = bench.format_table({"machine": {"cpu_count": 2}, "settings": {"preset": "tiny", "batch_size": 2},
                                "matmul_peak": {"size": 256, "repeats": 1, "gflops": 1.0}, "rows": [],
                                "quality": json.loads(line[len(bench._JSON_PREFIX) :])})
    assert f"| ddim (student {tmp_path.name}/student.keras) | 2 |" in table
