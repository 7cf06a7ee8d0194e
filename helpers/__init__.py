"""Helpers for the course "Transfer learning for gender detection from faces".

The notebooks in ``notebooks/`` tell the story; this package does the work. Each module has
one job (see ``helpers/README.md`` for the map) and its own tests in ``tests/``.

Importing ``helpers`` loads Keras (a few seconds), because ``helpers.vggface`` must register
the course's custom Keras layers before ``keras.saving.load_model`` can restore a converted
model. TensorFlow-heavy modules (pipelines, training) still load only when imported.
"""
__version__ = "0.1.0"

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
from . import vggface  # registers the custom layers for keras.saving.load_model  # noqa: E402
