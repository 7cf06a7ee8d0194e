"""Helpers for the course "Transfer learning for gender detection from faces".

The notebooks in ``notebooks/`` tell the story; this package does the work. Each module has
one job (see ``helpers/README.md`` for the map) and its own tests in ``tests/``.

Importing ``helpers`` is cheap: TensorFlow and Keras load only when a module that needs them
is imported. ``helpers.vggface`` registers the custom Keras layers so that
``keras.saving.load_model`` restores converted models.
"""
__version__ = "0.1.0"
