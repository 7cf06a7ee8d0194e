"""helpers.levi_hassner: the Adience baseline's release found, checked, converted by the course's
converter (preprocessing inside the model) and evaluated on given faces.

The real release cannot be downloaded here: a stand-in at the real size and formats (seeded
weights) is written by the module itself, and small face images by the tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import caffe as cf
from helpers import levi_hassner as lh
from helpers.caffe import verify

needs_opencv = pytest.mark.skipif(not verify.opencv_has_caffe(), reason="needs OpenCV with its Caffe importer (4.x)")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    files = lh.write_stand_in(tmp_path_factory.mktemp("lh") / "cnn_age_gender_models_and_data.0.0.2", seed=0)
    return files, lh.convert_release(files)


def test_stand_in_has_the_real_formats_and_sizes(stand_in):
    files, _ = stand_in
    net = cf.parse_prototxt(files["deploy_gender.prototxt"])
    assert "layers {" in files["deploy_gender.prototxt"].read_text()  # V1 syntax, like the release
    assert net.input_shape == (10, 3, 227, 227)
    assert [l.type for l in net.layers if l.type in ("Convolution", "LRN", "InnerProduct")] == \
        ["Convolution", "LRN", "Convolution", "LRN", "Convolution", "InnerProduct", "InnerProduct", "InnerProduct"]
    blobs = cf.read_caffemodel(files["gender_net.caffemodel"])
    assert blobs["conv1"].blobs[0].shape == (96, 3, 7, 7) and blobs["fc6"].blobs[0].shape == (1, 1, 512, 384 * 7 * 7)
    assert sum(b.size for l in blobs.values() for b in l.blobs) == 11_411_970
    assert cf.read_mean_file(files["mean.binaryproto"]).shape == (3, 256, 256)


def test_conversion_carries_the_authors_preprocessing(stand_in):
    files, model = stand_in
    assert model.input_shape == (None, 256, 256, 3)  # resized to 256x256; the model crops 227x227
    assert model.get_layer("conv1").input.shape[1:3] == (227, 227)
    assert "256x256 mean image, centre crop 227x227" in model.caffe_report.preprocessing
    np.testing.assert_allclose(model.get_layer("preprocess").mean_image.numpy().transpose(2, 0, 1),
                               cf.read_mean_file(files["mean.binaryproto"]))
    from helpers import vggface

    assert vggface.class_names(model) == ["m", "f"]


@needs_opencv
def test_converted_stand_in_matches_opencv(stand_in):
    files, model = stand_in
    net = cf.parse_prototxt(files["deploy_gender.prototxt"])
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 256, 256, 3)).astype(np.float32)
    blob = lh.preprocessing(files["mean.binaryproto"]).to_blob(rgb)
    assert blob.shape == (2, 3, 227, 227)
    ref = verify.opencv_forward(files["deploy_gender.prototxt"], files["gender_net.caffemodel"], net, blob,
                                ("pool5", "fc7", "fc8"))
    assert max(verify.relative_errors(ref, verify.keras_forward(model, rgb, ("pool5", "fc7", "fc8"), net=net)).values()) < 1e-4


def test_release_is_found_anywhere_below_its_folder_and_checked_against_the_authors(stand_in, tmp_path):
    files, _ = stand_in
    root = tmp_path / "levi_hassner"
    shutil.copytree(files["gender_net.caffemodel"].parent, root / "some" / "folder")
    found = lh.release_files(root)
    assert found == {name: root / "some" / "folder" / name for name in lh.FILES}
    (root / "some" / "folder" / "mean.binaryproto").unlink()
    assert lh.release_files(root) is None and lh.release_files(tmp_path / "absent") is None
    # git's own blob id, computed by git, for the check against the authors' copies
    git = shutil.which("git")
    if git:
        expected = subprocess.run([git, "hash-object", str(files["deploy_gender.prototxt"])], capture_output=True,
                                  text=True, check=True).stdout.strip()
        assert lh.git_blob_id(files["deploy_gender.prototxt"]) == expected
    problems = lh.check_release(files)  # a stand-in is not the authors' release
    assert len(problems) == 3 and all("the authors' copy is" in p for p in problems)


def _faces(tmp_path, n_per_fold=5, folds=(0, 1)):
    """Small face images on disk (larger than 256 and not square) with labels m, f and u."""
    rng = np.random.default_rng(1)
    rows = []
    for fold in folds:
        for i in range(n_per_fold):
            path = f"user{fold}_{i % 2}/face_{fold}_{i}.jpg"
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (300, 280, 3), dtype=np.uint8)).save(tmp_path / path)
            rows.append({"path": path, "label": i % 3, "user_id": f"user{fold}_{i % 2}", "fold": fold,
                         "age_group": ["(0, 2)", "(25, 32)"][i % 2]})
    return pd.DataFrame(rows)


def test_evaluate_scores_every_face_against_a_direct_computation(stand_in, tmp_path):
    _, model = stand_in
    frame = _faces(tmp_path)  # labels 0, 1, 2 = m, f, u: the u faces are left out and counted
    result = lh.evaluate(model, frame, tmp_path, class_names=("m", "f", "u"), batch_size=3, n_boot=50)
    kept = frame[frame.label < 2]
    assert result.n_faces == len(kept) == 8 and result.skipped == 2 and result.probs.shape == (8, 2)
    from helpers import pipeline

    images = pipeline.load_images(kept, tmp_path, (256, 256), resize="direct")
    direct = np.asarray(model(images, training=False))
    np.testing.assert_allclose(result.probs, direct, rtol=1e-4, atol=1e-6)  # more rows than one batch
    pred = direct.argmax(1)
    assert result.accuracy == pytest.approx(np.mean(pred == kept.label.to_numpy()))
    for k, c in enumerate("mf"):
        m = kept.label.to_numpy() == k
        assert result.table.loc[f"recall_{c}", "estimate"] == pytest.approx(np.mean(pred[m] == k))
    assert list(result.per_fold.group) == ["0", "1"] and result.per_fold.n_faces.sum() == 8
    assert set(result.per_age.group) == {"(0, 2)", "(25, 32)"}
    assert "on 8 faces (2 faces of other classes left out)" in result.summary()
    with pytest.raises(ValueError, match="no face of class"):
        lh.evaluate(model, frame[frame.label == 2], tmp_path, class_names=("m", "f", "u"))


def test_load_or_convert_saves_once(stand_in, monkeypatch):
    files, _ = stand_in
    first = lh.load_or_convert(files)
    assert lh.converted_path().is_file()
    calls = []
    monkeypatch.setattr(lh, "convert_release", lambda *a, **k: calls.append(a))
    again = lh.load_or_convert(files)
    assert calls == [] and again.input_shape == first.input_shape


def test_score_reuses_predictions_for_a_subset(stand_in, tmp_path):
    _, model = stand_in
    frame = _faces(tmp_path)
    everything = lh.evaluate(model, frame, tmp_path, class_names=("m", "f", "u"), batch_size=4, n_boot=20)
    fold1 = frame[frame.fold == 1]
    again = lh.score(fold1, everything.probs_for(fold1, ("m", "f", "u")), class_names=("m", "f", "u"), n_boot=20)
    direct = lh.evaluate(model, fold1, tmp_path, class_names=("m", "f", "u"), n_boot=20)
    assert again.accuracy == direct.accuracy and again.n_faces == direct.n_faces == 4
    np.testing.assert_allclose(again.probs, direct.probs, rtol=1e-4, atol=1e-6)
    outside = _faces(tmp_path / "other", folds=(7,))
    with pytest.raises(KeyError, match="were not evaluated"):
        everything.probs_for(outside.set_index(outside.index + 100), ("m", "f", "u"))
    with pytest.raises(ValueError, match=r"probs must be \(4, 2\)"):
        lh.score(fold1, np.zeros((3, 2)), class_names=("m", "f", "u"))


def test_training_split_match_finds_the_split_whose_mean_was_released():
    rng = np.random.default_rng(3)
    fold_means = {k: rng.uniform(80, 140, (3, 8, 8)) for k in range(5)}
    sizes = {0: 40, 1: 30, 2: 50, 3: 20, 4: 60}
    trained_on = [0, 1, 3, 4]  # the network held out fold 2
    w = np.array([sizes[k] for k in trained_on], float)
    released = sum(wk * fold_means[k] for wk, k in zip(w / w.sum(), trained_on))
    table = lh.training_split_match(released + rng.normal(0, 0.1, released.shape), fold_means, sizes)
    assert table.loc[0, "test fold"] == 2 and table.loc[0, "trained on"] == "0, 1, 3, 4"
    assert table.loc[0, "rms difference"] < 0.2 < table.loc[1, "gap"]


def test_fold_mean_images_average_the_resized_faces(tmp_path):
    frame = _faces(tmp_path, n_per_fold=4)  # per fold: labels m, f, u, m: three m/f faces
    means, counts = lh.fold_mean_images(frame, tmp_path, class_names=("m", "f", "u"), max_per_fold=2, seed=0,
                                        batch_size=1)
    assert counts == {0: 3, 1: 3} and means[0].shape == (3, 256, 256)
    from helpers import pipeline

    picked = frame[(frame.fold == 1) & (frame.label < 2)].sample(2, random_state=0)
    images = pipeline.load_images(picked, tmp_path, (256, 256), resize="direct")
    np.testing.assert_allclose(means[1], images.mean(axis=0)[..., ::-1].transpose(2, 0, 1), rtol=1e-5, atol=1e-3)
