"""Feature extraction: one pass for all layers, reductions, and the on-disk cache."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import features, vggface
from tests.tiny_vgg import keras_tiny_vggface

LAYERS = ["pool1", "pool3", "pool5", "fc6", "fc7"]


@pytest.fixture(scope="module")
def model():
    return keras_tiny_vggface()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (10, 32, 32, 3)).astype(np.float32)


def key(**change):
    base = dict(weights="w1", dataset="d1", preprocessing="rgb", image_size=(32, 32))
    base.update(change)
    return features.cache_key(**base)


class CountingFeatureModel:
    """Counts forward passes and records which layers each feature model was built for."""

    def __init__(self, monkeypatch):
        self.calls, self.built_for = 0, []
        real_model, real_forward = vggface.feature_model, features._forward

        def building(model, layers):
            self.built_for.append(list(layers))
            return real_model(model, layers)

        def forward(fm, batch):
            self.calls += 1
            return real_forward(fm, batch)

        monkeypatch.setattr(vggface, "feature_model", building)
        monkeypatch.setattr(features, "_forward", forward)


def test_values_match_the_model_and_one_pass_serves_all_layers(model, images, monkeypatch):
    counter = CountingFeatureModel(monkeypatch)
    out = features.extract_features(model, images, LAYERS, reduce="gap", batch_size=4, progress=False)
    assert counter.calls == 3  # ceil(10 / 4) batches, ONE pass each for all five layers
    raw = vggface.feature_model(model, LAYERS).predict(images, verbose=0)
    for layer, r in zip(LAYERS, raw):
        expected = r.mean(axis=(1, 2)) if r.ndim == 4 else r
        np.testing.assert_allclose(out[layer], expected, rtol=1e-5, atol=1e-4)
    assert out["pool1"].shape == (10, 4) and out["fc7"].shape == (10, 16)
    raw_out = features.extract_features(model, images, ["pool5"], reduce=None, progress=False)
    assert raw_out["pool5"].shape == (10, 1, 1, 8)


def test_gap_plus_projection_is_fixed_and_keeps_gap(model, images):
    a = features.extract_features(model, images, ["pool1"], reduce="gap+proj", proj_dim=6, progress=False)["pool1"]
    b = features.extract_features(model, images, ["pool1"], reduce="gap+proj", proj_dim=6, progress=False)["pool1"]
    gap = features.extract_features(model, images, ["pool1"], reduce="gap", progress=False)["pool1"]
    assert a.shape == (10, 4 + 6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[:, :4], gap, rtol=1e-6)
    assert np.abs(a[:, 4:]).sum() > 0


def test_adaptive_pool_averages_cells():
    maps = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1)
    pooled = features._adaptive_avg_pool(maps, 4)
    assert pooled.shape == (2, 4, 4, 1)
    assert pooled[0, 0, 0, 0] == np.mean([0, 1, 8, 9])


def test_dataset_input_gives_the_same_features(model, images):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(10, np.int32))).batch(3)
    from_ds = features.extract_features(model, ds, ["fc7", "pool3"], progress=False)
    from_array = features.extract_features(model, images, ["fc7", "pool3"], progress=False)
    for layer in from_ds:
        np.testing.assert_allclose(from_ds[layer], from_array[layer], rtol=1e-5, atol=1e-5)


def test_cache_hit_is_memory_mapped_and_skips_the_model(model, images, tmp_path, monkeypatch):
    first = features.extract_features(model, images, LAYERS, key=key(), cache_dir=tmp_path, progress=False)
    npys = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert len(npys) == 5 and len(list(tmp_path.glob("*.json"))) == 5
    meta = json.loads(next(tmp_path.glob("fc7-*.json")).read_text())
    assert meta["full_key"]["key"]["weights"] == "w1" and meta["shape"] == [10, 16]

    def boom(*a, **k):
        raise AssertionError("the model ran although everything was cached")

    monkeypatch.setattr(features, "_compute", boom)
    second = features.extract_features(model, images, LAYERS, key=key(), cache_dir=tmp_path, progress=False)
    for layer in LAYERS:
        assert isinstance(second[layer], np.memmap)
        assert not second[layer].flags.writeable
        np.testing.assert_array_equal(second[layer], first[layer])


@pytest.mark.parametrize("part,value", [
    ("weights", "w2"), ("dataset", "d2"), ("preprocessing", "crop"), ("image_size", (33, 32)),
])
def test_changing_any_key_part_recomputes(model, images, tmp_path, monkeypatch, part, value):
    features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)
    counter = CountingFeatureModel(monkeypatch)
    features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)
    assert counter.calls == 0
    features.extract_features(model, images, ["fc7"], key=key(**{part: value}), cache_dir=tmp_path, progress=False)
    assert counter.calls == 1
    assert len(list(tmp_path.glob("fc7-*.npy"))) == 2


def test_reduction_is_part_of_the_entry_and_only_missing_layers_run(model, images, tmp_path, monkeypatch):
    features.extract_features(model, images, ["pool1"], key=key(), cache_dir=tmp_path, progress=False)
    counter = CountingFeatureModel(monkeypatch)
    out = features.extract_features(model, images, ["pool1", "fc7"], key=key(), cache_dir=tmp_path, progress=False)
    assert counter.built_for == [["fc7"]]
    assert set(out) == {"pool1", "fc7"}
    features.extract_features(model, images, ["pool1"], key=key(), reduce="gap+proj", cache_dir=tmp_path, progress=False)
    assert counter.built_for[-1] == ["pool1"]


def test_an_entry_without_metadata_counts_as_missing(model, images, tmp_path, monkeypatch):
    features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)
    for meta in tmp_path.glob("*.json"):
        meta.unlink()  # as if the run died between the array and its metadata
    counter = CountingFeatureModel(monkeypatch)
    features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)
    assert counter.calls == 1


def test_interrupted_extraction_writes_nothing(model, images, tmp_path, monkeypatch):
    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(features, "_reduce", dies)
    with pytest.raises(KeyboardInterrupt):
        features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


class Evil:
    unpickled = False

    def __reduce__(self):
        return (Evil._mark, ())

    @staticmethod
    def _mark():
        Evil.unpickled = True
        return "boom"


def test_loading_never_unpickles(model, images, tmp_path):
    good = features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)["fc7"]
    good = np.array(good)
    npy = next(tmp_path.glob("fc7-*.npy"))
    meta_path = npy.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [2]
    meta_path.write_text(json.dumps(meta))
    np.save(npy, np.array([Evil(), None], dtype=object), allow_pickle=True)
    with pytest.warns(UserWarning, match="not a plain numeric array"):
        again = features.extract_features(model, images, ["fc7"], key=key(), cache_dir=tmp_path, progress=False)
    assert not Evil.unpickled
    np.testing.assert_allclose(again["fc7"], good, rtol=1e-6)  # recomputed and rewritten
    assert np.load(npy, allow_pickle=False).dtype == np.float32


def test_bad_requests_are_explained(model, images, tmp_path):
    with pytest.raises(ValueError, match="fc9"):
        features.extract_features(model, images, ["fc9"], progress=False)
    with pytest.raises(ValueError, match="image size"):
        features.extract_features(model, images, ["fc7"], key={"weights": "w"}, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="reduce"):
        features.extract_features(model, images, ["fc7"], reduce="max", progress=False)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        features.extract_features(model, images[..., 0], ["fc7"], progress=False)


def test_file_checksum_is_remembered_by_size_and_mtime(tmp_path):
    import hashlib

    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    index = tmp_path / "sums.json"
    first = features.file_checksum(f, index_path=index)
    assert first == hashlib.sha256(b"abc" * 1000).hexdigest()
    st = f.stat()
    f.write_bytes(b"xyz" * 1000)  # same size; put the old mtime back: the remembered sum is used
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert features.file_checksum(f, index_path=index) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a newer mtime: hashed again
    assert features.file_checksum(f, index_path=index) == hashlib.sha256(b"xyz" * 1000).hexdigest()


def test_fingerprints_change_with_weights_and_frame_order(model):
    a = features.weights_fingerprint(model)
    w = model.get_layer("fc7").get_weights()
    model.get_layer("fc7").set_weights([w[0] + 1, w[1]])
    try:
        assert features.weights_fingerprint(model) != a
    finally:
        model.get_layer("fc7").set_weights(w)
    assert features.weights_fingerprint(model) == a
    df = pd.DataFrame({"path": ["a.jpg", "b.jpg"]})
    assert features.frame_fingerprint(df) != features.frame_fingerprint(df.iloc[::-1])
    with pytest.raises(ValueError, match="path"):
        features.frame_fingerprint(pd.DataFrame({"x": [1]}))


def test_features_for_frame_reads_faces_and_reuses_the_cache(model, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(5):
        rel = f"aligned/u{i}/face{i}.jpg"
        (tmp_path / "faces" / rel).parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "faces" / rel)
        rows.append({"path": rel, "user_id": f"u{i}"})
    df = pd.DataFrame(rows)
    cache = tmp_path / "cache"
    out = features.features_for_frame(model, df, tmp_path / "faces", ["pool2", "fc7"], image_size=(32, 32),
                                      batch_size=2, cache_dir=cache, progress=False)
    assert out["fc7"].shape == (5, 16) and out["pool2"].shape == (5, 4)
    from helpers import pipeline

    def no_images(*a, **k):
        raise AssertionError("images were read although the features were cached")

    monkeypatch.setattr(pipeline, "make_dataset", no_images)
    again = features.features_for_frame(model, df, tmp_path / "faces", ["fc7"], image_size=(32, 32),
                                        batch_size=2, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again["fc7"], out["fc7"])


# ---------------------------------------------------------------- one cache over the whole dataset
def write_faces(folder, n, seed=1, side=40):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rel = f"aligned/u{i % 4}/face{i}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side - 4, 3), dtype=np.uint8)).save(folder / rel, quality=95)
        rows.append({"path": rel, "user_id": f"u{i % 4}", "label": i % 2})
    (folder / "fold_0_data.txt").write_text("the dataset's identity\n", encoding="utf-8")
    return pd.DataFrame(rows)


class CountingPipeline:
    """Records the faces each images pass reads (``make_dataset`` calls)."""

    def __init__(self, monkeypatch):
        from helpers import pipeline

        self.frames = []
        real = pipeline.make_dataset

        def reading(frame, *args, **kwargs):
            self.frames.append(list(frame["path"]))
            return real(frame, *args, **kwargs)

        monkeypatch.setattr(pipeline, "make_dataset", reading)


def test_any_subset_of_faces_reads_rows_of_the_whole_dataset_cache(model, tmp_path, monkeypatch):
    from helpers import pipeline

    root, cache = tmp_path / "faces", tmp_path / "cache"
    df = write_faces(root, 70)  # more faces than one batch
    everything = features.features_for_frame(model, df, root, ["pool3", "fc7"], image_size=(32, 32),
                                             batch_size=16, cache_dir=cache, progress=False)
    direct = vggface.feature_model(model, ["fc7"])(pipeline.load_images(df, root, (32, 32), resize="direct"))
    np.testing.assert_allclose(everything["fc7"], np.asarray(direct), rtol=1e-5, atol=1e-5)
    reads = CountingPipeline(monkeypatch)
    part = df.iloc[[50, 3, 17, 17, 64, 0]]  # any order, repeats allowed: a split, a fold, a SUBSET
    got = features.features_for_frame(model, part, root, ["fc7"], image_size=(32, 32), cache_dir=cache, progress=False)
    assert reads.frames == []  # nothing read: every face is in the cache
    np.testing.assert_array_equal(got["fc7"], np.asarray(everything["fc7"])[[50, 3, 17, 17, 64, 0]])
    # new faces beside known ones: only the new ones go through the network
    more = pd.concat([write_faces(tmp_path / "extra", 2, seed=9).assign(path=lambda d: "x" + d["path"]),
                      df.iloc[:3]], ignore_index=True)
    for rel in more["path"][:2]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((tmp_path / "extra" / rel[1:]).read_bytes())
    mixed = features.features_for_frame(model, more, root, ["fc7", "pool3"], image_size=(32, 32),
                                        cache_dir=cache, progress=False)
    assert reads.frames == [list(more["path"][:2])]
    np.testing.assert_array_equal(mixed["pool3"][2:], np.asarray(everything["pool3"])[:3])
    # ... and a later call finds them too
    features.features_for_frame(model, more, root, ["fc7"], image_size=(32, 32), cache_dir=cache, progress=False)
    assert len(reads.frames) == 1


def test_a_gender_model_on_the_base_shares_the_bases_fc7(model, tmp_path, monkeypatch):
    root, cache = tmp_path / "faces", tmp_path / "cache"
    df = write_faces(root, 6)
    base = features.features_for_frame(model, df, root, ["fc7"], image_size=(32, 32), cache_dir=cache, progress=False)
    gender = vggface.replace_head(model, ("m", "f"), seed=0)
    assert features.layer_fingerprints(gender, ["fc7"]) == features.layer_fingerprints(model, ["fc7"])
    reads = CountingPipeline(monkeypatch)
    shared = features.features_for_frame(gender, df, root, ["fc7"], image_size=(32, 32), cache_dir=cache, progress=False)
    assert reads.frames == []
    np.testing.assert_array_equal(shared["fc7"], base["fc7"])
    assert features.layer_fingerprints(gender, ["fc8"]) != features.layer_fingerprints(model, ["fc8"])


def test_other_weights_resizing_or_dataset_are_other_entries(tmp_path, monkeypatch):
    root, cache = tmp_path / "faces", tmp_path / "cache"
    df = write_faces(root, 5)
    net = keras_tiny_vggface(seed=4)
    kwargs = dict(image_size=(32, 32), cache_dir=cache, progress=False)
    first = features.features_for_frame(net, df, root, ["fc7"], **kwargs)["fc7"].copy()
    reads = CountingPipeline(monkeypatch)
    features.features_for_frame(net, df, root, ["fc7"], resize="crop", **kwargs)
    conv = net.get_layer("conv2_1")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel * 1.5, bias])
    changed = features.features_for_frame(net, df, root, ["fc7"], **kwargs)["fc7"]
    (root / "fold_0_data.txt").write_text("another dataset\n", encoding="utf-8")
    features.features_for_frame(net, df, root, ["fc7"], **kwargs)
    assert len(reads.frames) == 3 and not np.allclose(changed, first)
    conv.set_weights([kernel, bias])
    (root / "fold_0_data.txt").write_text("the dataset's identity\n", encoding="utf-8")
    np.testing.assert_array_equal(features.features_for_frame(net, df, root, ["fc7"], **kwargs)["fc7"], first)
    assert len(reads.frames) == 3  # back to the first weights and dataset: the first entry again


def test_a_chunk_without_its_row_list_counts_as_missing(model, tmp_path, monkeypatch):
    root, cache = tmp_path / "faces", tmp_path / "cache"
    df = write_faces(root, 4)
    features.features_for_frame(model, df, root, ["fc7"], image_size=(32, 32), cache_dir=cache, progress=False)
    for meta in cache.glob("fc7-*/rows-*.json"):
        meta.unlink()  # as if the run had stopped between the array and its row list
    reads = CountingPipeline(monkeypatch)
    features.features_for_frame(model, df, root, ["fc7"], image_size=(32, 32), cache_dir=cache, progress=False)
    assert reads.frames == [list(df["path"])]
