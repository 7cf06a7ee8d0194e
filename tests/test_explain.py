"""helpers.explain: the three methods on hand-built networks whose decision depends on one known
region, checked against direct computations; the metrics against hand-made masks and numpy;
the sanity check against a method that ignores the model; the viewer by setting ``.value``;
and the full-mode code path on a full-size VGG-Face (seeded weights, 224 px)."""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers import evaluation, explain
from helpers.vggface import NamedSoftmax, VGGFacePreprocess

GREY = np.array(explain.MEAN_RGB, "float32")
RED = np.array([255.0, 0.0, 0.0], "float32")


# ----------------------------------------------------------------------------- hand-built networks

def _detectors(name="conv5_3"):
    """A 3x3 convolution with two channels (centre tap only, after the BGR-minus-mean preprocessing):
    channel 0 fires on red (R - G > 0), channel 1 on green (G - R > 0); grey (the mean) gives 0."""
    layer = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name=name)
    return layer, lambda: layer.set_weights([_detector_kernel(), np.zeros(2, "float32")])


def _detector_kernel():
    k = np.zeros((3, 3, 3, 2), "float32")
    k[1, 1, 2, 0], k[1, 1, 1, 0] = 1.0, -1.0  # BGR order: index 2 is red, 1 is green
    k[1, 1, 1, 1], k[1, 1, 2, 1] = 1.0, -1.0
    return k


def red_anywhere_net(hw=32):
    """Class 0 ("red") gets the evidence of red wherever it is (global average pooling), class 1
    of green: the decision depends on the place where a red patch is drawn."""
    inputs = keras.Input((hw, hw, 3), name="data")
    x = VGGFacePreprocess(name="preprocess")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool4")(x)  # conv5_3 at half resolution: Grad-CAM must upsample
    conv, init_conv = _detectors()
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool5")(x)
    fc8 = keras.layers.Dense(2, name="fc8")
    logits = fc8(x)
    model = keras.Model(inputs, NamedSoftmax(class_names=["red", "green"], name="prob")(logits))
    init_conv()
    fc8.set_weights([np.array([[1.0, -1.0], [-1.0, 1.0]], "float32"), np.zeros(2, "float32")])
    return model


def reads_one_place_net(hw=32, place=(slice(4, 12), slice(20, 28))):
    """Class 0's evidence is the red detector's response INSIDE ``place`` only (a dense layer whose
    weights are zero elsewhere): red drawn anywhere else changes nothing."""
    inputs = keras.Input((hw, hw, 3), name="data")
    x = VGGFacePreprocess(name="preprocess")(inputs)
    conv, init_conv = _detectors()
    x = conv(x)
    flat = keras.layers.Flatten(name="flatten")(x)
    fc8 = keras.layers.Dense(2, name="fc8")
    model = keras.Model(inputs, NamedSoftmax(class_names=["red", "other"], name="prob")(fc8(flat)))
    init_conv()
    w = np.zeros((hw, hw, 2, 2), "float32")
    w[place[0], place[1], 0, 0] = 1.0 / 64
    w[place[0], place[1], 0, 1] = -1.0 / 64
    fc8.set_weights([w.reshape(-1, 2), np.array([0.0, 0.5], "float32")])
    return model


def grey_image(hw=32, n=1, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(GREY + rng.normal(0, 2.0, size=(n, hw, hw, 3)), 0, 255).astype("float32")


def with_patch(images, rows, cols, colour=RED):
    out = images.copy()
    out[:, rows, cols] = colour
    return out


def peak(maps):
    return [np.unravel_index(int(np.argmax(m)), m.shape) for m in maps]


ALL_METHODS = {
    "grad_cam": {},
    "occlusion": {"patch": 8, "stride": 2},
    "integrated_gradients": {"steps": 16},
}


@pytest.mark.parametrize("method", list(ALL_METHODS))
def test_each_method_peaks_on_the_one_region_the_decision_depends_on(method):
    model = red_anywhere_net()
    rows, cols = slice(18, 26), slice(6, 14)
    x = with_patch(grey_image(n=3, seed=1), rows, cols)
    assert (explain.predicted_classes(model, x) == 0).all()
    maps = explain.explain(model, x, method, **ALL_METHODS[method])
    assert maps.shape == (3, 32, 32)
    for r, c in peak(maps):
        assert rows.start <= r < rows.stop and cols.start <= c < cols.stop, (method, r, c)
    inside = maps[:, rows, cols].mean()
    outside = np.delete(maps.reshape(3, -1), np.ravel_multi_index(np.mgrid[rows, cols].reshape(2, -1), (32, 32)), axis=1)
    # occlusion blurs by its patch size (a pixel near the patch shares the squares that cover it)
    assert inside > (3 if method == "occlusion" else 10) * np.abs(outside).mean(), method


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_pixel_methods_find_the_place_a_network_reads_even_with_a_decoy(method):
    place = (slice(4, 12), slice(20, 28))
    model = reads_one_place_net(place=place)
    x = with_patch(with_patch(grey_image(n=2, seed=2), *place), slice(20, 28), slice(2, 10))  # + a red decoy
    maps = explain.explain(model, x, method, classes=[0, 0], **ALL_METHODS[method])
    for r, c in peak(maps):
        assert place[0].start <= r < place[0].stop and place[1].start <= c < place[1].stop
    assert np.abs(maps[:, 20:28, 2:10]).max() < 1e-3 * maps.max()  # the decoy gets nothing


def test_grad_cam_weighs_channels_not_places_so_it_cannot_tell_the_decoy_apart():
    # Grad-CAM averages the gradient over space: a channel that fires in two places lights both,
    # even though the decision reads only one. (What occlusion and integrated gradients see above.)
    place = (slice(4, 12), slice(20, 28))
    model = reads_one_place_net(place=place)
    x = with_patch(with_patch(grey_image(n=1, seed=2), *place), slice(20, 28), slice(2, 10))
    cam = explain.grad_cam(model, x, classes=[0])[0]
    assert cam[20:28, 2:10].mean() == pytest.approx(cam[place].mean(), rel=0.05)


# ----------------------------------------------------------------------------- against direct computations

def test_class_margin_is_the_logit_minus_the_logsumexp_of_the_others():
    z = np.random.default_rng(0).normal(size=(7, 3)).astype("float32") * 3
    c = np.array([0, 1, 2, 0, 1, 2, 2])
    direct = [z[i, c[i]] - np.log(np.exp(np.delete(z[i], c[i])).sum()) for i in range(7)]
    assert keras.ops.convert_to_numpy(explain.class_margin(z, c)) == pytest.approx(direct, abs=1e-5)
    two = z[:, :2]
    assert keras.ops.convert_to_numpy(explain.class_margin(two, c % 2)) == pytest.approx(
        two[np.arange(7), c % 2] - two[np.arange(7), 1 - c % 2], abs=1e-5)


def test_grad_cam_equals_a_direct_tape_computation_on_a_tiny_vggface(tiny_vggface):
    import tensorflow as tf

    model = tiny_vggface(classes=3, hw=(64, 64), seed=3)
    x = np.random.default_rng(3).uniform(0, 255, (9, 64, 64, 3)).astype("float32")
    classes = np.array([0, 1, 2] * 3)
    two_outputs = keras.Model(model.inputs[0], [model.get_layer("conv5_3").output, model.get_layer("fc8").output])
    with tf.GradientTape() as tape:
        acts, logits = two_outputs(x, training=False)
        z = logits.numpy()
        own = tf.gather(logits, classes, batch_dims=1)
        others = tf.reduce_logsumexp(tf.where(tf.one_hot(classes, 3) > 0, -np.inf, logits), axis=1)
        score = tf.reduce_sum(own - others)
    grads = tape.gradient(score, acts).numpy()
    direct = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * acts.numpy()).sum(-1), 0)
    assert z.shape == (9, 3)
    got = explain.grad_cam(model, x, classes, upsample=False, batch_size=4)  # more rows than one batch
    assert got.shape == (9, 4, 4)
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-6)
    up = explain.grad_cam(model, x, classes)
    assert up.shape == (9, 64, 64) and (up >= 0).all()


def test_occlusion_equals_a_loop_over_patches(tiny_vggface):
    model = tiny_vggface(classes=2, seed=4)
    x = np.random.default_rng(4).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    classes = np.array([0, 1, 1])
    patch, stride = 12, 7  # 32 is not a multiple of 7: the last patch must still reach the edge
    tops = explain.occlusion_positions(32, patch, stride)
    assert tops == [0, 7, 14, 20]
    base = explain.margins(model, x, classes)
    total, count = np.zeros((3, 32, 32)), np.zeros((32, 32))
    for t in tops:
        for l in tops:
            y = x.copy()
            y[:, t:t + patch, l:l + patch] = GREY
            total[:, t:t + patch, l:l + patch] += (base - explain.margins(model, y, classes))[:, None, None]
            count[t:t + patch, l:l + patch] += 1
    got = explain.occlusion(model, x, classes, patch=patch, stride=stride, batch_size=5)
    np.testing.assert_allclose(got, total / count, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_add_up_to_the_margin_difference(tiny_vggface):
    model = tiny_vggface(classes=2, seed=5)
    x = np.random.default_rng(5).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    classes = explain.predicted_classes(model, x)
    attributions = explain.integrated_gradients(model, x, classes, steps=64, batch_size=100, per_channel=True)
    assert attributions.shape == (6, 32, 32, 3)
    expected = explain.margins(model, x, classes) - explain.margins(model, np.broadcast_to(GREY, x.shape), classes)
    np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), expected, rtol=2e-3, atol=1e-5)
    # the channel sum is the default map, and a different baseline image changes the answer
    summed = explain.integrated_gradients(model, x, classes, steps=64, batch_size=7)
    np.testing.assert_allclose(summed, attributions.sum(-1), rtol=1e-4, atol=1e-6)
    black = explain.integrated_gradients(model, x, classes, steps=64, baseline=np.zeros(3))
    assert not np.allclose(black, summed)


def test_integrated_gradients_through_a_relu_kink():
    # on the hand-built net the red detector switches on along the path from grey: the midpoint
    # rule still adds up once enough steps are taken
    model = red_anywhere_net()
    x = with_patch(grey_image(n=2, seed=6), slice(2, 10), slice(2, 10), colour=np.array([200.0, 120.0, 90.0]))
    classes = [0, 0]
    ig = explain.integrated_gradients(model, x, classes, steps=128)
    expected = explain.margins(model, x, classes) - explain.margins(model, np.broadcast_to(GREY, x.shape), classes)
    np.testing.assert_allclose(ig.sum(axis=(1, 2)), expected, rtol=0.02, atol=1e-4)


def test_maps_do_not_depend_on_the_batch_size(tiny_vggface):
    model = tiny_vggface(classes=2, seed=7)
    x = np.random.default_rng(7).uniform(0, 255, (11, 32, 32, 3)).astype("float32")
    settings = {"grad_cam": {}, "occlusion": {"patch": 8, "stride": 4}, "integrated_gradients": {"steps": 8}}
    for method in ALL_METHODS:
        small = explain.explain(model, x, method, batch_size=3 if method != "occlusion" else 40, **settings[method])
        large = explain.explain(model, x, method, batch_size=512, **settings[method])
        np.testing.assert_allclose(small, large, rtol=1e-4, atol=1e-6, err_msg=method)


def test_bad_inputs_get_clear_errors(tiny_vggface):
    model = tiny_vggface(classes=2)
    x = np.zeros((2, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="RGB"):
        explain.grad_cam(model, np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="no layer 'conv9_9'"):
        explain.grad_cam(model, x, layer="conv9_9")
    with pytest.raises(ValueError, match="convolutional"):
        explain.grad_cam(model, x, layer="fc7")
    with pytest.raises(ValueError, match="3 classes given for 2 images"):
        explain.occlusion(model, x, [0, 1, 0])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        explain.integrated_gradients(model, x, [0, 2])
    with pytest.raises(ValueError, match="patch"):
        explain.occlusion(model, x, patch=40)
    with pytest.raises(ValueError, match="baseline/fill"):
        explain.integrated_gradients(model, x, baseline=np.zeros((5, 5, 3)))
    with pytest.raises(ValueError, match="unknown method"):
        explain.explain(model, x, "lrp")


def test_normalise_and_resize_maps():
    maps = np.stack([np.full((4, 4), -2.0), np.zeros((4, 4)), np.arange(16.0).reshape(4, 4)])
    n = explain.normalise(maps)
    assert np.abs(n).max(axis=(1, 2)).tolist() == [1.0, 0.0, 1.0]
    big = explain.resize_maps(np.arange(16.0).reshape(1, 4, 4), (8, 8))
    assert big.shape == (1, 8, 8) and np.unravel_index(big[0].argmax(), (8, 8)) == (7, 7)


# ----------------------------------------------------------------------------- metrics on hand-made masks

def hand_masks(n=4, hw=16):
    masks = {t: np.zeros((n, hw, hw), bool) for t in ("beard", "lips", "glasses", "clutter")}
    masks["beard"][:, 12:16, 4:12] = True
    masks["lips"][:, 9:11, 6:10] = True
    masks["glasses"][:, 4:6, 2:14] = True
    masks["clutter"][:, 0:3, :] = True
    masks["glasses"][:, 9:10, 6:8] = True  # overlaps the lips: counted as gendered only
    return masks


def test_regions_are_disjoint_unions_and_missing_traits_are_named():
    masks = hand_masks()
    r = explain.regions(masks, ("beard", "lips"), ("glasses", "clutter"))
    assert not (r.gendered & r.neutral).any()
    assert r.gendered[0].sum() == 32 + 8 and r.neutral[0].sum() == 24 + 48
    with pytest.raises(KeyError, match="hair_beyond_head"):
        explain.regions(masks, ("beard", "hair_beyond_head"), ("glasses",))
    with pytest.raises(ValueError, match="both gendered and neutral"):
        explain.regions(masks, ("beard",), ("beard",))


def test_pointing_game_and_positive_share_against_hand_counts():
    r = explain.regions(hand_masks(n=4), ("beard", "lips"), ("glasses", "clutter"))
    maps = np.zeros((4, 16, 16))
    maps[0, 13, 5] = 5.0                      # peak on the beard
    maps[1, 1, 1] = 5.0                       # peak on clutter
    maps[2] = 1.0                             # constant: ties everywhere -> the gendered area share
    maps[3] = -1.0                            # no positive relevance at all
    maps[3, 8, 8] = -0.5
    pg = explain.pointing_game(maps, r.gendered)
    assert pg[:2].tolist() == [1.0, 0.0]
    assert pg[2] == pytest.approx(40 / 256)
    assert pg[3] == 1.0 / 1.0 * r.gendered[3][8, 8]  # the single maximum (-0.5) decides
    share = explain.positive_share(maps, r.gendered)
    assert share[0] == 1.0 and share[1] == 0.0 and share[2] == pytest.approx(40 / 256) and np.isnan(share[3])
    scores = explain.score_maps(maps, r)
    assert scores.attrs["no_positive_relevance"] == 1
    assert scores["baseline_pointing"].tolist() == pytest.approx([40 / 256] * 4)
    assert scores["neutral_share"][1] == 1.0
    with pytest.raises(ValueError, match="resize the maps"):
        explain.pointing_game(maps[:, :8], r.gendered)


def test_random_maps_score_their_area_share():
    rng = np.random.default_rng(0)
    r = explain.regions(hand_masks(n=1), ("beard", "lips"), ("glasses", "clutter"))
    region = np.repeat(r.gendered, 4000, axis=0)
    maps = rng.random(region.shape)
    area = explain.area_share(r.gendered)[0]
    hits = explain.pointing_game(maps, region).mean()
    assert hits == pytest.approx(area, abs=3 * np.sqrt(area * (1 - area) / 4000))
    assert explain.positive_share(maps, region).mean() == pytest.approx(area, abs=0.005)


def test_tolerance_grows_the_target_for_the_map_and_the_baseline_alike():
    r = explain.regions(hand_masks(n=1), ("lips",), ("clutter",))
    maps = np.zeros((1, 16, 16))
    maps[0, 8, 5] = 1.0  # one pixel left of and above the lips (rows 9-10, cols 6-9)
    assert explain.score_maps(maps, r)["pointing_game"][0] == 0.0
    wide = explain.score_maps(maps, r, tolerance=2)
    assert wide["pointing_game"][0] == 1.0
    assert wide["baseline_pointing"][0] > explain.area_share(r.gendered)[0]


def test_user_bootstrap_means_matches_the_evaluation_bootstrap_on_hits():
    rng = np.random.default_rng(1)
    users = np.repeat([f"u{k}" for k in range(25)], rng.integers(1, 9, size=25))
    hits = (rng.random(len(users)) < np.repeat(rng.random(25), np.unique(users, return_counts=True)[1])).astype(int)
    ours = explain.user_bootstrap_means(pd.DataFrame({"hit": hits}), users, n_boot=400, seed=3).loc["hit"]
    theirs = evaluation.user_bootstrap(hits, np.ones_like(hits), users, ["0", "1"], n_boot=400, seed=3).table.loc["accuracy"]
    assert ours.estimate == pytest.approx(hits.mean())
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high))
    assert ours.n_users == 25 and ours.n_faces == len(users)


def test_user_bootstrap_means_skips_and_counts_undefined_values():
    values = pd.DataFrame({"a": [1.0, np.nan, 3.0, 5.0], "b": [1.0, 1.0, 1.0, 1.0]})
    out = explain.user_bootstrap_means(values, ["x", "x", "y", "z"], n_boot=200, seed=0)
    assert out.loc["a", "estimate"] == 3.0 and out.loc["a", "n_faces"] == 3
    assert out.loc["b", ["low", "high"]].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="user ids"):
        explain.user_bootstrap_means(values, ["x", "y"])


def test_compare_to_baseline_tells_a_pointing_map_from_a_random_one():
    n, hw = 60, 16
    masks = hand_masks(n=n, hw=hw)
    r = explain.regions(masks, ("beard", "lips"), ("glasses", "clutter"))
    users = np.repeat(np.arange(20), 3)
    rng = np.random.default_rng(2)
    pointing = rng.random((n, hw, hw)) * 0.1
    pointing[:, 13, 6] = 1.0  # on the beard
    table = explain.compare_to_baseline(explain.score_maps(pointing, r), users, n_boot=300)
    assert table.loc["pointing_game", "beats_baseline"] and table.loc["pointing_game", "estimate"] == 1.0
    assert table.loc["pointing_game", "difference"] == pytest.approx(1 - 40 / 256)
    off = rng.random((n, hw, hw)) * 0.1
    off[:, 1, 1] = 1.0  # on the clutter
    table = explain.compare_to_baseline(explain.score_maps(off, r), users, n_boot=300)
    assert table.loc["pointing_game", "below_baseline"] and table.loc["neutral_share", "beats_baseline"]


# ----------------------------------------------------------------------------- sanity checks

def test_cascading_randomisation_changes_model_maps_and_exposes_a_model_blind_method(tiny_vggface):
    model = tiny_vggface(classes=2, seed=8, hw=(64, 64))
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(8).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    classes = explain.predicted_classes(model, x)
    methods = {
        "grad_cam": lambda m, im, c: explain.grad_cam(m, im, c),
        "brightness": lambda m, im, c: np.asarray(im).mean(-1),  # looks at the image only
    }
    result = explain.cascading_randomisation(model, x, classes, methods, layers=["fc8", "fc7", "conv5_3", "conv1_1"])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "the model itself changed"
    table = result.correlations()
    assert list(table.index) == ["fc8", "fc7", "conv5_3", "conv1_1"]
    assert table["brightness"].tolist() == pytest.approx([1.0] * 4)
    assert table.loc["conv1_1", "grad_cam"] < 0.7
    assert set(result.maps) == {"trained", "fc8", "fc7", "conv5_3", "conv1_1"}
    assert explain.cascade_layers(model)[:3] == ["fc8", "fc7", "fc6"] and explain.cascade_layers(model)[-1] == "conv1_1"
    with pytest.raises(ValueError, match="pool5"):
        explain.cascading_randomisation(model, x, classes, methods, layers=["pool5"])
    # measuring at fewer layers randomises the same layers in the same order: the same maps
    fewer = explain.cascading_randomisation(model, x, classes, methods, layers=["fc8", "fc7", "conv5_3", "conv1_1"],
                                            measure_at=["fc7", "conv1_1"])
    assert list(fewer.correlations().index) == ["fc7", "conv1_1"]
    np.testing.assert_allclose(fewer.maps["conv1_1"]["grad_cam"], result.maps["conv1_1"]["grad_cam"], rtol=1e-5)
    with pytest.raises(ValueError, match="measure after"):
        explain.cascading_randomisation(model, x, classes, methods, layers=["fc8"], measure_at=["fc7"])


def test_rank_correlation_matches_scipy_per_face():
    rng = np.random.default_rng(9)
    a, b = rng.random((5, 6, 6)), rng.random((5, 6, 6))
    b[2] = a[2] ** 3  # monotone: rank correlation 1
    a[3, :3] = 0.5    # ties
    got = explain.rank_correlation(a, b)
    expected = [stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(5)]
    assert got == pytest.approx(expected)
    assert np.isnan(explain.rank_correlation(np.ones((1, 3, 3)), a[:1, :3, :3])[0])


# ----------------------------------------------------------------------------- summaries

def test_faces_per_person_keeps_every_user_and_at_most_k_photos_each():
    frame = pd.DataFrame({"user_id": np.repeat(["a", "b", "c"], [7, 3, 5]),
                          "face_id": [1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 2, 2, 2]})
    two = explain.faces_per_person(frame, 2, seed=0)
    assert two.groupby(["user_id", "face_id"]).size().max() == 2 and set(two.user_id) == {"a", "b", "c"}
    assert len(two) == 2 * 5 and list(two.index) == sorted(two.index)
    assert explain.faces_per_person(frame, 2, seed=0).index.equals(two.index)
    capped = explain.faces_per_person(frame, 2, max_faces=5, seed=0)
    assert len(capped) <= 5 and capped.groupby("user_id").size().isin([2, 4]).all()
    assert len(explain.faces_per_person(frame, None)) == 15
    with pytest.raises(KeyError, match="face_id"):
        explain.faces_per_person(frame.drop(columns="face_id"), 1)


def test_mean_maps_agreement_and_examples_per_group():
    rng = np.random.default_rng(10)
    maps = rng.normal(size=(6, 5, 5))
    means = explain.mean_maps(maps, [0, 0, 1, 1, 1, 0], ["m", "f"])
    np.testing.assert_allclose(means["f"][0], explain.normalise(maps)[[2, 3, 4]].mean(0))
    assert means["m"][1] == 3
    assert np.isnan(explain.mean_maps(maps, [0] * 6, ["m", "f"])["f"][0]).all()
    by_method = {"a": maps, "b": 2 * maps + 1, "c": maps.copy()}  # b ranks pixels exactly like a
    by_method["c"][4] = rng.normal(size=(5, 5))                   # c disagrees on face 4 only
    agreement = explain.method_agreement(by_method)
    assert list(agreement.columns) == ["a vs b", "a vs c", "b vs c", "mean"]
    assert agreement["a vs b"].tolist() == pytest.approx([1.0] * 6)
    assert explain.most_disagreeing(agreement, k=1).tolist() == [4]
    assert len(explain.most_disagreeing(agreement, k=10)) == 6
    table = explain.examples_per_group(["(0, 2)", "(0, 2)", "(25, 32)", None, "(25, 32)", "(25, 32)"],
                                       [True, True, False, True, True, False], [0.6, 0.9, 0.8, 0.7, 0.99, 0.95])
    assert table.group.tolist() == ["(0, 2)", "(25, 32)", "unknown"]
    assert table.set_index("group").loc["(0, 2)", ["correct", "mistaken"]].tolist() == [1, -1]
    assert table.set_index("group").loc["(25, 32)", ["correct", "mistaken", "n_mistakes"]].tolist() == [4, 5, 2]


# ----------------------------------------------------------------------------- the viewer

def test_viewer_logic_by_setting_values():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(11)
    n = 6
    images = rng.uniform(0, 255, (n, 16, 16, 3))
    maps = {model: {method: rng.normal(size=(n, 16, 16)) for method in explain.METHODS} for model in ("head_only", "finetuned")}
    y_true = np.array([0, 1, 0, 1, 0, 1])
    y_pred = {"head_only": np.array([0, 0, 0, 1, 1, 1]), "finetuned": y_true.copy()}
    conf = {m: rng.uniform(0.5, 1, n) for m in maps}
    viewer = explain.ExplanationViewer(images, maps, y_true=y_true, y_pred=y_pred, confidence=conf,
                                       class_names=("m", "f"), outlines=rng.random((n, 16, 16)) > 0.7,
                                       details=[f"age {k}" for k in range(n)])
    assert viewer.current == 0 and len(viewer.face.options) == n
    viewer.mistakes_only.value = True
    assert [v for _, v in viewer.face.options] == [1, 4] and viewer.current == 1
    assert "✗" in viewer.face.options[0][0] and "age 1" in viewer.face.options[0][0]
    viewer.face.value = 4
    viewer.method.value = "occlusion"
    fig = viewer.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert any("occlusion" in t for t in titles) and any("#4: m → f" in t for t in titles)
    plt.close(fig)
    viewer.model.value = "finetuned"  # makes no mistake: the picker says so instead of failing
    assert viewer.current == -1 and "no face" in viewer.face.options[0][0]
    plt.close(viewer.figure())
    viewer.mistakes_only.value = False
    assert viewer.current == 0 and viewer.redraws >= 4
    with pytest.raises(ValueError, match="same models"):
        explain.ExplanationViewer(images, maps, y_true=y_true, y_pred={"head_only": y_true}, confidence=conf,
                                  class_names=("m", "f"))


# ----------------------------------------------------------------------------- full mode, rehearsed

def test_full_mode_path_on_a_full_size_vggface_stand_in():
    """The real network's size (seeded weights, NOT VGG-Face's: a stand-in), at 224 px: conv5_3 is
    14x14, the methods and summaries run and give maps at the input's resolution."""
    from helpers import vggface
    from helpers.caffe import build_keras_model

    keras.utils.set_random_seed(0)
    base = build_keras_model(vggface.vggface_netspec())
    model = vggface.replace_head(base, ("m", "f"), seed=0)
    assert model.count_params() > 134_000_000
    x = np.random.default_rng(12).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    classes = explain.predicted_classes(model, x)
    assert tuple(model.get_layer("conv5_3").output.shape[1:3]) == (14, 14)
    maps = {
        "grad_cam": explain.grad_cam(model, x, classes),
        "occlusion": explain.occlusion(model, x, classes, patch=112, stride=112),
        "integrated_gradients": explain.integrated_gradients(model, x, classes, steps=2),
    }
    for method, m in maps.items():
        assert m.shape == (1, 224, 224) and np.isfinite(m).all() and np.abs(m).max() > 0, method
    assert explain.method_agreement(maps).shape == (1, 4)
    assert set(explain.mean_maps(maps["grad_cam"], classes, ("m", "f"))) == {"m", "f"}


def test_trait_shares_against_hand_counts():
    masks = hand_masks(n=2)
    maps = np.zeros((2, 16, 16))
    maps[:, 13, 5] = 1.0  # all positive relevance on the beard
    table = explain.trait_shares(maps, masks, ["beard", "lips", "clutter"])
    assert table.loc["beard", "relevance_share"] == 1.0 and table.loc["lips", "relevance_share"] == 0.0
    assert table.loc["beard", "ratio"] == pytest.approx(1.0 / (32 / 256))
    assert table.loc["clutter", "faces_with_trait"] == 2
    with pytest.raises(KeyError, match="earrings"):
        explain.trait_shares(maps, masks, ["earrings"])


def test_load_if_fits_says_why_a_model_is_not_used(tmp_path, tiny_vggface):
    from helpers.course import fileio

    model = tiny_vggface(classes=2, class_names=["m", "f"])
    fileio.save_model(model, tmp_path / "gender.keras")
    loaded, source = explain.load_if_fits(tmp_path / "gender.keras", ("m", "f"), (32, 32))
    assert loaded is not None and source.endswith("gender.keras")
    assert explain.load_if_fits(tmp_path / "gender.keras", ("m", "f", "u"), (32, 32))[1].startswith("gender.keras predicts")
    assert "takes (32, 32) images" in explain.load_if_fits(tmp_path / "gender.keras", ("m", "f"), (64, 64))[1]
    assert explain.load_if_fits(tmp_path / "missing.keras", ("m", "f"), (32, 32)) == (None, f"no missing.keras in {tmp_path}")


def test_score_table_and_random_baseline_cover_every_model_and_method():
    n, hw = 30, 16
    r = explain.regions(hand_masks(n=n, hw=hw), ("beard", "lips"), ("glasses", "clutter"))
    users = np.repeat(np.arange(10), 3)
    rng = np.random.default_rng(3)
    maps = {"a": {"m1": rng.random((n, hw, hw)), "m2": rng.random((n, hw, hw))}, "b": {"m1": rng.random((n, hw, hw))}}
    table, per_face = explain.score_table(maps, r, users, tolerance=2, n_boot=200, seed=1)
    assert set(per_face) == {("a", "m1"), ("a", "m2"), ("b", "m1")}
    assert set(table.index.get_level_values("score")) == {"pointing_game", "pointing_game_exact", "gendered_share", "neutral_share"}
    exact = explain.compare_to_baseline(explain.score_maps(maps["a"]["m2"], r), users, n_boot=200, seed=1)
    assert table.loc[("a", "m2", "pointing_game_exact"), "estimate"] == exact.loc["pointing_game", "estimate"]
    base = explain.random_baseline(r, users, tolerance=2, n_boot=200, seed=1)
    assert base.loc["pointing_game", "estimate"] == pytest.approx(table.loc[("b", "m1", "pointing_game"), "baseline"])
    assert base.loc["gendered_share", "estimate"] == pytest.approx(40 / 256)
