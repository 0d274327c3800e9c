"""Cross-suite transfer: models trained on one galaxy-formation suite, tested on all.

The paper trains on IllustrisTNG and tests on SIMBA and Astrid, whose stellar
populations differ for the same dark matter. `run_cross_suite` evaluates every
(training suite, test suite) pair with `keras_dmdiff.evaluation.run_evaluation`
and gathers the headline numbers into a table (JSON and Markdown) and a figure.
Each pair's evaluation is resumable, so an interrupted grid continues.
"""

import json
import pathlib

import numpy as np

from keras_dmdiff import atomic_files

# (summary key, method, label): the numbers shown for each pair.
HEADLINE = (
    ("cross_correlation_1_k_5", "diffusion_posterior_mean", "r(1<k<5) posterior mean"),
    ("power_ratio_error_k_lt_10", "diffusion_samples", "|P ratio - 1| (k<10) samples"),
    ("mse_dex2", "diffusion_posterior_mean", "MSE [dex^2] posterior mean"),
    ("coverage_error", None, "pixel coverage error"),
)


def _headline(summary):
    values = {}
    for key, method, label in HEADLINE:
        value = summary.get(key)
        if method is not None:
            value = (value or {}).get(method)
        values[label] = None if value is None else float(value)
    values["verdict"] = summary.get("verdict")
    return values


def run_cross_suite(models, data, out_dir, settings=None, *, set_name="LH", reading=None):
    """Evaluates every model on every suite's held-out split.

    Args:
        models: dict training suite -> model path (.keras or SavedModel).
        data: dict test suite -> folder of that suite's CMD files.
        out_dir: output folder: one evaluation folder per pair, table.json,
            table.md and cross_suite.png.
        settings: the `keras_dmdiff.evaluation.EvaluationSettings` of every
            pair (None: the defaults).
        set_name: CMD set of the test data.
        reading: a `keras_dmdiff.evaluation.EvaluationData` whose split,
            crops, TFDS folder and baseline settings every pair shares; its
            dataset and manual_dir are each pair's (None: the defaults).

    Returns:
        dict training suite -> test suite -> headline metrics.

    Example:
        >>> run_cross_suite({"IllustrisTNG": "tng.keras", "SIMBA": "simba.keras"},  # doctest: +SKIP
        ...                 {"IllustrisTNG": "data/tng", "SIMBA": "data/simba"}, "cross",
        ...                 EvaluationSettings(num_samples=8, num_steps=50, max_maps=8))
    """
    from keras_dmdiff.evaluation import EvaluationData, run_evaluation

    if not models or not data:
        raise ValueError("run_cross_suite needs at least one model and one test suite.")
    reading = EvaluationData() if reading is None else reading
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    for train_suite, model_path in models.items():
        table[train_suite] = {}
        for test_suite, manual_dir in data.items():
            pair_dir = out_dir / f"{train_suite}_on_{test_suite}"
            metrics_path = pair_dir / "metrics.json"
            if metrics_path.exists():
                metrics = json.loads(metrics_path.read_text())
            else:
                pair = reading.replace(dataset=f"camels_cmd/{test_suite}_{set_name}", manual_dir=str(manual_dir))
                metrics = run_evaluation(str(model_path), pair, pair_dir, settings)
            table[train_suite][test_suite] = _headline(metrics["summary"])
    atomic_files.write_json(out_dir / "table.json", table)
    atomic_files.write_text(out_dir / "table.md", format_table(table))
    plot_cross_suite(table, out_dir / "cross_suite.png")
    return table


def format_table(table):
    """A Markdown table per headline metric: rows = training suite, columns = test suite."""
    test_suites = list(next(iter(table.values())))
    lines = []
    for _, _, label in HEADLINE:
        lines += [f"### {label}", "", "| trained on \\ tested on | " + " | ".join(test_suites) + " |"]
        lines.append("|---" * (len(test_suites) + 1) + "|")
        for train_suite, row in table.items():
            cells = ["-" if row[t][label] is None else f"{row[t][label]:.3f}" for t in test_suites]
            lines.append(f"| {train_suite} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_cross_suite(table, path):
    """Heat maps of r(k) and of the P-ratio error for each (train, test) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_suites = list(table)
    test_suites = list(next(iter(table.values())))
    labels = [HEADLINE[0][2], HEADLINE[1][2]]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, label, cmap in zip(axes, labels, ("viridis", "magma_r")):
        grid = np.array(
            [[np.nan if table[a][b][label] is None else table[a][b][label] for b in test_suites] for a in train_suites]
        )
        shown = axis.imshow(grid, cmap=cmap)
        for i in range(len(train_suites)):
            for j in range(len(test_suites)):
                # Dark text on light cells, light text on dark ones, so every value stays legible.
                red, green, blue, _ = shown.cmap(shown.norm(grid[i, j]))
                ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
                axis.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color=ink, fontsize=11)
        axis.set_xticks(range(len(test_suites)), test_suites)
        axis.set_yticks(range(len(train_suites)), train_suites)
        axis.set_xlabel("tested on")
        axis.set_ylabel("trained on")
        axis.set_title(label)
        figure.colorbar(shown, ax=axis, fraction=0.046)
    figure.tight_layout()
    with atomic_files.replacing(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    return path
