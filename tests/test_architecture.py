"""Layer statistics: parameters, MACs, receptive fields and memory computed from the layers."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from helpers import caffe
from helpers import architecture, vggface
from tests.tiny_vgg import keras_tiny_vggface


@pytest.fixture(scope="module")
def tiny_vggface():
    return keras_tiny_vggface()


def test_vgg16_pool5_receptive_field_is_212_with_stride_32():
    # The real Keras VGG16 topology (random weights, no download): the textbook value.
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    table = architecture.layer_table(model).set_index("layer")
    assert table.loc["block5_pool", "receptive_field"] == 212
    assert table.loc["block5_pool", "stride"] == 32
    assert table.loc["block1_conv2", "receptive_field"] == 5
    assert table.loc["block3_pool", "receptive_field"] == 44
    # Keras's own count for this model, and the well-known 15.35 G MACs of VGG16's convolutions.
    assert architecture.totals(table.reset_index())["params"] == 14_714_688 == model.count_params()
    assert architecture.totals(table.reset_index())["macs"] == 15_346_630_656


def test_hand_counted_macs_params_memory_and_shapes():
    inp = keras.Input((8, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)             # 8*6*4 outputs x 27
    x = keras.layers.Conv2D(5, 3, strides=2, padding="valid", name="c2")(x)   # 3*2*5 outputs x 36
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(7, name="d")(x)                                    # 30 x 7
    table = architecture.layer_table(keras.Model(inp, x)).set_index("layer")
    assert table.loc["c1", "macs"] == 8 * 6 * 4 * 27
    assert table.loc["c2", "macs"] == 3 * 2 * 5 * 36
    assert table.loc["d", "macs"] == 30 * 7
    assert table.loc["c1", "params"] == 27 * 4 + 4
    assert table.loc["c2", "output_shape"] == (3, 2, 5)
    assert table.loc["c1", "activation_bytes"] == 8 * 6 * 4 * 4  # float32
    assert table.loc["c2", "receptive_field"] == 5 and table.loc["c2", "stride"] == 2
    # Flatten reads the whole 3x2 map: rows 5 + 2*2 = 9 but columns 5 + 1*2 = 7 (non-square kept).
    assert table.loc["flat", "receptive_field"] == 9 and table.loc["flat", "receptive_field_w"] == 7
    assert pd_isna(table.loc["d", "stride"])
    assert table["params_share"].sum() == pytest.approx(1.0)
    assert table["macs_share"].sum() == pytest.approx(1.0)


def pd_isna(value):
    import pandas as pd

    return bool(pd.isna(value))


def test_dilation_and_padding_layers():
    inp = keras.Input((16, 16, 1))
    x = keras.layers.ZeroPadding2D(1, name="pad")(inp)
    x = keras.layers.Conv2D(2, 3, dilation_rate=2, name="dil")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool")(x)
    table = architecture.layer_table(keras.Model(inp, x)).set_index("layer")
    assert table.loc["dil", "receptive_field"] == 5  # a dilated 3x3 covers 5 pixels
    assert table.loc["pool", "receptive_field"] == 5 + 2 * 1 and table.loc["pool", "stride"] == 2


def test_vggface_topology_shares_and_groups(tiny_vggface):
    table = architecture.layer_table(tiny_vggface)
    assert list(table["layer"][:3]) == ["preprocess", "conv1_1", "conv1_2"]
    t = architecture.totals(table)
    assert t["params"] == tiny_vggface.count_params()
    shares = architecture.group_shares(table).set_index("group")
    assert shares["layers"].tolist() == [13, 3]
    # At this width convolutions dominate compute; the ratio is computed, not typed.
    assert shares.loc["convolutions", "macs_share"] > 0.99
    blocks = architecture.group_shares(table, vggface.layer_blocks(tiny_vggface))
    assert blocks["params"].sum() == t["params"]
    with pytest.raises(ValueError, match="nope"):
        architecture.group_shares(table, {"g": ["nope"]})


def test_mini_vggface_compute_lives_in_the_convolutions():
    # The quick-mode miniature (1/8 width, 64 px): the same topology as the real one.
    net = vggface.vggface_netspec(conv_widths=(8, 16, 32, 64, 64), fc_widths=(256, 256), n_classes=100, input_hw=(64, 64))
    table = architecture.layer_table(caffe.build_keras_model(net))
    shares = architecture.group_shares(table).set_index("group")
    assert shares.loc["convolutions", "macs_share"] > 0.9
    assert table.set_index("layer").loc["pool5", "receptive_field"] == 212


def test_unknown_shape_changing_layer_is_named():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Reshape((4, 16, 3), name="odd_reshape")(inp)
    with pytest.raises(ValueError, match="odd_reshape"):
        architecture.layer_table(keras.Model(inp, x))


def test_filter_and_feature_map_grids(tiny_vggface):
    kernel = tiny_vggface.get_layer("conv1_1").get_weights()[0]  # (3, 3, 3, 4)
    grid = architecture.filter_grid(kernel, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert grid.min() >= 0 and grid.max() <= 1
    # BGR -> RGB: the first tile's red channel is the kernel's third input channel, rescaled.
    k0 = kernel[:, :, :, 0]
    expected_red = (k0[:, :, 2] - k0.min()) / (k0.max() - k0.min())
    np.testing.assert_allclose(grid[:3, :3, 0], expected_red, atol=1e-6)
    maps = np.zeros((5, 5, 3), np.float32)
    maps[..., 1] = 2.0
    maps[2, 2, 1] = 9.0
    fm = architecture.feature_map_grid(maps, max_maps=2, pad=0, columns=2)
    assert fm.shape == (5, 10)
    assert fm[2, 2] == 1.0 and fm[0, 0] == 0.0  # the most active channel comes first
    padded = architecture.feature_map_grid(maps, max_maps=3, pad=1, columns=2)
    assert padded.shape == (11, 11) and np.isnan(padded[5, :]).all() and np.isnan(padded[6:, 6:]).all()
    with pytest.raises(ValueError, match="kernel"):
        architecture.filter_grid(np.zeros((3, 3, 4, 2)))


def test_style_and_plot(tiny_vggface):
    import matplotlib

    matplotlib.use("Agg")
    table = architecture.layer_table(tiny_vggface)
    html = architecture.style_layer_table(table).to_html()
    assert "conv5_3" in html and "activation_MB" in html
    axes = architecture.plot_layer_table(table)
    assert len(axes[0].patches) == 16  # 13 convolutions + fc6, fc7, fc8


def test_channel_maxima_and_top_activating_faces_against_numpy(tiny_vggface):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers import plots
    from helpers.vggface import feature_model

    model = tiny_vggface
    images = np.random.default_rng(0).uniform(0, 255, (70, 32, 32, 3)).astype(np.float32)  # > one batch
    maxima = architecture.channel_maxima(model, ["conv5_3", "pool5", "fc7"], images, batch_size=16)
    maps = [np.asarray(m) for m in feature_model(model, ["conv5_3", "pool5", "fc7"])(images, training=False)]
    np.testing.assert_allclose(maxima["conv5_3"], maps[0].max(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maxima["pool5"], maps[1].max(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maxima["fc7"], maps[2], rtol=1e-5, atol=1e-6)
    top = architecture.top_activating(maxima["conv5_3"], n_channels=3, k=4)
    m = maxima["conv5_3"]
    assert list(dict.fromkeys(top.channel)) == list(np.argsort(-m.std(axis=0), kind="stable")[:3])
    for c, rows in top.groupby("channel"):
        assert rows.sort_values("rank").image.tolist() == list(np.argsort(-m[:, c], kind="stable")[:4])
    assert architecture.top_activating(m, channels=[1], k=2).image.tolist() == list(np.argsort(-m[:, 1])[:2])
    with pytest.raises(ValueError, match="out of range"):
        architecture.top_activating(m, channels=[99])
    fig = plots.top_activating_grid(images, top, title="conv5_3")
    assert len(fig.axes) == 12 and fig.axes[0].get_title() == f"{top.activation.iloc[0]:.3g}"
    plt.close("all")
