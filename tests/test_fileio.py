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
