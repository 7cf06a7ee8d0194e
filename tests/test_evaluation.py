"""Tests of helpers.evaluation on small examples whose answers were worked out by hand."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers import data
from helpers import evaluation as ev
from tests.tiny_vgg import keras_tiny_vggface

NAMES = ("m", "f")


def probs_from_pf(pf):
    pf = np.asarray(pf, dtype=float)
    return np.stack([1 - pf, pf], axis=1)


# ----------------------------------------------------------------------------- confusion
def test_confusion_report_counts_normalised_and_metrics():
    # true m m m m f f f f f; one man taken for a woman, one woman taken for a man
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 1, 1, 0, 1]
    rep = ev.confusion_report(y_true, y_pred, NAMES)
    assert rep.counts.to_numpy().tolist() == [[3, 1], [1, 4]]
    np.testing.assert_allclose(rep.normalized.to_numpy(), [[0.75, 0.25], [0.2, 0.8]])
    np.testing.assert_allclose(rep.per_class["recall"], [0.75, 0.8])
    np.testing.assert_allclose(rep.per_class["precision"], [0.75, 0.8])
    np.testing.assert_allclose(rep.per_class.loc["f", "f1"], 0.8)
    assert rep.accuracy == pytest.approx(7 / 9)


def test_confusion_sentences_are_generated_from_the_numbers():
    sentences = ev.confusion_sentences([[3, 1], [1, 4]], NAMES)
    assert "20.0% of women (1 of 5) were classified as men." in sentences
    assert "75.0% of men (3 of 4) were classified correctly." in sentences
    assert len(sentences) == 4
    assert ev.confusion_sentences([[0, 0], [1, 1]], NAMES)[0] == "There were no men in this set."


def test_confusion_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="class indices in 0..1"):
        ev.confusion_report([0, 2], [0, 1], NAMES)


# ----------------------------------------------------------------------------- costs
def test_cost_matrix_and_expected_cost_by_hand():
    cost = ev.cost_matrix(NAMES, {("f", "m"): 5})  # taking a woman for a man costs 5
    assert cost.tolist() == [[0, 1], [5, 0]]
    assert ev.expected_cost_from_confusion([[3, 1], [1, 4]], cost) == pytest.approx(6 / 9)
    assert ev.expected_cost([0, 0, 1, 1], [0, 1, 0, 1], cost) == pytest.approx(6 / 4)
    with pytest.raises(ValueError, match="among the classes"):
        ev.cost_matrix(NAMES, {("f", "x"): 2})


def test_bayes_rule_with_unequal_costs():
    cost = [[0, 1], [5, 0]]
    # Threshold on P(f): 1 / (1 + 5); at P(f)=0.1 deciding m costs 0.5 < 0.9, at 0.2 deciding f costs 0.8 < 1.0
    assert ev.bayes_threshold(cost) == pytest.approx(1 / 6)
    assert ev.bayes_decisions(probs_from_pf([0.1, 0.2, 0.7]), cost).tolist() == [0, 1, 1]
    # three classes, the "u" decision is cheap to get wrong: argmin_j sum_i p_i C[i, j]
    cost3 = [[0, 4, 1], [4, 0, 1], [4, 4, 0]]
    assert ev.bayes_decisions([[0.6, 0.3, 0.1]], cost3).tolist() == [2]  # costs 1.6, 2.8, 0.9
    assert ev.bayes_decisions([[0.9, 0.05, 0.05]], cost3).tolist() == [0]  # costs 0.4, 3.8, 0.95


@pytest.mark.parametrize(
    "errors, threshold, decisions, val_cost",
    [
        # validation: m at P(f)=0.1, 0.3, 0.6; f at 0.4, 0.9. Equal costs: one error at best,
        # in (0.3, 0.4] or (0.6, 0.9]; the tie goes to the threshold closest to 0.5, i.e. 0.4.
        ({}, 0.4, [0, 0, 1, 1, 1], 1 / 5),
        # a woman taken for a man costs 5: only the man at 0.6 may be wrong; closest to 1/6 is 0.35
        ({("f", "m"): 5}, 0.35, [0, 0, 1, 1, 1], 1 / 5),
        # a man taken for a woman costs 5: only the woman at 0.4 may be wrong; closest to 5/6 is 0.9
        ({("m", "f"): 5}, 0.9, [0, 0, 0, 0, 1], 1 / 5),
    ],
)
def test_cost_optimal_threshold_known_by_hand(errors, threshold, decisions, val_cost):
    y_val = [0, 0, 0, 1, 1]
    probs = probs_from_pf([0.1, 0.3, 0.6, 0.4, 0.9])
    rule = ev.choose_decision_rule(probs, y_val, ev.cost_matrix(NAMES, errors), NAMES)
    assert rule.kind == "threshold"
    assert rule.threshold == pytest.approx(threshold)
    assert rule.predict(probs).tolist() == decisions
    assert rule.validation_cost == pytest.approx(val_cost)


def test_chosen_threshold_beats_every_other_threshold_on_validation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    pf = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.25, 300), 0, 1)
    cost = ev.cost_matrix(NAMES, {("f", "m"): 3.0})
    rule = ev.choose_decision_rule(probs_from_pf(pf), y, cost, NAMES)
    grid_costs = [ev.expected_cost(y, (pf >= t).astype(int), cost) for t in np.linspace(0, 1.01, 500)]
    assert rule.validation_cost <= min(grid_costs) + 1e-12
    assert rule.validation_cost == pytest.approx(ev.expected_cost(y, rule.predict(probs_from_pf(pf)), cost))


def test_three_classes_use_the_bayes_rule():
    cost3 = [[0, 4, 1], [4, 0, 1], [4, 4, 0]]
    rule = ev.choose_decision_rule([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]], [2, 1], cost3, ("m", "f", "u"))
    assert rule.kind == "bayes"
    assert rule.predict([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]).tolist() == [2, 1]
    assert rule.validation_cost == 0.0


def test_logits_are_refused_where_probabilities_are_expected():
    with pytest.raises(ValueError, match="sum to 1"):
        ev.choose_decision_rule([[2.0, -1.0]], [0], ev.cost_matrix(NAMES), NAMES)


def test_operating_point_by_hand():
    y = [0, 0, 0, 1, 1]
    op = ev.operating_point(y, [0.1, 0.3, 0.6, 0.4, 0.9], threshold=0.35)
    # decided f: 0.6 (a man), 0.4, 0.9 (women)
    assert op["tpr"] == 1.0 and op["fpr"] == pytest.approx(1 / 3) and op["precision"] == pytest.approx(2 / 3)
    curves = ev.roc_pr_curves(y, [0.1, 0.3, 0.6, 0.4, 0.9])
    assert curves["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (woman, man) pairs are ordered right


# ----------------------------------------------------------------------------- calibration
def test_expected_calibration_error_by_hand():
    # 4 faces at confidence 0.8 (3 right) and 2 at 0.6 (both right): gaps 0.05 and 0.4
    probs = [[0.8, 0.2]] * 4 + [[0.4, 0.6]] * 2
    y = [0, 0, 0, 1, 1, 1]
    table = ev.reliability_table(probs, y, n_bins=10)
    assert table["count"].sum() == 6
    row = table[table["count"] == 4].iloc[0]
    assert (row["bin_lo"], row["bin_hi"]) == pytest.approx((0.7, 0.8))
    assert row["accuracy"] == pytest.approx(0.75)
    assert ev.expected_calibration_error(probs, y, n_bins=10) == pytest.approx(4 / 6 * 0.05 + 2 / 6 * 0.4)
    # perfectly calibrated: confidence 0.75, three out of four right
    assert ev.expected_calibration_error([[0.75, 0.25]] * 4, [0, 0, 0, 1]) == pytest.approx(0.0)


def test_temperature_scaling_recovers_the_overconfidence_factor():
    # the right logit gap is ln 3 (P = 0.75, and 3 of 4 labels agree); the model's is 3 ln 3
    gap = np.log(3.0)
    logits = np.tile([0.0, 3 * gap], (400, 1))
    y = np.array([1] * 300 + [0] * 100)
    t = ev.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=1e-3)
    calibrated = ev.apply_temperature(logits, t)
    np.testing.assert_allclose(calibrated[0], [0.25, 0.75], atol=1e-4)
    assert ev.expected_calibration_error(calibrated, y) < 1e-3 < ev.expected_calibration_error(ev.apply_temperature(logits, 1.0), y)
    # probabilities -> log-probabilities -> temperature 1 gives the probabilities back
    p = np.array([[0.2, 0.8], [0.9, 0.1]])
    np.testing.assert_allclose(ev.apply_temperature(ev.logits_from_probs(p), 1.0), p)


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_resamples_users_not_images():
    # user A: 3 faces, all right; user B: 1 face, wrong. Drawing two users with replacement
    # gives {A, A} -> 1, {A, B} -> 3/4, {B, B} -> 0; resampling images would also give 1/2, 1/4.
    y_true = [0, 0, 0, 0]
    y_pred = [0, 0, 0, 1]
    users = ["A", "A", "A", "B"]
    boot = ev.user_bootstrap(y_true, y_pred, users, NAMES, n_boot=2000, seed=1)
    values = set(np.round(boot.samples["accuracy"].to_numpy(), 6))
    assert values == {0.0, 0.75, 1.0}
    shares = boot.samples["accuracy"].value_counts(normalize=True)
    assert shares[0.75] == pytest.approx(0.5, abs=0.05)  # {A, B} in either order: half the draws
    assert boot.table.loc["accuracy", "estimate"] == pytest.approx(0.75)
    assert boot.table.loc["accuracy", "n_users"] == 2
    assert (boot.table.loc["accuracy", "low"], boot.table.loc["accuracy", "high"]) == (0.0, 1.0)


def test_bootstrap_per_class_recall_and_interval_widths():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 10)
    y_true = np.repeat(np.arange(40) % 2, 10)  # each user has one gender
    y_pred = y_true.copy()
    y_pred[users < 4] = 1 - y_pred[users < 4]  # users 0..3 are always wrong
    boot = ev.user_bootstrap(y_true, y_pred, users, NAMES, n_boot=500, seed=0)
    t = boot.table
    assert t.loc["accuracy", "estimate"] == pytest.approx(0.9)
    assert t.loc["recall_m", "estimate"] == pytest.approx(0.9)  # users 0, 2 of the 20 men
    assert t.loc["recall_f", "n_faces"] == 200
    assert t.loc["accuracy", "low"] < 0.9 < t.loc["accuracy", "high"]
    # the same errors spread over all users (one wrong face each) leave no between-user spread
    spread = y_true.copy()
    spread[np.arange(0, 400, 10)] = 1 - spread[np.arange(0, 400, 10)]
    flat = ev.user_bootstrap(y_true, spread, users, NAMES, n_boot=200, seed=0).table
    assert flat.loc["accuracy", "high"] - flat.loc["accuracy", "low"] == pytest.approx(0.0)
    del rng


def test_bootstrap_refuses_missing_users():
    with pytest.raises(ValueError, match="user ids must not be missing"):
        ev.user_bootstrap([0, 1], [0, 1], ["a", None], NAMES, n_boot=10)


# ----------------------------------------------------------------------------- per group, gallery
def test_group_accuracy_orders_age_groups_and_counts_unknown():
    groups = ["(25, 32)", "(0, 2)", "(0, 2)", None, "(25, 32)", ""]
    users = ["a", "b", "b", "c", "d", "c"]
    y_true = [0, 1, 1, 0, 1, 0]
    y_pred = [0, 0, 1, 0, 1, 1]
    table = ev.group_accuracy(y_true, y_pred, groups, users, n_boot=50)
    assert table["group"].tolist() == ["(0, 2)", "(25, 32)", "unknown"]
    assert table["accuracy"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert table["n_faces"].tolist() == [2, 2, 2]
    assert table["n_users"].tolist() == [1, 2, 1]
    assert table["n_faces"].sum() == len(groups)  # nothing dropped
    by_fold = ev.group_accuracy(y_true, y_pred, [0, 0, 1, 1, 2, 2], users, order=[0, 1, 2], n_boot=20)
    assert by_fold["group"].tolist() == ["0", "1", "2"]


def test_gallery_indices_by_hand():
    probs = probs_from_pf([0.95, 0.6, 0.2, 0.55, 0.99, 0.3])
    y = [0, 1, 0, 1, 0, 1]  # wrong: 0 (conf .95), 4 (.99), 5 (.7); right: 1 (.6), 2 (.8), 3 (.55)
    g = ev.gallery_indices(probs, y, k=2)
    assert g["confident_mistakes"].tolist() == [4, 0]
    assert g["unsure_correct"].tolist() == [3, 1]


# ----------------------------------------------------------------------------- cross-validation
def folds_frame(n_users=25, faces=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        label = int(rng.integers(0, 2))
        for i in range(faces):
            rows.append({"user_id": f"u{u:02d}", "face_id": i, "fold": u % 5, "label": label,
                         "gender": NAMES[label]})
    return pd.DataFrame(rows)


def test_cross_validation_is_subject_exclusive_and_scores_each_fold():
    df = folds_frame()
    seen = []

    def always_men(train, val, test):
        seen.append((set(train.user_id), set(val.user_id), set(test.user_id), set(test.fold)))
        return np.tile([1.0, 0.0], (len(test), 1))

    res = ev.cross_validate(df, always_men, class_names=NAMES, val_fraction=0.25, name="always m", log=None)
    assert len(seen) == 5
    for train_u, val_u, test_u, test_folds in seen:
        assert not train_u & test_u and not val_u & test_u and not train_u & val_u
        assert len(test_folds) == 1 and val_u
    for f in range(5):  # predicting "m" everywhere scores the share of men in the fold
        expected = float((df[df.fold == f].label == 0).mean())
        assert res.fold_accuracy[f] == pytest.approx(expected)
    assert res.mean == pytest.approx(np.mean(list(res.fold_accuracy.values())))
    assert res.std == pytest.approx(np.std(list(res.fold_accuracy.values()), ddof=1))
    assert len(res.predictions) == len(df)  # every face predicted exactly once, out of fold
    assert res.predictions["p_m"].eq(1.0).all()


def test_cross_validation_refuses_a_user_in_two_folds_before_training():
    df = folds_frame()
    df.loc[(df.user_id == "u03") & (df.face_id == 0), "fold"] = 1  # u03 is in fold 3, one face in fold 1
    calls = []
    with pytest.raises(data.SubjectLeakError, match=r"u03"):
        ev.cross_validate(df, lambda *a: calls.append(1), class_names=NAMES, log=None)
    assert not calls


def test_cross_validation_checks_the_returned_probabilities():
    df = folds_frame()
    with pytest.raises(ValueError, match="expected"):
        ev.cross_validate(df, lambda tr, va, te: np.tile([1.0, 0.0], (3, 1)), class_names=NAMES, log=None)
    with pytest.raises(ValueError, match="fold\\(s\\) \\[7\\]"):
        ev.cross_validate(df, lambda *a: None, folds=[0, 7], class_names=NAMES, log=None)


def test_literature_table_marks_synthetic_runs():
    df = folds_frame()
    res = ev.cross_validate(df, lambda tr, va, te: np.tile([0.5, 0.5], (len(te), 1)), class_names=NAMES, log=None)
    table = ev.literature_table({"head_only": res}, on_adience=False)
    assert table["accuracy (%)"].tolist()[:2] == [86.8, 92.7]
    ours = table.iloc[-1]
    assert ours["data"] == "quick-mode synthetic" and ours["method"] == "this course: head_only"
    assert ev.literature_table({"head_only": res}, on_adience=True).iloc[-1]["data"] == "Adience"


# ----------------------------------------------------------------------------- configurations (helpers.finetune)
def test_head_on_features_trainer_learns_separable_features_per_fold():
    df = folds_frame(n_users=20, faces=5, seed=3)
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 0.3, (len(df), 6)).astype("float32")
    feats[:, 0] += 3.0 * (2 * df["label"].to_numpy() - 1)  # one feature says the class
    df.index = df.index + 1000  # positions, not index labels, tie faces to feature rows
    trainer = ev.head_on_features_trainer(df, feats, NAMES, epochs=4, batch_size=16, learning_rate=0.1, seed=0)
    res = ev.cross_validate(df, trainer, folds=[1], class_names=NAMES, name="head", log=None)
    assert list(trainer.heads) == [(1,)] and trainer.heads[(1,)].get_layer("fc8").units == 2
    assert min(res.fold_accuracy.values()) >= 0.9
    np.testing.assert_allclose(res.predictions[["p_m", "p_f"]].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="one row per face"):
        ev.head_on_features_trainer(df, feats[:-1], NAMES)


def image_folds(root, n_users=10, faces=3, seed=1, size=32):
    """folds_frame with a JPEG per face: women bright, men dark (a world the tiny network can learn)."""
    from PIL import Image

    df = folds_frame(n_users=n_users, faces=faces, seed=seed)
    paths = []
    for i, row in df.iterrows():
        level = 200 if row.label == 1 else 50
        img = np.clip(np.random.default_rng(i).normal(level, 20, (size, size, 3)), 0, 255).astype("uint8")
        rel = f"aligned/{row.user_id}/{row.face_id}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel)
        paths.append(rel)
    df["path"] = paths
    return df


def block5_plan(model, finetune_epochs=1):
    return ev.plan_for_config(model, {"from_block": "block5"}, head_epochs=1, finetune_epochs=finetune_epochs)


def test_finetune_trainer_trains_afresh_per_split_resumes_its_own_and_prunes(tmp_path):
    from helpers import finetune

    df = image_folds(tmp_path)
    loads = []

    def load_base():
        loads.append(1)
        return keras_tiny_vggface(seed=len(loads))

    head = finetune.build_head(16, NAMES, seed=5)  # as if trained on fold 0's fc7 features
    trainer = ev.finetune_trainer(load_base, tmp_path, NAMES, image_size=(32, 32), run_root=tmp_path / "cv",
                                  batch_size=8, make_plan=block5_plan, initial_heads={(0,): head},
                                  keep_checkpoints=True)
    (tmp_path / "cv" / "fold_0").mkdir(parents=True)
    (tmp_path / "cv" / "fold_0" / "stages.json").write_text('{"finetune": {}}')  # another run's: never resumed
    res = ev.cross_validate(df, trainer, folds=[0], class_names=NAMES, val_fraction=0.2, log=None)
    assert len(loads) == 1
    assert len(res.predictions) == int((df.fold == 0).sum())
    (run_dir,) = [d for d in (tmp_path / "cv").iterdir() if d.name.startswith("fold_0-")]
    assert (run_dir / finetune.BEST_WEIGHTS).is_file()  # the best epoch, weights only
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["finetune"]["epochs_run"] == 1  # trained, not the other run's record
    assert "head" not in stages  # started from the fold's head: no head stage
    # the same fold again (an interrupted cross-validation rerun): its finished stages are reused
    log_before = (run_dir / "training_log.csv").read_text()
    again = ev.cross_validate(df, trainer, folds=[0], class_names=NAMES, val_fraction=0.2, log=None)
    assert (run_dir / "training_log.csv").read_text() == log_before  # no epoch trained again
    np.testing.assert_allclose(again.predictions[["p_m", "p_f"]], res.predictions[["p_m", "p_f"]], atol=1e-6)
    # another split of the same fold trains in its own folder
    ev.cross_validate(df, trainer, folds=[0], class_names=NAMES, val_fraction=0.4, log=None)
    assert len([d for d in (tmp_path / "cv").iterdir() if d.name.startswith("fold_0-")]) == 2
    # by default a predicted fold's checkpoints are deleted, its training log kept
    pruning = ev.finetune_trainer(load_base, tmp_path, NAMES, image_size=(32, 32), run_root=tmp_path / "cv2",
                                  batch_size=8, make_plan=block5_plan)
    ev.cross_validate(df, pruning, folds=[1], class_names=NAMES, val_fraction=0.2, log=None)
    (pruned,) = (tmp_path / "cv2").iterdir()
    assert sorted(p.name for p in pruned.iterdir()) == ["training_log.csv"]


def live_keras_objects():
    """Keras models, variables and TensorFlow graphs still held, garbage in reference cycles
    included (gc.get_objects lists what the cycle collector has not freed yet: memory in use).
    A traced training graph holds its model's variables in TensorFlow even after Keras' own
    Variable objects are gone, so the graphs are counted too."""
    import gc

    import keras
    import tensorflow as tf

    objs = gc.get_objects()
    models = [o for o in objs if isinstance(o, keras.Model)]
    values = sum(int(np.prod(o.shape)) for o in objs if isinstance(o, keras.Variable))
    graphs = sum(isinstance(o, tf.Graph) for o in objs)
    return len(models), values, graphs


def test_cross_validation_keeps_one_fold_model_alive_and_memory_flat(tmp_path):
    """Issue 18: each fold's model, optimizer and compiled functions are released before the
    next fold loads its own, so what is alive when a fold starts does not grow with the folds."""
    import weakref

    df = image_folds(tmp_path, n_users=10)
    outside = keras_tiny_vggface(seed=9)  # a model the notebook holds (the one it evaluated)
    x = np.random.default_rng(0).uniform(0, 255, (40, 32, 32, 3)).astype("float32")
    before = outside.predict(x, verbose=0)
    refs, alive_at_load = [], []

    def load_base():
        alive_at_load.append((sum(r() is not None for r in refs), *live_keras_objects()))
        model = keras_tiny_vggface(seed=len(refs))
        refs.append(weakref.ref(model))
        return model

    from helpers import finetune

    heads = {(f,): finetune.build_head(16, NAMES, seed=f) for f in range(5)}  # no head stage: faster
    # two configurations one after the other in one kernel (as notebook 05 trains three): folds 0-2, then 3-4
    res = {}
    for name, folds, plan in (("block5", [0, 1, 2], block5_plan),
                              ("fc", [3, 4], lambda m: ev.plan_for_config(m, {"from_block": "fc"}, finetune_epochs=1))):
        trainer = ev.finetune_trainer(load_base, tmp_path, NAMES, image_size=(32, 32), run_root=tmp_path / "cv" / name,
                                      batch_size=8, make_plan=plan, initial_heads=heads)
        res[name] = ev.cross_validate(df, trainer, folds=folds, class_names=NAMES, val_fraction=0.2, log=None)
    assert len(alive_at_load) == 5 and sum(len(r.predictions) for r in res.values()) == len(df)
    # no earlier fold's network survives into a later fold, nor its variables, nor its traced graphs
    # (TensorFlow's gradient registry kept every fold's training graph, and through it the weights)
    assert [a[0] for a in alive_at_load] == [0] * 5, alive_at_load
    assert [a[1:] for a in alive_at_load] == [alive_at_load[0][1:]] * 5, alive_at_load
    assert all(r() is None for r in refs)  # and none once the cross-validation is over
    # releasing Keras' global state between folds leaves a model held elsewhere working as before
    np.testing.assert_allclose(outside.predict(x, verbose=0), before, rtol=1e-6)


def test_cross_validation_resumes_fold_by_fold_from_its_store(tmp_path):
    df = folds_frame(n_users=25, faces=3, seed=2)
    calls = []

    def share_of_women(train, val, test, fail_on=None):
        f = int(test.fold.iloc[0])
        if f == fail_on:
            raise KeyboardInterrupt("the runtime disconnected")
        calls.append(f)
        p = float((train.label == 1).mean())
        return np.tile([1 - p, p], (len(test), 1))

    with pytest.raises(KeyboardInterrupt):
        ev.cross_validate(df, lambda *a: share_of_women(*a, fail_on=3), class_names=NAMES,
                          store=tmp_path / "store", log=None)
    assert calls == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [f"fold_{f}.{e}" for f in range(3) for e in ("csv", "json")]
    lines = []
    res = ev.cross_validate(df, share_of_women, class_names=NAMES, store=tmp_path / "store", log=lines.append)
    assert calls == [0, 1, 2, 3, 4]  # finished folds read back, the others trained
    assert sum("read back" in line for line in lines) == 3
    fresh = ev.cross_validate(df, share_of_women, class_names=NAMES, log=None)
    assert res.fold_accuracy == pytest.approx(fresh.fold_accuracy)
    pd.testing.assert_frame_equal(res.predictions, fresh.predictions)
    # other settings (say, more epochs): trained again, not read back
    calls.clear()
    ev.cross_validate(df, share_of_women, folds=[0, 1], class_names=NAMES, store=tmp_path / "store",
                      settings={"epochs": 3}, log=None)
    assert calls == [0, 1]
    ev.cross_validate(df, share_of_women, folds=[0, 1], class_names=NAMES, store=tmp_path / "store",
                      settings={"epochs": 3}, log=None)
    assert calls == [0, 1]  # ... and read back under the same settings
    # other faces (u03 left out: every fold's training or test set changes): every fold trains again
    calls.clear()
    lines.clear()
    ev.cross_validate(df[df.user_id != "u03"], share_of_women, folds=[0, 1, 2], class_names=NAMES,
                      store=tmp_path / "store", log=lines.append)
    assert calls == [0, 1, 2]
    assert sum("for other faces" in line for line in lines) == 3


# ----------------------------------------------------------------------------- figures
def test_evaluation_figures_show_the_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers import plots

    rep = ev.confusion_report([0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0, 1], NAMES)
    fig = plots.plot_confusion(rep)
    texts = [t.get_text() for t in fig.axes[0].texts] + [t.get_text() for t in fig.axes[1].texts]
    assert texts == ["3", "1", "1", "4", "75.0", "25.0", "20.0", "80.0"]
    y, s = [0, 0, 0, 1, 1], [0.1, 0.3, 0.6, 0.4, 0.9]
    fig = plots.plot_roc_pr(ev.roc_pr_curves(y, s), ev.operating_point(y, s, 0.35))
    marker = fig.axes[0].lines[-1]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((1 / 3, 1.0))
    table = ev.group_accuracy(y, [0, 0, 1, 1, 1], ["(0, 2)", "(0, 2)", "(4, 6)", None, None], list("abcde"), n_boot=20)
    fig = plots.plot_group_accuracy(table)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx([100.0, 0.0, 100.0])
    probs, y = scores_frame(700, seed=5)
    tables = {"as trained": ev.reliability_table(probs, y), "T=2": ev.reliability_table(
        ev.apply_temperature(ev.logits_from_probs(probs), 2.0), y)}
    fig = plots.plot_reliability(tables)
    counts_axes = fig.axes[1]
    heights = [p.get_height() for p in counts_axes.patches]
    assert heights == [*tables["as trained"]["count"], *tables["T=2"]["count"]] and sum(heights) == 1400
    conf = probs.max(axis=1)  # the bin counts, directly
    assert tables["as trained"]["count"].tolist() == np.histogram(conf, bins=np.linspace(0, 1, 11))[0].tolist()
    fig, ax = plt.subplots()
    plots.plot_reliability(tables, ax=ax)
    assert sum(t.get_text().startswith("n=") for t in ax.texts) == int((tables["as trained"]["count"] > 0).sum()
                                                                       + (tables["T=2"]["count"] > 0).sum())
    plt.close("all")


# ----------------------------------------------------------------------------- what notebooks 04/05 left behind
def summary_of(best, configs, split):
    """A summary as notebook 05 writes it (helpers.finetune.write_summary), read back."""
    from helpers import finetune

    full = {n: {"from_block": fb, "val_accuracy": va, "test_accuracy": 0.5, "epoch_seconds": 1.0,
                "trainable_params": 10, "estimated_memory_bytes": 100, "peak_memory_bytes": None, "epochs_run": 1}
            for n, (fb, va) in configs.items()}
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "finetune_summary.json"
    finetune.write_summary(path, best=best, configs=full, split=split, protocol="binary", class_names=NAMES,
                           image_size=(32, 32), resize="direct", mode="quick", seed=0)
    return finetune.read_summary(path)


def test_split_from_summary_reads_the_split_of_notebook_05():
    from helpers import finetune

    df = folds_frame(n_users=40, faces=2)
    split, how = ev.split_from_summary(df, None, seed=3)  # a fresh runtime: 05's own default split
    expected, spec = finetune.make_split(df, "case_study", seed=3)
    pd.testing.assert_frame_equal(split.val, expected.val)
    assert set(split.test.fold) == {1} and set(split.train.fold) == {0} and "case study" in how
    _, spec = finetune.make_split(df, "fold", test_fold=3, val_fraction=0.2, seed=0)
    split, how = ev.split_from_summary(df, summary_of("a", {"a": ("block5", 0.9)}, spec))
    assert set(split.test.fold) == {3} and set(split.train.fold) == {0, 1, 2, 4} and len(split.val)
    assert how == "test fold 3, train on the others"


def test_plan_for_config_accepts_a_block_or_a_list_of_layers():
    from helpers import vggface

    model = vggface.replace_head(keras_tiny_vggface(), NAMES)
    assert ev.plan_for_config(model, {"from_block": "block5"}).trainable == {"conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8"}
    assert ev.plan_for_config(model, {"from_block": ["fc7"]}, finetune_epochs=2).trainable == {"fc7", "fc8"}


def test_best_finetune_config_never_returns_head_only():
    split = {"kind": "case_study", "seed": 0}
    summary = summary_of("head_only", {"head_only": ("head", 0.9), "everything": (1, 0.89),
                                       "last_block": ("block5", 0.8)}, split)
    assert ev.best_finetune_config(summary) == {"name": "everything", "from_block": 1}  # best on validation
    summary = summary_of("last_block", {"head_only": ("head", 0.9), "last_block": ("block5", 0.8),
                                        "mine": (["fc7"], 0.85)}, split)
    assert ev.best_finetune_config(summary) == {"name": "last_block", "from_block": "block5"}  # 05's choice
    assert ev.best_finetune_config(summary_of("head_only", {"head_only": ("head", 0.9)}, split))["from_block"] == "block5"
    assert ev.best_finetune_config(None) == {"name": "from_block5", "from_block": "block5"}


def test_load_trained_model_prefers_finetuned_and_checks_classes(tmp_path):
    from helpers import vggface

    base = keras_tiny_vggface()
    vggface.replace_head(base, ("m", "f")).save(tmp_path / "head_only.keras")
    model, how = ev.load_trained_model(tmp_path, ("m", "f"), (32, 32))
    assert model is not None and "head_only.keras" in how
    vggface.replace_head(base, ("m", "f", "u")).save(tmp_path / "finetuned_best.keras")
    model, how = ev.load_trained_model(tmp_path, ("m", "f"), (32, 32))
    assert "head_only.keras" in how  # the fine-tuned file is three-class: not this protocol
    model, why = ev.load_trained_model(tmp_path, ("m", "f"), (64, 64))
    assert model is None and "takes (32, 32) images" in why


# ----------------------------------------------------------------------------- notebook 06's analyses as helpers
def scores_frame(n, seed):
    """n faces with labels and noisy but informative P(f): more rows than any batch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    pf = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    return probs_from_pf(pf), y


def test_cost_analysis_against_a_direct_numpy_computation():
    probs_val, y_val = scores_frame(600, seed=1)
    probs_test, y_test = scores_frame(900, seed=2)
    out = ev.cost_analysis(probs_val, y_val, probs_test, y_test, NAMES, {("f", "m"): 3.0})
    cost = np.array([[0.0, 1.0], [3.0, 0.0]])
    np.testing.assert_array_equal(out.cost, cost)
    # the threshold is the best of every threshold on the validation faces
    grid = np.unique(probs_val[:, 1])
    val_costs = [cost[y_val, (probs_val[:, 1] >= t).astype(int)].mean() for t in grid]
    assert out.rule.validation_cost == pytest.approx(min(val_costs))
    decided = (probs_test[:, 1] >= out.rule.threshold).astype(int)
    assert out.test_cost == pytest.approx(cost[y_test, decided].mean())
    assert out.argmax_cost == pytest.approx(cost[y_test, probs_test.argmax(1)].mean())
    counts = np.array([[np.sum((y_test == i) & (decided == j)) for j in (0, 1)] for i in (0, 1)])
    np.testing.assert_array_equal(out.report.counts.to_numpy(), counts)
    assert out.rule.threshold < 0.5  # women taken for men cost more: decide "f" sooner
    with pytest.raises(ValueError, match="probs_test"):
        ev.cost_analysis(probs_val, y_val, probs_test[:, :1], y_test, NAMES)


def test_choice_spread_matches_the_standard_error_of_a_mean_of_users():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(300), 3)  # 300 users with 3 faces each
    values = np.repeat(rng.normal(0, 1, 300), 3) + rng.normal(0, 0.1, 900)
    spread = ev.choice_spread(lambda rows: values[rows].mean(), users, n_boot=400, seed=1)
    user_means = values.reshape(300, 3).mean(axis=1)
    assert spread.estimate == pytest.approx(values.mean())
    assert spread.se == pytest.approx(user_means.std(ddof=1) / np.sqrt(300), rel=0.15)
    assert spread.low < spread.estimate < spread.high and (spread.n_faces, spread.n_users) == (900, 300)
    # resampling images would claim about sqrt(3) times too small an error here
    image_se = ev.choice_spread(lambda rows: values[rows].mean(), np.arange(900), n_boot=400, seed=1).se
    assert image_se < 0.75 * spread.se


def test_threshold_and_temperature_spreads_and_the_sentence_they_allow():
    rng = np.random.default_rng(3)
    n = 600
    z = rng.normal(0, 2.5, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)  # calibrated logits: T = 1 fits
    logits = np.stack([np.zeros(n), z], axis=1)
    users = np.arange(n) // 2
    over = ev.temperature_spread(3.0 * logits, y, users, n_boot=60)  # logits three times too large
    assert over.estimate == pytest.approx(ev.fit_temperature(3.0 * logits, y))
    assert over.low > 1.0 and "over-confident" in ev.temperature_sentence(over)
    under = ev.temperature_spread(0.3 * logits, y, users, n_boot=60)
    assert under.high < 1.0 and "under-confident" in ev.temperature_sentence(under)
    unsure = ev.ChoiceSpread(1.03, 0.12, 0.85, 1.27, 150, 60, np.array([]))
    text = ev.temperature_sentence(unsure)
    assert "over-confident as" not in text and "cannot tell" in text and "150 validation faces" in text
    spread = ev.threshold_spread(ev.apply_temperature(logits, 1.0), y, users, ev.cost_matrix(NAMES), NAMES, n_boot=60)
    assert 0 < spread.se < 0.2 and spread.low <= spread.estimate <= spread.high
    with pytest.raises(ValueError, match="two classes"):
        ev.threshold_spread(np.full((4, 3), 1 / 3), [0, 1, 2, 0], [0, 1, 2, 3], ev.cost_matrix("mfu"), "mfu")


def test_cross_validation_stops_within_a_time_budget_and_the_next_call_finishes(tmp_path):
    import time as _time

    df = folds_frame(n_users=25, faces=2, seed=4)
    calls = []

    def slow(train, val, test):
        calls.append(int(test.fold.iloc[0]))
        _time.sleep(0.3)
        return np.tile([0.5, 0.5], (len(test), 1))

    part = ev.cross_validate(df, slow, class_names=NAMES, store=tmp_path, max_seconds=0.5, log=None)
    assert not part.complete and calls == [0] and part.remaining == [1, 2, 3, 4]
    rest = ev.cross_validate(df, slow, class_names=NAMES, store=tmp_path, log=None)
    assert rest.complete and calls == [0, 1, 2, 3, 4] and len(rest.predictions) == len(df)
    guessed = ev.cross_validate(df, slow, class_names=NAMES, store=tmp_path / "other", max_seconds=1.0,
                                fold_seconds_guess=5.0, log=None)
    assert guessed.remaining == [0, 1, 2, 3, 4] and calls == [0, 1, 2, 3, 4]  # not even one fold fits
    with pytest.raises(ValueError, match="needs a store"):
        ev.cross_validate(df, slow, class_names=NAMES, max_seconds=10, log=None)


def test_photo_caveats_carry_this_runs_numbers():
    rep = ev.confusion_report([0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0, 1], NAMES)
    per_age = pd.DataFrame({"group": ["(0, 2)", "(25, 32)", "unknown"], "n_faces": [10, 40, 3],
                            "n_users": [4, 12, 2], "accuracy": [0.6, 0.9, 0.1], "low": [0.4, 0.8, 0.0],
                            "high": [0.8, 1.0, 0.3]})
    spread = ev.ChoiceSpread(1.2, 0.1, 1.0, 1.4, 150, 60, np.array([]))
    text = "\n".join(ev.photo_caveats(rep, per_age, spread, 0.034, quick=True))
    assert "75% of men, 80% of women (78% overall)" in text
    assert "60% for age group (0, 2) (10 faces), 90% for (25, 32)" in text  # "unknown" is no age group
    assert "T = 1.20 (± 0.10)" in text and "3.4%" in text and "synthetic faces" in text
    assert "synthetic" not in "\n".join(ev.photo_caveats(rep, per_age, spread, 0.034, quick=False))


def test_training_released_forgets_the_graphs_a_training_registered():
    import keras

    model = keras_tiny_vggface(classes=2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    before = ev._custom_gradients()
    with ev.training_released():
        model.fit(x, np.arange(8) % 2, epochs=1, verbose=0)
        assert len(ev._custom_gradients()) > len(before)  # TensorFlow registered the step's gradients
    assert ev._custom_gradients() == before
    model.predict(x, verbose=0)  # the model itself still works
