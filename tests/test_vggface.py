"""helpers.vggface: preprocessing, class names, head replacement, layer groups, topology."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import vggface  # noqa: E402
from tests.tiny_vgg import keras_tiny_vggface

# conv1_1 .. conv5_3, then fc6, fc7, fc8, exactly as in the published VGG_FACE_deploy.prototxt
VGG_FACE_LAYERS = (
    "conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2 pool2 "
    "conv3_1 relu3_1 conv3_2 relu3_2 conv3_3 relu3_3 pool3 conv4_1 relu4_1 conv4_2 relu4_2 "
    "conv4_3 relu4_3 pool4 conv5_1 relu5_1 conv5_2 relu5_2 conv5_3 relu5_3 pool5 "
    "fc6 relu6 drop6 fc7 relu7 drop7 fc8 prob").split()


@pytest.fixture(scope="module")
def tiny_model():
    names = ["ann", "bob", "cid", "dee", "eve"]
    return keras_tiny_vggface(class_names=names)


def test_preprocess_swaps_to_bgr_and_subtracts_mean():
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], dtype=np.float32)
    out = np.asarray(vggface.VGGFacePreprocess()(rgb))
    np.testing.assert_allclose(out[0, 0, 0], [30 - 93.5940, 20 - 104.7624, 10 - 129.1863], rtol=1e-6)


def test_preprocess_config_round_trip():
    layer = vggface.VGGFacePreprocess(mean_bgr=(1, 2, 3), name="preprocess")
    clone = vggface.VGGFacePreprocess.from_config(layer.get_config())
    assert clone.mean_bgr == (1.0, 2.0, 3.0) and clone.name == "preprocess"
    with pytest.raises(ValueError, match="3 values"):
        vggface.VGGFacePreprocess(mean_bgr=(1, 2))


def test_netspec_has_vgg_face_layers_and_full_size_parameter_count():
    net = vggface.vggface_netspec()
    assert [l.name for l in net.layers] == VGG_FACE_LAYERS
    assert net.input_shape == (1, 3, 224, 224)
    # the published model's parameter count, computed from the spec (no 580 MB model built)
    c, hw, params = 3, 224, 0
    for layer in net.layers:
        if layer.type == "Convolution":
            params += (9 * c + 1) * layer.params["num_output"]
            c = layer.params["num_output"]
        elif layer.type == "Pooling":
            hw //= 2
        elif layer.type == "InnerProduct":
            params += (c * hw * hw + 1) * layer.params["num_output"]
            c, hw = layer.params["num_output"], 1
    assert params == 145_002_878


def test_model_layers_follow_caffe_names(tiny_model):
    names = [l.name for l in tiny_model.layers]
    assert names[:3] == ["data", "preprocess", "conv1_1"]
    assert "relu1_1" not in names  # fused into conv1_1
    assert names[-7:] == ["flatten", "fc6", "drop6", "fc7", "drop7", "fc8", "prob"]
    assert tiny_model.get_layer("fc7").activation is keras.activations.relu


def test_layer_blocks(tiny_model):
    blocks = vggface.layer_blocks(tiny_model)
    assert list(blocks) == ["block1", "block2", "block3", "block4", "block5", "fc"]
    assert blocks["block3"] == ["conv3_1", "conv3_2", "conv3_3"]
    assert blocks["fc"] == ["fc6", "fc7", "fc8"]


def test_top_identities_orders_by_probability(tiny_model):
    head = tiny_model.get_layer("fc8")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.array([0.0, 3.0, 1.0, 2.0, -1.0], np.float32)])
    try:
        top = vggface.top_identities(tiny_model, np.zeros((32, 32, 3), np.float32), k=3)
    finally:
        head.set_weights([kernel, bias])
    assert [name for name, _ in top[0]] == ["bob", "dee", "cid"]
    expected = np.exp(3.0) / np.exp([0.0, 3.0, 1.0, 2.0, -1.0]).sum()
    assert top[0][0][1] == pytest.approx(expected, rel=1e-5)


def test_class_names_none_without_names():
    model = keras_tiny_vggface()
    assert vggface.class_names(model) is None
    top = vggface.top_identities(model, np.zeros((2, 32, 32, 3), np.float32), k=2)
    assert len(top) == 2 and all(name.isdigit() for name, _ in top[0])


def test_replace_head_keeps_other_weights(tiny_model):
    model = vggface.replace_head(tiny_model, class_names=("m", "f"), seed=0)
    assert model.output.shape == (None, 2)
    assert vggface.class_names(model) == ["m", "f"]
    assert model.get_layer("fc8").input is tiny_model.get_layer("drop7").output
    np.testing.assert_array_equal(model.get_layer("fc7").get_weights()[0], tiny_model.get_layer("fc7").get_weights()[0])
    assert model.get_layer("fc8").get_weights()[0].shape == (16, 2)
    again = vggface.replace_head(tiny_model, class_names=("m", "f"), seed=0)
    np.testing.assert_array_equal(again.get_layer("fc8").get_weights()[0], model.get_layer("fc8").get_weights()[0])


def test_replace_head_saved_and_loaded(tiny_model, tmp_path):
    model = vggface.replace_head(tiny_model, class_names=("m", "f", "u"), seed=1)
    model.save(tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras")
    assert vggface.class_names(loaded) == ["m", "f", "u"]
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5)


def test_feature_model(tiny_model):
    single = vggface.feature_model(tiny_model, "pool5")
    assert single.output.shape == (None, 1, 1, 8)
    pair = vggface.feature_model(tiny_model, ["fc7", "pool3"])
    fc7, pool3 = pair(np.zeros((1, 32, 32, 3), np.float32))
    assert fc7.shape == (1, 16) and pool3.shape == (1, 4, 4, 8)
    with pytest.raises(ValueError, match="no layer"):
        vggface.feature_model(tiny_model, ["fc9"])


def test_read_names(tmp_path):
    (tmp_path / "names.txt").write_text("A_B\nC_D\n\n")
    assert vggface.read_names(tmp_path / "names.txt") == ["A_B", "C_D"]
    (tmp_path / "bad.txt").write_text("A\n\nB\n")
    with pytest.raises(ValueError, match="line"):
        vggface.read_names(tmp_path / "bad.txt")


def test_load_image_is_rgb_float_and_resized(tmp_path):
    from PIL import Image

    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[..., 0] = 200  # red
    Image.fromarray(pixels).save(tmp_path / "face.png")
    img = vggface.load_image(tmp_path / "face.png")
    assert img.dtype == np.float32 and img.shape == (6, 8, 3) and img[0, 0].tolist() == [200, 0, 0]
    assert vggface.load_image(tmp_path / "face.png", size=(3, 5)).shape == (3, 5, 3)
