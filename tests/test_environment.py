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


# ----------------------------------------------------------------------------- Colab's versions

def colab_pins():
    """{package: version} of constraints-colab.txt, and its header lines."""
    text = (paths.REPO_ROOT / "constraints-colab.txt").read_text(encoding="utf-8")
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins, [ln for ln in text.splitlines() if ln.startswith("#")]


def test_the_colab_constraints_name_their_freeze_and_pin_every_requirement():
    pins, header = colab_pins()
    assert any(ln.startswith("# freeze-date: 20") for ln in header), "constraints-colab.txt must say its freeze's date"
    assert any("googlecolab/backend-info" in ln for ln in header)
    floors = environment.requirement_floors()
    unpinned = [d for d in floors if d.replace("_", "-") not in pins]
    assert not unpinned, f"constraints-colab.txt pins no Colab version for {unpinned}: run .ci/colab_constraints.py"
    assert pins["tensorflow"].startswith("2.") and pins["ipywidgets"].startswith("7.")


def test_every_floor_admits_colabs_own_version():
    pins, _ = colab_pins()
    floors = environment.requirement_floors()
    too_high = {d: (f, pins[d]) for d, f in floors.items()
                if environment.version_tuple(pins[d]) < environment.version_tuple(f)}
    assert not too_high, f"floors above Colab's versions (floor, Colab): {too_high}"


def test_this_environment_meets_every_floor_and_the_python_range():
    checks = environment.check_versions()
    assert [c for c in checks if c.status == "fail"] == []


@pytest.mark.parametrize("version, status", [((3, 10, 14), "fail"), ((3, 11, 0), "ok"), ((3, 12, 1), "ok"),
                                             ((3, 13, 15), "ok"), ((3, 14, 0), "warn")])
def test_one_supported_python_range(version, status):
    check = environment.check_python(version)
    assert check.status == status and check.needed == "3.11–3.13"


def test_the_readme_and_environment_yml_state_the_same_python_range():
    readme = (paths.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "Python 3.11–3.13" in readme
    yml = (paths.REPO_ROOT / "environment.yml").read_text(encoding="utf-8")
    version = yml.split("python=")[1].split()[0]
    assert environment.check_python(tuple(int(x) for x in version.split("."))).ok


def test_on_colab_the_kernels_packages_are_never_installed():
    floors = {"numpy": "99.0", "tensorflow": "99.0", "ipywidgets": "99.0", "jupyter-client": "99.0",
              "ipykernel": "99.0", "keras": "99.0", "ipython": "99.0", "notebook": "99.0", "seaborn": "99.0",
              "a-package-colab-lacks": "1.0"}
    calls = []
    todo = environment.install_missing(floors, run=lambda cmd, check: calls.append(cmd), colab=True)
    assert todo == ["seaborn>=99.0", "a-package-colab-lacks>=1.0"]
    assert calls[0][-2:] == todo
    elsewhere = environment.missing_requirements(floors, colab=False)
    assert "numpy>=99.0" in elsewhere and "tensorflow>=99.0" in elsewhere  # off Colab an upgrade is advised
    checks = {c.name: c for c in environment.check_versions({"numpy": "99.0"}, colab=True)}
    assert checks["numpy"].status == "warn" and "never" not in checks["numpy"].advice.lower()
    assert "under Colab's kernel" in checks["numpy"].advice


def test_with_every_floor_met_nothing_is_installed(capsys):
    calls = []
    assert environment.install_missing(run=lambda cmd, check: calls.append(cmd), colab=True) == []
    assert calls == [] and "none installed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- Drive (stand-in google.colab)

STANDIN = paths.REPO_ROOT / "tests" / "colab_standin"


@pytest.fixture
def colab_runtime(tmp_path, monkeypatch):
    """This process as a Colab kernel: the stand-in google.colab, Colab's marker, a fresh /content."""
    import sys

    monkeypatch.syspath_prepend(str(STANDIN))
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        monkeypatch.delitem(sys.modules, name)
    content, drive = tmp_path / "content", tmp_path / "GoogleDrive"
    content.mkdir()
    monkeypatch.setenv(paths.ENV_COLAB_TAG, "test")
    monkeypatch.setenv(paths.ENV_COLAB_CONTENT, str(content))
    monkeypatch.setenv("COLAB_STANDIN_DRIVE", str(drive))
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    monkeypatch.delenv(paths.ENV_BUILD, raising=False)
    from helpers.course import results

    monkeypatch.delenv(results.ENV_RESULTS, raising=False)
    yield {"content": content, "drive": drive}
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        del sys.modules[name]  # the stand-in imported by start(): later tests are not on "Colab"


def test_start_on_colab_mounts_drive_and_keeps_every_folder_there(colab_runtime, capsys):
    from helpers.course import results

    mode, assets = environment.start("quick", seed=1, build_quick_world=False)
    home = colab_runtime["drive"] / "MyDrive" / paths.DRIVE_FOLDER
    assert (colab_runtime["content"] / "drive").is_symlink() and home.is_dir()
    assert paths.using_drive()
    assert paths.weights_dir() == home.resolve() / "weights" and paths.build_dir() == home.resolve() / "build"
    assert assets.caffemodel.is_relative_to(home.resolve())
    assert paths.fast_data_dir() == (colab_runtime["content"] / "course-data").resolve()  # not on Drive
    results.record("x", 1)
    assert (home / "build" / "results.json").is_file()
    out = capsys.readouterr().out
    assert "Google Drive: weights/, data/ and build/" in out and "kept across runtimes" in out
    # a second start in the same runtime finds Drive mounted and does not mount again
    environment.start("quick", seed=1, build_quick_world=False)
    assert "Mounted at" not in capsys.readouterr().out


def test_start_on_colab_with_drive_off_stays_on_the_runtime_and_says_so(colab_runtime, capsys):
    environment.start("quick", seed=1, use_drive=True, build_quick_world=False)
    capsys.readouterr()
    environment.start("quick", seed=1, use_drive=False, build_quick_world=False)
    out = capsys.readouterr().out
    assert "Drive off" in out and "recomputed here" in out
    assert not paths.using_drive() and paths.assets_home() == paths.REPO_ROOT
    assert paths.build_dir() == paths.REPO_ROOT / "build"


def test_use_drive_off_colab_is_ignored_with_a_message(tmp_path, monkeypatch, capsys):
    line = environment.use_folders(use_drive=True, colab=False)
    assert "only on Colab" in line and not paths.using_drive()


def test_a_mount_point_holding_files_is_refused_like_colab_does(colab_runtime):
    (colab_runtime["content"] / "drive").mkdir()
    (colab_runtime["content"] / "drive" / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match="Mountpoint must not already contain files"):
        environment.start("quick", seed=1, build_quick_world=False)


def test_full_mode_on_colab_unpacks_adience_from_drive_to_the_runtime(colab_runtime, capsys):
    from tests.test_adience import make_upload

    home = colab_runtime["drive"] / "MyDrive" / paths.DRIVE_FOLDER
    caffe = home / "weights" / "vgg_face_caffe"
    caffe.mkdir(parents=True)
    for name in ("VGG_FACE_deploy.prototxt", "VGG_FACE.caffemodel", "names.txt", "ak.png"):
        (caffe / name).write_text("stand-in")
    make_upload(home / "data" / "adience")
    mode, assets = environment.start("auto", seed=1)
    assert mode == "full"  # the archive on Drive counts: it is unpacked now
    assert assets.dataset_root == (colab_runtime["content"] / "course-data" / "adience").resolve()
    assert (assets.dataset_root / "aligned").is_dir() and all(f.is_file() for f in assets.fold_files)
    out = capsys.readouterr().out
    assert "Adience: 60 of the 60 faces" in out and "unpacked aligned.tar.gz" in out
