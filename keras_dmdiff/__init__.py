"""keras_dmdiff."""
