"""t-SNE panels, subject-exclusive probes and few-shot curves on tiny synthetic features."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from helpers import embeddings
from tests.tiny_vgg import keras_tiny_vggface


def blobs(n_per_class=30, dim=8, gap=6.0, seed=0, informative=1):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    x = rng.normal(size=(2 * n_per_class, dim)).astype(np.float32)
    x[:, :informative] += gap * y[:, None]
    return x, y


def test_stratified_sample_keeps_shares_and_is_reproducible():
    labels = ["m"] * 600 + ["f"] * 300 + ["u"] * 100 + [None] * 10
    idx = embeddings.stratified_sample(labels, 100, seed=3)
    assert len(idx) == 100 and len(set(idx)) == 100 and np.all(np.diff(idx) > 0)
    picked = pd.Series(np.array(labels, dtype=object)[idx]).fillna("unknown").value_counts()
    assert picked["m"] == 59 and picked["f"] == 30 and picked["u"] == 10 and picked["unknown"] == 1
    np.testing.assert_array_equal(idx, embeddings.stratified_sample(labels, 100, seed=3))
    assert not np.array_equal(idx, embeddings.stratified_sample(labels, 100, seed=4))
    np.testing.assert_array_equal(embeddings.stratified_sample(["a", "b"], 5), [0, 1])


def test_tsne_is_seeded_and_keeps_separated_classes_apart():
    x, y = blobs(n_per_class=25, dim=60, gap=3.0, informative=20)
    a = embeddings.tsne_embed(x, seed=1, max_iter=400)
    b = embeddings.tsne_embed(x, seed=1, max_iter=400)
    assert a.shape == (50, 2)
    np.testing.assert_allclose(a, b)
    # Nearest neighbour in the 2-D map has the same class: the map kept the structure.
    d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    panels = embeddings.tsne_panels({"early": x[:, 20:], "late": x}, seed=1, max_iter=400)
    np.testing.assert_allclose(panels["late"], a)
    axes = embeddings.plot_tsne_panels(panels, np.where(y == 0, "m", "f"), order=["m", "f"], title="t",
                                       colors={"f": "#ff0000"})
    assert [ax.get_title() for ax in axes] == ["early", "late"]
    assert tuple(axes[0].collections[1].get_facecolor()[0][:3]) == (1.0, 0.0, 0.0)
    assert [t.get_text() for t in axes[-1].get_legend().get_texts()] == ["m", "f"]
    with pytest.raises(ValueError, match="labels"):
        embeddings.plot_tsne_panels(panels, ["m"] * 3)


def test_probes_rank_informative_layers_and_are_subject_exclusive():
    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(40), 6)
    label_of_person = rng.integers(0, 2, 40)
    y = label_of_person[people]
    # "identity": each person has a distinctive vector unrelated to the label. Mixing
    # photos of one person into train and test would let k-NN score ~100% by recognising them.
    identity = rng.normal(size=(40, 16))[people] * 5 + rng.normal(size=(240, 16)) * 0.1
    semantic = rng.normal(size=(240, 16)) + 3.0 * y[:, None]
    scores = embeddings.probe_scores({"identity": identity, "semantic": semantic}, y, people).set_index("layer")
    assert scores.loc["semantic", "probe"] > 0.95 and scores.loc["semantic", "knn"] > 0.95
    assert scores.loc["identity", "knn"] < 0.75  # no leak through the same person
    assert scores.loc["identity", "dim"] == 16
    ax = embeddings.plot_probe_curve(scores.reset_index(), chance=0.5)
    assert len(ax.lines) >= 3
    with pytest.raises(ValueError, match="groups"):
        embeddings.probe_scores({"a": semantic[:12]}, y[:12], people[:12], n_splits=5)
    with pytest.raises(ValueError, match="rows"):
        embeddings.probe_scores({"a": semantic[:10]}, y, people)


def test_fewshot_indices():
    y = np.array([0] * 20 + [1] * 7)
    draws = embeddings.fewshot_indices(y, 5, n_draws=4, seed=0)
    assert len(draws) == 4
    for idx in draws:
        assert len(set(idx)) == 10 and (y[idx] == 0).sum() == 5 and (y[idx] == 1).sum() == 5
    assert not np.array_equal(np.sort(draws[0]), np.sort(draws[1]))
    again = embeddings.fewshot_indices(y, 5, n_draws=4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    everything = embeddings.fewshot_indices(y, "all", n_draws=2, seed=0)
    assert all(sorted(d) == list(range(27)) for d in everything)
    with pytest.raises(ValueError, match="fewer faces"):
        embeddings.fewshot_indices(y, 10, n_draws=1)


def test_transfer_fewshot_learns_from_few_faces_and_summarizes():
    x, y = blobs(n_per_class=60, gap=3.0, informative=4)
    train = np.arange(0, 120, 2)
    test = np.arange(1, 120, 2)
    res = embeddings.transfer_fewshot(x[train], y[train], x[test], y[test], [1, 5, "all"], n_draws=3, seed=0)
    assert len(res) == 9 and set(res["method"]) == {"transfer"}
    assert res.loc[res["k"] == "all", "n_train"].iloc[0] == 60
    summary = embeddings.summarize_fewshot(res)
    assert list(summary["k"]) == [1, 5, "all"]
    assert summary.set_index("k").loc[5, "mean"] > 0.85 and summary.set_index("k").loc["all", "mean"] > 0.95
    manual = res[res["k"] == 1]["accuracy"]
    assert summary.set_index("k").loc[1, "mean"] == pytest.approx(manual.mean())
    assert summary.set_index("k").loc[1, "std"] == pytest.approx(manual.std())
    ax = embeddings.plot_fewshot(pd.concat([summary, summary.assign(method="scratch")]), chance=0.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "all"]


def test_scratch_fewshot_trains_a_fresh_network_per_draw():
    import keras

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    images = rng.uniform(0, 60, (80, 8, 8, 3)).astype(np.float32) + 150 * y[:, None, None, None]
    built = []

    def build(seed):
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Rescaling(1 / 255)(inp)
        x = keras.layers.GlobalAveragePooling2D()(x)
        out = keras.layers.Dense(2, activation="softmax")(x)
        built.append(seed)
        return keras.Model(inp, out)

    res = embeddings.scratch_fewshot(build, images[::2], y[::2], images[1::2], y[1::2], [2, "all"],
                                     n_draws=2, seed=0, steps=40, batch_size=8, learning_rate=0.05,
                                     progress=False)
    assert len(res) == 4 and len(set(built)) == 4  # a fresh network, seeded differently, per draw
    assert set(res["steps"]) == {40}
    assert res["accuracy"].min() > 0.9  # brightness is trivially learnable: training happened


def test_scratch_builder_gives_fresh_weights_on_the_same_architecture():
    from helpers import vggface

    pretrained = keras_tiny_vggface()
    before = pretrained.get_layer("conv3_1").get_weights()[0].copy()
    scratch = embeddings.scratch_builder(pretrained, ("m", "f"))(7)
    assert [l.name for l in scratch.layers if l.weights][:13] == vggface.layer_blocks(pretrained)["block1"] + \
        vggface.layer_blocks(pretrained)["block2"] + vggface.layer_blocks(pretrained)["block3"] + \
        vggface.layer_blocks(pretrained)["block4"] + vggface.layer_blocks(pretrained)["block5"]
    assert scratch.output_shape == (None, 2)
    assert vggface.class_names(scratch) == ["m", "f"]
    fresh = scratch.get_layer("conv3_1").get_weights()[0]
    assert fresh.shape == before.shape and not np.allclose(fresh, before)
    np.testing.assert_array_equal(pretrained.get_layer("conv3_1").get_weights()[0], before)
    again = embeddings.scratch_builder(pretrained, ("m", "f"))(7)
    np.testing.assert_array_equal(again.get_layer("conv3_1").get_weights()[0], fresh)


def test_each_scratch_draw_starts_from_its_own_fresh_weights():
    import keras

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (40, 4, 4, 3)).astype(np.float32)
    y = np.repeat([0, 1], 20)

    def build(seed):
        inp = keras.Input((4, 4, 3))
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
        out = keras.layers.Dense(2, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=seed))(x)
        return keras.Model(inp, out)

    # With a zero learning rate nothing is learned: each draw's score is its fresh network's.
    res = embeddings.scratch_fewshot(build, images, y, images, y, [3, 5], n_draws=2, seed=0, steps=3,
                                     batch_size=4, learning_rate=0.0, flip=False, progress=False)
    for row in res.itertuples():
        run_seed = 0 * 1000 + row.draw * 97 + row.k
        expected = float((build(run_seed).predict(images, verbose=0).argmax(-1) == y).mean())
        assert row.accuracy == pytest.approx(expected)
    assert res["accuracy"].nunique() > 1
    opt = keras.optimizers.Adam(0.5)
    opt.build([keras.Variable(np.ones(2, np.float32))])
    for v in opt.variables:
        v.assign(np.ones(v.shape, v.dtype))
    embeddings._reset_optimizer(opt)
    assert float(opt.learning_rate) == 1.0 and int(opt.iterations) == 0
    assert all(float(np.abs(v.numpy()).sum()) == 0 for v in opt.variables if "learning_rate" not in v.path)
