"""The converter beyond VGG-Face: LRN, grouped and asymmetric convolutions, Concat, per-network
preprocessing, data-layer inputs, and the independent check (OpenCV, or the numpy reference
when this OpenCV has no Caffe importer).

Every net here is written by the test itself (``tests.tiny_vgg.write_caffe_files``: seeded
weights in Caffe's layout); BVLC's own files are measured by ``benchmarks/caffe_zoo.py``.
"""
from __future__ import annotations

import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

import helpers
from helpers import caffe as cf
from helpers.caffe import convert, verify
from helpers.caffe.preprocessing import Preprocessing
from tests.test_caffe_format import _fld  # hand-encoded protobuf fields, independent of the writer
from tests.tiny_vgg import write_caffe_files

needs_opencv = pytest.mark.skipif(not verify.opencv_has_caffe(), reason="needs OpenCV with its Caffe importer (4.x)")

# AlexNet's ingredients on a small input: a strided first convolution, LRN across channels,
# a grouped convolution, a convolution with pad_h != pad_w and stride 2, LRN within
# channels, two branches joined by Concat, and an InnerProduct head.
ZOO_NET = """
name: "zoo_mini"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 35 dim: 39 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 5 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 12 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
        convolution_param { num_output: 6 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 stride: 2 } }
layer { name: "norm3" type: "LRN" bottom: "conv3" top: "norm3"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "branch/a" type: "Convolution" bottom: "norm3" top: "branch/a"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "branch/b" type: "Pooling" bottom: "norm3" top: "branch/b"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "join/output" type: "Concat" bottom: "branch/a" bottom: "branch/b" top: "join/output" }
layer { name: "fc" type: "InnerProduct" bottom: "join/output" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
CHECKED = ("conv1", "norm1", "conv2", "conv3", "norm3", "join/output", "fc", "prob")


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    net = cf.parse_prototxt(ZOO_NET)
    return write_caffe_files(tmp_path_factory.mktemp("zoo"), net, seed=3)


def images(n, hw, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *hw, channels)).astype(np.float32)


# ----------------------------------------------------------------------------- layers against OpenCV

@needs_opencv
def test_lrn_grouped_asymmetric_conv_and_concat_match_opencv(zoo_files):
    prototxt, caffemodel = zoo_files
    net = cf.parse_prototxt(prototxt)
    model = convert.convert(prototxt, caffemodel, progress=False)
    assert model.get_layer("conv2").groups == 2
    assert model.get_layer("conv3").output.shape[1:3] == (8, 9)  # (16 + 2 - 3)//2 + 1, (18 + 4 - 5)//2 + 1
    rgb = images(3, (35, 39))
    data = verify.caffe_input(rgb)
    ref = verify.opencv_forward(prototxt, caffemodel, net, data, CHECKED)
    got = verify.keras_forward(model, rgb, CHECKED, net=net)
    errors = verify.relative_errors(ref, got)
    assert max(errors.values()) < 1e-4, errors
    numpy_ref = verify.reference_forward(net, cf.read_caffemodel(caffemodel), data, CHECKED)
    assert max(verify.relative_errors(ref, numpy_ref).values()) < 1e-4


ASYMMETRIC_CONV = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 18 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 stride: 2 } }
"""


@needs_opencv
def test_the_old_symmetric_padding_bug_would_be_caught(tmp_path, monkeypatch):
    # ZeroPadding2D((pad, pad)) with pad = (ph, pw) padded top ph, bottom pw, left ph, right pw
    import keras

    net = cf.parse_prototxt(ASYMMETRIC_CONV)
    prototxt, caffemodel = write_caffe_files(tmp_path, net, seed=1)
    rgb = images(2, (16, 18))
    ref = verify.opencv_forward(prototxt, caffemodel, net, verify.caffe_input(rgb), ("conv",))
    right = convert.convert(prototxt, caffemodel, progress=False)
    assert verify.relative_errors(ref, verify.keras_forward(right, rgb, ("conv",)))["conv"] < 1e-5
    real = keras.layers.ZeroPadding2D
    monkeypatch.setattr(keras.layers, "ZeroPadding2D",
                        lambda padding, **kw: real(((padding[0][0], padding[1][0]), (padding[0][1], padding[1][1])), **kw))
    wrong = convert.convert(prototxt, caffemodel, progress=False)
    assert verify.relative_errors(ref, verify.keras_forward(wrong, rgb, ("conv",)))["conv"] > 0.05


@needs_opencv
def test_lrn_k_follows_caffe_where_opencv_ignores_it(tmp_path):
    """Caffe's ACROSS_CHANNELS LRN adds k (lrn_layer.cpp: scale = k + alpha/n * sum); OpenCV 4's
    importer reads no k and uses 1. The converter follows Caffe: measured against OpenCV with
    k = 1, and here the difference OpenCV makes for k = 2 is exactly that of k = 1."""
    text = ZOO_NET.replace("alpha: 0.3 beta: 0.75 }", "alpha: 0.3 beta: 0.75 k: 2 }")
    net = cf.parse_prototxt(text)
    prototxt, caffemodel = write_caffe_files(tmp_path, net, seed=3)
    blobs, data = cf.read_caffemodel(caffemodel), verify.caffe_input(images(2, (35, 39)))
    opencv = verify.opencv_forward(prototxt, caffemodel, net, data, ("norm1",))
    caffe_k2 = verify.reference_forward(net, blobs, data, ("norm1",))
    caffe_k1 = verify.reference_forward(cf.parse_prototxt(text.replace(" k: 2", "")), blobs, data, ("norm1",))
    assert verify.relative_errors(caffe_k1, opencv)["norm1"] < 1e-4 < 0.05 < verify.relative_errors(caffe_k2, opencv)["norm1"]
    model = convert.convert(prototxt, caffemodel, progress=False)
    rgb = images(2, (35, 39))
    assert verify.relative_errors(caffe_k2, verify.keras_forward(model, rgb, ("norm1",), net=net))["norm1"] < 1e-5


def test_lrn_follows_caffes_formula_on_small_arrays():
    from helpers.caffe.layers import LRN

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5, 7)).astype(np.float32)  # NHWC
    # ACROSS_CHANNELS, written out for one position: channels c-2..c+2, zero outside
    across = np.asarray(LRN(local_size=5, alpha=0.4, beta=0.6, k=1.5)(x))
    c = 1
    window = (x[0, 2, 3, max(c - 2, 0):c + 3] ** 2).sum()
    assert np.isclose(across[0, 2, 3, c], x[0, 2, 3, c] * (1.5 + 0.4 / 5 * window) ** -0.6, rtol=1e-5)
    # WITHIN_CHANNEL: a 3x3 zero-padded window, divided by 9, shifted by 1 (k is not used)
    within = np.asarray(LRN(local_size=3, alpha=0.4, beta=0.6, k=7.0, norm_region="WITHIN_CHANNEL")(x))
    h, w = 0, 4  # a corner (H 4, W 5): the window runs off two edges
    square = (x[1, max(h - 1, 0):h + 2, max(w - 1, 0):w + 2, 2] ** 2).sum()
    assert np.isclose(within[1, h, w, 2], x[1, h, w, 2] * (1 + 0.4 / 9 * square) ** -0.6, rtol=1e-5)
    with pytest.raises(ValueError, match="local_size must be odd"):
        LRN(local_size=4)


def test_numpy_reference_agrees_with_keras_without_opencv(zoo_files):
    prototxt, caffemodel = zoo_files
    net = cf.parse_prototxt(prototxt)
    model = convert.convert(prototxt, caffemodel, progress=False)
    rgb = images(2, (35, 39), seed=5)
    ref = verify.reference_forward(net, cf.read_caffemodel(caffemodel), verify.caffe_input(rgb), CHECKED)
    errors = verify.relative_errors(ref, verify.keras_forward(model, rgb, CHECKED, net=net))
    assert max(errors.values()) < 1e-4, errors


# ----------------------------------------------------------------------------- the engine fallback

def test_a_cv2_without_caffe_importer_falls_back_to_numpy(zoo_files, monkeypatch):
    """OpenCV 5 (Colab's) has cv2.dnn but no readNetFromCaffe: the numpy reference is used."""
    stand_in = types.ModuleType("cv2")
    stand_in.__version__ = "5.0.0"
    stand_in.dnn = types.SimpleNamespace(readNet=lambda *a: None)  # no readNetFromCaffe
    monkeypatch.setitem(sys.modules, "cv2", stand_in)
    assert not verify.opencv_has_caffe()
    assert "numpy reference" in verify.reference_engine()
    prototxt, caffemodel = zoo_files
    net = cf.parse_prototxt(prototxt)
    blobs = cf.read_caffemodel(caffemodel)
    data = verify.caffe_input(images(2, (35, 39)))
    values, engine = verify.independent_forward(prototxt, caffemodel, net, blobs, data, ("prob",))
    assert "numpy" in engine
    np.testing.assert_allclose(values["prob"], verify.reference_forward(net, blobs, data, ("prob",))["prob"])
    monkeypatch.setitem(sys.modules, "cv2", None)  # no cv2 at all: the same
    assert not verify.opencv_has_caffe() and "numpy" in verify.independent_forward(
        prototxt, caffemodel, net, blobs, data, ("prob",))[1]


def test_reference_refuses_what_it_cannot_check_naming_the_layer():
    dilated = ZOO_NET.replace("kernel_size: 3 pad: 1 group: 2", "kernel_size: 3 pad: 2 dilation: 2 group: 2")
    net = cf.parse_prototxt(dilated)
    with pytest.raises(cf.ConversionError, match=r"cannot check conv2 \(Convolution with dilation \(2, 2\), line 9\)"):
        verify.reference_forward(net, {}, np.zeros((1, 3, 35, 39)))
    sigmoid = ZOO_NET.replace('type: "ReLU"', 'type: "Sigmoid"')
    with pytest.raises(cf.ConversionError, match=r"cannot check relu1 \(Sigmoid, line 6\)"):
        verify.reference_forward(cf.parse_prototxt(sigmoid), {}, np.zeros((1, 3, 35, 39)))


# ----------------------------------------------------------------------------- preprocessing per network

def test_mean_image_scale_and_crop_are_carried_by_the_model_and_saved(tmp_path, zoo_files):
    prototxt, caffemodel = zoo_files
    rng = np.random.default_rng(4)
    mean_image = rng.uniform(60, 140, (3, 41, 45)).astype(np.float32)  # (C, H, W), BGR
    legacy = b"".join(_fld(k, 0, d) for k, d in zip((1, 2, 3, 4), (1, 3, 41, 45)))
    mean_file = tmp_path / "mean.binaryproto"
    mean_file.write_bytes(legacy + _fld(5, 2, mean_image.astype("<f4").tobytes()))
    pre = Preprocessing.from_mean_file(mean_file, crop=(35, 39), scale=0.5)
    model = convert.convert(prototxt, caffemodel, progress=False, preprocessing=pre)
    assert model.input_shape == (None, 41, 45, 3)  # the mean image's size; the net sees the 35x39 crop
    assert "41x45 mean image" in model.caffe_report.table() and "centre crop 35x39" in model.caffe_report.table()
    rgb = images(2, (41, 45), seed=2)
    blob = pre.to_blob(rgb)  # by hand: BGR, minus the mean image, times 0.5, crop at (3, 3)
    by_hand = ((rgb[..., ::-1].transpose(0, 3, 1, 2) - mean_image) * 0.5)[:, :, 3:38, 3:42]
    np.testing.assert_allclose(blob, by_hand, rtol=1e-6)
    net = cf.parse_prototxt(prototxt)
    ref = verify.reference_forward(net, cf.read_caffemodel(caffemodel), blob, ("conv1", "prob"))
    assert max(verify.relative_errors(ref, verify.keras_forward(model, rgb, ("conv1", "prob"), net=net)).values()) < 1e-4
    path = tmp_path / "zoo.keras"
    from helpers.course import fileio

    fileio.save_model(model, path)
    loaded = helpers.load_model(path)
    np.testing.assert_allclose(loaded.get_layer("preprocess").mean_image.numpy(), mean_image.transpose(1, 2, 0))
    np.testing.assert_allclose(np.asarray(loaded(rgb)), np.asarray(model(rgb)), rtol=1e-5, atol=1e-7)


def test_one_channel_nets_and_mismatched_preprocessing(tmp_path):
    lenet = """
name: "lenet_mini"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 3 kernel_size: 5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 4 } }
"""
    prototxt, caffemodel = write_caffe_files(tmp_path, cf.parse_prototxt(lenet), seed=1)
    pre = Preprocessing(channel_order="GRAY", mean=None, scale=0.00390625)  # LeNet's 1/256
    model = convert.convert(prototxt, caffemodel, progress=False, preprocessing=pre)
    assert model.input_shape == (None, 12, 12, 1)
    grey = images(3, (12, 12), channels=1)
    net = cf.parse_prototxt(prototxt)
    ref = verify.reference_forward(net, cf.read_caffemodel(caffemodel), grey.transpose(0, 3, 1, 2) / 256, ("ip1",))
    assert verify.relative_errors(ref, verify.keras_forward(model, grey, ("ip1",), net=net))["ip1"] < 1e-4
    # the default for a 1-channel net is no preprocessing; VGG-Face's is refused with a reason
    assert convert.convert(prototxt, caffemodel, progress=False).input_shape == (None, 12, 12, 1)
    with pytest.raises(cf.ConversionError, match=r"has 1 channel\(s\) but the preprocessing .*makes 3"):
        convert.convert(prototxt, caffemodel, progress=False, preprocessing=Preprocessing.vggface())


# ----------------------------------------------------------------------------- inputs from data layers

TRAIN_VAL = """
name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { mirror: true crop_size: 16 mean_value: 104 mean_value: 117 mean_value: 123 }
        data_param { source: "train_lmdb" batch_size: 32 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { mean_file: "mean.binaryproto" }
        data_param { source: "val_lmdb" batch_size: 10 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" include { phase: TEST } }
"""


def test_a_train_val_net_converts_in_its_test_phase_with_a_given_input_shape(tmp_path):
    path = tmp_path / "train_val.prototxt"
    path.write_text(TRAIN_VAL)
    net = cf.parse_prototxt(path)  # TEST: an LMDB of unknown shape
    assert net.input_shape is None and net.input_layer == "data"
    with pytest.raises(cf.ConversionError, match=r"comes from layer 'data' \(Data, line 6\), is not in the file: "
                                                 r"parse it with input_shape"):
        cf.build_keras_model(net)
    net = cf.parse_prototxt(path, input_shape=(1, 3, 16, 16))
    _, caffemodel = write_caffe_files(tmp_path / "w", net, seed=2)
    with pytest.raises(cf.ConversionError, match=r"mean_file 'mean.binaryproto' is not at"):
        Preprocessing.from_transform_param(net)
    mean = np.full((1, 3, 16, 16), 100, "<f4")
    (tmp_path / "mean.binaryproto").write_bytes(
        b"".join(_fld(k, 0, d) for k, d in zip((1, 2, 3, 4), mean.shape)) + _fld(5, 2, mean.tobytes()))
    pre = Preprocessing.from_transform_param(net)
    assert pre.mean_image.shape == (3, 16, 16) and "transform_param of layer 'data'" in pre.describe()
    model = convert.convert(path, caffemodel, progress=False, input_shape=(1, 3, 16, 16), preprocessing=pre)
    rgb = images(2, (16, 16))
    ref = verify.reference_forward(net, cf.read_caffemodel(caffemodel), pre.to_blob(rgb), ("prob",))
    assert verify.relative_errors(ref, verify.keras_forward(model, rgb, ("prob",), net=net))["prob"] < 1e-5
    train = cf.parse_prototxt(path, phase="TRAIN")  # the TRAIN data layer: crop_size and 3 mean values
    assert train.input_shape == (32, 3, 16, 16)
    assert Preprocessing.from_transform_param(train).mean == (104.0, 117.0, 123.0)
    with pytest.raises(cf.ConversionError, match="SoftmaxWithLoss"):
        cf.build_keras_model(train)


def test_reused_layer_names_and_multiple_inputs_are_refused_at_conversion():
    twice = ZOO_NET.replace('name: "norm3"', 'name: "norm1"')
    with pytest.raises(cf.ConversionError, match=r"line 13, layer 'norm1' \(LRN\): the layer name is used again \(first at line 7\)"):
        cf.build_keras_model(cf.parse_prototxt(twice))
    two = ('input: "a"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n'
           'input: "b"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n'
           'layer { name: "s" type: "Softmax" bottom: "a" top: "s" }\n')
    net = cf.parse_prototxt(two)
    assert net.extra_inputs == {"b": (1, 3, 4, 4)}
    assert "input_dim: 4" in cf.format_prototxt(net, "v2") and cf.format_prototxt(net, "v2").count("input:") == 2
    with pytest.raises(cf.ConversionError, match="2 network inputs"):
        cf.build_keras_model(net)


# ----------------------------------------------------------------------------- names, saving, CLI

@needs_opencv
def test_slashed_names_convert_save_and_match_opencv(tmp_path, zoo_files):
    prototxt, caffemodel = zoo_files
    out = tmp_path / "zoo.keras"
    assert convert.main([str(prototxt), str(caffemodel), str(out), "--no-progress"]) == 0
    model = helpers.load_model(out)
    assert "join.output" in [l.name for l in model.layers] and "branch.a" in [l.name for l in model.layers]
    net = cf.parse_prototxt(prototxt)
    rgb = images(2, (35, 39), seed=8)
    ref = verify.opencv_forward(prototxt, caffemodel, net, verify.caffe_input(rgb), ("join/output", "prob"))
    got = verify.keras_forward(model, rgb, ("join/output", "prob"), net=net)
    assert max(verify.relative_errors(ref, got).values()) < 1e-4


def test_cli_takes_preprocessing_and_input_shape(tmp_path, capsys):
    path = tmp_path / "train_val.prototxt"
    path.write_text(TRAIN_VAL)
    net = cf.parse_prototxt(path, input_shape=(1, 3, 16, 16))
    _, caffemodel = write_caffe_files(tmp_path / "w", net, seed=2)
    out = tmp_path / "tv.keras"
    assert convert.main([str(path), str(caffemodel), str(out), "--no-progress"]) == 1
    assert "--input-shape" in capsys.readouterr().err and not out.exists()
    assert convert.main([str(path), str(caffemodel), str(out), "--no-progress", "--input-shape", "1,3,16,16",
                         "--mean", "104,117,123", "--scale", "0.5", "--channel-order", "RGB"]) == 0
    table = capsys.readouterr().out
    assert "preprocessing: RGB kept, minus (104, 117, 123), times 0.5" in table
    layer = helpers.load_model(out).get_layer("preprocess")
    assert (layer.channel_order, layer.mean, layer.scale) == ("RGB", (104.0, 117.0, 123.0), 0.5)
