"""helpers.caffe (conversion and verification) against an independent Caffe engine (OpenCV's importer), on narrow VGG-Face nets.

The Caffe blobs are drawn with numpy in Caffe's own layout (``tests.tiny_vgg.write_caffe_files``),
written with the caffe writer, and run by OpenCV on inputs preprocessed here by hand (BGR,
minus the mean, NCHW), so the Keras side shares no code with the reference. Only the tests
that run OpenCV are skipped where its Caffe importer is missing (OpenCV 5 has none).
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from helpers import caffe as cf  # noqa: E402
from helpers import caffe
import helpers
from helpers import vggface
from helpers.course import fileio
from helpers.caffe import convert, verify, weights as caffe_weights  # noqa: E402
from tests.tiny_vgg import write_caffe_files

# OpenCV is a test-only dependency (requirements-dev.txt), and OpenCV 5 has no Caffe importer.
needs_opencv = pytest.mark.skipif(not verify.opencv_has_caffe(), reason="needs OpenCV with its Caffe importer (4.x)")

WIDTHS = dict(conv_widths=(4, 8, 8, 16, 16), fc_widths=(32, 32), n_classes=10)
MEAN_BGR = np.array([93.5940, 104.7624, 129.1863], dtype=np.float32)
COMPARED = ("pool5", "fc7", "fc8")
# OpenCV's name for the post-ReLU fc7 blob (its in-place ReLU layer)
OPENCV_NAMES = {"pool5": "pool5", "fc7": "relu7", "fc8": "fc8"}


def write_net(folder, hw=(64, 64), syntax="v1", seed=0, **widths):
    net = vggface.vggface_netspec(**{**WIDTHS, **widths}, input_hw=hw)
    return write_caffe_files(folder, net, seed=seed, syntax=syntax, stem=f"net_{syntax}")


def faces(n, hw, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, *hw, 3)).astype(np.float32)


def opencv_outputs(prototxt, caffemodel, rgb, mean=MEAN_BGR, bgr=True):
    """OpenCV's pool5 / fc7 (after ReLU) / fc8 for RGB 0-255 images, preprocessed by hand."""
    import cv2

    channels = rgb[..., ::-1] if bgr else rgb
    blob = np.ascontiguousarray((channels - mean).transpose(0, 3, 1, 2), dtype=np.float32)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(blob)
    outs = net.forward([OPENCV_NAMES[k] for k in COMPARED])
    return dict(zip(COMPARED, outs))


def keras_outputs(model, rgb):
    outs = vggface.feature_model(model, list(COMPARED))(rgb, training=False)  # eager: no tracing
    result = {k: np.asarray(v) for k, v in zip(COMPARED, outs)}
    result["pool5"] = result["pool5"].transpose(0, 3, 1, 2)  # NHWC -> Caffe's NCHW
    return result


def rel_error(ref, got):
    return float(np.abs(ref - got).max() / np.abs(ref).max())


def assert_matches(ref, got, tol=1e-4):
    for key in COMPARED:
        assert ref[key].shape == got[key].shape, key
        assert rel_error(ref[key], got[key]) < tol, (key, rel_error(ref[key], got[key]))


@pytest.fixture(scope="module")
def v1_files(tmp_path_factory):
    return write_net(tmp_path_factory.mktemp("v1"))


@pytest.fixture(scope="module")
def v1_model(v1_files):
    return convert.convert(*v1_files, names=[f"id{i}" for i in range(10)], progress=False)


# ----------------------------------------------------------------------------- agreement

@needs_opencv
def test_v1_network_matches_opencv(v1_files, v1_model):
    rgb = faces(3, (64, 64))
    assert_matches(opencv_outputs(*v1_files, rgb), keras_outputs(v1_model, rgb))


@needs_opencv
def test_v2_network_matches_opencv(tmp_path):
    files = write_net(tmp_path, syntax="v2", seed=5)
    model = convert.convert(*files, progress=False)
    rgb = faces(2, (64, 64), seed=2)
    assert_matches(opencv_outputs(*files, rgb), keras_outputs(model, rgb))


@needs_opencv
def test_non_square_odd_input_matches_opencv(tmp_path):
    # 45x75 makes every pooling see odd sizes at some point: Caffe rounds up (ceil mode).
    files = write_net(tmp_path, hw=(45, 75), seed=3)
    model = convert.convert(*files, progress=False)
    assert model.get_layer("pool5").output.shape[1:3] == (2, 3)
    rgb = faces(2, (45, 75), seed=3)
    assert_matches(opencv_outputs(*files, rgb), keras_outputs(model, rgb))


def test_input_hw_overrides_prototxt_size(v1_files):
    net = cf.parse_prototxt(v1_files[0])
    model = caffe.build_keras_model(net, input_hw=(33, 50))
    assert model.input_shape == (None, 33, 50, 3)
    assert model.get_layer("pool1").output.shape[1:3] == (17, 25)  # ceil(33/2), ceil(50/2)


# ----------------------------------------------------------------------------- the traps

@needs_opencv
def test_trap_wrong_flatten_order_breaks_fc(v1_files, monkeypatch):
    monkeypatch.setattr(caffe_weights, "flatten_source_shape", lambda model, name: None)
    model = convert.convert(*v1_files, progress=False)
    rgb = faces(2, (64, 64))
    ref, got = opencv_outputs(*v1_files, rgb), keras_outputs(model, rgb)
    assert rel_error(ref["pool5"], got["pool5"]) < 1e-4  # convolutions unaffected
    assert rel_error(ref["fc7"], got["fc7"]) > 0.1


@needs_opencv
@pytest.mark.parametrize("trap", ["rgb_not_bgr", "no_mean"])
def test_trap_wrong_preprocessing_breaks_everything(v1_files, v1_model, trap):
    rgb = faces(2, (64, 64))
    kwargs = {"bgr": False} if trap == "rgb_not_bgr" else {"mean": np.zeros(3, np.float32)}
    ref = opencv_outputs(*v1_files, rgb, **kwargs)
    got = keras_outputs(v1_model, rgb)
    assert rel_error(ref["pool5"], got["pool5"]) > 0.05


@needs_opencv
def test_trap_untransposed_kernels_break_convolutions(v1_files):
    net = cf.parse_prototxt(v1_files[0])
    blobs = cf.read_caffemodel(v1_files[1])
    model = caffe.build_keras_model(net)
    caffe.load_caffe_weights(model, blobs, net)
    for layer in net.layers:
        if layer.type == "Convolution":
            k = model.get_layer(layer.name)
            w, b = blobs[layer.name].blobs
            k.set_weights([w.reshape(k.weights[0].shape), b.reshape(-1)])  # reshaped, not transposed
    rgb = faces(2, (64, 64))
    ref, got = opencv_outputs(*v1_files, rgb), keras_outputs(model, rgb)
    assert rel_error(ref["pool5"], got["pool5"]) > 0.1


def test_weight_layout_on_small_arrays():
    rng = np.random.default_rng(0)
    caffe_w = rng.normal(size=(5, 2 * 3 * 4)).astype(np.float32)  # (out, C*H*W) with C=2, H=3, W=4
    keras_w, = caffe_weights.caffe_to_keras_arrays("InnerProduct", [caffe_w], [(24, 5)], flat_from=(3, 4, 2))
    chw = rng.normal(size=(2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(chw.transpose(1, 2, 0).reshape(-1) @ keras_w, caffe_w @ chw.reshape(-1), rtol=1e-5)
    caffe_k = rng.normal(size=(6, 3, 2, 5)).astype(np.float32)  # (O, I, kh, kw)
    keras_k, = caffe_weights.caffe_to_keras_arrays("Convolution", [caffe_k], [(2, 5, 3, 6)])
    assert keras_k[1, 4, 2, 5] == caffe_k[5, 2, 1, 4]


# ----------------------------------------------------------------------------- round trips

def test_keras_file_round_trip_restores_custom_layers(v1_model, tmp_path):
    import keras

    path = tmp_path / "model.keras"
    fileio.save_model(v1_model, path)
    loaded = helpers.load_model(path)  # the documented one-liner
    assert isinstance(loaded.get_layer("preprocess"), vggface.VGGFacePreprocess)
    assert vggface.class_names(loaded) == [f"id{i}" for i in range(10)]
    rgb = faces(2, (64, 64))
    np.testing.assert_allclose(np.asarray(loaded(rgb)), np.asarray(v1_model(rgb)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_keras_to_caffe_blobs_round_trip(v1_files, v1_model, tmp_path, fmt):
    net = cf.parse_prototxt(v1_files[0])
    written = cf.write_caffemodel(tmp_path / "back.caffemodel", caffe.keras_to_caffe_blobs(v1_model, net), format=fmt)
    original = cf.read_caffemodel(v1_files[1])
    back = cf.read_caffemodel(written)
    for name, layer in original.items():
        assert len(back[name].blobs) == len(layer.blobs), name
        for a, b in zip(layer.blobs, back[name].blobs):
            np.testing.assert_array_equal(a.reshape(-1), b.reshape(-1), err_msg=name)
    reloaded = caffe.build_keras_model(net)
    caffe.load_caffe_weights(reloaded, back, net)
    for w0, w1 in zip(v1_model.weights, reloaded.weights):
        np.testing.assert_array_equal(w0.numpy(), w1.numpy())


# ----------------------------------------------------------------------------- bad input

def test_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proto, _ = write_net(tmp_path / "a", fc_widths=(32, 32))
    _, other = write_net(tmp_path / "b", fc_widths=(32, 24))
    with pytest.raises(caffe.ConversionError) as err:
        convert.convert(proto, other, progress=False)
    message = str(err.value)
    assert "fc7" in message and "24, 32)" in message and "(32, 32)" in message


def test_unknown_layer_types_are_all_listed():
    net = vggface.vggface_netspec(**WIDTHS, input_hw=(32, 32))
    net.layers.insert(2, cf.LayerSpec("sig1", "Sigmoid", ["conv1_1"], ["conv1_1"], {}, 7))
    net.layers.insert(5, cf.LayerSpec("bn2", "BatchNorm", ["conv1_2"], ["conv1_2"], {}, 9))
    with pytest.raises(caffe.ConversionError) as err:
        caffe.build_keras_model(net)
    assert "sig1 (Sigmoid, line 7)" in str(err.value) and "bn2 (BatchNorm, line 9)" in str(err.value)


def test_names_count_must_match_outputs(v1_files):
    with pytest.raises(caffe.ConversionError, match="3 class names"):
        convert.convert(*v1_files, names=["a", "b", "c"], progress=False)


def test_cli_writes_model_and_table(v1_files, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"person_{i}" for i in range(10)) + "\n")
    out, weights = tmp_path / "m.keras", tmp_path / "m.weights.h5"
    assert convert.main([*map(str, v1_files), str(out), "--names", str(names),
                         "--weights-only", str(weights), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "fc6" in table and "32x64" in table and "64x32" in table  # Caffe vs Keras layouts
    assert out.is_file() and weights.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.weights.h5", "names.txt"]


def test_cli_failure_writes_nothing(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proto, _ = write_net(tmp_path / "a")
    _, other = write_net(tmp_path / "b", n_classes=7)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "m.keras"
    assert convert.main([str(proto), str(other), str(out), "--no-progress"]) == 1
    assert "fc8" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_failure_while_saving_writes_nothing(v1_files, tmp_path, monkeypatch):
    import keras

    def broken_save(self, path, *args, **kwargs):
        open(path, "wb").write(b"half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    out, weights = tmp_path / "m.keras", tmp_path / "m.weights.h5"
    assert convert.main([*map(str, v1_files), str(out), "--weights-only", str(weights), "--no-progress"]) == 1
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- pooling corner cases

ODD_POOLING_NET = """
name: "odd_pooling"
input: "data"
input_shape { dim: 1 dim: 3 dim: 15 dim: 17 }
layer { name: "pool0" type: "Pooling" bottom: "data" top: "pool0"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }   # 15x17 -> 8x9, padded average
layer { name: "conv1" type: "Convolution" bottom: "pool0" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }   # 8x9 -> 5x5, ceil + pad
layer { name: "pool2" type: "Pooling" bottom: "pool1" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }          # 5x5 -> 3x3, ceil
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@needs_opencv
def test_ceil_mode_and_padded_pooling_match_opencv_and_numpy_reference(tmp_path):
    # no ReLU after conv1: a max over negative values must not pick up a padded zero
    prototxt = tmp_path / "odd.prototxt"
    prototxt.write_text(ODD_POOLING_NET)
    net = cf.parse_prototxt(prototxt)
    rng = np.random.default_rng(7)
    blobs = [cf.CaffeLayerBlobs("conv1", "Convolution", [rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                                                         rng.normal(size=4).astype(np.float32)]),
             cf.CaffeLayerBlobs("fc", "InnerProduct", [rng.normal(size=(6, 4 * 3 * 3)).astype(np.float32) / 6,
                                                       rng.normal(size=6).astype(np.float32)])]
    caffemodel = cf.write_caffemodel(tmp_path / "odd.caffemodel", blobs, format="v2")
    model = convert.convert(prototxt, caffemodel, progress=False)
    assert model.get_layer("pool1").output.shape[1:3] == (5, 5)
    rgb = faces(2, (15, 17), seed=4)
    data = verify.caffe_input(rgb)
    outputs = ("pool0", "pool1", "pool2", "fc")
    ref = verify.opencv_forward(prototxt, caffemodel, net, data, outputs)
    numpy_ref = verify.reference_forward(net, cf.read_caffemodel(caffemodel), data, outputs)
    got = verify.keras_forward(model, rgb, outputs)
    assert max(verify.relative_errors(ref, got).values()) < 1e-4
    assert max(verify.relative_errors(ref, numpy_ref).values()) < 1e-4


@needs_opencv
def test_numpy_reference_and_traps_on_vgg_face(v1_files, v1_model):
    net = cf.parse_prototxt(v1_files[0])
    blobs = cf.read_caffemodel(v1_files[1])
    rgb = faces(2, (64, 64), seed=9)
    data = verify.caffe_input(rgb)
    numpy_ref = verify.reference_forward(net, blobs, data)
    assert max(verify.relative_errors(verify.opencv_forward(*v1_files, net, data), numpy_ref).values()) < 1e-4
    before = [w.numpy().copy() for w in v1_model.weights]
    traps = verify.trap_errors(v1_model, net, blobs, rgb, numpy_ref)
    assert set(traps) == set(verify.TRAPS)
    assert traps["flatten_order"]["pool5"] < 1e-4 < 0.1 < traps["flatten_order"]["fc7"]
    assert traps["kernel_reshaped"]["pool5"] > 0.1 and traps["rgb_not_bgr"]["pool5"] > 0.05
    for w0, w in zip(before, v1_model.weights):
        np.testing.assert_array_equal(w0, w.numpy())  # restored
    assert max(verify.relative_errors(numpy_ref, verify.keras_forward(v1_model, rgb)).values()) < 1e-4


def test_average_pooling_past_the_padding_is_refused():
    text = ODD_POOLING_NET.replace("dim: 15 dim: 17", "dim: 16 dim: 16")
    with pytest.raises(caffe.ConversionError, match="pool0"):
        caffe.build_keras_model(cf.parse_prototxt(text))


# ----------------------------------------------------------------------------- load_or_convert

def test_load_or_convert_converts_once_then_loads(v1_files, tmp_path, monkeypatch):
    from helpers.course.paths import Assets

    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"p{i}" for i in range(10)) + "\n")
    prototxt, caffemodel = v1_files
    assets = Assets(mode="quick", caffe_dir=tmp_path, prototxt=prototxt, caffemodel=caffemodel, names=names,
                    sample_image=tmp_path / "none.png", keras_model=tmp_path / "out" / "model.keras",
                    dataset_root=tmp_path)
    first = convert.load_or_convert(assets, progress=False)
    assert assets.keras_model.is_file() and vggface.class_names(first)[:2] == ["p0", "p1"]
    calls = []
    real_convert = convert.convert
    monkeypatch.setattr(convert, "convert", lambda *a, **k: calls.append(a) or real_convert(*a, **k))
    convert.load_or_convert(assets, progress=False)
    assert calls == []  # the saved model is newer than the caffemodel: loaded
    later = assets.keras_model.stat().st_mtime + 10
    os.utime(caffemodel, (later, later))
    convert.load_or_convert(assets, progress=False)
    assert len(calls) == 1  # the caffemodel changed: converted again
