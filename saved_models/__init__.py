"""Pretrained keras_dmdiff models (installed as `keras_dmdiff_saved_models`).

Each folder holds one model: `model.keras`, a TensorFlow SavedModel in
`saved_model/`, `MODEL_CARD.md` and `metrics.json`.
"""
