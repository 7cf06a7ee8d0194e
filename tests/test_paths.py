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


def test_colab_is_detected_in_its_kernel_and_in_processes_started_from_it(monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv(paths.ENV_COLAB_TAG, raising=False)
    assert not paths.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", object())  # Colab's kernel imports it at start
    assert paths.in_colab()
    monkeypatch.delitem(sys.modules, "google.colab")
    probe = [sys.executable, "-c", "from helpers.course import paths; print(paths.in_colab())"]
    env = {k: v for k, v in __import__("os").environ.items() if k != paths.ENV_COLAB_TAG}
    assert subprocess.run(probe, env=env, cwd=paths.REPO_ROOT, capture_output=True, text=True).stdout.strip() == "False"
    env[paths.ENV_COLAB_TAG] = "release-colab-20260819"  # what Colab sets in its runtime's environment
    assert subprocess.run(probe, env=env, cwd=paths.REPO_ROOT, capture_output=True, text=True).stdout.strip() == "True"


def test_drive_locations_follow_colabs_content_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ENV_COLAB_CONTENT, raising=False)
    assert paths.drive_home() == paths.DRIVE_HOME == Path("/content/drive/MyDrive/vggface-gender-course")
    monkeypatch.setenv(paths.ENV_COLAB_CONTENT, str(tmp_path))
    assert paths.drive_home() == tmp_path / "drive" / "MyDrive" / paths.DRIVE_FOLDER
    assert not paths.drive_mounted()
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    assert paths.drive_mounted()


def test_drive_is_used_only_when_start_has_set_it_up(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_COLAB_CONTENT, str(tmp_path))
    monkeypatch.setenv(paths.ENV_COLAB_TAG, "x")
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    paths.drive_home().mkdir(parents=True)
    assert paths.assets_home() == paths.REPO_ROOT and not paths.using_drive()  # mounted, but not chosen
    monkeypatch.setenv(paths.ENV_HOME, str(paths.drive_home()))
    assert paths.using_drive() and paths.weights_dir() == paths.drive_home().resolve() / "weights"


def test_unpacked_datasets_are_read_from_the_fast_folder(home, monkeypatch, tmp_path):
    assert paths.fast_data_dir() == paths.data_dir()
    assert paths.assets_for("full").dataset_root == paths.adience_upload_dir() == home.resolve() / "data" / "adience"
    monkeypatch.setenv(paths.ENV_FAST_DATA, str(tmp_path / "local"))
    assert paths.assets_for("full").dataset_root == (tmp_path / "local" / "adience").resolve()
    assert paths.adience_upload_dir() == home.resolve() / "data" / "adience"  # the upload stays on "Drive"


def test_adience_archive_counts_as_present_until_unpacked(home, monkeypatch, tmp_path):
    upload = paths.adience_upload_dir()
    upload.mkdir(parents=True)
    for k in range(5):
        (upload / f"fold_{k}_data.txt").write_text("x")
    missing = [where.name for what, where, _ in paths.missing_full_assets() if what.startswith("Adience")]
    assert missing == [paths.ADIENCE_ARCHIVE]
    (upload / paths.ADIENCE_ARCHIVE).write_bytes(b"tar")
    assert paths.adience_sources() == ([upload / f"fold_{k}_data.txt" for k in range(5)], upload / paths.ADIENCE_ARCHIVE)
    assert not [w for what, w, _ in paths.missing_full_assets() if what.startswith("Adience")]
    # once unpacked to the fast folder (fold files beside it), that copy is what the course reads
    monkeypatch.setenv(paths.ENV_FAST_DATA, str(tmp_path / "local"))
    root = paths.assets_for("full").dataset_root
    (root / "aligned").mkdir(parents=True)
    for k in range(5):
        (root / f"fold_{k}_data.txt").write_text("x")
    assert paths.adience_sources() == ([root / f"fold_{k}_data.txt" for k in range(5)], root / "aligned")


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
