"""Atomic writes: a failure leaves the previous content, never a half-written file or folder."""
import pytest

from helpers.course.fileio import atomic_dir, atomic_path, write_json_atomic


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".keras") and tmp.parent == target.parent
        tmp.write_text("v1")
    assert target.read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "v1"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


def test_atomic_dir_replaces_a_complete_folder_only(tmp_path):
    target = tmp_path / "world"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_write_json_atomic(tmp_path):
    p = write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert p.read_text().strip().startswith("{")


def test_written_files_get_the_usual_permissions(tmp_path):
    import os, stat

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            pass
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_save_model_writes_both_files_or_neither(tmp_path):
    import keras
    import pytest

    from helpers.course.fileio import save_model

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    save_model(model, tmp_path / "m.keras", tmp_path / "m.weights.h5")
    assert (tmp_path / "m.keras").is_file() and (tmp_path / "m.weights.h5").is_file()
    with pytest.raises(ValueError, match=r"must end with \.keras"):
        save_model(model, tmp_path / "n.h5")

    class Broken:
        def save_weights(self, path):
            keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(path)

        def save(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(Broken(), tmp_path / "b.keras", tmp_path / "b.weights.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.weights.h5"]  # nothing half-written


def test_hash_file_matches_hashlib_in_one_pass(tmp_path):
    import hashlib

    from helpers.course.fileio import HASH_CHUNK, hash_file

    data = bytes(range(256)) * (HASH_CHUNK // 256 * 2 + 3)  # more than two read chunks
    (tmp_path / "f").write_bytes(data)
    assert hash_file(tmp_path / "f") == {"sha256": hashlib.sha256(data).hexdigest()}
    assert hash_file(tmp_path / "f", "sha256", "md5")["md5"] == hashlib.md5(data).hexdigest()
