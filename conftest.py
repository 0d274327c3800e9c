"""Shared test configuration.

The suite runs once per Keras backend (see README). Tests marked
``backend_independent`` (pure numpy, TFDS) run only under the TensorFlow
backend so that the second pass does not repeat them.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason="backend independent: runs under the TensorFlow pass")
    for item in items:
        if "backend_independent" in item.keywords:
            item.add_marker(skip)
