"""Tests for helpers.pipeline on a handful of tiny images written here."""
from __future__ import annotations

import os
from pathlib import Path

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


def test_fits_a_keras_model(faces):
    import keras

    root, df = faces
    ds = pipeline.make_dataset(df, root, image_size=(8, 8), training=True, batch_size=5)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_labels_false_gives_images_alone(faces):
    root, df = faces
    first = batches(pipeline.make_dataset(df, root, image_size=SIZE, batch_size=5, labels=False))
    assert isinstance(first[0], np.ndarray) and first[0].shape == (5, 12, 12, 3)


def test_missing_files_and_missing_labels_are_clear_errors(faces):
    root, df = faces
    bad = pd.concat([df, pd.DataFrame({"path": ["gone.jpg"], "label": [0]})], ignore_index=True)
    with pytest.raises(FileNotFoundError, match=r"1 of 11 .*gone\.jpg \(missing\).*drop_invalid"):
        pipeline.make_dataset(bad, root)
    with pytest.raises(ValueError, match="apply_protocol"):
        pipeline.make_dataset(df.drop(columns="label"), root)
    with pytest.raises(ValueError, match="resize must be"):
        pipeline.make_dataset(df, root, resize="squash")


def test_the_steps_compose_to_make_dataset(faces):
    """decode -> resize -> augment by hand gives make_dataset's images; training images are
    crops (or mirrored crops) of the resized image, never anything else."""
    import tensorflow as tf

    root, df = faces
    evaluation = images_of(batches(pipeline.make_dataset(df, root, image_size=SIZE, resize="crop", batch_size=4)))
    pre = (round(12 * pipeline.CROP_RATIO),) * 2
    for i, rel in enumerate(df["path"]):
        big = pipeline.resize_image(pipeline.decode_image(str(root / rel)), pre, "crop")
        by_hand = pipeline.augment_image(big, SIZE, training=False).numpy()
        np.testing.assert_array_equal(by_hand, evaluation[i])
    ds = pipeline.make_dataset(df, root, image_size=SIZE, resize="direct", training=True, batch_size=10, shuffle_seed=5)
    (train, labels), = batches(ds)
    decoded = {int(l): [] for l in labels}
    for rel, label in zip(df["path"], df["label"]):
        big = pipeline.resize_image(pipeline.decode_image(str(root / rel)), pre, "direct").numpy()
        windows = [big[t:t + 12, s:s + 12] for t in range(pre[0] - 11) for s in range(pre[1] - 11)]
        decoded[int(label)] += windows + [w[:, ::-1] for w in windows]
    for image, label in zip(train, labels):
        assert any(np.allclose(image, w, atol=1e-3) for w in decoded[int(label)])


def test_augment_names_what_training_applies(faces):
    """augment=() trains on the centre of the resized image (as evaluation at that size sees it),
    ("flip",) on the centre or its mirror, never a shifted crop; an unknown name is refused."""
    root, df = faces
    pre = (round(12 * pipeline.CROP_RATIO),) * 2
    centres = []
    for rel in df["path"]:
        big = pipeline.resize_image(pipeline.decode_image(str(root / rel)), pre, "direct")
        centres.append(pipeline.augment_image(big, SIZE, training=False).numpy())
    opts = dict(image_size=SIZE, resize="direct", training=True, batch_size=10)
    by_path = dict(zip(df["path"], centres))
    for augment, allowed in (((), lambda c: [c]), (("flip",), lambda c: [c, c[:, ::-1]])):
        order = df.sample(frac=1.0, random_state=0)  # any order: match each image to its own file
        (images, labels), = batches(pipeline.make_dataset(order, root, augment=augment, shuffle_seed=3, **opts))
        for image in images:
            assert any(any(np.allclose(image, a, atol=1e-3) for a in allowed(c)) for c in by_path.values())
    flips = images_of(batches(pipeline.make_dataset(df, root, augment=("flip",), shuffle_seed=3, **opts)))
    assert not all(any(np.allclose(f, c, atol=1e-3) for c in centres) for f in flips), "no image was mirrored"
    with pytest.raises(ValueError, match="unknown augmentation.*rotate"):
        pipeline.make_dataset(df, root, augment=("rotate",), **opts)


def write_large_faces(folder, n, side, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rel = f"aligned/u{i % 7}/face{i}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        Image.fromarray(base).resize((side, side), Image.BILINEAR).save(folder / rel, quality=90)
        rows.append({"path": rel, "label": i % 2})
    return pd.DataFrame(rows)


def test_large_images_are_decoded_once_into_the_prepared_cache(tmp_path):
    root = tmp_path / "adience"
    df = write_large_faces(root, 70, 400)
    ds = pipeline.make_dataset(df, root, image_size=(32, 32), resize="direct", batch_size=32)
    prepared = [Path(f) for f in pipeline.image_files(df, root, min_side=32)]
    assert all(p.is_relative_to(pipeline.prepared_dir()) for p in prepared)
    with Image.open(prepared[0]) as im:
        assert im.size == (pipeline.PREPARED_SIDE, pipeline.PREPARED_SIDE) and im.format == "JPEG"
    x = images_of(batches(ds))
    assert x.shape == (70, 32, 32, 3)
    # the same faces as read from the 400 px originals, up to JPEG and a second resampling
    originals = np.stack([pipeline.resize_image(pipeline.decode_image(str(root / p)), (32, 32), "direct").numpy()
                          for p in df["path"]])
    assert np.abs(x - originals).mean() < 2.0
    # a second read writes nothing; a changed original is prepared again, the others are not
    stamps = {p: p.stat().st_mtime_ns for p in prepared}
    assert pipeline.prepare_images(df, root, progress=False).written == 0
    Image.new("RGB", (400, 400), (250, 0, 0)).save(root / df["path"][3], quality=90)
    report = pipeline.prepare_images(df, root, progress=False)
    assert report.written == 1 and report.reused == 69
    assert [p for p in prepared if p.stat().st_mtime_ns != stamps[p]] == [prepared[3]]
    red = images_of(batches(pipeline.make_dataset(df.iloc[[3]], root, image_size=(32, 32), resize="direct")))[0]
    np.testing.assert_allclose(red.mean(axis=(0, 1)), [250, 0, 0], atol=4)


def test_prepared_cache_only_where_it_keeps_the_resolution(tmp_path, faces):
    small_root, small = faces
    assert pipeline.image_files(small, small_root, min_side=12) == [str(small_root / p) for p in small["path"]]
    root = tmp_path / "large"
    df = write_large_faces(root, 3, 300)
    assert pipeline.image_files(df, root, min_side=pipeline.read_side((256, 256), "crop")) == [str(root / p) for p in df["path"]]
    assert pipeline.read_side((224, 224), "crop") == 256 == pipeline.read_side((224, 224), "direct", training=True)
    assert pipeline.read_side((224, 224), "direct") == 224
    assert pipeline.source_description(df, root, 224).startswith("prepared 256 px")
    assert pipeline.source_description(small, small_root, 12) == "original files"


def test_undecodable_images_are_named_when_preparing(tmp_path):
    root = tmp_path / "adience"
    df = write_large_faces(root, 4, 300)
    (root / df["path"][2]).write_bytes(b"\xff\xd8" + bytes(range(256)) * 40 + b"\xff\xd9")
    with pytest.raises(ValueError, match=r"1 image\(s\) could not be decoded.*face2\.jpg.*validate_images"):
        pipeline.prepare_images(df, root, progress=False)
    assert pipeline.prepare_images(df.drop(index=2), root, progress=False).written == 0  # the good ones were kept


def test_prepared_cache_lives_on_the_runtimes_local_disk(monkeypatch, tmp_path):
    from helpers.course import paths

    monkeypatch.setattr(paths, "in_colab", lambda: True)
    assert pipeline.prepared_dir() == pipeline.COLAB_LOCAL_DISK / "prepared"
    monkeypatch.setenv(pipeline.ENV_PREPARED, str(tmp_path / "p"))
    assert pipeline.prepared_dir() == tmp_path / "p"


def test_load_images_fills_one_array_float_or_uint8(faces):
    root, df = faces
    x = pipeline.load_images(df, root, SIZE, batch_size=3)
    u = pipeline.load_images(df, root, SIZE, batch_size=3, dtype="uint8")
    assert x.dtype == np.float32 and u.dtype == np.uint8 and u.shape == x.shape == (10, 12, 12, 3)
    np.testing.assert_array_equal(u, np.rint(x).astype(np.uint8))
    assert pipeline.load_images(df.iloc[:0], root, SIZE).shape == (0, 12, 12, 3)
