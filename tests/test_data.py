"""Tests for helpers.data: Adience reader, protocols, subject-exclusive splits, other sources,
image validation. Fixtures are written here, in the real fold-file format."""
from __future__ import annotations


import pandas as pd
import pytest
from PIL import Image

from helpers import data

HEADER = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"


def fold_line(user, image, face_id, age, gender):
    return f"{user}\t{image}\t{face_id}\t{age}\t{gender}\t0\t414\t1086\t1383\t-115\t30\t17"


def write_folds(folder, rows_per_fold):
    """rows_per_fold: {fold: [(user, image, face_id, age, gender), ...]}"""
    folder.mkdir(parents=True, exist_ok=True)
    for k, rows in rows_per_fold.items():
        text = "\n".join([HEADER] + [fold_line(*r) for r in rows]) + "\n"
        (folder / f"fold_{k}_data.txt").write_text(text, encoding="utf-8")
    return folder


def five_folds(users_per_fold=3, faces_per_user=4):
    genders = ["m", "f", "u", "", "f", "m"]
    ages = ["(25, 32)", "(0, 2)", "35", "None", "(25, 23)", "(27, 32)", "2", "(38, 48)"]
    out, face = {}, 0
    for k in range(5):
        rows = []
        for u in range(users_per_fold):
            user = f"{k}{u}@N0{k}"
            for j in range(faces_per_user):
                face += 1
                rows.append((user, f"img{face}_o.jpg", face, ages[face % len(ages)], genders[face % len(genders)]))
        out[k] = rows
    return out


@pytest.fixture
def folds_dir(tmp_path):
    return write_folds(tmp_path / "adience", five_folds())


def test_reader_columns_counts_and_paths(folds_dir):
    df = data.read_adience_folds(folds_dir)
    assert len(df) == 5 * 3 * 4
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]
    assert df["user_id"].nunique() == 15
    for c in ("fold", "user_id", "face_id", "original_image", "gender", "age_group", "age_raw", "path",
              "source_file", "line"):
        assert c in df.columns
    first = df.iloc[0]
    assert first["path"] == f"aligned/{first['user_id']}/landmark_aligned_face.{first['face_id']}.{first['original_image']}"
    assert first["source_file"] == "fold_0_data.txt" and first["line"] == 2
    assert set(df["gender"]) == {"m", "f", "u"}  # the empty field became u
    assert (df["gender"] == "u").sum() == 20


def test_age_mapping_is_unambiguous_only():
    assert data.age_to_group("(25, 32)") == ("(25, 32)", "group")
    assert data.age_to_group("(27, 32)") == ("(25, 32)", "range_mapped")
    assert data.age_to_group("(38, 42)") == ("(38, 43)", "range_mapped")
    assert data.age_to_group("29") == ("(25, 32)", "single_mapped")
    assert data.age_to_group("2") == ("(0, 2)", "single_mapped")
    assert data.age_to_group("35") == (None, "single_unmapped")  # between (25, 32) and (38, 43)
    assert data.age_to_group("(25, 23)") == (None, "range_unmapped")  # reversed: intent unknown
    assert data.age_to_group("(38, 48)") == (None, "range_unmapped")  # spans two groups
    assert data.age_to_group("(8, 23)") == (None, "range_unmapped")
    assert data.age_to_group("None") == (None, "missing")
    assert data.age_to_group("") == (None, "missing")


def test_age_report_counts_what_was_left_missing(folds_dir, capsys):
    df = data.read_adience_folds(folds_dir, verbose=True)
    rep = df.attrs["age_report"]
    n = len(df)
    assert sum(rep["kinds"].values()) == n
    assert df["age_group"].isna().sum() == sum(rep["left_missing"].values())
    assert "(25, 23)" in rep["left_missing"] and "35" in rep["left_missing"]
    assert any(k.startswith("(27, 32) -> (25, 32)") for k in rep["mapped"])
    assert "left missing" in capsys.readouterr().out
    assert df.loc[df["age_raw"] == "(27, 32)", "age_group"].eq("(25, 32)").all()
    assert df.loc[df["age_raw"] == "35", "age_group"].isna().all()


def test_strict_raises_on_unmappable_ages_and_missing_folds(folds_dir, tmp_path):
    with pytest.raises(data.DataFormatError, match="map to no Adience group"):
        data.read_adience_folds(folds_dir, strict=True)
    partial = write_folds(tmp_path / "partial", {0: [("a", "x.jpg", 1, "(0, 2)", "m")]})
    with pytest.raises(data.DataFormatError, match="expected folds 0-4"):
        data.read_adience_folds(partial, strict=True)


@pytest.mark.parametrize("bad_line, message", [
    ("u1\tx.jpg\t7\t(0, 2)\tq\t0\t0\t0\t0\t0\t0\t0", "gender 'q'"),
    ("u1\tx.jpg\t7\t(0, 2)\tm\t0\t0", "7 tab-separated fields, expected 12"),
    ("u1\tx.jpg\tseven\t(0, 2)\tm\t0\t0\t0\t0\t0\t0\t0", "face_id 'seven'"),
])
def test_malformed_rows_raise_naming_file_and_line_or_are_counted(tmp_path, bad_line, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = fold_line("u0", "a.jpg", 1, "(0, 2)", "f")
    (folder / "fold_3_data.txt").write_text("\n".join([HEADER, good, bad_line, good]) + "\n", encoding="utf-8")
    with pytest.raises(data.DataFormatError, match=r"fold_3_data\.txt, line 3") as err:
        data.read_adience_folds(folder)
    assert message in str(err.value)
    df = data.read_adience_folds(folder, skip_malformed=True)
    assert len(df) == 2
    (skipped,) = df.attrs["skipped_rows"]
    assert skipped["line"] == 3 and message in skipped["problem"]


def test_header_without_gender_column_is_an_error(tmp_path):
    folder = tmp_path / "nohdr"
    folder.mkdir()
    (folder / "fold_0_data.txt").write_text("user_id\toriginal_image\tface_id\tage\nu\tx.jpg\t1\t(0, 2)\n")
    with pytest.raises(data.DataFormatError, match="line 1: header lacks"):
        data.read_adience_folds(folder)


def test_protocols(folds_dir):
    df = data.read_adience_folds(folds_dir)
    binary, names = data.apply_protocol(df, "binary")
    assert names == ("m", "f")
    assert set(binary["gender"]) == {"m", "f"}
    assert len(binary) == (df["gender"] != "u").sum()
    assert binary.attrs["protocol_dropped"] == {"u": int((df["gender"] == "u").sum())}
    assert (binary["label"] == binary["gender"].map({"m": 0, "f": 1})).all()
    three, names3 = data.apply_protocol(df, "three_class")
    assert names3 == ("m", "f", "u") and len(three) == len(df)
    assert sorted(three["label"].unique()) == [0, 1, 2]
    assert "label" not in df  # the input table is not modified
    with pytest.raises(ValueError, match="unknown protocol"):
        data.apply_protocol(df, "ternary")


def test_fold_split_is_subject_exclusive_and_reproducible(folds_dir):
    df, _ = data.apply_protocol(data.read_adience_folds(folds_dir), "three_class")
    split = data.fold_split(df, test_fold=2, val_fraction=0.2, seed=1)
    assert set(split.test["fold"]) == {2}
    assert 2 not in set(split.train["fold"]) | set(split.val["fold"])
    assert len(split.train) + len(split.val) + len(split.test) == len(df)
    assert len(split.val) >= 0.2 * (len(df) - len(split.test))
    data.check_subject_exclusive(*split)
    again = data.fold_split(df, test_fold=2, val_fraction=0.2, seed=1)
    assert list(again.val.index) == list(split.val.index)
    other = {tuple(sorted(data.fold_split(df, 2, 0.2, seed=s).val["user_id"].unique())) for s in range(6)}
    assert len(other) > 1  # the seed matters
    with pytest.raises(ValueError, match="test_fold 7"):
        data.fold_split(df, 7)


def test_case_study_split(folds_dir):
    df = data.read_adience_folds(folds_dir)
    split = data.case_study_split(df)
    assert set(split.train["fold"]) == {0} and set(split.val["fold"]) == {0} and set(split.test["fold"]) == {1}
    assert len(split.val) > 0
    data.check_subject_exclusive(*split)


def test_check_subject_exclusive_names_shared_users():
    a = pd.DataFrame({"user_id": ["x", "y"]})
    b = pd.DataFrame({"user_id": ["z", "y"]})
    with pytest.raises(data.SubjectLeakError, match=r"more than one set in fold 3: 'y' in sets \[0, 1\]"):
        data.check_subject_exclusive(a, b, context="fold 3")
    data.check_subject_exclusive(a, pd.DataFrame({"user_id": ["z"]}))


def test_summarize_and_plot(folds_dir, tmp_path):
    df = data.read_adience_folds(folds_dir)
    # create one of the images so that the rest count as missing
    p = folds_dir / df["path"].iloc[0]
    p.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(p, format="JPEG")
    table = data.summarize(df, root=folds_dir)
    assert table.loc["total", "rows"] == len(df)
    assert table.loc[0, "users"] == 3
    assert table.loc["total", "missing_images"] == len(df) - 1
    assert table.loc["total", ["m", "f", "u"]].sum() == len(df)
    import matplotlib
    matplotlib.use("Agg")
    ax = data.plot_summary(df)
    assert len(ax.patches) == 5 * 3


def test_check_dataset_root(folds_dir, tmp_path):
    rep = data.check_dataset_root(folds_dir)
    assert rep.fold_files_missing == [] and not rep.aligned_present and not rep.ok
    assert "aligned/: MISSING" in str(rep) and "Adience-data.html" in str(rep)
    img = folds_dir / "aligned" / "u1" / "landmark_aligned_face.1.a.jpg"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(img)
    rep = data.check_dataset_root(folds_dir)
    assert rep.ok and rep.user_folders == 1 and rep.image_files == 1
    empty = data.check_dataset_root(tmp_path / "nowhere")
    assert len(empty.fold_files_missing) == 5


def save_jpg(path, size=(12, 10), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def test_read_class_folders(tmp_path, capsys):
    for folder, n in (("Male", 2), ("woman", 3), ("kids", 1)):
        for i in range(n):
            save_jpg(tmp_path / folder / f"{i}.jpg")
    (tmp_path / "Male" / "notes.txt").write_text("x")
    df = data.read_class_folders(tmp_path)
    assert len(df) == 6
    assert df["gender"].value_counts().to_dict() == {"f": 3, "m": 2, "u": 1}
    assert df.attrs["folder_mapping"] == {"Male": "m", "kids": "u", "woman": "f"}
    assert df.attrs["skipped_files"] == ["Male/notes.txt"]
    assert df["user_id"].is_unique and df["fold"].isna().all()
    assert (tmp_path / df["path"].iloc[0]).is_file()
    out = capsys.readouterr().out
    assert "'kids' -> u" in out and "1 non-image" in out


def test_read_csv_labels(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,group\na.jpg,male,p1\nb.jpg,F,p1\nc.jpg,u,\n", encoding="utf-8")
    df = data.read_csv_labels(csv)
    assert list(df["gender"]) == ["m", "f", "u"]
    assert list(df["user_id"][:2]) == ["p1", "p1"] and df["user_id"].iloc[2] == "image:c.jpg"
    csv.write_text("path,label\na.jpg,male\nb.jpg,robot\n", encoding="utf-8")
    with pytest.raises(data.DataFormatError, match=r"labels\.csv, line 3: label 'robot'"):
        data.read_csv_labels(csv)
    csv.write_text("file,gender\na.jpg,m\n", encoding="utf-8")
    with pytest.raises(data.DataFormatError, match="path,label"):
        data.read_csv_labels(csv)


def test_read_utkface(tmp_path, capsys):
    for name in ("29_0_1_20170113.jpg", "35_1_0_20170114.jpg.chip.jpg", "1_1_2_2017.jpg", "61_3.jpg", "oops.jpg"):
        save_jpg(tmp_path / name)
    df = data.read_utkface(tmp_path)
    assert len(df) == 3
    by_age = df.set_index("age_raw")
    assert by_age.loc["29", "gender"] == "m" and by_age.loc["29", "age_group"] == "(25, 32)"
    assert by_age.loc["35", "gender"] == "f" and by_age.loc["35", "age_group"] is None
    assert by_age.loc["1", "age_group"] == "(0, 2)"
    assert sorted(df.attrs["malformed_names"]) == ["61_3.jpg", "oops.jpg"]
    assert "2 name(s)" in capsys.readouterr().out


def bad_image_folder(root):
    save_jpg(root / "good.jpg", size=(20, 20))
    Image.new("L", (9, 9)).save(root / "grey.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image")
    full = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    Image.new("RGB", (9, 9)).save(root / "scan.jpg", format="TIFF")  # Pillow reads it, TensorFlow cannot
    return pd.DataFrame({"path": ["good.jpg", "grey.png", "empty.jpg", "text.jpg", "truncated.jpg", "missing.jpg",
                                  "scan.jpg"], "user_id": list("abcdefg")})


def test_validate_images_kinds_cache_and_drop(tmp_path, capsys):
    df = bad_image_folder(tmp_path)
    cache = tmp_path / "cache" / "validation.json"
    report = data.validate_images(df, tmp_path, cache_path=cache)
    kinds = dict(zip(report.bad["path"], report.bad["kind"]))
    assert kinds == {"empty.jpg": "empty", "text.jpg": "not_image", "truncated.jpg": "corrupt",
                     "missing.jpg": "missing", "scan.jpg": "unsupported_format"}
    assert report.counts == {"empty": 1, "not_image": 1, "corrupt": 1, "missing": 1, "unsupported_format": 1}
    assert report.checked == 7 and report.from_cache == 0 and cache.is_file()
    assert "5 bad" in str(report)
    again = data.validate_images(df, tmp_path, cache_path=cache)
    assert again.from_cache == 6 and again.counts == report.counts  # missing files have no key
    # a file that changes is checked again rather than trusted from the cache
    save_jpg(tmp_path / "truncated.jpg")
    fixed = data.validate_images(df, tmp_path, cache_path=cache)
    assert "truncated.jpg" not in set(fixed.bad["path"])
    clean = data.drop_invalid(df, report)
    assert list(clean["path"]) == ["good.jpg", "grey.png"]
    assert "dropped 5 of 7" in capsys.readouterr().out


def test_assign_folds_gives_own_faces_subject_exclusive_folds():
    df = pd.DataFrame({"user_id": [f"p{i // 3}" for i in range(30)], "gender": ["m", "f"] * 15, "fold": None})
    with pytest.raises(ValueError, match="assign_folds"):
        data.fold_split(df, 0)
    folded = data.assign_folds(df, n_folds=5, seed=0)
    assert sorted(folded["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folded.groupby("user_id")["fold"].nunique().max() == 1
    assert folded["fold"].value_counts().max() - folded["fold"].value_counts().min() <= 3
    split = data.fold_split(folded, 1, val_fraction=0.2)
    data.check_subject_exclusive(*split)
    with pytest.raises(ValueError, match="cannot fill 5"):
        data.assign_folds(df.iloc[:6])


# ------------------------------------------------------------------------- SUBSET and damaged files
def many_users(users_per_fold=10, faces_per_user=3):
    out, face = {}, 0
    for k in range(5):
        out[k] = []
        for u in range(users_per_fold):
            for _ in range(faces_per_user):
                face += 1
                out[k].append((f"{k}_{u}@N0{k}", f"img{face}_o.jpg", face, "(25, 32)", "mf"[u % 2]))
    return out


def test_subset_keeps_whole_users_of_every_fold_and_smaller_shares_nest(tmp_path, capsys):
    folder = write_folds(tmp_path / "adience", many_users())
    full = data.read_adience_folds(folder, subset=1.0)
    small = data.read_adience_folds(folder, subset=0.2)
    assert "SUBSET 0.2: 10 of 50 users (30 of 150 faces)" in capsys.readouterr().out
    larger = data.read_adience_folds(folder, subset=0.5)
    for k in range(5):
        assert small.loc[small["fold"] == k, "user_id"].nunique() == 2  # ceil(0.2 * 10)
        assert larger.loc[larger["fold"] == k, "user_id"].nunique() == 5
    per_user = full.groupby("user_id").size()
    assert (small.groupby("user_id").size() == per_user[small["user_id"].unique()]).all()  # whole users
    assert set(small["user_id"]) <= set(larger["user_id"])  # a smaller share is part of a larger one
    assert small.attrs["subset"] == {"share": 0.2, "seed": 0, "users": 10, "of_users": 50, "faces": 30, "of_faces": 150}
    again = data.read_adience_folds(folder, subset=0.2)
    assert again["path"].tolist() == small["path"].tolist()
    other = data.read_adience_folds(folder, subset=0.2, seed=1)
    assert set(other["user_id"]) != set(small["user_id"])
    # at least two users stay in every fold: a validation set is carved by user
    tiny = data.read_adience_folds(folder, subset=0.01)
    assert tiny.groupby("fold")["user_id"].nunique().tolist() == [2] * 5
    data.case_study_split(data.apply_protocol(tiny, "binary")[0])
    with pytest.raises(ValueError, match="share of the users"):
        data.take_users(full, 0)


def test_subset_defaults_to_the_runs_SUBSET(tmp_path, monkeypatch):
    from helpers.course import paths

    folder = write_folds(tmp_path / "adience", many_users())
    monkeypatch.setenv(paths.ENV_SUBSET, "0.3")
    assert data.read_adience_folds(folder)["user_id"].nunique() == 15
    assert data.read_adience_folds(folder, subset=1)["user_id"].nunique() == 50


def test_missing_empty_and_truncated_images_are_left_out_and_reported(tmp_path, capsys):
    import io

    import numpy as np

    rows = {k: [(f"u{k}@N0{k}", f"img{k}{j}_o.jpg", 10 * k + j, "(25, 32)", "mf"[j % 2]) for j in range(3)]
            for k in range(5)}
    root = write_folds(tmp_path / "adience", rows)
    df = data.read_adience_folds(root, check_images=False)
    rng = np.random.default_rng(0)
    for rel in df["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / rel, quality=90)
    paths_ = df["path"].tolist()
    (root / paths_[0]).unlink()                                           # missing
    (root / paths_[1]).write_bytes(b"")                                   # empty
    whole = (root / paths_[2]).read_bytes()
    (root / paths_[2]).write_bytes(whole[: len(whole) // 2])              # truncated JPEG
    (root / paths_[3]).write_bytes((root / paths_[3]).read_bytes() + b"\0" * 20)  # padding after the end: fine
    png = io.BytesIO()
    Image.new("RGB", (30, 30), (9, 9, 9)).save(png, format="PNG")
    (root / paths_[4]).write_bytes(png.getvalue()[:-30])                  # a truncated PNG under a .jpg name
    capsys.readouterr()
    kept = data.read_adience_folds(root)
    said = capsys.readouterr().out
    assert len(kept) == 15 - 4 and paths_[3] in set(kept["path"])
    kinds = {s["path"]: s["kind"] for s in kept.attrs["skipped_images"]}
    assert kinds == {paths_[0]: "missing", paths_[1]: "empty", paths_[2]: "truncated", paths_[4]: "truncated"}
    assert "dropped 4 of 15 rows" in said and "truncated" in said
    # the cheap check agrees with decoding every image
    assert set(data.validate_images(df, root).bad["path"]) == set(kinds)
    assert len(data.read_adience_folds(root, check_images=False)) == 15
    assert list(kept.index) == list(range(len(kept)))
