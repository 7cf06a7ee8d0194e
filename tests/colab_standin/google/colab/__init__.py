"""A stand-in for Colab's ``google.colab`` (see ``tests/colab_standin/README.md``): tests only."""
from . import drive, files  # noqa: F401  (Colab's package makes both available the same way)

STANDIN = True  # real Colab has no such attribute: a test can tell the two apart
