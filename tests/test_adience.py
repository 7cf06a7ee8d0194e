"""Adience on a runtime: the learner's aligned.tar.gz unpacked to fast disk, faces counted against the folds."""
import io
import json
import tarfile

import pytest

from helpers.course import adience, paths

HEADER = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score\n"


def fold_rows(k, users=3, faces=4):
    """Rows of fold k: users u<k>_<j>, faces numbered so that no two folds share a user."""
    rows = []
    for j in range(users):
        for f in range(faces):
            rows.append((f"u{k}_{j}", f"{1000 + f}_img.jpg", str(100 * k + 10 * j + f)))
    return rows


def make_upload(folder, *, drop=(), extra=0, as_archive=True, bad_row=False):
    """The five fold files and aligned.tar.gz (or aligned/) as a learner would upload them.

    ``drop``: relative paths of listed faces left out of the archive; ``extra``: images no fold lists.
    """
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for k in range(5):
        rows = fold_rows(k)
        text = HEADER + "".join(f"{u}\t{img}\t{fid}\t(25, 32)\tf\t0\t0\t10\t10\t0\t0\t50\n" for u, img, fid in rows)
        if bad_row and k == 2:
            text += "only\ttwo\n"
        (folder / f"fold_{k}_data.txt").write_text(text + "\n")
        listed += [adience.face_path(u, fid, img) for u, img, fid in rows]
    members = [p for p in listed if p not in drop] + [f"aligned/stray/landmark_aligned_face.9{i}.x.jpg" for i in range(extra)]
    if as_archive:
        with tarfile.open(folder / paths.ADIENCE_ARCHIVE, "w:gz") as tar:
            for name in members:
                data = b"\xff\xd8 not decoded here \xff\xd9"
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name in members:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"jpg")
    return listed


def test_face_path_is_adiences_layout():
    assert adience.face_path("30601258@N03", "1", "10399646885_67c7d20df9_o.jpg") == \
        "aligned/30601258@N03/landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg"


def test_archive_on_drive_is_unpacked_to_fast_disk_and_counted(tmp_path):
    upload, root = tmp_path / "drive" / "adience", tmp_path / "local" / "adience"
    listed = make_upload(upload, drop={adience.face_path("u3_0", "300", "1000_img.jpg")}, extra=2)
    check = adience.prepare(upload, root, progress=False)
    assert check.root == root and check.how.startswith("unpacked aligned.tar.gz")
    assert check.listed == len(listed) == 60 and check.found == 59
    assert check.missing == ["aligned/u3_0/landmark_aligned_face.300.1000_img.jpg"] and check.unlisted == 2
    assert all((root / f"fold_{k}_data.txt").is_file() for k in range(5))  # the folds travel with the faces
    assert (root / "aligned" / "u0_0").is_dir() and not (upload / "aligned").exists()  # Drive keeps only the archive
    text = check.summary()
    assert "59 of the 60 faces" in text and "missing: 1 image(s)" in text and "2 image(s) under aligned/" in text
    # a second runtime start finds the completed unpacking and does not unpack again
    again = adience.prepare(upload, root, progress=False)
    assert again.how == "already unpacked" and again.found == 59


def test_an_interrupted_unpacking_is_redone(tmp_path):
    upload, root = tmp_path / "drive", tmp_path / "local"
    make_upload(upload)
    adience.prepare(upload, root, progress=False)
    marker = root / f".{paths.ADIENCE_ARCHIVE}.extracted.json"
    files = json.loads(marker.read_text())["files"]
    (root / files[0]).unlink()  # a file lost: the marker no longer holds
    check = adience.prepare(upload, root, progress=False)
    assert check.how.startswith("unpacked") and check.found == check.listed == 60


def test_unpacked_folder_in_place_is_only_counted(tmp_path):
    folder = tmp_path / "adience"
    make_upload(folder, as_archive=False, bad_row=True)
    check = adience.prepare(folder, folder, progress=False)
    assert check.how == "read in place" and check.found == check.listed == 60
    assert check.problems and "fold_2_data.txt" in check.problems[0] and "2 fields" in check.problems[0]


def test_an_unpacked_folder_on_drive_is_copied_to_fast_disk(tmp_path):
    upload, root = tmp_path / "drive", tmp_path / "local"
    make_upload(upload, as_archive=False)
    check = adience.prepare(upload, root, progress=False)
    assert check.how.startswith("copied") and check.root == root and check.found == 60
    assert (root / "aligned" / "u4_2").is_dir()


def test_missing_pieces_are_named(tmp_path):
    upload = tmp_path / "drive"
    make_upload(upload)
    (upload / "fold_3_data.txt").unlink()
    with pytest.raises(FileNotFoundError, match="fold_3_data.txt"):
        adience.prepare(upload, tmp_path / "local", progress=False)
    make_upload(upload)
    (upload / paths.ADIENCE_ARCHIVE).unlink()
    with pytest.raises(FileNotFoundError, match="aligned.tar.gz"):
        adience.prepare(upload, tmp_path / "local2", progress=False)


def test_a_fold_file_without_adiences_header_is_refused(tmp_path):
    upload = tmp_path / "drive"
    make_upload(upload)
    (upload / "fold_1_data.txt").write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(ValueError, match=r"fold_1_data.txt:1: the header lacks"):
        adience.prepare(upload, tmp_path / "local", progress=False)


def test_an_archive_without_aligned_is_refused(tmp_path):
    upload = tmp_path / "drive"
    make_upload(upload)
    with tarfile.open(upload / paths.ADIENCE_ARCHIVE, "w:gz") as tar:
        info = tarfile.TarInfo("faces/x.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match=r"aligned.*is not there.*\['faces'"):
        adience.prepare(upload, tmp_path / "local", progress=False)
