"""Path resolution and the quick/full mode switch."""
from pathlib import Path

import pytest

from helpers.course import paths


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path))
    monkeypatch.delenv(paths.ENV_MODE, raising=False)
    return tmp_path


def make_full_assets(root: Path) -> None:
    a = paths.assets_for("full")
    for p in (a.prototxt, a.caffemodel, a.names, a.sample_image, *a.fold_files):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (a.dataset_root / "aligned").mkdir()


def test_override_variable_moves_weights_and_data(home):
    assert paths.assets_home() == home.resolve()
    assert paths.weights_dir() == home.resolve() / "weights"
    assert paths.data_dir() == home.resolve() / "data"
    assert paths.assets_for("full").caffemodel == home.resolve() / "weights/vgg_face_caffe/VGG_FACE.caffemodel"


def test_without_override_the_repo_holds_assets(monkeypatch):
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    assert paths.assets_home() == paths.REPO_ROOT
    assert (paths.REPO_ROOT / "helpers" / "course" / "paths.py").is_file()


def test_colab_drive_is_used_only_when_mounted(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    monkeypatch.setitem(__import__("sys").modules, "google.colab", object())
    monkeypatch.setattr(paths, "DRIVE_HOME", tmp_path / "drive" / "course")
    assert paths.assets_home() == paths.REPO_ROOT  # Drive folder absent
    (tmp_path / "drive" / "course").mkdir(parents=True)
    assert paths.assets_home() == tmp_path / "drive" / "course"


def test_build_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_BUILD, str(tmp_path / "b"))
    assert paths.build_dir() == (tmp_path / "b").resolve()


def test_auto_mode_is_quick_when_assets_are_missing_and_says_why(home):
    mode, why = paths.resolve_mode("auto")
    assert mode == "quick"
    assert "missing" in why and "VGG_FACE_deploy.prototxt" in why
    assert len(paths.missing_full_assets()) == 4 + 5 + 1


def test_auto_mode_is_full_when_every_asset_is_present(home):
    make_full_assets(home)
    assert paths.missing_full_assets() == []
    assert paths.resolve_mode()[0] == "full"
    assert paths.resolve_mode("quick")[0] == "quick"  # an explicit request wins


def test_environment_variable_sets_the_mode(home, monkeypatch):
    monkeypatch.setenv(paths.ENV_MODE, "full")
    mode, why = paths.resolve_mode(None)
    assert mode == "full" and paths.ENV_MODE in why
    monkeypatch.setenv(paths.ENV_MODE, "auto")
    assert paths.resolve_mode(None)[0] == "quick"
    # the notebook's parameter beats the environment
    monkeypatch.setenv(paths.ENV_MODE, "full")
    assert paths.resolve_mode("quick")[0] == "quick"


def test_unknown_mode_is_a_clear_error(home):
    with pytest.raises(ValueError, match="unknown mode 'fast'.*quick, full"):
        paths.resolve_mode("fast")


def test_quick_assets_mirror_the_tarball_names(home):
    q, f = paths.assets_for("quick"), paths.assets_for("full")
    assert q.prototxt.name == f.prototxt.name == "VGG_FACE_deploy.prototxt"
    assert q.caffemodel.name == f.caffemodel.name == "VGG_FACE.caffemodel"
    assert q.keras_model != f.keras_model
    assert f.sample_identity == "Aamir_Khan"
    q.caffe_dir.mkdir(parents=True)
    (q.caffe_dir / "sample_identity.txt").write_text("Synth_0007\n")
    assert q.sample_identity == "Synth_0007"
