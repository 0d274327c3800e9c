"""Makes docs/mock_suites.png and prints the mock's moments and timing.

One fiducial simulation (the first CV row) of each mock suite at CMD size
(128^3 particles, 25 Mpc/h, 256^2 maps): stellar mass and dark matter side by
side, the power spectrum of the dark-matter maps, and log moments next to the
published CMD values.

    python docs/mock_suites.py
"""

import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_dmdiff.mock import PUBLISHED_MOMENTS, SUITES, MockSettings, generate_simulation, load_params  # noqa: E402
from keras_dmdiff.stats import power_spectrum  # noqa: E402


def main(out=pathlib.Path(__file__).parent / "mock_suites.png"):
    figure, axes = plt.subplots(3, 3, figsize=(13, 12.5))
    print("| suite | log10(1+M*) mean / std (published) | log10 Mcdm mean / std (published) | non-zero M* | s/sim |")
    print("|---|---|---|---|---|")
    for row, suite in enumerate(SUITES):
        _, table, _ = load_params(suite, "CV")
        params = table[0]
        start = time.time()
        stars, dm = generate_simulation(params, suite, MockSettings(), seed=0)
        seconds = time.time() - start
        x, y = np.log10(stars + 1.0), np.log10(dm)
        published = PUBLISHED_MOMENTS[suite]
        print(
            f"| {suite} | {x.mean():.3f} / {x.std():.3f} ({published['log_mstar'][0]} / {published['log_mstar'][1]}) "
            f"| {y.mean():.3f} / {y.std():.3f} ({published['log_mcdm'][0]} / {published['log_mcdm'][1]}) "
            f"| {np.mean(stars > 0):.2%} | {seconds:.1f} |"
        )
        shown = axes[row, 0].imshow(x[0], origin="lower", cmap="magma")
        figure.colorbar(shown, ax=axes[row, 0], fraction=0.046)
        axes[row, 0].set_title(f"{suite} mock: log10(1 + M*)")
        shown = axes[row, 1].imshow(y[0], origin="lower", cmap="viridis")
        figure.colorbar(shown, ax=axes[row, 1], fraction=0.046)
        axes[row, 1].set_title(f"{suite} mock: log10 Mcdm")
        for axis in axes[row, :2]:
            axis.set_xticks([])
            axis.set_yticks([])
        k, pk, _ = power_spectrum(dm, box_size=25.0)
        _, pk_stars, _ = power_spectrum(stars, box_size=25.0)
        axes[row, 2].loglog(k, pk.mean(axis=0), label="Mcdm")
        axes[row, 2].loglog(k, pk_stars.mean(axis=0), label="M*")
        axes[row, 2].set(xlabel="k [h/Mpc]", ylabel="P(k) [(Mpc/h)^2]", title="mean over the 15 maps")
        axes[row, 2].legend()
    figure.suptitle("Mock CMD, fiducial cosmology and astrophysics (CV row 0), 25 Mpc/h, 256^2 pixels")
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
