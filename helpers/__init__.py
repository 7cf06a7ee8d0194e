"""Helpers for the course "Transfer learning for gender detection from faces".

The notebooks in ``notebooks/`` tell the story; this package does the work. The modules at
this level are the lesson's (what notebooks import and learners study); ``helpers.caffe``
reads Caffe files and converts them, ``helpers.synthetic`` builds quick mode's world, and
``helpers.course`` is the machinery (paths, results, environment checks, downloads, the
runner). See ``helpers/README.md`` for the map.

Importing ``helpers`` loads nothing heavy. To load a converted ``.keras`` file, whose custom
layers live in ``helpers.vggface``::

    import helpers
    model = helpers.load_model("weights/converted/vggface_quick.keras")
"""
__version__ = "0.2.0"

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: hide its INFO lines


def load_model(path, **kwargs):
    """``keras.saving.load_model`` with the course's custom layers registered first."""
    import keras

    from . import vggface  # noqa: F401  (registers VGGFacePreprocess, NamedSoftmax and the Caffe layers)

    return keras.saving.load_model(path, **kwargs)
