"""Caffe prototxt parser/writer and caffemodel reader/writer (helpers.caffe: prototxt, caffemodel, writer).

The binary files are checked three ways: round trips through our own writer, hand-encoded
protobuf bytes (built by the tiny encoder below, independent of the module's writer), and
OpenCV's Caffe importer reading files our writer produced.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from helpers import caffe as cf
from tests.tiny_vgg import blob_shapes, random_blobs, tiny_vgg_netspec, write_tiny_vgg

# ----------------------------------------------------------------------------- text fixtures

V1_TEXT = '''name: "tiny_v1"   # a V1 deploy file like VGG-Face's
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layers {
  bottom: "data"
  top: "conv1"
  name: "conv1"
  type: CONVOLUTION
  blobs_lr: 1
  blobs_lr: 2
  convolution_param {
    num_output: 4   # four filters
    pad: 1
    kernel_size: 3
    weight_filler { type: "gaussian" std: 0.01 }
  }
}
layers { bottom: "conv1" top: "conv1" name: "relu1" type: RELU }
layers {
  bottom: "conv1"
  top: "pool1"
  name: "pool1"
  type: POOLING
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layers {
  bottom: "pool1"
  top: "fc7"
  name: "fc7"
  type: INNER_PRODUCT
  inner_product_param {
    num_output: 5
  }
}
#layers {
 # bottom: "fc7"
 # top: "fc7"
  #name: "drop7"
 # type: DROPOUT
 # dropout_param {
 #   dropout_ratio: 0.5
#  }
#}
layers {
  bottom: "fc7"
  top: "prob"
  name: "prob"
  type: SOFTMAX
}
'''

V2_TEXT = r'''name: 'tiny \"v2\"\tnet'
input: "data"
input_shape { dim: 2 dim: 3 dim: 16 dim: 12 }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 pad: 1 pad: 2 kernel_size: 3 bias_term: true }
}
layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "flat" type: "Flatten" bottom: "conv1" top: "flat" }
layer {
  name: "fc" type: "InnerProduct" bottom: "flat" top: "fc"
  inner_product_param { num_output: 3 weight_filler: { type: "xavier" } }
}
'''

INPUT_LAYER_TEXT = '''
name: "with_input_layer"
layer { name: "data" type: "Input" top: "data" input_param { shape: < dim: [1, 3, 24, 24] > } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 } }
'''

TRAIN_VAL_TEXT = '''
name: "train_val"
layer { name: "data" type: "Data" top: "data" top: "label"
        include { phase: TRAIN }
        transform_param { mirror: true crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 }
        data_param { source: "train_lmdb" batch_size: 64 } }
layer { name: "data" type: "Data" top: "data" top: "label"
        include { phase: TEST }
        transform_param { crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5 }
        data_param { source: "val_lmdb" batch_size: 50 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "fc8" type: "InnerProduct" bottom: "conv1" top: "fc8" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" exclude { phase: TRAIN } }
layer { name: "debug" type: "Softmax" bottom: "fc8" top: "debug"
        include { phase: TEST stage: "debug" min_level: 1 } }
layer { name: "quick" type: "Softmax" bottom: "fc8" top: "quick"
        include { phase: TEST not_stage: "deploy" max_level: 0 } }
'''


# ----------------------------------------------------------------------------- prototxt


def test_v1_text_with_comments_parses_to_v2_types():
    net = cf.parse_prototxt(V1_TEXT)
    assert net.name == "tiny_v1"
    assert (net.input_name, net.input_shape) == ("data", (1, 3, 8, 8))
    assert [l.name for l in net.layers] == ["conv1", "relu1", "pool1", "fc7", "prob"]  # no drop7
    assert [l.type for l in net.layers] == ["Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"]
    conv, relu, pool, fc7, _ = net.layers
    assert conv.params == {"num_output": 4, "pad": 1, "kernel_size": 3,
                           "weight_filler": {"type": "gaussian", "std": 0.01}}
    assert conv.extra == {"blobs_lr": [1, 2]}
    assert (conv.bottoms, conv.tops, conv.line) == (["data"], ["conv1"], 7)
    assert (relu.bottoms, relu.tops, relu.params, relu.line) == (["conv1"], ["conv1"], {}, 21)
    assert pool.params == {"pool": "MAX", "kernel_size": 2, "stride": 2}
    assert isinstance(pool.params["pool"], cf.EnumValue)
    assert fc7.params == {"num_output": 5}
    assert net.skipped == []
    assert net.source == "<text>"


def test_v2_text_strings_escapes_input_shape_and_repeated_fields():
    net = cf.parse_prototxt(V2_TEXT)
    assert net.name == 'tiny "v2"\tnet'
    assert (net.input_name, net.input_shape) == ("data", (2, 3, 16, 12))
    conv = net.layer("conv1")
    assert conv.params == {"num_output": 4, "pad": [1, 2], "kernel_size": 3, "bias_term": True}
    assert conv.extra == {"param": [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]}
    assert net.layer("drop1").params == {"dropout_ratio": 0.25}
    assert net.layer("fc").params["weight_filler"] == {"type": "xavier"}  # ':' before '{' allowed
    assert [l.type for l in net.layers] == ["Convolution", "Dropout", "Flatten", "InnerProduct"]


def test_input_layer_gives_the_input():
    net = cf.parse_prototxt(INPUT_LAYER_TEXT)
    assert (net.input_name, net.input_shape) == ("data", (1, 3, 24, 24))
    assert [l.type for l in net.layers] == ["Input", "Convolution"]


def test_layers_are_filtered_by_phase_stage_and_level_as_caffe_does():
    test = cf.parse_prototxt(TRAIN_VAL_TEXT)  # TEST phase, no stage, level 0: a deployed net
    assert [l.name for l in test.layers] == ["data", "conv1", "fc8", "loss", "accuracy", "prob", "quick"]
    assert test.skipped == ["data", "debug"] and test.state == {"phase": "TEST", "stages": [], "level": 0}
    assert test.layer("data").params == {"source": "val_lmdb", "batch_size": 50}
    # the input is the TEST data layer's first top; crop_size and the 3 mean values give its shape
    assert (test.input_name, test.input_shape, test.input_layer) == ("data", (50, 3, 8, 8), "data")
    train = cf.parse_prototxt(TRAIN_VAL_TEXT, phase="TRAIN")
    assert [l.name for l in train.layers] == ["data", "conv1", "fc8", "loss"]
    assert train.skipped == ["data", "accuracy", "prob", "debug", "quick"]
    assert train.layer("data").params["source"] == "train_lmdb" and train.input_shape == (64, 3, 8, 8)
    debug = cf.parse_prototxt(TRAIN_VAL_TEXT, stages=["debug"], level=1)  # quick: level 1 > max_level 0
    assert [l.name for l in debug.layers][-2:] == ["prob", "debug"]
    deploy = cf.parse_prototxt(TRAIN_VAL_TEXT, stages=["deploy"])  # quick: not_stage deploy
    assert "quick" in deploy.skipped and "debug" in deploy.skipped


def test_stages_in_the_file_and_in_a_solver_follow_caffe():
    with_state = 'state { stage: "debug" }\n' + TRAIN_VAL_TEXT  # the file's stages, plus the caller's
    assert "debug" in cf.parse_prototxt(with_state).skipped  # the stage is there, min_level 1 is not
    assert [l.name for l in cf.parse_prototxt(with_state, level=1).layers][-1] == "debug"
    solver = ('base_lr: 0.01\ntest_state { stage: "debug" level: 1 }\nnet_param {\n'
              + TRAIN_VAL_TEXT + "}\n")
    net = cf.parse_prototxt(solver)  # a consolidated solver: its first test_state, like Caffe's test net 0
    assert net.state == {"phase": "TEST", "stages": ["debug"], "level": 1}
    assert [l.name for l in net.layers][-1] == "debug"


def test_input_shape_is_given_or_overridden_and_unknown_is_none():
    no_crop = TRAIN_VAL_TEXT.replace("crop_size: 8 ", "")
    assert cf.parse_prototxt(no_crop).input_shape is None  # an LMDB's images: the file does not say
    assert cf.parse_prototxt(no_crop, input_shape=(3, 8, 8)).input_shape == (1, 3, 8, 8)
    assert cf.parse_prototxt(TRAIN_VAL_TEXT, input_shape=(2, 3, 10, 10)).input_shape == (2, 3, 10, 10)
    with pytest.raises(ValueError, match="input_shape for 'data' must be"):
        cf.parse_prototxt(no_crop, input_shape=(3, 8))
    memory = 'layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 4 channels: 1 height: 28 width: 28 } }'
    assert cf.parse_prototxt(memory).input_shape == (4, 1, 28, 28)
    images = 'layer { name: "i" type: "ImageData" top: "data" top: "label" image_data_param { source: "l.txt" batch_size: 2 new_height: 32 new_width: 24 is_color: false } }'
    assert cf.parse_prototxt(images).input_shape == (2, 1, 32, 24)


def test_a_net_without_input_in_its_phase_names_the_stages_to_pass():
    staged = TRAIN_VAL_TEXT.replace("include { phase: TEST }\n        transform_param { crop_size",
                                    'include { phase: TEST stage: "val" }\n        transform_param { crop_size')
    with pytest.raises(cf.CaffeFormatError, match=r"no network input in the TEST phase .*left out data, data.*'val'"):
        cf.parse_prototxt(staged)
    assert cf.parse_prototxt(staged, stages=["val"]).input_shape == (50, 3, 8, 8)


def test_include_and_exclude_together_are_refused_and_reused_names_parse():
    both = ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
            'layer { name: "a" type: "ReLU" bottom: "d" top: "d" include { phase: TEST } exclude { phase: TRAIN } }')
    with pytest.raises(cf.CaffeFormatError, match=r"<text>:2:1: layer 'a' gives both include and exclude rules"):
        cf.parse_prototxt(both)
    # Caffe accepts a layer name used twice (BVLC's mnist_autoencoder has two "loss" layers)
    twice = ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\nlayer { name: "a" type: "ReLU" }\n'
             'layer { name: "a" type: "ReLU" }')
    assert [l.line for l in cf.parse_prototxt(twice).layers] == [2, 3]


def test_blobproto_mean_file_read_from_hand_encoded_bytes(tmp_path):
    mean = (np.arange(2 * 3 * 4, dtype="<f4") * 1.5).reshape(1, 2, 3, 4)
    legacy = b"".join(_fld(k, 0, d) for k, d in zip((1, 2, 3, 4), mean.shape))
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(legacy + _fld(5, 2, mean.tobytes()))  # what compute_image_mean writes
    np.testing.assert_array_equal(cf.read_blobproto(path), mean)
    np.testing.assert_array_equal(cf.read_mean_file(path), mean[0])
    shaped = _fld(7, 2, _fld(1, 2, _varint(2) + _varint(3) + _varint(4))) + _fld(5, 2, mean.tobytes())
    path.write_bytes(shaped)  # the newer shape field
    np.testing.assert_array_equal(cf.read_mean_file(path), mean[0])
    path.write_bytes(legacy + _fld(5, 2, mean.tobytes()[:-4]))
    with pytest.raises(cf.CaffeFormatError, match=r"mean\.binaryproto: byte 0: BlobProto has 23 values but its shape"):
        cf.read_mean_file(path)
    path.write_bytes(b"")
    with pytest.raises(cf.CaffeFormatError, match="the file is empty"):
        cf.read_mean_file(path)
    path.write_bytes(_fld(5, 2, np.ones(6, "<f4").tobytes()))  # a flat vector: not an image
    with pytest.raises(cf.CaffeFormatError, match=r"must have shape \(1, C, H, W\)"):
        cf.read_mean_file(path)


def test_parse_from_path_names_the_file_in_errors(tmp_path):
    good = tmp_path / "deploy.prototxt"
    good.write_bytes(b"\xef\xbb\xbf" + V1_TEXT.replace("\n", "\r\n").encode())  # BOM, CRLF
    assert cf.parse_prototxt(good).source == str(good)
    assert cf.parse_prototxt(str(good)).layers[0].name == "conv1"
    bad = tmp_path / "bad.prototxt"
    bad.write_text(V1_TEXT.replace("kernel_size: 3\n    weight", "kernel_size 3\n    weight"))
    with pytest.raises(cf.CaffeFormatError, match=rf"{bad}:17:17: expected ':' or '{{' after field name 'kernel_size'"):
        cf.parse_prototxt(bad)
    with pytest.raises(FileNotFoundError):
        cf.parse_prototxt(str(tmp_path / "missing.prototxt"))


@pytest.mark.parametrize("text, expected", [
    ('input: "data"\ninput_dim: 1\nlayers {\n  name: "a"\n', r"<text>:5:1: expected '}' to close the message, found end of file"),
    ('name: "net\nlayer {}', r"<text>:1:7: unterminated string"),
    ('name: "x" @', r"<text>:1:11: unexpected character '@'"),
    ('layer { name: "a" type: "ReLU" } }', r"<text>:1:34: expected a field name, found '}'"),
    ('name: }', r"<text>:1:7: expected a value"),
    ('dim: [1, 2', r"<text>:1:11: expected ',' or ']'"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
     'layers {\n name: "c" type: "Convolution" }', r"<text>:3:12: V1 layer 'c' has type \"Convolution\"; expected an unquoted V1 enum name"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\nlayers { name: "c" type: CONV }',
     r"<text>:2:20: V1 layer 'c' has type CONV; expected an unquoted V1 enum name"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\nlayer { name: "c" type: ReLU }',
     r"<text>:2:19: V2 layer 'c' has type ReLU; expected a quoted type string"),
    ('name: "n"\nlayer { name: "c" type: "ReLU" }', r"<text>: no network input"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8', r"<text>:1:1: input 'd' has shape \[1, 3, 8\]; expected four"),
    ('input: "d" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\nlayer { name: "a" type: "ReLU" }\n'
     'layers { name: "b" type: RELU }', r"<text>:2:1: mixes V1 'layers' \(first at line 3\) and V2 'layer'"),
])
def test_syntax_errors_name_line_column_and_expectation(text, expected):
    with pytest.raises(cf.CaffeFormatError, match=expected):
        cf.parse_prototxt(text)


def _without_position(net: cf.NetSpec) -> list:
    return [dataclasses.replace(l, line=0) for l in net.layers]


@pytest.mark.parametrize("text", [V1_TEXT, V2_TEXT, INPUT_LAYER_TEXT, TRAIN_VAL_TEXT])
@pytest.mark.parametrize("syntax", ["v1", "v2"])
def test_format_then_parse_gives_the_same_net(text, syntax):
    net = cf.parse_prototxt(text)
    if syntax == "v1" and any(l.type == "Input" for l in net.layers):
        # V1 has no Input layer: it becomes input/input_dim lines.
        back = cf.parse_prototxt(cf.format_prototxt(net, "v1"))
        assert (back.input_name, back.input_shape) == (net.input_name, net.input_shape)
        assert _without_position(back) == [dataclasses.replace(l, line=0) for l in net.layers if l.type != "Input"]
        return
    written = cf.format_prototxt(net, syntax)
    assert ("layers {" in written) == (syntax == "v1") and ("layer {" in written) == (syntax == "v2")
    back = cf.parse_prototxt(written)
    assert (back.name, back.input_name, back.input_shape) == (net.name, net.input_name, net.input_shape)
    got, want = _without_position(back), _without_position(net)
    if {syntax, "v1" if "layers {" in text else "v2"} == {"v1", "v2"}:
        # Learning-rate settings change form between syntaxes; compare the rest exactly.
        got = [dataclasses.replace(l, extra={k: v for k, v in l.extra.items() if k not in ("param", "blobs_lr", "weight_decay")}) for l in got]
        want = [dataclasses.replace(l, extra={k: v for k, v in l.extra.items() if k not in ("param", "blobs_lr", "weight_decay")}) for l in want]
    assert got == want


def test_learning_rates_change_form_between_syntaxes():
    v2 = cf.format_prototxt(cf.parse_prototxt(V1_TEXT), "v2")
    assert cf.parse_prototxt(v2).layer("conv1").extra == {"param": [{"lr_mult": 1}, {"lr_mult": 2}]}
    v1 = cf.format_prototxt(cf.parse_prototxt(V2_TEXT.replace('"Flatten"', '"Dropout"')), "v1")
    assert cf.parse_prototxt(v1).layer("conv1").extra == {"blobs_lr": [1, 2], "weight_decay": [1, 0]}


def test_format_writes_enums_bare_and_strings_quoted(tmp_path):
    net = tiny_vgg_netspec()
    text = cf.format_prototxt(net, "v1")
    assert "type: CONVOLUTION" in text and "pool: MAX" in text and 'name: "pool1"' in text
    assert 'type: "Pooling"' in cf.format_prototxt(net, "v2")
    path = cf.write_prototxt(tmp_path / "sub" / "net.prototxt", net, syntax="v2")
    assert path.read_text() == cf.format_prototxt(net, "v2")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["net.prototxt"]  # no temp file left


def test_v1_cannot_express_v2_only_types():
    net = cf.parse_prototxt(INPUT_LAYER_TEXT)
    net.layers.append(cf.LayerSpec("bn", "BatchNorm", ["conv1"], ["conv1"], {}, 0))
    with pytest.raises(ValueError, match="layer 'bn': type 'BatchNorm' has no V1 form"):
        cf.format_prototxt(net, "v1")
    assert 'type: "BatchNorm"' in cf.format_prototxt(net, "v2")


# ----------------------------------------------------------------------------- caffemodel


def _natural(blob: np.ndarray) -> list:
    return blob.reshape(-1).tolist()


@pytest.mark.parametrize("fmt, legacy, packed", list(itertools.product(["v1", "v2"], [True, False], [True, False])))
def test_caffemodel_round_trip(tmp_path, fmt, legacy, packed):
    net = tiny_vgg_netspec(widths=(2, 3, 3, 4, 4), fc=(6, 5), classes=3)
    written = random_blobs(net, seed=7)
    path = cf.write_caffemodel(tmp_path / "m.caffemodel", written, format=fmt, legacy_dims=legacy, packed=packed)
    read = cf.read_caffemodel(path)
    assert list(read) == [l.name for l in net.layers]  # every layer, in file order
    for want in written:
        got = read[want.name]
        assert (got.type, got.bottoms, got.tops) == (want.type, want.bottoms, want.tops)
        assert len(got.blobs) == len(want.blobs)
        for g, w in zip(got.blobs, want.blobs):
            assert g.dtype == np.float32
            expected_shape = (1,) * (4 - w.ndim) + w.shape if legacy else w.shape
            assert g.shape == expected_shape
            np.testing.assert_array_equal(g.reshape(w.shape), w)
    # The payload layout is what was asked for: packed floats are one contiguous run.
    raw = path.read_bytes()
    fc6_weights = written[[l.name for l in written].index("fc6")].blobs[0]
    assert (fc6_weights.astype("<f4").tobytes() in raw) == packed


def test_default_arrays_are_read_only_views_and_copy_gives_owned(tmp_path):
    _, model = write_tiny_vgg(tmp_path, widths=(2, 2, 2, 2, 2), fc=(4, 4), classes=2)
    view = cf.read_caffemodel(model)["conv1_1"].blobs[0]
    assert not view.flags.writeable and not view.flags.owndata
    owned = cf.read_caffemodel(model, copy=True)["conv1_1"].blobs[0]
    assert owned.flags.writeable
    owned += 1  # must not touch the file
    np.testing.assert_array_equal(cf.read_caffemodel(model)["conv1_1"].blobs[0], view)


@pytest.mark.parametrize("syntax, fmt, legacy, packed", [
    ("v1", "v1", True, True),    # the published VGG-Face's formats
    ("v2", "v2", False, False),  # modern shape field, unpacked floats
    ("v1", "v2", False, True),
])
def test_opencv_reads_our_files_identically(tmp_path, syntax, fmt, legacy, packed):
    from helpers.caffe import verify

    if not verify.opencv_has_caffe():  # no cv2, or OpenCV 5 (no Caffe importer)
        pytest.skip("needs OpenCV with its Caffe importer (4.x)")
    import cv2
    proto, model = write_tiny_vgg(tmp_path, seed=3, syntax=syntax, format=fmt, legacy_dims=legacy, packed=packed)
    expected = {b.name: b.blobs for b in random_blobs(tiny_vgg_netspec(), seed=3)}
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for name in ("conv1_1", "conv3_2", "conv5_3", "fc6", "fc7", "fc8"):
        for i in (0, 1):
            np.testing.assert_array_equal(net.getParam(name, i).reshape(-1), expected[name][i].reshape(-1))
    # And OpenCV can run it: the softmax output sums to one over `classes`.
    net.setInput(np.random.default_rng(0).uniform(0, 255, (1, 3, 32, 32)).astype(np.float32))
    out = net.forward()
    assert out.shape == (1, 10) and abs(float(out.sum()) - 1) < 1e-5


# Hand-encoded protobuf, independent of the module's writer.
def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _fld(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(payload)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def test_reader_handles_mixed_encodings_and_skips_unknown_fields(tmp_path):
    values = np.arange(6, dtype="<f4") / 4
    unknown = (_fld(50, 0, 300) + _fld(51, 1, b"\x00" * 8) + _fld(52, 5, b"\x00" * 4)
               + _fld(53, 2, b"anything"))
    blob = (_fld(7, 2, _fld(1, 0, 2) + _fld(1, 0, 3))                # shape, dims not packed
            + _fld(5, 2, values[:2].tobytes())                        # a packed run
            + unknown
            + _fld(5, 5, values[2:3].tobytes())                       # unpacked floats,
            + b"\xad\x00" + values[3:4].tobytes()                     # one with a 2-byte tag
            + _fld(6, 2, np.ones(6, "<f4").tobytes())                 # diff: ignored
            + _fld(5, 2, values[4:].tobytes()))                       # another packed run
    double_blob = _fld(7, 2, _fld(1, 2, _varint(3))) + _fld(8, 2, np.array([1.5, -2, 3], "<f8").tobytes())
    v2_layer = _fld(1, 2, b"ip") + _fld(2, 2, b"InnerProduct") + unknown + _fld(7, 2, blob) + _fld(7, 2, double_blob)
    v1_layer = _fld(4, 2, b"old") + _fld(5, 0, 18) + unknown + _fld(2, 2, b"ip") + _fld(3, 2, b"ip")
    data = _fld(1, 2, b"net") + unknown + _fld(100, 2, v2_layer) + _fld(2, 2, v1_layer)
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(data)
    read = cf.read_caffemodel(path)
    assert list(read) == ["ip", "old"]
    np.testing.assert_array_equal(read["ip"].blobs[0], values.reshape(2, 3))
    np.testing.assert_array_equal(read["ip"].blobs[1], np.array([1.5, -2, 3], np.float32))
    assert read["ip"].blobs[1].dtype == np.float32
    assert (read["old"].type, read["old"].blobs, read["old"].bottoms) == ("ReLU", [], ["ip"])


def _one_blob_file(tmp_path, blob: bytes, name=b"conv9") -> Path:
    path = tmp_path / "one.caffemodel"
    path.write_bytes(_fld(2, 2, _fld(4, 2, name) + _fld(5, 0, 4) + _fld(6, 2, blob)))
    return path


def test_float_count_that_disagrees_with_shape_names_the_layer(tmp_path):
    legacy = b"".join(_fld(k, 0, d) for k, d in zip((1, 2, 3, 4), (2, 1, 1, 3)))
    path = _one_blob_file(tmp_path, legacy + _fld(5, 2, np.zeros(5, "<f4").tobytes()))
    with pytest.raises(cf.CaffeFormatError, match=r"one\.caffemodel: byte \d+: layer 'conv9' .* blob 0 has 5 values but its shape \(2, 1, 1, 3\) needs 6"):
        cf.read_caffemodel(path)


def test_huge_claims_fail_before_allocating(tmp_path):
    # A shape of 10^12 floats with 4 bytes of data: rejected by the count check, not by memory.
    path = _one_blob_file(tmp_path, _fld(7, 2, _fld(1, 2, _varint(10**6) + _varint(10**6))) + _fld(5, 2, b"\0" * 4))
    with pytest.raises(cf.CaffeFormatError, match=r"has 1 values but its shape \(1000000, 1000000\)"):
        cf.read_caffemodel(path)
    # A length prefix far beyond the end of the file.
    path.write_bytes(_fld(4, 2, b"x") + _varint(2 << 3 | 2) + _varint(2**62) + b"\0" * 10)
    with pytest.raises(cf.CaffeFormatError, match=r"byte 3: NetParameter: field 2 claims 4611686018427387904 bytes"):
        cf.read_caffemodel(path)


def test_wrong_kind_of_file_gets_a_clear_error(tmp_path):
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(cf.CaffeFormatError, match="empty.caffemodel: byte 0: the file is empty"):
        cf.read_caffemodel(empty)
    text = tmp_path / "deploy.prototxt"
    text.write_text(V1_TEXT)
    with pytest.raises(cf.CaffeFormatError, match="looks like a text prototxt"):
        cf.read_caffemodel(text)


def _small_model(tmp_path, **kw):
    net = tiny_vgg_netspec(widths=(1, 1, 1, 1, 2), fc=(2, 2), classes=2)
    path = cf.write_caffemodel(tmp_path / "small.caffemodel", random_blobs(net, 1), **kw)
    return path, path.read_bytes(), [l.name for l in net.layers]


@pytest.mark.parametrize("packed", [True, False])
def test_truncated_files_fail_with_file_and_offset(tmp_path, packed):
    path, data, names = _small_model(tmp_path, packed=packed, legacy_dims=not packed)
    cut_path = tmp_path / "cut.caffemodel"
    cuts = np.unique(np.linspace(1, len(data) - 1, 50).astype(int))
    failures = 0
    for cut in cuts:
        cut_path.write_bytes(data[:cut])
        try:
            got = cf.read_caffemodel(cut_path)
        except cf.CaffeFormatError as exc:
            assert str(cut_path) in str(exc) and "byte " in str(exc), str(exc)
            failures += 1
        else:  # a cut exactly between two layers is a valid, shorter net
            assert list(got) == names[:len(got)]
    assert failures >= len(cuts) - 2


@pytest.mark.parametrize("packed", [True, False])
def test_flipped_bytes_never_escape_as_other_errors(tmp_path, packed):
    _, data, _ = _small_model(tmp_path, packed=packed)
    rng = np.random.default_rng(2024)
    bad_path = tmp_path / "flipped.caffemodel"
    outcomes = {"error": 0, "read": 0}
    for _ in range(200):
        corrupted = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            corrupted[pos] ^= 1 << int(rng.integers(0, 8))
        bad_path.write_bytes(bytes(corrupted))
        try:
            layers = cf.read_caffemodel(bad_path)
        except cf.CaffeFormatError as exc:
            assert str(bad_path) in str(exc) and "byte " in str(exc)
            outcomes["error"] += 1
        else:
            assert all(b.dtype == np.float32 for l in layers.values() for b in l.blobs)
            outcomes["read"] += 1
    # Most flips land in float payloads (still a valid file); some hit the structure.
    assert outcomes["error"] > 0 and outcomes["read"] > 0


def test_writer_is_atomic_and_checks_its_input(tmp_path):
    target = tmp_path / "keep.caffemodel"
    target.write_bytes(b"previous")
    bad = [cf.CaffeLayerBlobs("in", "Input", []), cf.CaffeLayerBlobs("c", "Convolution", [np.zeros(2)])]
    with pytest.raises(ValueError, match="layer 'in': type 'Input' has no V1 enum"):
        cf.write_caffemodel(target, bad, format="v1")
    with pytest.raises(ValueError, match="a 5-D blob"):
        cf.write_caffemodel(target, [cf.CaffeLayerBlobs("c", "Convolution", [np.zeros((1,) * 5)])])
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.caffemodel"]
    cf.write_caffemodel(target, bad, format="v2")  # V2 has string types
    assert list(cf.read_caffemodel(target)) == ["in", "c"]


def test_fixture_shapes_follow_vgg_topology():
    net = tiny_vgg_netspec(widths=(4, 8, 8, 16, 16), fc=(32, 32), classes=10, hw=(64, 32))
    shapes = blob_shapes(net)
    assert shapes["conv1_1"] == [(4, 3, 3, 3), (4,)]
    assert shapes["conv5_3"] == [(16, 16, 3, 3), (16,)]
    assert shapes["fc6"] == [(32, 16 * 2 * 1), (32,)]
    assert shapes["fc8"] == [(10, 32), (10,)]
    names = [l.name for l in net.layers]
    assert names[-8:] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8", "prob"]
    assert sum(n.startswith("conv") for n in names) == 13 and sum(n.startswith("pool") for n in names) == 5
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_vgg_netspec(hw=(48, 32))
