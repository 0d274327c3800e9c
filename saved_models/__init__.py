"""Pretrained keras_dmdiff models (installed as `keras_dmdiff_saved_models`).

Each folder holds one model: `model.keras`, `MODEL_CARD.md`, `metrics.json`
and its held-out figures; the diffusion model `tng_mock_cpu` also a
TensorFlow SavedModel in `saved_model/`. `tng_mock_cpu_ddim8` is its 8-step
distilled student.
"""
