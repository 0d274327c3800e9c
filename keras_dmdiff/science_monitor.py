"""Science during training: the posterior's held-out statistics, logged every few epochs.

The loss says little about whether the posterior is right (an ELBO can improve
while the posterior mean loses to its own input). `PosteriorMonitor` samples a
fixed set of held-out maps with a few steps and logs the headline statistics of
`keras_dmdiff.evaluation.evaluate`, computed by that same function, so they
mean what they mean in every report:

    science_r_mean       r(1<k<5) of the posterior mean with the truth
    science_r_sample     r(1<k<5) of single samples
    science_power_error  the samples' mean |P ratio - 1| for k < 10 h/Mpc
    science_coverage_error  largest pixel-coverage miss at 50/68/90/95 %

They enter the epoch's logs, so `history.csv` and TensorBoard record them, and
the model with the best `science_r_mean` so far is kept as `best.keras` beside a
`best.json` naming its epoch: the checkpoint to ship is chosen by the science,
not by the loss.

Example:
    >>> monitor = PosteriorMonitor((stars, dm), box_size=12.5, out_dir="runs/x")  # doctest: +SKIP
    >>> model.fit(data, epochs=20, callbacks=[keras.callbacks.SwapEMAWeights(True), monitor])  # doctest: +SKIP
"""

import dataclasses
import json
import pathlib

import keras
import numpy as np

from keras_dmdiff import atomic_files

LOG_KEYS = ("science_r_mean", "science_r_sample", "science_power_error", "science_coverage_error")


@dataclasses.dataclass
class MonitorConfig:
    """How often and how much the training run samples its validation maps.

    Args:
        every_epochs: epochs between measurements (0: no monitor).
        maps: validation maps (crops of the training size) sampled.
        samples: posterior samples per map (>= 2 for coverage).
        steps: ancestral sampling steps.
        seed: sampling seed (fixed, so epochs are compared on the same noise).
    """

    every_epochs: int = 0
    maps: int = 4
    samples: int = 4
    steps: int = 20
    seed: int = 0

    def validate(self):
        if self.every_epochs < 0:
            raise ValueError(f"science.every_epochs must be >= 0; got {self.every_epochs}.")
        if self.every_epochs and (self.maps < 1 or self.samples < 2 or self.steps < 1):
            raise ValueError(
                "science needs maps >= 1, samples >= 2 (coverage) and steps >= 1; "
                f"got maps={self.maps}, samples={self.samples}, steps={self.steps}."
            )


class PosteriorMonitor(keras.callbacks.Callback):
    """Logs held-out posterior statistics every `every_epochs` epochs; keeps the best model.

    Place it after `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)` (so it
    measures the EMA weights) and before the loggers (so they record its keys).

    Args:
        maps: `(stellar_mass, dark_matter)` arrays `[N, H, W]`, held out.
        box_size: side of those maps in Mpc/h.
        config: a `MonitorConfig`.
        out_dir: where `best.keras` and `best.json` go (None: not kept).
    """

    def __init__(self, maps, box_size, config=None, out_dir=None):
        super().__init__()
        self.maps = maps
        self.box_size = float(box_size)
        self.config = config or MonitorConfig(every_epochs=1)
        self.out_dir = None if out_dir is None else pathlib.Path(out_dir)

    def measure(self):
        """The monitor's statistics for the model as it is now: a dict of LOG_KEYS."""
        from keras_dmdiff.evaluation import EvaluationSettings, evaluate
        from keras_dmdiff.posterior import SamplingOptions
        from keras_dmdiff.posterior_metrics import MeasureSettings

        c = self.config
        settings = EvaluationSettings(
            num_samples=c.samples, num_steps=c.steps, seed=c.seed,
            options=SamplingOptions(batch_size=c.maps * c.samples), measure=MeasureSettings(num_apertures=0),
        )
        summary = evaluate(self.model, self.maps, settings, baselines=[], box_size=self.box_size,
                           figures=False, progress=False)["summary"]
        return {
            "science_r_mean": summary["cross_correlation_1_k_5"]["diffusion_posterior_mean"],
            "science_r_sample": summary["cross_correlation_1_k_5"]["diffusion_samples"],
            "science_power_error": summary["power_ratio_error_k_lt_10"]["diffusion_samples"],
            "science_coverage_error": summary["coverage_error"],
        }

    def on_epoch_end(self, epoch, logs=None):
        every = self.config.every_epochs
        if not every or (epoch + 1) % every:
            return
        values = self.measure()
        if logs is not None:
            logs.update({key: float("nan") if v is None else float(v) for key, v in values.items()})
        if self.out_dir is not None:
            self._keep_if_best(epoch, values)

    def _keep_if_best(self, epoch, values):
        record_path = self.out_dir / "best.json"
        best = json.loads(record_path.read_text()) if record_path.exists() else None
        score = values["science_r_mean"]
        if score is None or not np.isfinite(score):
            return
        if best is not None and best["science_r_mean"] >= score:
            return
        with atomic_files.replacing(self.out_dir / "best.keras") as temporary:
            self.model.save(temporary)
        atomic_files.write_json(record_path, {"epoch": int(epoch), **values})
