"""Tests of keras_dmdiff.stats power spectra and map statistics: known answers."""

import numpy as np
import pytest

from keras_dmdiff.stats import aperture_masses
from keras_dmdiff.stats import cross_correlation
from keras_dmdiff.stats import cross_power_spectrum
from keras_dmdiff.stats import fundamental_wavenumber
from keras_dmdiff.stats import k_bin_edges
from keras_dmdiff.stats import mse_dex2
from keras_dmdiff.stats import nyquist_wavenumber
from keras_dmdiff.stats import one_point_pdf
from keras_dmdiff.stats import overdensity
from keras_dmdiff.stats import peak_centres
from keras_dmdiff.stats import pixel_area
from keras_dmdiff.stats import power_ratio
from keras_dmdiff.stats import power_spectrum

pytestmark = pytest.mark.backend_independent

L = 25.0


def gaussian_random_field(pk_fn, n, box_size, num, seed):
    """Real Gaussian fields with power spectrum pk_fn(k) in this module's convention.

    With `w` unit white noise, `E|rfft2(w)|^2 = n^2`; multiplying by
    `T = n sqrt(P) / L` gives `E|F|^2 = P n^4 / L^2`, i.e. `P` after normalisation.
    """
    rng = np.random.default_rng(seed)
    white = rng.normal(size=(num, n, n))
    ky = 2 * np.pi * np.fft.fftfreq(n, d=box_size / n)
    kx = 2 * np.pi * np.fft.rfftfreq(n, d=box_size / n)
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    with np.errstate(divide="ignore"):
        transfer = np.where(k > 0, n * np.sqrt(pk_fn(k)) / box_size, 0.0)
    return np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(n, n))


# --- k bins ------------------------------------------------------------------


def test_linear_bins_are_centred_on_multiples_of_the_fundamental():
    kf = fundamental_wavenumber(L)
    edges = k_bin_edges(256, L)
    assert edges.size == 129
    np.testing.assert_allclose(edges[:3] / kf, [0.5, 1.5, 2.5])
    # The last bin stops at Nyquist (~32.17 h/Mpc for CMD).
    assert edges[-1] == pytest.approx(nyquist_wavenumber(256, L))
    assert nyquist_wavenumber(256, L) == pytest.approx(32.17, abs=0.01)


def test_k_is_in_h_per_mpc_and_counts_cover_the_disc():
    n = 32
    k, pk, counts = power_spectrum(1.0 + 0.1 * np.random.default_rng(0).normal(size=(n, n)))
    kf = 2 * np.pi / L
    # The first bin [k_f/2, 3 k_f/2) holds the 4 modes |n| = 1 and the 4 with |n| = sqrt(2);
    # k is the mean |k| of its modes.
    assert counts[0] == 8
    assert k[0] == pytest.approx(kf * (1 + np.sqrt(2)) / 2)
    # All modes with 0.5 <= |n| <= n/2 are counted once (full plane, +k and -k).
    ny = np.fft.fftfreq(n, 1.0 / n)
    norm = np.sqrt(ny[:, None] ** 2 + ny[None, :] ** 2)
    assert counts.sum() == np.sum((norm >= 0.5) & (norm <= n / 2 + 1e-9))
    assert pk.shape == (n // 2,)


@pytest.mark.parametrize("n,num_bins", [(256, 20), (64, 40), (33, 10)])
def test_automatic_log_bins_have_no_empty_bin(n, num_bins):
    edges = k_bin_edges(n, L, bins="log", num_bins=num_bins)
    kf = fundamental_wavenumber(L)
    assert edges[0] == pytest.approx(kf)
    assert edges[-1] == pytest.approx(nyquist_wavenumber(n, L))
    assert np.all(np.diff(np.log(edges)) > 0)
    maps = 1.0 + 0.1 * np.random.default_rng(1).normal(size=(n, n))
    _, pk, counts = power_spectrum(maps, bins="log", num_bins=num_bins)
    assert np.all(counts > 0) and np.all(np.isfinite(pk))


def test_explicit_edges_keep_empty_bins_as_nan():
    kf = fundamental_wavenumber(L)
    edges = kf * np.array([0.5, 1.5, 1.55, 3.0])  # the middle bin has no mode
    k, pk, counts = power_spectrum(np.random.default_rng(2).uniform(1, 2, (16, 16)), bins=edges)
    assert counts[1] == 0 and np.isnan(pk[1])
    assert np.all(np.isfinite(pk[[0, 2]]))


# --- known answers ------------------------------------------------------------


def test_white_noise_is_flat_at_variance_times_pixel_area():
    n, num, sigma = 64, 20, 0.3
    noise = sigma * np.random.default_rng(3).normal(size=(num, n, n))
    k, pk, counts = power_spectrum(noise, is_overdensity=True)
    expected = sigma**2 * (L / n) ** 2
    mean_pk = pk.mean(axis=0)
    # Overall level to <1 %, each bin within 5 sigma of its mode-count noise.
    assert np.average(mean_pk, weights=counts) == pytest.approx(expected, rel=0.01)
    rel_sigma = np.sqrt(2.0 / (counts * num))
    assert np.all(np.abs(mean_pk / expected - 1) < 5 * rel_sigma)


@pytest.mark.parametrize("mode", [(3, 5), (0, 7), (4, 0), (0, 16), (16, 16)])
def test_single_fourier_mode_lands_in_its_bin_with_exact_amplitude(mode):
    n, amp = 32, 0.4
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    field = 1.0 + amp * np.cos(2 * np.pi * (mode[0] * y + mode[1] * x) / n)
    bins = k_bin_edges(n, L, k_max=1.5 * nyquist_wavenumber(n, L), num_bins=40)
    k, pk, counts = power_spectrum(field, bins=bins)
    kmode = 2 * np.pi / L * np.hypot(*mode)
    target = np.searchsorted(bins, kmode, side="right") - 1
    # A cosine puts amp^2/2 variance in +k and -k, i.e. sum(P * counts) = amp^2 L^2 / 2;
    # a self-conjugate mode (components 0 or n/2, e.g. (-1)^x) carries the full amp^2.
    self_conjugate = all(m in (0, n // 2) for m in mode)
    variance = amp**2 if self_conjugate else amp**2 / 2
    assert pk[target] * counts[target] == pytest.approx(variance * L**2, rel=1e-10)
    others = np.delete(pk, target)[np.delete(counts, target) > 0]  # beyond the corner: empty
    assert np.all(np.abs(others) < 1e-12 * pk[target])


def test_mode_at_nyquist_is_included_by_default():
    n = 16
    x = np.arange(n)
    field = 1.0 + 0.5 * np.broadcast_to((-1.0) ** x, (n, n))
    k, pk, counts = power_spectrum(field)
    assert pk[-1] * counts[-1] == pytest.approx(0.25 * L**2)


def test_gaussian_random_field_recovers_input_spectrum():
    n, num = 64, 24

    def pk_fn(k):
        return 0.5 / (1.0 + (k / 2.0) ** 2)

    fields = gaussian_random_field(pk_fn, n, L, num, seed=4)
    k, pk, counts = power_spectrum(fields, bins="log", num_bins=12, is_overdensity=True)
    ratio = pk.mean(axis=0) / pk_fn(k)
    # A few percent overall; per bin within sampling noise plus 3 % for the
    # variation of P across a log bin.
    assert np.average(ratio, weights=counts) == pytest.approx(1.0, abs=0.02)
    rel_sigma = np.sqrt(2.0 / (counts * num))
    assert np.all(np.abs(ratio - 1) < 4 * rel_sigma + 0.03)


def test_parseval_variance_equals_sum_of_power_over_area():
    rng = np.random.default_rng(5)
    maps = np.exp(rng.normal(size=(3, 2, 48, 48)))
    delta = overdensity(maps)
    all_modes = np.array([0.0, 10 * nyquist_wavenumber(48, L)])
    k, pk, counts = power_spectrum(maps, bins=all_modes)
    assert counts[0] == 48 * 48  # every mode (k = 0 carries no power for an overdensity)
    np.testing.assert_allclose(pk[..., 0] * counts[0] / L**2, np.mean(delta**2, axis=(-2, -1)))


def test_overdensity_option_and_mean_invariance():
    rng = np.random.default_rng(6)
    maps = np.exp(rng.normal(size=(2, 32, 32)))
    _, pk1, _ = power_spectrum(maps)
    _, pk2, _ = power_spectrum(7.0 * maps)
    _, pk3, _ = power_spectrum(overdensity(maps), is_overdensity=True)
    np.testing.assert_allclose(pk1, pk2)
    np.testing.assert_allclose(pk1, pk3)
    # A mean-subtracted log field only makes sense with is_overdensity=True.
    logs = np.log10(maps) - np.log10(maps).mean()
    with pytest.raises(ValueError, match="positive mean"):
        power_spectrum(logs - 5)
    _, pk_log, _ = power_spectrum(logs, is_overdensity=True)
    assert np.all(pk_log > 0)


def test_box_size_scales_k_and_power():
    maps = np.exp(np.random.default_rng(7).normal(size=(32, 32)))
    k1, pk1, _ = power_spectrum(maps, box_size=25.0)
    k2, pk2, _ = power_spectrum(maps, box_size=50.0)
    np.testing.assert_allclose(k2, k1 / 2)
    np.testing.assert_allclose(pk2, pk1 * 4)


# --- cross spectra ------------------------------------------------------------


def test_cross_power_with_itself_is_the_auto_power():
    maps = np.exp(np.random.default_rng(8).normal(size=(3, 32, 32)))
    _, pk, _ = power_spectrum(maps)
    _, px, _ = cross_power_spectrum(maps, maps)
    np.testing.assert_allclose(px, pk)


def test_cross_correlation_identical_scaled_and_independent():
    rng = np.random.default_rng(9)
    a = np.exp(rng.normal(size=(64, 64)))
    _, r_same, _ = cross_correlation(a, a)
    _, r_scaled, _ = cross_correlation(a, 5.0 * a)
    np.testing.assert_allclose(r_same, 1.0)
    np.testing.assert_allclose(r_scaled, 1.0)
    b = np.exp(rng.normal(size=(20, 64, 64)))
    k, r_ind, counts = cross_correlation(b, a)  # batch [20] against one map broadcasts
    assert r_ind.shape == (20, 32)
    # Independent maps: r ~ 0 with scatter ~ 1/sqrt(modes / 2).
    mean_r = r_ind.mean(axis=0)
    assert np.all(np.abs(mean_r) < 5 * np.sqrt(2.0 / (counts * 20)))
    _, r_neg, _ = cross_correlation(a, 2.0 * a.mean() - a)
    np.testing.assert_allclose(r_neg, -1.0)


def test_batched_shapes_and_broadcasting():
    rng = np.random.default_rng(10)
    samples = np.exp(rng.normal(size=(5, 2, 32, 32)))
    truth = np.exp(rng.normal(size=(2, 32, 32)))
    k, pk, counts = power_spectrum(samples)
    assert pk.shape == (5, 2, 16) and k.shape == counts.shape == (16,)
    _, px, _ = cross_power_spectrum(samples, truth)
    assert px.shape == (5, 2, 16)
    _, pk0, _ = power_spectrum(samples[3, 1])
    np.testing.assert_allclose(pk[3, 1], pk0)


def test_power_ratio_mean_and_band():
    pk_true = np.array([[1.0, 2.0, 4.0]])
    factors = np.linspace(0.5, 1.5, 101)
    pk_samples = factors[:, None, None] * pk_true
    out = power_ratio(pk_samples, pk_true)
    np.testing.assert_allclose(out["mean"], 1.0)
    np.testing.assert_allclose(out["low"], 0.6)
    np.testing.assert_allclose(out["high"], 1.4)
    assert out["ratio"].shape == pk_samples.shape
    with pytest.raises(ValueError):
        power_ratio(pk_samples, np.ones(4))
    with pytest.raises(ValueError):
        power_ratio(pk_samples, pk_true, band=(0.9, 0.1))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: power_spectrum(np.ones((8, 10))), "square"),
        (lambda: power_spectrum(np.full((8, 8), np.nan)), "NaN"),
        (lambda: power_spectrum(np.ones((8, 8)), box_size=0.0), "box_size"),
        (lambda: power_spectrum(np.ones((8, 8)), box_size=-3), "box_size"),
        (lambda: power_spectrum(np.ones(8)), "dimensions"),
        (lambda: power_spectrum(np.ones((8, 8)), bins="cubic"), "bins"),
        (lambda: power_spectrum(np.ones((8, 8)), bins=[3.0, 1.0]), "increasing"),
        (lambda: cross_correlation(np.ones((8, 8)), np.ones((16, 16))), "same map shape"),
        (lambda: cross_correlation(np.ones((2, 8, 8)), np.ones((3, 8, 8))), "broadcast"),
    ],
)
def test_power_spectrum_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- map statistics -----------------------------------------------------------


def test_one_point_pdf_of_known_lognormal_map():
    rng = np.random.default_rng(11)
    maps = 10 ** rng.normal(11.0, 0.5, size=(3, 128, 128))
    centres, density = one_point_pdf(maps)
    width = np.diff(centres)[0]
    assert density.shape == (3, 100)
    np.testing.assert_allclose((density * width).sum(axis=-1), 1.0)
    gauss = np.exp(-0.5 * ((centres - 11.0) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
    assert np.max(np.abs(density.mean(axis=0) - gauss)) < 0.05


def test_one_point_pdf_keeps_out_of_range_fraction_and_offset():
    maps = np.zeros((4, 4))
    maps[0, :] = 99.0  # log10(1 + 99) = 2
    centres, density = one_point_pdf(maps, bins=[1.5, 2.5], offset=1.0)
    assert density[0] * 1.0 == pytest.approx(0.25)  # 3/4 of pixels (log = 0) are outside
    with pytest.raises(ValueError, match="offset"):
        one_point_pdf(maps)


def test_mse_dex2_known_values_and_broadcast():
    truth = np.full((8, 8), 1e11)
    samples = np.stack([truth, truth * 10, truth / 100])
    np.testing.assert_allclose(mse_dex2(samples, truth), [0.0, 1.0, 4.0])
    with pytest.raises(ValueError):
        mse_dex2(np.ones((4, 4)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="positive"):
        mse_dex2(np.zeros((4, 4)), np.ones((4, 4)))


def test_aperture_mass_of_uniform_map_is_density_times_disc_area():
    density = 3e10
    maps = np.full((2, 256, 256), density)
    centres = [[12.5, 12.5], [0.0, 0.0], [24.9, 3.3]]
    for radius in (0.5, 2.0, 5.0):
        m = aperture_masses(maps, centres, radius, L)
        assert m.shape == (2, 3)
        # Pixelisation: error ~ perimeter * pixel / area ~ 2 dx / r.
        tol = 2 * (L / 256) / radius
        np.testing.assert_allclose(m / (density * np.pi * radius**2), 1.0, atol=tol)


def test_aperture_mass_wraps_periodically():
    n = 64
    dx = L / n
    maps = np.zeros((n, n))
    maps[0, 0] = maps[-1, -1] = maps[0, -1] = maps[-1, 0] = 1.0
    mass = aperture_masses(maps, [[0.0, 0.0]], 2 * dx, L)
    assert mass[0] == pytest.approx(4 * pixel_area(n, L))
    # Translating the map and the centre together changes nothing.
    rng = np.random.default_rng(12)
    field = rng.uniform(size=(n, n))
    c = np.array([[1.1, 23.7]])
    shifted = np.roll(field, (10, -7), axis=(0, 1))
    m1 = aperture_masses(field, c, 3.0, L)
    m2 = aperture_masses(shifted, (c + [10 * dx, -7 * dx]) % L, 3.0, L)
    m3 = aperture_masses(field, c + [L, -2 * L], 3.0, L)  # centres outside the box wrap
    np.testing.assert_allclose(m1, m2)
    np.testing.assert_allclose(m1, m3)


def test_aperture_mass_errors():
    with pytest.raises(ValueError, match="radius"):
        aperture_masses(np.ones((16, 16)), [[1.0, 1.0]], 13.0, L)
    with pytest.raises(ValueError, match="centres"):
        aperture_masses(np.ones((16, 16)), [[1.0, 1.0, 1.0]], 1.0, L)


def test_peak_centres_are_separated_and_sorted():
    n = 64
    m = np.zeros((n, n))
    m[10, 10], m[11, 11], m[40, 50], m[63, 0] = 5.0, 4.0, 3.0, 2.0
    c = peak_centres(m, 3, min_separation=1.0, box_size=L)
    dx = L / n
    np.testing.assert_allclose(c, (np.array([[10, 10], [40, 50], [63, 0]]) + 0.5) * dx)


def test_docstring_examples_run():
    import doctest
    import importlib

    # importlib: the package attribute `power_spectrum` is the function, not the module.
    for name in ("power_spectrum", "maps", "calibration"):
        module = importlib.import_module(f"keras_dmdiff.stats.{name}")
        result = doctest.testmod(module, extraglobs={"np": np})
        assert result.failed == 0, module.__name__
