"""Tests for helpers.pipeline on a handful of tiny images written here."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import pipeline

SIZE = (12, 12)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Ten noisy JPEGs of different shapes, labels 0/1 (3 of class 1)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        arr = rng.integers(0, 256, (18 + i, 14 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{i}.jpg", quality=95)
        rows.append({"path": f"{i}.jpg", "label": int(i % 3 == 0), "user_id": f"u{i}"})
    return root, pd.DataFrame(rows)


def batches(ds):
    return [tuple(t.numpy() for t in b) if isinstance(b, tuple) else b.numpy() for b in ds]


def images_of(epoch):
    return np.concatenate([b[0] for b in epoch])


def test_shapes_dtypes_and_range(faces):
    root, df = faces
    out = batches(pipeline.make_dataset(df, root, image_size=SIZE, batch_size=4))
    assert [b[0].shape for b in out] == [(4, 12, 12, 3), (4, 12, 12, 3), (2, 12, 12, 3)]
    assert out[0][0].dtype == np.float32 and out[0][1].dtype == np.int32
    x = images_of(out)
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 100  # 0-255, not 0-1 or mean-subtracted
    assert list(np.concatenate([b[1] for b in out])) == list(df["label"])  # evaluation keeps order


def test_evaluation_is_deterministic_and_matches_load_images(faces):
    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=SIZE, batch_size=3)
    a, b = images_of(batches(ds)), images_of(batches(ds))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pipeline.load_images(df, root, SIZE), a)


def test_training_differs_between_epochs_but_is_reproducible_by_seed(faces):
    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=SIZE, training=True, batch_size=10, shuffle_seed=3)
    e1, e2 = batches(ds), batches(ds)
    assert not np.array_equal(images_of(e1), images_of(e2))
    assert sorted(e1[0][1]) == sorted(df["label"])  # every image once per epoch
    same = pipeline.make_dataset(df, root, image_size=SIZE, training=True, batch_size=10, shuffle_seed=3)
    f1, f2 = batches(same), batches(same)
    np.testing.assert_array_equal(images_of(e1), images_of(f1))
    np.testing.assert_array_equal(images_of(e2), images_of(f2))
    other = pipeline.make_dataset(df, root, image_size=SIZE, training=True, batch_size=10, shuffle_seed=4)
    assert not np.array_equal(images_of(batches(other)), images_of(e1))


def test_no_augmentation_in_training_means_only_shuffling(faces):
    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=SIZE, training=True, augment=(), batch_size=10)
    train = images_of(batches(ds))
    evaluation = pipeline.load_images(df, root, SIZE)
    # same images, only in another order
    np.testing.assert_allclose(np.sort(train.reshape(10, -1).sum(1)), np.sort(evaluation.reshape(10, -1).sum(1)),
                               rtol=1e-5)


def test_crop_keeps_the_centre_and_direct_keeps_everything(tmp_path):
    # 10 high x 20 wide: red | green | blue in columns 0-4 | 5-14 | 15-19
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5, 0] = 255
    arr[:, 5:15, 1] = 255
    arr[:, 15:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "bands.png")
    df = pd.DataFrame({"path": ["bands.png"]})
    crop = pipeline.load_images(df, tmp_path, (8, 8), resize="crop")[0]
    direct = pipeline.load_images(df, tmp_path, (8, 8), resize="direct")[0]
    assert crop.shape == direct.shape == (8, 8, 3)
    assert crop[..., 1].min() > 200 and crop[..., [0, 2]].max() < 60  # only the green centre
    assert direct[:, 0, 0].min() > 200 and direct[:, -1, 2].min() > 200  # red left, blue right


def test_png_greyscale_rgba_decode_to_rgb(tmp_path):
    Image.new("RGB", (9, 7), (250, 20, 10)).save(tmp_path / "rgb.png")
    Image.new("L", (9, 7), 128).save(tmp_path / "grey.jpg", format="JPEG")
    Image.new("RGBA", (9, 7), (10, 240, 30, 80)).save(tmp_path / "rgba.png")
    Image.new("RGB", (9, 7), (250, 20, 10)).save(tmp_path / "red.jpg", format="JPEG", quality=100)
    df = pd.DataFrame({"path": ["rgb.png", "grey.jpg", "rgba.png", "red.jpg"]})
    x = pipeline.load_images(df, tmp_path, (6, 6))
    assert x.shape == (4, 6, 6, 3)
    np.testing.assert_allclose(x[0, 3, 3], [250, 20, 10], atol=1)  # RGB order, not BGR
    np.testing.assert_allclose(x[1, 3, 3], [128, 128, 128], atol=2)
    np.testing.assert_allclose(x[2, 3, 3], [10, 240, 30], atol=1)  # alpha dropped, colour kept
    np.testing.assert_allclose(x[3, 3, 3], [250, 20, 10], atol=6)


def test_class_weight_dict():
    w = pipeline.class_weight_dict([0, 0, 0, 1], 2)
    assert w == pytest.approx({0: 4 / 6, 1: 2.0})
    assert pipeline.class_weight_dict([0, 1], 3)[2] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        pipeline.class_weight_dict([0, 2], 2)


def test_class_weights_give_sample_weights(faces):
    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=SIZE, batch_size=10, class_weights="balanced")
    (x, y, w), = batches(ds)
    expected = pipeline.class_weight_dict(df["label"], 2)
    np.testing.assert_allclose(w, [expected[int(l)] for l in y])
    assert w.sum() == pytest.approx(len(df))


def test_balanced_sampling_draws_classes_equally(faces):
    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=(4, 4), training=True, batch_size=10, sample="balanced")
    labels = np.concatenate([b[1] for _ in range(6) for b in batches(ds)])
    assert len(labels) == 60  # an epoch keeps len(df) images
    assert 0.4 <= labels.mean() <= 0.6  # class 1 is 30% of the table


def test_labels_false_and_cache(faces):
    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=SIZE, batch_size=5, labels=False)
    first = batches(ds)
    assert isinstance(first[0], np.ndarray) and first[0].shape == (5, 12, 12, 3)
    cached = pipeline.make_dataset(df, root, image_size=SIZE, batch_size=5, training=True, cache=True)
    e1, e2 = batches(cached), batches(cached)
    assert sum(len(b[1]) for b in e1) == sum(len(b[1]) for b in e2) == 10
    assert not np.array_equal(images_of(e1), images_of(e2))  # augmentation still varies after caching


def test_missing_corrupt_files_and_missing_labels_are_clear_errors(faces, tmp_path, monkeypatch):
    root, df = faces
    bad = pd.concat([df, pd.DataFrame({"path": ["gone.jpg"], "label": [0]})], ignore_index=True)
    with pytest.raises(FileNotFoundError, match=r"1 of 11 .*gone\.jpg \(missing\).*drop_invalid"):
        pipeline.make_dataset(bad, root)
    (root / "broken.jpg").write_bytes((root / "0.jpg").read_bytes()[:200])
    broken = pd.concat([df, pd.DataFrame({"path": ["broken.jpg"], "label": [0]})], ignore_index=True)
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(ValueError, match=r"(?s)corrupt: 1.*broken\.jpg.*drop_invalid"):
        pipeline.make_dataset(broken, root, check="decode")
    (root / "broken.jpg").unlink()
    with pytest.raises(ValueError, match="apply_protocol"):
        pipeline.make_dataset(df.drop(columns="label"), root)
    with pytest.raises(ValueError, match="resize must be"):
        pipeline.make_dataset(df, root, resize="squash")


def test_fits_a_keras_model(faces):
    import keras

    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=(8, 8), training=True, batch_size=5, class_weights="balanced")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
