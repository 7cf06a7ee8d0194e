"""Stand-ins for full mode: the VGG-Face release's formats and Adience's layout, read back by the
course's own readers (the conversion, ``helpers.data``), at sizes small enough for a unit test
(the full-size network is checked by its blob shapes; the rehearsal runs it)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from helpers import data
from helpers.course import paths, standins
from tests.test_data import HEADER, fold_line


@pytest.fixture(scope="module")
def adience_home(tmp_path_factory):
    """A 60-face Adience stand-in with generated fold rows."""
    home = tmp_path_factory.mktemp("standin_home")
    with standins.course_home(home):
        info = standins.build(home, faces=60, parts=("data",), workers=2, progress=False)
    return home, info["data"]


def full_assets(home):
    with standins.course_home(home):
        return paths.assets_for("full")


def test_the_full_size_network_has_the_releases_parameter_count():
    from helpers.vggface import vggface_netspec

    shapes = standins.blob_shapes(vggface_netspec())
    assert sum(int(np.prod(k)) + int(np.prod(b)) for k, b in shapes.values()) == 145_002_878
    assert shapes["fc6"][0] == (4096, 25088) and shapes["fc8"][0] == (2622, 4096)
    assert shapes["conv1_1"][0] == (64, 3, 3, 3)


def test_weights_stand_in_converts_and_calls_its_sample_aamir_khan(tmp_path):
    from helpers import vggface
    from helpers.caffe import convert, parse_prototxt, read_caffemodel
    from helpers.caffe.verify import caffe_input, reference_forward
    from tests.tiny_vgg import tiny_vgg_netspec

    net = tiny_vgg_netspec(classes=2622, hw=(64, 64))
    info = standins.write_weights(tmp_path / "vgg_face_caffe", seed=3, progress=False, net=net)
    folder = tmp_path / "vgg_face_caffe"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["VGG_FACE_deploy.prototxt", "VGG_FACE.caffemodel", "names.txt", "ak.png", standins.MARKER])
    text = (folder / "VGG_FACE_deploy.prototxt").read_text()
    assert "layers {" in text and "type: CONVOLUTION" in text and "input_dim: 64" in text  # the release's V1 syntax
    names = (folder / "names.txt").read_text().splitlines()
    assert len(names) == 2622 and names[2] == "Aamir_Khan" and len(set(names)) == 2622
    blobs = read_caffemodel(folder / "VGG_FACE.caffemodel")
    assert blobs["fc6"].blobs[0].shape == (1, 1, 32, 2 * 2 * 16)  # V1 legacy 4-D dims, as in the release
    assert info["parameters"] == sum(b.size for layer in blobs.values() for b in layer.blobs)
    # the course's conversion reads it, and the sample face comes out as the expected identity
    model = convert.convert(folder / "VGG_FACE_deploy.prototxt", folder / "VGG_FACE.caffemodel",
                            names=folder / "names.txt", progress=False)
    sample = vggface.load_image(folder / "ak.png", size=(64, 64))
    assert vggface.top_identities(model, sample, k=1)[0][0][0] == "Aamir_Khan"
    # ... by a margin, and not because fc8 calls every face Aamir Khan
    reference = reference_forward(parse_prototxt(folder / "VGG_FACE_deploy.prototxt"), blobs,
                                  caffe_input(np.stack([sample, np.full_like(sample, 40.0)])), outputs=("fc8",))["fc8"]
    assert reference[0].argmax() == 2 and reference[0, 2] - np.delete(reference[0], 2).max() > 1.0
    assert "SEEDED RANDOM weights" in (folder / standins.MARKER).read_text()


def test_adience_stand_in_reads_like_adience_with_its_defects(adience_home, capsys):
    home, info = adience_home
    root = full_assets(home).dataset_root
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["aligned", standins.MARKER] + [f"fold_{k}_data.txt" for k in range(5)])
    raw = data.read_adience_folds(root, check_images=False)
    assert len(raw) == 60 and sorted(raw["fold"].unique()) == [0, 1, 2, 3, 4]
    data.check_subject_exclusive(*[raw[raw["fold"] == k] for k in range(5)])  # no user in two folds
    for k in range(5):
        part = raw[raw["fold"] == k]
        assert part["user_id"].nunique() >= 2 and {"m", "f"} <= set(part["gender"])
    assert raw.attrs["age_report"]["left_missing"], "at least one age maps to no group"
    # the reader leaves out exactly the planted missing and truncated images, and says so
    capsys.readouterr()
    df = data.read_adience_folds(root)
    said = capsys.readouterr().out
    assert len(df) == 58 and "missing" in said and "truncated" in said
    skipped = {s["kind"]: s["path"] for s in df.attrs["skipped_images"]}
    assert skipped == {"missing": info["missing_image"], "truncated": info["truncated_image"]}
    with pytest.raises(OSError):  # the truncated JPEG really is unreadable
        with Image.open(root / info["truncated_image"]) as im:
            im.load()
    # every other image is a readable 816 x 816 JPEG at a photo's size on disk
    for rel in df["path"].sample(8, random_state=0):
        with Image.open(root / rel) as im:
            assert im.format == "JPEG" and im.size == (816, 816)
            im.load()
    assert 20_000 < info["mean_image_bytes"] < 200_000


def test_markers_are_detected_and_announced(adience_home, tmp_path):
    home, _ = adience_home
    assets = full_assets(home)
    assert standins.present(assets) == ["data"]
    line = standins.banner(assets)
    assert "the Adience faces are stand-ins" in line and "VGG-Face weights" not in line and "means nothing" in line
    assert standins.banner(full_assets(tmp_path)) is None and standins.present(full_assets(tmp_path)) == []


def test_rows_from_real_format_fold_files_keep_every_fold_and_two_users_each(tmp_path):
    folder = tmp_path / "folds"
    folder.mkdir()
    face = 0
    for k in range(5):
        lines = [HEADER]
        for u in range(6):
            for j in range(30):
                face += 1
                lines.append(fold_line(f"{k}{u}@N0{k}", f"img{face}_o.jpg", 100 * k + u, "(25, 32)", "mf"[j % 2]))
        (folder / f"fold_{k}_data.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    folds = standins.read_fold_rows(folder)
    assert [len(f) for f in folds] == [180] * 5
    chosen = standins.choose_rows(folds, 100, seed=1)
    assert [len(f) for f in chosen] == [20] * 5
    for k, rows in enumerate(chosen):
        assert len({r.user_id for r in rows}) >= 2 and {r.gender for r in rows} == {"m", "f"}
        assert all(r.user_id.startswith(str(k)) for r in rows)  # a user stays in its own fold
        assert all(r in folds[k] for r in rows)  # rows are the files' own, unchanged
    assert standins.choose_rows(folds, 10_000) == folds  # at or above the total: every row, in order
    with pytest.raises(ValueError, match="header"):
        (folder / "fold_2_data.txt").write_text("user\tface\n", encoding="utf-8")
        standins.read_fold_rows(folder)


def test_generated_rows_fill_five_folds_at_any_size():
    for n in (20, 50, 400):
        folds = standins.synthetic_fold_rows(n, seed=2)
        assert sum(len(f) for f in folds) == n
        users = [{r.user_id for r in f} for f in folds]
        assert all(len(u) >= 2 for u in users)
        assert len(set().union(*users)) == sum(len(u) for u in users)  # nobody in two folds
        assert all({"m", "f"} <= {r.gender for r in f} for f in folds)
        assert all(len(r.fields) == len(standins.FOLD_HEADER) for f in folds for r in f)
    assert standins.synthetic_fold_rows(50, seed=2)[0][0].fields == standins.synthetic_fold_rows(50, seed=2)[0][0].fields
    with pytest.raises(ValueError, match="20 or more"):
        standins.synthetic_fold_rows(10)


def test_a_full_mode_run_on_stand_ins_says_so_and_records_it(adience_home, tmp_path, monkeypatch, capsys):
    import shutil

    from helpers.course import environment, results
    from tests.tiny_vgg import tiny_vgg_netspec

    home = tmp_path / "home"
    shutil.copytree(adience_home[0] / "data", home / "data")
    monkeypatch.setenv(paths.ENV_HOME, str(home))
    standins.write_weights(paths.assets_for("full").caffe_dir, progress=False, net=tiny_vgg_netspec(classes=2622))
    assert paths.missing_full_assets() == []
    capsys.readouterr()
    mode, assets = environment.start("auto", seed=0)
    assert mode == "full" and "STAND-IN ASSETS: the VGG-Face weights and the Adience faces are stand-ins" in capsys.readouterr().out
    results.record("x", 1.0)
    assert results.load()["meta"]["standins"] == ["weights", "data"]


def test_the_drive_layout_is_the_download_itself(tmp_path):
    import tarfile

    folds = standins.synthetic_fold_rows(20, seed=1)
    info = standins.write_adience(tmp_path / "adience", folds, layout="archive", workers=1, progress=False)
    names = sorted(p.name for p in (tmp_path / "adience").iterdir())
    assert names == sorted(["aligned.tar.gz", standins.MARKER] + [f"fold_{k}_data.txt" for k in range(5)])
    with tarfile.open(tmp_path / "adience" / "aligned.tar.gz") as tar:
        members = [m.name for m in tar.getmembers() if m.isfile()]
    assert len(members) == info["images_written"] and all(m.startswith("aligned/") for m in members)
    assert info["missing_image"] not in members and info["truncated_image"] in members
