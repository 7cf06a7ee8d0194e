"""Shared test set-up: every test runs in its own course folders, and tiny VGG-Face fixtures.

Isolation (autouse): ``COURSE_HOME`` (weights/, data/), ``COURSE_BUILD_DIR`` (build/) and
``COURSE_RESULTS`` point into the test's temporary folder and ``COURSE_MODE`` is unset, so no
unit test reads or writes the repository's assets, caches or results; Colab's marker
(``COLAB_RELEASE_TAG``) and the course's Colab variables are unset too. The notebook tests
(marker ``notebooks``) set up their own course folders and are left alone.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from helpers.course import paths, results
from tests.tiny_vgg import keras_tiny_vggface, write_tiny_vgg


@pytest.fixture(autouse=True)
def isolated_course(request, tmp_path, monkeypatch):
    """The test's own assets home, build folder and results file (not for notebook runs)."""
    if request.node.get_closest_marker("notebooks"):
        yield None
        return
    root = tmp_path / "course"
    monkeypatch.setenv(paths.ENV_HOME, str(root / "home"))
    monkeypatch.setenv(paths.ENV_BUILD, str(root / "build"))
    monkeypatch.setenv(results.ENV_RESULTS, str(root / "build" / "results.json"))
    monkeypatch.delenv(paths.ENV_MODE, raising=False)
    # the same on Colab or in a simulated runtime as anywhere: no Drive, no fast-data folder, no notebook
    for name in (paths.ENV_FAST_DATA, paths.ENV_COLAB_TAG, paths.ENV_COLAB_CONTENT, results.ENV_NOTEBOOK):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(paths.ENV_SMOKE, raising=False)  # environment.start() exports these two:
    monkeypatch.delenv(paths.ENV_SUBSET, raising=False)  # a test that calls it must not shrink the next
    # What a test's code exports itself (environment.start sets COURSE_FAST_DATA_DIR, COURSE_SMOKE, ...)
    # leaves with it: monkeypatch only restores what it changed, and a leaked variable moved a later
    # module's fixture (built before that module's first test) to another folder.
    saved = dict(os.environ)
    yield root
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def tiny_vggface():
    """``tiny_vggface(seed=..., classes=..., class_names=...)``: a fresh tiny Keras VGG-Face."""
    return keras_tiny_vggface


@pytest.fixture
def tiny_caffe_files(tmp_path):
    """A tiny VGG-Face release in the real V1 formats: ``(prototxt, caffemodel)``."""
    return write_tiny_vgg(tmp_path / "tiny_release", seed=0)
