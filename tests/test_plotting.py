import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from keras_dmdiff import plotting
from keras_dmdiff.evaluation import Baselines, EvaluationSettings, evaluate
from keras_dmdiff.posterior import PosteriorFunction
from keras_dmdiff_datasets.camels_cmd.fake_cmd import fake_maps

pytestmark = pytest.mark.backend_independent


def lognormal_sampler(width):
    def draw(stellar_mass, num_samples=1, num_steps=1, seed=0):
        rng = np.random.default_rng(seed)
        shape = (len(stellar_mass), num_samples) + stellar_mass.shape[1:]
        return (10.0 ** (10.98 + width * rng.standard_normal(shape))).astype(np.float32)

    return PosteriorFunction(draw)


@pytest.fixture(scope="module")
def maps():
    return fake_maps(3, map_size=32, seed=7)


@pytest.fixture(scope="module")
def metrics(maps):
    result = evaluate(lognormal_sampler(0.5), maps, EvaluationSettings(num_samples=4, num_steps=1),
                      baselines=Baselines(train_batches=maps), progress=False)
    # What a user gets back from metrics.json: lists, NaN written as null.
    return json.loads(json.dumps(result))


@pytest.fixture(scope="module")
def example(maps):
    stars, dm = maps
    samples = lognormal_sampler(0.5).sample(stars[:1], num_samples=3)[0]
    return {
        "map_index": 0,
        "box_size": 25.0,
        "stellar_mass": stars[0],
        "dark_matter_true": dm[0],
        "samples": samples,
        "posterior_mean": samples.mean(axis=0),
        "posterior_std_log10": np.log10(samples).std(axis=0),
    }


def all_labels(fig):
    labels = []
    for ax in fig.axes:
        labels += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    return " ".join(labels)


def test_each_figure_has_labelled_axes_with_units(metrics, example, tmp_path):
    figures = {
        "maps": plotting.plot_maps(example),
        "power_spectrum": plotting.plot_power_spectrum(metrics),
        "cross_correlation": plotting.plot_cross_correlation(metrics),
        "pdf": plotting.plot_pdf(metrics),
        "coverage": plotting.plot_coverage(metrics),
        "rank_histograms": plotting.plot_rank_histograms(metrics),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert all(ax.get_ylabel() for ax in panels), name
        # Stacked panels sharing k carry the x label once, at the bottom.
        assert panels[-1].get_xlabel(), name
        path = tmp_path / f"{name}.png"
        fig.savefig(path, dpi=50)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "$h$/Mpc" in all_labels(figures["power_spectrum"])
    assert "(Mpc/$h$)$^2$" in all_labels(figures["power_spectrum"])
    assert "$h$/Mpc" in all_labels(figures["cross_correlation"])
    assert "log_{10}" in all_labels(figures["pdf"]) and "Mpc/$h$" in all_labels(figures["pdf"])
    assert "Mpc/$h$" in all_labels(figures["maps"])
    # Every method of the metrics appears in the legends of the spectra.
    legend = [t.get_text() for t in figures["power_spectrum"].axes[0].get_legend().get_texts()]
    assert {"truth", "diffusion samples", "(b) conditional mean", "(c) stellar tracer"} <= set(legend)
    assert len(figures["rank_histograms"].axes) == 3


def test_figures_survive_missing_calibration_nan_and_unknown_baselines(maps, tmp_path):
    stars, dm = maps
    result = evaluate(
        lognormal_sampler(0.5),
        maps,
        EvaluationSettings(num_samples=1, num_steps=1),
        baselines={"flat": lambda s: np.full(s.shape, 1e11, np.float32)},
        progress=False,
    )
    result = json.loads(json.dumps(result))
    # A flat map has no fluctuations: its r(k) is undefined (null in JSON).
    assert all(v is None for v in result["cross_correlation"]["flat"]["mean"])
    assert result["calibration"] == {} and result["summary"]["verdict"] is None
    written = plotting.save_figures(result, None, tmp_path)
    assert "maps.png" not in written and len(written) == 5
    for name in written:
        assert (tmp_path / name).stat().st_size > 1000
