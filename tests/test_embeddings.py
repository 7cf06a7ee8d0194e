"""t-SNE panels, subject-exclusive probes and few-shot curves on tiny synthetic features."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from helpers import embeddings


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


def test_probe_scores_equal_a_direct_group_kfold_computation():
    """More rows than one batch, against the fold loop written out with numpy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(5)
    people = np.repeat(np.arange(90), 7)  # 630 rows
    y = rng.integers(0, 2, 90)[people]
    x = rng.normal(size=(630, 12)) + 0.8 * y[:, None] * (np.arange(12) < 3)
    scores = embeddings.probe_scores({"x": x}, y, people).set_index("layer")
    probe, knn = [], []
    for train, test in GroupKFold(n_splits=5).split(x, y, people):
        mean, sd = x[train].mean(0), x[train].std(0)
        z = (x - mean) / sd
        clf = LogisticRegression(C=embeddings.PROBE_C, max_iter=2000).fit(z[train], y[train])
        probe.append(np.mean(clf.predict(z[test]) == y[test]))
        nn = KNeighborsClassifier(5).fit(z[train], y[train])
        knn.append(np.mean(nn.predict(z[test]) == y[test]))
        assert not set(people[train]) & set(people[test])
    assert scores.loc["x", "probe"] == pytest.approx(np.mean(probe), abs=1e-9)
    assert scores.loc["x", "probe_std"] == pytest.approx(np.std(probe), abs=1e-9)
    assert scores.loc["x", "knn"] == pytest.approx(np.mean(knn), abs=1e-9)
    assert 0.7 < scores.loc["x", "probe"] < 1.0


def test_scratch_network_is_levi_hassner_scaled_to_the_image():
    small = embeddings.scratch_network((64, 64), 2, seed=0)
    names = [layer.name for layer in small.layers]
    for name in ("flip", "shift", "conv1", "norm1", "pool1", "conv2", "conv3", "fc6", "drop6", "fc7", "drop7", "fc8"):
        assert name in names, name
    conv = {i: small.get_layer(f"conv{i}") for i in (1, 2, 3)}
    assert [conv[i].filters for i in (1, 2, 3)] == [24, 64, 96]
    assert [conv[i].kernel_size for i in (1, 2, 3)] == [(7, 7), (5, 5), (3, 3)]
    assert conv[1].strides == (2, 2) and small.get_layer("fc6").units == 512
    assert small.get_layer("pool3").output.shape[1:3] == (4, 4) and small.output_shape == (None, 2)
    big = embeddings.scratch_network((224, 224), 3, seed=0)
    assert [big.get_layer(f"conv{i}").filters for i in (1, 2, 3)] == [96, 256, 384]
    assert big.get_layer("conv1").strides == (4, 4) and big.output_shape == (None, 3)
    again = embeddings.scratch_network((64, 64), 2, seed=0)
    other = embeddings.scratch_network((64, 64), 2, seed=1)
    w0, w1, w2 = (m.get_layer("conv2").get_weights()[0] for m in (small, again, other))
    np.testing.assert_array_equal(w0, w1)
    assert not np.allclose(w0, w2)


def test_scratch_budget_grows_with_the_training_set():
    assert embeddings.scratch_budget(2) == embeddings.SCRATCH_MIN_STEPS == 60
    assert embeddings.scratch_budget(1600, 32) == embeddings.SCRATCH_EPOCHS * 50
    assert embeddings.scratch_budget(3200, 32) == 2 * embeddings.scratch_budget(1600, 32)
    assert embeddings.scratch_budget(100, 32, epochs=10, min_steps=1) == 40
    with pytest.raises(ValueError, match="at least one face"):
        embeddings.scratch_budget(0)


def _learnable_images(n=160, size=32, seed=0):
    """Labels a small CNN can learn: class 1 has a bright square somewhere in the middle."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = rng.uniform(0, 160, (n, size, size, 3)).astype(np.float32)
    for i in np.flatnonzero(y):
        r, c = rng.integers(6, size - 14, 2)
        x[i, r:r + 8, c:c + 8] = 250
    return x, y, np.arange(n) // 2  # two faces per "user"


def _tiny_scratch(seed):
    return embeddings.scratch_network((32, 32), 2, seed=seed, widths=(8, 8, 16), dense=32)


def test_a_network_trained_from_scratch_learns_and_learns_again_after_a_reset():
    """Its training loss falls and its accuracy on its own training faces rises: in the first
    training and in the next one on the same compiled model (the optimizer reset must not zero
    the learning rate, as the old story checks did)."""
    x, y, _ = _learnable_images()
    trainer = embeddings.ScratchTrainer(_tiny_scratch, batch_size=32, epochs=30, min_steps=1)
    for seed in (0, 1):
        run = trainer.fit(x, y, seed=seed)
        assert run["n_val"] == 0 and run["steps_run"] == run["steps_budget"] == 150
        untrained = _tiny_scratch(seed)
        before = float(np.mean(embeddings._predict_classes(untrained, x) == y))
        after = float(np.mean(trainer.predict(x) == y))
        loss_before = float(np.mean(-np.log(untrained.predict(x, verbose=0)[np.arange(len(y)), y] + 1e-7)))
        loss_after = float(np.mean(-np.log(trainer.model.predict(x, verbose=0)[np.arange(len(y)), y] + 1e-7)))
        assert after >= 0.95 and after > before + 0.3, (seed, before, after)
        assert loss_after < 0.5 * loss_before, (seed, loss_before, loss_after)
        assert float(trainer.model.optimizer.learning_rate) == pytest.approx(1e-3)
    # the same checks fail on a network whose learning rate is zero (only its normalisation
    # statistics move): what the old story checks' from-scratch network was
    frozen = embeddings.ScratchTrainer(_tiny_scratch, batch_size=32, epochs=30, min_steps=1, learning_rate=0.0)
    frozen.fit(x, y, seed=0)
    assert float(np.mean(frozen.predict(x) == y)) < 0.75


def test_scratch_training_carves_validation_by_user_and_stops_early():
    x, y, users = _learnable_images(n=200)
    y = np.where(np.random.default_rng(0).random(200) < 0.25, 1 - y, y)  # noisy labels: overfitting comes
    trainer = embeddings.ScratchTrainer(_tiny_scratch, batch_size=32, epochs=60, min_steps=1, patience=2)
    run = trainer.fit(x, y, users, seed=3)
    val = run["val_index"]
    assert run["n_val"] == len(val) and 20 <= len(val) <= 60 and run["n_train"] == 200 - len(val)
    train = np.setdiff1d(np.arange(200), val)
    assert not set(users[val]) & set(users[train])  # nobody on both sides
    hist = run["history"]
    assert {"loss", "val_loss", "val_accuracy"} <= set(hist.columns)
    assert run["steps_budget"] == embeddings.scratch_budget(run["n_train"], 32, epochs=60, min_steps=1)
    assert run["steps_run"] < run["steps_budget"]  # early stopping ended it
    # restore_best_weights: the model kept is the one with the lowest validation loss
    best = hist["val_loss"].min()
    z = trainer.model.evaluate(x[val], y[val], verbose=0, return_dict=True)["loss"]
    assert z == pytest.approx(best, rel=1e-3, abs=1e-4)
    few = trainer.fit(x[85:115], y[85:115], users[85:115], seed=3)  # under SCRATCH_MIN_VAL_PER_CLASS: no split
    assert few["n_val"] == 0
    # a draw of one batch still gets its whole budget in at most SCRATCH_EVALUATIONS evaluations,
    # not one evaluation per step (which stopped such trainings after a few steps)
    small = embeddings.ScratchTrainer(_tiny_scratch, batch_size=64, epochs=1, min_steps=60, patience=1)
    part = np.r_[0:40, 100:140]  # 40 faces of each class
    run = small.fit(x[part], y[part], users[part], seed=3)
    assert run["n_val"] > 0 and len(run["history"]) <= embeddings.SCRATCH_EVALUATIONS
    assert run["steps_budget"] >= 60 and run["steps_run"] >= 2 * run["steps_budget"] // embeddings.SCRATCH_EVALUATIONS


def test_scratch_fewshot_runs_every_draw_from_fresh_weights_in_any_order():
    x, y, users = _learnable_images(n=200, seed=1)
    xt, yt, _ = _learnable_images(n=300, seed=2)  # a test set larger than one prediction batch
    kwargs = dict(n_draws=2, seed=0, progress=False)

    def trainer():
        return embeddings.ScratchTrainer(_tiny_scratch, batch_size=32, epochs=10, min_steps=40)

    both = embeddings.scratch_fewshot(x, y, users, xt, yt, [2, "all"], trainer=trainer(), **kwargs)
    alone = embeddings.scratch_fewshot(x, y, users, xt, yt, ["all"], trainer=trainer(), **kwargs)
    assert len(both) == 4 and set(both["method"]) == {"scratch"}
    np.testing.assert_allclose(both[both["k"] == "all"]["accuracy"].to_numpy(), alone["accuracy"].to_numpy())
    row = both[both["k"] == "all"].iloc[0]
    assert row["n_train"] == 200 and row["n_val"] > 0 and row["accuracy"] > 0.9
    assert set(both[both["k"] == 2]["steps_budget"]) == {40}  # the trainer's own minimum
    # the accuracy is the share of test faces predicted right (checked against a direct count)
    last = trainer()
    last.fit(x, y, users, seed=embeddings._k_code("all") + 97)  # draw 1 of "all" with seed 0
    direct = float(np.sum(embeddings._predict_classes(last.model, xt, batch_size=64) == yt) / len(yt))
    assert both[both["k"] == "all"]["accuracy"].iloc[1] == pytest.approx(direct)
    with pytest.raises(ValueError, match="groups"):
        embeddings.scratch_fewshot(x, y, users[:5], xt, yt, [2], trainer=trainer(), **kwargs)


def test_reset_optimizer_keeps_the_learning_rate():
    import keras

    opt = keras.optimizers.Adam(0.5)
    opt.build([keras.Variable(np.ones(2, np.float32))])
    for v in opt.variables:
        v.assign(np.ones(v.shape, v.dtype))
    embeddings._reset_optimizer(opt)
    assert float(opt.learning_rate) == 1.0 and int(opt.iterations) == 0
    assert all(float(np.abs(v.numpy()).sum()) == 0 for v in opt.variables if "learning_rate" not in v.path)


def test_every_age_group_gets_its_own_colour_whatever_the_palette():
    import matplotlib.colors as mcolors

    ages = ["(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)"]
    for palette in ("tab10", "viridis", "Dark2"):
        colours = embeddings.palette_colors(palette, len(ages))
        assert len({mcolors.to_hex(c) for c in colours}) == 8, palette
    xy = {"fc7": np.random.default_rng(0).normal(size=(80, 2))}
    axes = embeddings.plot_tsne_panels(xy, np.repeat(ages, 10), order=ages, palette="viridis")
    drawn = {mcolors.to_hex(c.get_facecolor()[0]) for c in axes[0].collections}
    assert len(drawn) == 8  # eight groups, eight colours (the old code drew eight shades of one)


def test_neighbour_agreement_against_a_direct_count():
    rng = np.random.default_rng(3)
    labels = rng.choice(["a", "b", "c"], size=150, p=[0.5, 0.3, 0.2])
    gathered = rng.normal(size=(150, 2)) * 0.3 + (labels[:, None] == np.array(["a", "b", "c"])) @ np.array([[0, 0], [5, 0], [0, 5]])
    d = ((gathered[:, None] - gathered[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :10]
    direct = np.mean(labels[nearest] == labels[:, None])
    assert embeddings.neighbour_agreement(gathered, labels, k=10) == pytest.approx(direct)
    assert direct > 0.95
    counts = np.array([np.sum(labels == c) for c in "abc"])
    chance = embeddings.neighbour_agreement_chance(labels)
    assert chance == pytest.approx(np.sum(counts * (counts - 1)) / (150 * 149))
    shuffled = embeddings.neighbour_agreement(rng.normal(size=(150, 2)), labels)
    assert abs(shuffled - chance) < 0.08
    with pytest.raises(ValueError, match="more than k"):
        embeddings.neighbour_agreement(gathered[:5], labels[:5])
    # a label each person carries (their fold) looks gathered on a map where a person's photos
    # sit together, unless the person's own photos are left out
    people = np.repeat(np.arange(30), 5)
    person_map = rng.normal(size=(30, 2))[people] * 10 + rng.normal(size=(150, 2)) * 0.1
    folds = (people % 5).astype(str)
    assert embeddings.neighbour_agreement(person_map, folds, k=4) > 0.9
    others = embeddings.neighbour_agreement(person_map, folds, k=4, groups=people)
    assert abs(others - embeddings.neighbour_agreement_chance(folds)) < 0.1
