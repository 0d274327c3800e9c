"""Tests of the CMD mock (keras_dmdiff.mock): physics, maps, writer."""

import dataclasses
import json
import os

import numpy as np
import pytest

from keras_dmdiff.mock import cosmology, generate, painting, particle_mesh, suites, writer
from keras_dmdiff_datasets.camels_cmd.camels_cmd_dataset_builder import expected_mean_dark_matter

pytestmark = pytest.mark.backend_independent

FID = (0.3, 0.8, 1.0, 1.0, 1.0, 1.0)
SMALL = generate.MockSettings(grid_size=32, map_size=64, num_steps=4)


# ----------------------------------------------------------------- cosmology
def test_power_spectrum_normalised_to_sigma8():
    for om, s8 in ((0.3, 0.8), (0.1, 0.6), (0.5, 1.0)):
        s = cosmology.sigma_r(lambda k: cosmology.linear_power(k, om, s8), 8.0)
        assert s == pytest.approx(s8, rel=1e-4)


def test_eisenstein_hu_shape():
    k = np.logspace(-4, 2, 50)
    t = cosmology.eisenstein_hu_nowiggle_transfer(k, 0.3)
    assert t[0] == pytest.approx(1.0, abs=2e-3)
    assert np.all(np.diff(t) < 0)
    # Deep in the small-scale regime T ~ ln(k) / k^2.
    assert t[-1] < 1e-3
    # More matter -> later turnover -> more small-scale power relative to large.
    p_lo = cosmology.linear_power(np.array([0.05, 5.0]), 0.2, 0.8)
    p_hi = cosmology.linear_power(np.array([0.05, 5.0]), 0.4, 0.8)
    assert p_hi[1] / p_hi[0] > p_lo[1] / p_lo[0]
    # Peak of k P(k)... the P(k) turnover sits near k_eq ~ 0.01-0.03 h/Mpc for Omega_m = 0.3.
    kk = np.logspace(-3, 0, 400)
    k_peak = kk[np.argmax(cosmology.linear_power(kk, 0.3, 0.8))]
    assert 0.01 < k_peak < 0.03


def test_growth_factor_known_values():
    assert cosmology.growth_factor(1.0, 0.3)[0] == pytest.approx(1.0)
    # Einstein-de Sitter: D1 = a, f = 1; LCDM: D1 ~ a in matter domination.
    a = np.array([0.05, 0.2, 0.6])
    np.testing.assert_allclose(cosmology.growth_factor(a, 1.0), a, rtol=1e-3)
    np.testing.assert_allclose(cosmology.growth_rate(a, 1.0), 1.0, rtol=1e-3)
    d = cosmology.growth_factor([0.01, 0.02], 0.3)
    assert d[1] / d[0] == pytest.approx(2.0, rel=2e-3)
    # Known LCDM value: D(a=0.5)/D(1) = 0.6118 for Omega_m = 0.3 (Carroll et al. fit: 0.61).
    assert cosmology.growth_factor(0.5, 0.3)[0] == pytest.approx(0.6118, abs=2e-3)
    # f(a=1) ~ Omega_m^0.55 (Linder).
    assert cosmology.growth_rate(1.0, 0.3)[0] == pytest.approx(0.3**0.55, rel=0.01)
    # f = dlnD/dlna numerically.
    a0, e = 0.4, 1e-4
    num = np.log(cosmology.growth_factor(a0 + e, 0.3)[0] / cosmology.growth_factor(a0 - e, 0.3)[0]) / np.log(
        (a0 + e) / (a0 - e)
    )
    assert cosmology.growth_rate(a0, 0.3)[0] == pytest.approx(num, rel=1e-4)
    assert cosmology.second_order_growth_factor(1.0, 0.3)[0] == pytest.approx(-3 / 7 * 0.3 ** (-1 / 143))


# ----------------------------------------------------------- particle mesh
def test_cic_paint_readout_conserve_and_interpolate():
    rng = np.random.default_rng(0)
    pos = rng.uniform(-3, 20, (500, 3))
    w = rng.uniform(0.5, 2, 500)
    mesh = particle_mesh.cic_paint(pos, 8, weights=w)
    assert mesh.sum() == pytest.approx(w.sum())
    # Readout of a linear function of x inside the periodic interior is exact.
    grid = np.broadcast_to(np.arange(8.0)[:, None, None], (8, 8, 8))
    p = rng.uniform(0.0, 7.0, (100, 3))
    np.testing.assert_allclose(particle_mesh.cic_readout(grid, p), p[:, 0], rtol=1e-5)


def _pk_binned(pos, n, box):
    mesh = particle_mesh.cic_paint(pos * (n / box), n)
    delta = mesh / mesh.mean() - 1.0
    p = np.abs(np.fft.rfftn(delta)) ** 2
    k = np.sqrt(
        np.fft.fftfreq(n)[:, None, None] ** 2 + np.fft.fftfreq(n)[None, :, None] ** 2 + np.fft.rfftfreq(n)[None, None] ** 2
    )
    lo, hi = k < 0.05, (k > 0.2) & (k < 0.4)
    return p[lo & (k > 0)].mean(), p[hi].mean()


def test_pm_conserves_mass_grows_linearly_and_clusters_beyond_lpt():
    nb = particle_mesh.run_simulation(0.3, 0.8, grid_size=32, num_steps=5, seed=3)
    lpt = particle_mesh.run_simulation(0.3, 0.8, grid_size=32, seed=3, lpt_only=True)
    assert nb["pos"].shape == (32**3, 3) and nb["pos"].dtype == np.float32
    assert np.all((nb["pos"] >= 0) & (nb["pos"] < 25.0))
    assert nb["mesh"].sum() == pytest.approx(32**3, rel=1e-5)
    assert nb["particle_mass"] == pytest.approx(0.3 * cosmology.RHO_CRIT * 25.0**3 / 32**3)
    # Nonlinear clustering: the density field is far more skewed than 2LPT.
    assert nb["mesh"].var() > 3 * lpt["mesh"].var()
    assert nb["mesh"].max() > 5 * lpt["mesh"].max()
    # Small sigma_8: PM follows linear growth on large scales (FastPM factors);
    # CIC paint + readout of a near-lattice act as a central difference, so the
    # fundamental of a 32^3 mesh (k = 0.2 rad/cell) grows ~(sin k / k)^4 ~ 3 % slow.
    a = particle_mesh.run_simulation(0.3, 0.02, grid_size=32, num_steps=3, seed=4)
    b = particle_mesh.run_simulation(0.3, 0.02, grid_size=32, seed=4, lpt_only=True)
    assert _pk_binned(a["pos"], 32, 25.0)[0] / _pk_binned(b["pos"], 32, 25.0)[0] == pytest.approx(0.98, abs=0.03)


def test_bad_grid_size():
    with pytest.raises(ValueError, match="even"):
        particle_mesh.run_simulation(0.3, 0.8, grid_size=33)
    with pytest.raises(ValueError, match="grid_size"):
        generate.MockSettings(grid_size=31, map_size=32, num_steps=2)


# ----------------------------------------------------------------- painting
def test_slab_layout_and_large_box():
    starts, t = painting.slab_layout(25.0)
    assert t == 5.0 and len(starts) == 5
    starts, t = painting.slab_layout(100.0)
    assert t == 5.0 and starts.tolist() == [0, 20, 40, 60, 80]
    big = generate.MockSettings.for_box(200.0)
    assert (big.grid_size, big.map_size, big.box_size, big.num_steps) == (1024, 2048, 200.0, 10)
    with pytest.raises(ValueError):
        painting.slab_layout(25.0, 30.0)


def test_map_geometry_holds_the_slab_layout_and_checks_it():
    geometry = painting.MapGeometry(100.0, 1024, slabs_per_axis=3)
    assert geometry.starts.tolist() == pytest.approx([0.0, 100.0 / 3, 200.0 / 3])
    assert (geometry.thickness, geometry.num_maps, geometry.pixel_size) == (5.0, 9, 100.0 / 1024)
    with pytest.raises(ValueError, match="slab_thickness"):
        painting.MapGeometry(25.0, 64, slab_thickness=30.0)
    with pytest.raises(ValueError, match="slabs_per_axis"):
        painting.MapGeometry(25.0, 64, slabs_per_axis=6)
    with pytest.raises(ValueError, match="map_size"):
        painting.MapGeometry(25.0, 0)


def test_find_halos_periodic_merge():
    rng = np.random.default_rng(1)
    # One clump straddling the periodic boundary in x.
    clump = rng.normal(0.0, 0.08, (300, 3)) % 25.0
    field = rng.uniform(0, 25, (3000, 3))
    h = painting.find_halos(np.concatenate([clump, field]), 25.0, 32)
    lab = h["labels"][:300]
    assert np.all(lab >= 0) and len(np.unique(lab)) == 1


@pytest.fixture(scope="module")
def small_sim():
    nb = generate.run_nbody(FID, SMALL, seed=11)
    return nb


def test_maps_units_and_sparsity(small_sim):
    ms, mc = generate.paint_simulation(small_sim, FID, "IllustrisTNG", SMALL, seed=11)
    assert ms.shape == mc.shape == (15, 64, 64)
    assert ms.dtype == mc.dtype == np.float32
    assert np.all(mc > 0) and np.all(ms >= 0)
    assert 0.0 < (ms > 0).mean() < 0.2
    # Mass conservation: each axis' 5 slabs hold the whole CDM mass of the box.
    cdm_mass = small_sim["particle_mass"] * 32**3 * (0.3 - cosmology.OMEGA_B) / 0.3
    pixel_area = (25.0 / 64) ** 2
    for axis in range(3):
        assert mc[axis * 5 : axis * 5 + 5].sum() * pixel_area == pytest.approx(cdm_mass, rel=1e-3)
    # Mean surface density ~ Omega_cdm rho_crit * 5 Mpc/h.
    assert mc.mean() == pytest.approx((0.3 - 0.049) * cosmology.RHO_CRIT * 5.0, rel=1e-3)


def test_stellar_mass_responds_to_parameters(small_sim):
    def total(params, suite):
        ms, _ = generate.paint_simulation(small_sim, params, suite, SMALL, seed=11)
        return ms.sum()

    for suite in suites.SUITES:
        lo = total((0.3, 0.8, 0.5, 1.0, 1.0, 1.0), suite)
        hi = total((0.3, 0.8, 2.0, 1.0, 1.0, 1.0), suite)
        assert hi < lo, suite  # stronger supernova feedback -> fewer stars
        strong_agn = total((0.3, 0.8, 1.0, 4.0, 1.0, 1.0), suite)
        assert strong_agn <= total((0.3, 0.8, 1.0, 0.25, 1.0, 1.0), suite), suite


def test_suites_differ_in_functional_form():
    log_m = np.linspace(10, 14, 9)
    curves = [suites.SUITES[s].shmr(log_m, 1, 1, 1, 1)[0] for s in ("IllustrisTNG", "SIMBA", "Astrid")]
    for c in curves:
        assert np.all(np.diff(c) > 0)
    # Different shapes, not just offsets.
    d1, d2 = curves[0] - curves[1], curves[0] - curves[2]
    assert np.ptp(d1) > 0.2 and np.ptp(d2) > 0.2


def test_param_tables():
    for suite in suites.SUITES:
        names, params, seeds = suites.load_params(suite, "LH")
        assert params.shape == (1000, 6) and len(seeds) == 1000
        assert params[:, 0].min() >= 0.1 and params[:, 0].max() <= 0.5
        _, cv, _ = suites.load_params(suite, "CV")
        np.testing.assert_allclose(cv, np.tile([0.3, 0.8, 1, 1, 1, 1], (27, 1)))
        names, p1, seeds = suites.load_params(suite, "1P")
        assert p1.shape == (30, 6) and np.all(seeds == seeds[0])
        fid = [i for i, n in enumerate(names) if n.endswith("_0")]
        np.testing.assert_allclose(p1[fid], np.tile([0.3, 0.8, 1, 1, 1, 1], (len(fid), 1)), rtol=1e-6)
        # p3 varies A_SN1 alone from 0.25 to 4.
        np.testing.assert_allclose(p1[10:15, 2], [0.25, 0.5, 1.0, 2.0, 4.0], rtol=1e-3)
    assert os.path.exists(os.path.join(os.path.dirname(suites.params_table_path("SIMBA", "LH")), "..", "LICENSE"))
    with pytest.raises(ValueError, match="Unknown suite"):
        suites.load_params("Eagle", "LH")
    with pytest.raises(ValueError, match="Unknown set"):
        suites.load_params("SIMBA", "EX")


# ------------------------------------------------------------------- writer
def test_writer_files_shapes_resume_and_determinism(tmp_path, monkeypatch):
    calls = []
    real = writer.generate_simulation

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"].entropy)
        if len(calls) == 2 and fail["on"]:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    fail = {"on": True}
    monkeypatch.setattr(writer, "generate_simulation", counting)
    kw = dict(settings=SMALL, progress=False)
    with pytest.raises(KeyboardInterrupt):
        writer.write_cmd_files(tmp_path, "SIMBA", "LH", 3, **kw)
    shards = sorted((tmp_path / ".mock_work" / "SIMBA_LH").glob("sim_*.npz"))
    assert [p.name for p in shards] == ["sim_00000.npz"]
    mtime = shards[0].stat().st_mtime_ns
    fail["on"] = False
    calls.clear()
    paths = writer.write_cmd_files(tmp_path, "SIMBA", "LH", 3, keep_work=True, **kw)
    assert len(calls) == 2  # the finished simulation was not recomputed
    assert shards[0].stat().st_mtime_ns == mtime

    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "Maps_Mcdm_SIMBA_LH_z=0.00.npy",
        "Maps_Mstar_SIMBA_LH_z=0.00.npy",
        "params_LH_SIMBA.txt",
    ]
    ms = np.load(paths["Mstar"])
    mc = np.load(paths["Mcdm"])
    assert ms.shape == mc.shape == (45, 64, 64) and ms.dtype == mc.dtype == np.float32
    assert np.all(mc > 0) and np.all(ms >= 0) and (ms > 0).mean() < 0.2
    params = np.loadtxt(paths["params"])
    np.testing.assert_allclose(params, suites.load_params("SIMBA", "LH")[1][:3], rtol=1e-5)
    # CMD's units, which the dataset builder checks: over a simulation's 15 maps
    # (3 axes x 5 slabs tiling its box) the mean is its dark-matter mass per area.
    means = mc.reshape(3, 15, -1).mean(axis=(1, 2), dtype=np.float64)
    expected = [expected_mean_dark_matter(omega_m) for omega_m in params[:, 0]]
    np.testing.assert_allclose(means, expected, rtol=1e-3)

    # Same seed -> the same maps, also when regenerated from scratch.
    calls.clear()
    again = writer.write_cmd_files(tmp_path / "again", "SIMBA", "LH", 1, **kw)
    np.testing.assert_array_equal(np.load(again["Mstar"]), ms[:15])
    np.testing.assert_array_equal(np.load(again["Mcdm"]), mc[:15])
    assert not (tmp_path / "again" / ".mock_work").exists()  # shards removed by default
    # A different seed changes the maps; a config change is not served from stale shards.
    other = writer.write_cmd_files(tmp_path, "SIMBA", "LH", 1, seed=1, keep_work=True, **kw)
    assert not np.array_equal(np.load(other["Mcdm"]), mc[:15])
    with np.load(tmp_path / ".mock_work" / "SIMBA_LH" / "sim_00000.npz") as f:
        assert json.loads(str(f["config"]))["seed"] == 1

    # Finished files are not regenerated by a second identical call...
    calls.clear()
    mtime = other["Mcdm"].stat().st_mtime_ns
    assert writer.write_cmd_files(tmp_path, "SIMBA", "LH", 1, seed=1, **kw) == other
    assert calls == [] and other["Mcdm"].stat().st_mtime_ns == mtime
    # ...but are when the suite's calibration constants change.
    recalibrated = dataclasses.replace(suites.SUITES["SIMBA"], log_norm=suites.SUITES["SIMBA"].log_norm + 0.1)
    monkeypatch.setitem(suites.SUITES, "SIMBA", recalibrated)
    writer.write_cmd_files(tmp_path, "SIMBA", "LH", 1, seed=1, **kw)
    assert len(calls) == 1


def test_writer_bad_input(tmp_path):
    kw = dict(settings=SMALL, progress=False)
    with pytest.raises(ValueError, match="Unknown suite"):
        writer.write_cmd_files(tmp_path, "EAGLE", "LH", 1, **kw)
    with pytest.raises(ValueError, match="Unknown set"):
        writer.write_cmd_files(tmp_path, "Astrid", "XX", 1, **kw)
    with pytest.raises(ValueError, match="num_sims"):
        writer.write_cmd_files(tmp_path, "Astrid", "CV", 28, **kw)
    with pytest.raises(ValueError, match="num_sims"):
        writer.write_cmd_files(tmp_path, "Astrid", "CV", 0, **kw)
    with pytest.raises(ValueError, match="grid_size"):
        writer.write_cmd_files_from_fields(tmp_path, "Astrid", set_name="CV", num_sims=1, grid_size=33, map_size=64,
                                           progress=False)
    with pytest.raises(ValueError, match="field_names"):
        writer.write_cmd_files(tmp_path, "Astrid", "CV", 1, field_names=("Mgas",), **kw)
    with pytest.raises(ValueError, match="workers"):
        writer.write_cmd_files(tmp_path, "Astrid", "CV", 1, workers=0, **kw)
    with pytest.raises(ValueError, match="params"):
        generate.generate_simulation((0.3, 0.8), "Astrid", SMALL)


def test_writer_parallel_spawn(tmp_path):
    # Two processes, tiny sizes: the "spawn" path and its shards.
    kw = dict(settings=generate.MockSettings(grid_size=16, map_size=32, num_steps=2), progress=False)
    par = writer.write_cmd_files(tmp_path / "p", "Astrid", "1P", 2, workers=2, **kw)
    seq = writer.write_cmd_files(tmp_path / "s", "Astrid", "1P", 2, workers=1, **kw)
    np.testing.assert_array_equal(np.load(par["Mstar"]), np.load(seq["Mstar"]))
    np.testing.assert_array_equal(np.load(par["Mcdm"]), np.load(seq["Mcdm"]))
