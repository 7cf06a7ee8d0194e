"""The checks of notebook 00."""
import pytest

from helpers.course import environment, paths


def test_floors_come_from_requirements_txt(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\ntensorflow>=2.16  # 01-06\nkeras~=3.3\nnumpy\n-r other.txt\nfoo[extra]>=1.2\n")
    assert environment.requirement_floors(req) == {"tensorflow": "2.16", "keras": "3.3", "numpy": "0", "foo": "1.2"}


def test_the_project_requirements_parse_and_name_the_core_packages():
    floors = environment.requirement_floors()
    assert {"tensorflow", "keras", "numpy", "scikit-learn", "ipywidgets", "nbclient"} <= set(floors)


def test_unreadable_requirement_names_file_and_line(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("numpy>=1\n!!!\n")
    with pytest.raises(ValueError, match=r"requirements.txt:2"):
        environment.requirement_floors(req)


@pytest.mark.parametrize("text, expected", [("2.16.1", (2, 16, 1)), ("2.17.0rc1", (2, 17, 0)), ("2.4.1+cu121", (2, 4, 1)), ("3", (3,))])
def test_version_tuple(text, expected):
    assert environment.version_tuple(text) == expected


def test_version_checks_flag_missing_and_old_packages():
    checks = {c.name: c for c in environment.check_versions({"numpy": "1.0", "numpy-not-a-package": "1.0", "pytest": "999.0"})}
    assert checks["numpy"].ok
    assert checks["numpy-not-a-package"].status == "fail" and "pip install" in checks["numpy-not-a-package"].advice
    assert checks["pytest"].status == "fail" and checks["pytest"].needed == ">=999.0"


def test_install_missing_installs_only_what_is_missing():
    calls = []
    todo = environment.install_missing({"numpy": "1.0", "numpy-not-a-package": "2.0"}, run=lambda cmd, check: calls.append(cmd))
    assert todo == ["numpy-not-a-package>=2.0"]
    assert calls and calls[0][-1] == "numpy-not-a-package>=2.0" and "numpy>=1.0" not in calls[0]


def test_gpu_advice_depends_on_colab():
    assert "Change runtime type" in environment.check_gpu(names=[], colab=True).advice
    assert "Colab" in environment.check_gpu(names=[], colab=False).advice
    assert environment.check_gpu(names=["/physical_device:GPU:0"], colab=True).ok


def test_disk_and_memory_checks_compare_with_full_mode_needs(tmp_path):
    assert environment.check_disk(tmp_path, need_gb=0.0).ok
    low = environment.check_disk(tmp_path / "not" / "yet", need_gb=1e9)
    assert low.status == "warn" and "COURSE_HOME" in low.advice
    assert environment.check_memory(need_gb=8, total_gb=4).status == "warn"
    assert environment.check_memory(need_gb=8, total_gb=16).ok


def test_asset_checks_say_how_to_get_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path))
    checks = {c.name: c for c in environment.check_assets()}
    assert checks["VGG-Face Caffe release"].status == "warn"
    assert "helpers.assets fetch vgg_face_caffe" in checks["VGG-Face Caffe release"].advice
    assert "Adience" in checks["Adience faces and folds"].advice
    assert checks["synthetic world"].status == "warn"


def test_report_is_formatted_with_marks_and_advice(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path))
    monkeypatch.delenv(paths.ENV_MODE, raising=False)
    checks = environment.report()
    text = environment.format_report(checks)
    assert "course mode" in text and "quick" in text
    assert "→" in text  # advice lines for the missing assets


def test_full_mode_start_lists_missing_assets(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="VGG_FACE.caffemodel"):
        environment.start("full", seed=1)


def test_set_seeds_makes_numpy_repeatable():
    import numpy as np

    environment.set_seeds(3)
    a = np.random.rand(3)
    environment.set_seeds(3)
    assert (np.random.rand(3) == a).all()
