"""Tests for helpers.finetune: head replacement, freezing, head on features, two stages, resume."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import finetune, vggface
from helpers.finetune import FreezePlan
from tests.tiny_vgg import keras_tiny_vggface

HW = (32, 32)


def tiny_vggface(seed: int = 0) -> keras.Model:
    """A VGG-Face-shaped network (Caffe names, preprocessing inside), 4..8 channels wide."""
    return keras_tiny_vggface(seed=seed, hw=HW)


def gender_model(seed: int = 0) -> keras.Model:
    return vggface.replace_head(tiny_vggface(seed), class_names=("m", "f"), seed=seed)


def toy_faces(n: int = 48, seed: int = 0):
    """Images whose class shows in their brightness, so a few epochs learn something."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype("int32")
    images = rng.uniform(0, 255, size=(n, *HW, 3)).astype("float32")
    images[labels == 1] = np.clip(images[labels == 1] * 0.4 + 150, 0, 255)
    return images, labels


def dataset(images, labels, batch_size=16):
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def weights_of(model, name):
    return [np.array(w) for w in model.get_layer(name).get_weights()]


# ----------------------------------------------------------------------------- groups and plans

def test_layer_groups_split_the_head_off_the_classifier():
    groups = finetune.layer_groups(tiny_vggface())
    assert list(groups) == ["block1", "block2", "block3", "block4", "block5", "fc", "head"]
    assert groups["block3"] == ["conv3_1", "conv3_2", "conv3_3"]
    assert groups["fc"] == ["fc6", "fc7"] and groups["head"] == ["fc8"]


def test_plan_from_block_trains_everything_from_that_group_up():
    model = tiny_vggface()
    assert FreezePlan.from_block(model, 1).trainable == set(finetune.weighted_layers(model))
    last = FreezePlan.from_block(model, "block5")
    assert last.trainable == {"conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8"}
    assert FreezePlan.from_block(model, 7).trainable == {"fc8"} == FreezePlan.head_only(model).trainable
    assert last.block_index(model) == 5
    assert FreezePlan(trainable={"fc8", "conv1_1"}).block_index(model) is None
    with pytest.raises(ValueError, match="out of range 1..7"):
        FreezePlan.from_block(model, 8)
    with pytest.raises(ValueError, match="unknown layer group 'block9'"):
        FreezePlan.from_block(model, "block9")


def test_plan_rejects_bad_values_and_unknown_layers():
    with pytest.raises(ValueError, match="finetune_lr"):
        FreezePlan(finetune_lr=0)
    with pytest.raises(ValueError, match="head_epochs"):
        FreezePlan(head_epochs=-1)
    with pytest.raises(ValueError, match=r"\['fc9'\]"):
        finetune.apply_freeze_plan(tiny_vggface(), FreezePlan(trainable={"fc8", "fc9"}))


def test_trainable_counts_match_the_layers_parameters():
    model = tiny_vggface()
    plan = FreezePlan.from_block(model, "fc")
    counts = finetune.trainable_counts(model, plan)
    fc = sum(model.get_layer(n).count_params() for n in ("fc6", "fc7", "fc8"))
    assert counts == {"trainable": fc, "frozen": model.count_params() - fc, "total": model.count_params()}


def test_memory_estimate_grows_with_what_trains_and_with_the_batch():
    model = tiny_vggface()
    head = finetune.estimate_training_memory(model, FreezePlan.head_only(model), batch_size=8)
    everything = finetune.estimate_training_memory(model, FreezePlan.from_block(model, 1), batch_size=8)
    assert head.weights == everything.weights == model.count_params() * 4
    assert head.gradients == model.get_layer("fc8").count_params() * 4
    assert everything.optimizer == 2 * everything.gradients
    assert everything.activations > 3 * head.activations
    bigger = finetune.estimate_training_memory(model, FreezePlan.from_block(model, 1), batch_size=16)
    assert bigger.activations == 2 * everything.activations
    assert "MiB" in str(everything) or "KiB" in str(everything)


# ----------------------------------------------------------------------------- freezing in training

def test_freezing_keeps_dropout_active_in_training_and_off_in_inference():
    model = gender_model()
    finetune.apply_freeze_plan(model, FreezePlan.head_only(model))
    logits = finetune.logits_model(model)
    images, _ = toy_faces(4)
    train_a = np.asarray(logits(images, training=True))
    train_b = np.asarray(logits(images, training=True))
    assert not np.allclose(train_a, train_b), "dropout in fc6/fc7 switched off by freezing"
    infer_a, infer_b = np.asarray(logits(images, training=False)), np.asarray(logits(images, training=False))
    np.testing.assert_array_equal(infer_a, infer_b)


# ----------------------------------------------------------------------------- head on features

def test_head_on_cached_features_gives_the_full_models_logits():
    base = tiny_vggface(seed=1)
    images, labels = toy_faces(24, seed=1)
    features = np.asarray(vggface.feature_model(base, "fc7").predict(images, verbose=0))
    run = finetune.train_head_on_features(features, labels, epochs=2, batch_size=8, seed=3)
    model = finetune.assemble_gender_model(base, run.head)
    assert vggface.class_names(model) == ["m", "f"]
    for layer in base.layers:  # every weight but the head is the converted model's own
        if layer.weights and layer.name != "fc8":
            assert model.get_layer(layer.name) is layer
    assert model.get_layer("fc8").units == 2 and base.get_layer("fc8").units == 5
    full_logits = np.asarray(finetune.logits_model(model).predict(images, verbose=0))
    head_logits = np.asarray(finetune.logits_model(run.head).predict(features, verbose=0))
    np.testing.assert_allclose(full_logits, head_logits, atol=1e-4)
    # and the probabilities (the saved model's output) agree too
    np.testing.assert_allclose(model.predict(images, verbose=0), run.head.predict(features, verbose=0), atol=1e-5)


def test_head_training_curve_starts_with_the_random_head_and_learns():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2
    features = rng.normal(size=(200, 16)).astype("float32") + labels[:, None] * 1.5
    test = (features[:50] + 0.01, labels[:50])
    run = finetune.train_head_on_features(features, labels, eval_sets={"test": test}, epochs=5,
                                          batch_size=16, learning_rate=1e-2, seed=0)
    assert list(run.curve["epoch"]) == [0, 1, 2, 3, 4, 5]
    assert set(run.curve.columns) == {"epoch", "train_accuracy", "test_accuracy"}
    assert run.curve["train_accuracy"].iloc[-1] > 0.9
    assert run.curve["test_accuracy"].iloc[-1] > run.curve["test_accuracy"].iloc[0]
    assert len(run.epoch_seconds) == 5 and run.seconds_per_epoch > 0


def test_accuracy_counts_every_row_of_arrays_and_datasets_larger_than_one_batch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 16)).astype("float32")  # 700 rows: two full batches of 256 and a partial one
    y = rng.integers(0, 2, size=700).astype("int32")
    head = finetune.build_head(16, ("m", "f"), seed=1)
    direct = float(np.mean(np.argmax(head.predict(x, verbose=0), axis=-1) == y))  # numpy, all 700 rows
    assert finetune.accuracy(head, (x, y), batch_size=256) == pytest.approx(direct, abs=1e-12)
    assert finetune.accuracy(head, dataset(x, y, batch_size=64)) == pytest.approx(direct, abs=1e-12)
    first_batch_only = float(np.mean(np.argmax(head.predict(x[:256], verbose=0), -1) == y[:256]))
    assert direct != first_batch_only  # so the check above would catch counting one batch
    with pytest.raises(ValueError, match="700 inputs but 699 labels"):
        finetune.accuracy(head, (x, y[:-1]))


def test_head_training_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        finetune.train_head_on_features(np.zeros((4, 2, 2)), np.zeros(4), epochs=1)
    with pytest.raises(ValueError, match="4 feature rows but 3 labels"):
        finetune.train_head_on_features(np.zeros((4, 2)), np.zeros(3), epochs=1)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        finetune.train_head_on_features(np.zeros((4, 2)), np.array([0, 1, 2, 0]), epochs=1)


def test_copy_head_weights_names_both_shapes_on_mismatch():
    three = finetune.build_head(16, ("m", "f", "u"))
    with pytest.raises(ValueError, match=r"\(16, 3\).*\(16, 2\)"):
        finetune.copy_head_weights(three, gender_model())


# ----------------------------------------------------------------------------- two stages

def test_two_stage_schedule_trains_head_then_the_plan_frozen_layers_and_ends_on_the_best_epoch(tmp_path):
    finetune.set_seeds(0)
    model = gender_model()
    images, labels = toy_faces(48)
    train, val = dataset(images, labels), dataset(images[:16], labels[:16])
    plan = FreezePlan.from_block(model, "block5", head_epochs=2, finetune_epochs=2, head_lr=1e-2)
    conv1, conv4, conv5 = weights_of(model, "conv1_1"), weights_of(model, "conv4_3"), weights_of(model, "conv5_1")
    fc8 = weights_of(model, "fc8")
    head_weights = {}

    class AfterHead(keras.callbacks.Callback):  # the weights when stage 1 ends
        def on_train_end(self, logs=None):
            if not head_weights:
                head_weights.update({n: weights_of(self.model, n) for n in ("conv5_1", "fc8")})

    run = finetune.train_two_stage(model, train, val, plan, run_dir=tmp_path / "run", eval_sets={"val": val},
                                   tensorboard=False, extra_callbacks=[AfterHead()], verbose=0)
    assert [s.name for s in run.stages] == ["head", "finetune"]
    assert run.stages[0].trainable == ["fc8"] and run.stages[0].epochs_run == 2
    assert set(run.stages[1].trainable) == plan.trainable and run.stages[1].learning_rate == pytest.approx(1e-4)
    assert list(run.history["epoch"]) == [0, 1, 2, 3]
    assert list(run.curve["epoch"]) == [0, 1, 2, 3, 4]
    assert all(np.array_equal(a, b) for a, b in zip(conv5, head_weights["conv5_1"]))  # stage 1: fc8 alone
    assert not np.array_equal(fc8[0], head_weights["fc8"][0])
    assert all(np.array_equal(a, b) for a, b in zip(conv1, weights_of(model, "conv1_1")))
    assert all(np.array_equal(a, b) for a, b in zip(conv4, weights_of(model, "conv4_3")))  # frozen, just below
    # the model ends on the best epoch: its validation accuracy is the best one logged
    assert finetune.accuracy(model, val) == pytest.approx(run.history["val_accuracy"].max(), abs=1e-6)
    best_epoch = int(run.history["val_accuracy"].idxmax())
    if best_epoch >= 2:  # the best epoch is in stage 2: block 5 moved
        assert not np.array_equal(conv5[0], weights_of(model, "conv5_1")[0])
    # what a finished run keeps: the best weights (no optimizer state), the log, the stage records
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["best.weights.h5", "stages.json", "training_log.csv"]
    bare = tmp_path / "bare.weights.h5"
    gender_model().save_weights(bare)  # an uncompiled model: weights only
    assert (tmp_path / "run" / "best.weights.h5").stat().st_size < 1.2 * bare.stat().st_size
    summary = finetune.Run(tmp_path / "run").summary(from_block="block5", test_accuracy=0.5, trainable_params=10,
                                                     estimated_memory_bytes=100)
    assert list(summary) == list(finetune.CONFIG_KEYS) and summary["epochs_run"] == 4
    assert summary["val_accuracy"] == run.history["val_accuracy"].max() and summary["peak_memory_bytes"] is None
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert set(stages) == {"head", "finetune", "complete"}
    # a rerun of the finished schedule trains nothing and restores the same weights
    fresh = gender_model(seed=5)
    again = finetune.train_two_stage(fresh, train, val, plan, run_dir=tmp_path / "run", tensorboard=False, verbose=0)
    assert [s.epoch_seconds for s in again.stages] == [s.epoch_seconds for s in run.stages]
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_stage_finished_before_an_interruption_is_skipped_and_the_next_starts_from_its_weights(tmp_path):
    images, labels = toy_faces(32)
    train, val = dataset(images, labels), dataset(images[:16], labels[:16])
    finetune.set_seeds(0)
    model = gender_model()
    plan = FreezePlan.from_block(model, "block5", head_epochs=1, finetune_epochs=1, head_lr=1e-2)
    with pytest.raises(KeyboardInterrupt):  # a disconnect before stage 2's first epoch ends
        finetune.train_two_stage(model, train, val, plan, run_dir=tmp_path / "run", tensorboard=False,
                                 extra_callbacks=[InterruptAt(1)], verbose=0)
    run = finetune.Run(tmp_path / "run")
    assert list(run.finished()) == ["head"] and not run.is_complete
    assert (tmp_path / "run" / "head.weights.h5").is_file()  # what stage 2 starts from
    after_head = model.get_weights()
    other = gender_model(seed=3)
    assert run.restore("head", other) and not run.restore("finetune", other)
    for a, b in zip(after_head, other.get_weights()):
        np.testing.assert_array_equal(a, b)
    finetune.train_two_stage(other, train, val, plan, run_dir=tmp_path / "run", tensorboard=False, verbose=0)
    assert [s.name for s in run.stages()] == ["head", "finetune"] and run.is_complete
    assert not (tmp_path / "run" / "head.weights.h5").exists()  # superseded


def test_run_folders_follow_the_settings_and_superseded_runs_are_pruned(tmp_path):
    first = finetune.Run(tmp_path, "last_block", {"lr": 1e-4})
    (first.dir / "best.weights.h5").write_bytes(b"x" * 1000)
    other_config = finetune.Run(tmp_path, "everything", {"lr": 1e-4})
    same = finetune.Run(tmp_path, "last_block", {"lr": 1e-4})
    assert same.dir == first.dir and (first.dir / "best.weights.h5").is_file() and not same.pruned
    changed = finetune.Run(tmp_path, "last_block", {"lr": 1e-5})
    assert changed.dir != first.dir and changed.pruned == [first.dir] and changed.pruned_bytes == 1000
    assert not first.dir.exists() and other_config.dir.is_dir()  # another configuration is not superseded
    (changed.dir / "stages.json").write_text("{}")
    fresh = finetune.Run(tmp_path, "last_block", {"lr": 1e-5}, fresh=True)
    assert fresh.dir == changed.dir and not any(fresh.dir.iterdir())
    assert finetune.folder_bytes(tmp_path / "nowhere") == 0


def test_one_model_trains_every_configuration_without_accumulating_variables(tmp_path):
    """Notebook 05's loop: one model, its pretrained weights put back before each configuration;
    what stays alive must not grow with the number of configurations."""
    import gc

    images, labels = toy_faces(24)
    train, val = dataset(images, labels), dataset(images[:8], labels[:8])
    model = gender_model()
    pretrained = model.get_weights()
    # no head stage: one fit per configuration is enough to see what each leaves behind
    plans = [FreezePlan.from_block(model, k, head_epochs=0, finetune_epochs=1) for k in ("block5", 1, "head")]

    def live():
        gc.collect()
        objects = gc.get_objects()
        return (sum(isinstance(o, keras.Variable) for o in objects),
                sum(isinstance(o, keras.Model) for o in objects))

    counts = []
    for i, plan in enumerate(plans):
        keras.backend.clear_session(free_memory=False)
        model.set_weights(pretrained)
        finetune.train_two_stage(model, train, val, plan, run=finetune.Run(tmp_path, f"config{i}"),
                                 tensorboard=False, verbose=0)
        counts.append(live())
    assert counts[1] == counts[2], counts
    # every configuration started from the same weights: after "everything", head-only left conv1_1 pretrained
    np.testing.assert_array_equal(model.get_layer("conv1_1").get_weights()[0], pretrained[0])


def test_stage_time_estimate_leaves_the_model_untouched():
    model = gender_model()
    images, labels = toy_faces(8)
    before = model.get_weights()
    seconds = finetune.estimate_stage_seconds(model, images, labels, trainable=["fc7", "fc8"],
                                              steps_per_epoch=10, timed_steps=1)
    assert 0 < seconds < 60
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.get_layer("conv1_1").trainable  # the copy was frozen, not the model


def test_best_score_of_a_run_that_never_finished_an_epoch_is_none(tmp_path):
    assert finetune.best_score(tmp_path) is None
    (tmp_path / "training_log.csv").write_text("")  # what CSVLogger leaves when interrupted in epoch 0
    assert finetune.best_score(tmp_path) is None
    (tmp_path / "training_log.csv").write_text("epoch,val_accuracy\n0,0.5\n1,0.75\n")
    assert finetune.best_score(tmp_path) == 0.75


def test_run_directory_changes_with_the_settings(tmp_path):
    a = finetune.run_directory(tmp_path, "last_block", lr=1e-4, epochs=3)
    assert a == finetune.run_directory(tmp_path, "last_block", epochs=3, lr=1e-4)
    assert a != finetune.run_directory(tmp_path, "last_block", lr=1e-5, epochs=3)
    assert a.parent == tmp_path and a.name.startswith("last_block-")


# ----------------------------------------------------------------------------- resume

class InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated disconnect at epoch {epoch}")


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    images, labels = toy_faces(24)

    def train(run_dir, extra=()):
        finetune.set_seeds(0)
        model = gender_model(seed=0)
        plan = FreezePlan(trainable={"conv5_3", "fc6", "fc7", "fc8"}, head_lr=1e-2, finetune_lr=1e-2,
                          head_epochs=2, finetune_epochs=2)
        run = finetune.train_two_stage(model, dataset(images, labels, 8), dataset(images[:8], labels[:8]), plan,
                                       run_dir=run_dir, patience=10, tensorboard=False,
                                       extra_callbacks=extra, verbose=0)
        return model, run

    reference, _ = train(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):  # a disconnect in the middle of the fine-tuning stage
        train(tmp_path / "cut", extra=[InterruptAt(3)])
    assert (tmp_path / "cut" / "backup" / "finetune").is_dir()
    resumed, run = train(tmp_path / "cut")
    assert [s.epochs_run for s in run.stages] == [2, 1]  # head stage finished before; epoch 3 only
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "cut" / "backup" / "finetune").exists()
    assert list(run.history["epoch"]) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- precision

def test_mixed_precision_copy_keeps_output_layers_in_float32():
    model = gender_model()
    mixed = finetune.with_precision(model, "mixed_float16")
    assert mixed.get_layer("conv3_1").compute_dtype == "float16"
    assert mixed.get_layer("conv3_1").variable_dtype == "float32"
    for name in finetune.FLOAT32_LAYERS:
        assert mixed.get_layer(name).compute_dtype == "float32", name
    images, _ = toy_faces(2)
    out = mixed(images)
    assert out.dtype == "float32"
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(images)), atol=2e-2)
    assert finetune.with_precision(model, "float32") is model
    # the copy carries the policy, so compile wraps its optimizer in loss scaling (float16 gradients underflow)
    assert mixed.dtype_policy.name == "mixed_float16" and keras.config.dtype_policy().name == "float32"
    finetune.compile_for_stage(mixed, 1e-3)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)


# ----------------------------------------------------------------------------- memory at full size

def test_layer_sizes_from_the_spec_equal_those_of_the_built_model():
    from tests.tiny_vgg import KERAS_FC, KERAS_WIDTHS

    model = gender_model()
    net = vggface.vggface_netspec(conv_widths=KERAS_WIDTHS, fc_widths=KERAS_FC, n_classes=5, input_hw=HW)
    assert finetune.netspec_layer_sizes(net, n_classes=2) == finetune.layer_sizes(model)
    plan = FreezePlan.from_block(model, "block4")
    assert finetune.estimate_training_memory(finetune.layer_sizes(model), plan, 8) == \
        finetune.estimate_training_memory(model, plan, 8)
    with pytest.raises(ValueError, match="conv9_1"):
        finetune.estimate_training_memory(finetune.layer_sizes(model), FreezePlan(trainable={"conv9_1"}), 8)


def test_full_size_estimate_counts_the_real_network_without_building_it():
    sizes = finetune.full_size_layer_sizes(n_classes=2)
    by_name = {s.name: s for s in sizes}
    assert sum(s.params for s in sizes) == 145_002_878 - 4097 * 2622 + 4097 * 2
    assert by_name["conv1_1"].values == 224 * 224 * 64 and by_name["pool5"].values == 7 * 7 * 512
    assert by_name["fc6"].params == (7 * 7 * 512 + 1) * 4096
    model = gender_model()  # plans name layers; the tiny model has the same names as the real one
    head = finetune.estimate_training_memory(sizes, FreezePlan.head_only(model), 32, policy="mixed_float16")
    everything = finetune.estimate_training_memory(sizes, FreezePlan.from_block(model, 1), 32, policy="mixed_float16")
    assert head.weights == everything.weights == sum(s.params for s in sizes) * 4
    assert head.gradients == 4097 * 2 * 4 and everything.optimizer == 2 * everything.gradients
    # everything trains: every layer's output is kept for the batch, 2 bytes each in float16
    assert everything.activations == 32 * sum(s.values for s in sizes) * 2
    float32 = finetune.estimate_training_memory(sizes, FreezePlan.from_block(model, 1), 32)
    assert float32.activations == 2 * everything.activations and float32.weights == everything.weights
    assert 2.5 * 2 ** 30 < everything.total < 4 * 2 ** 30  # fits a 15 GB T4 with room to spare
    assert everything.as_dict()["total"] == everything.total


# ----------------------------------------------------------------------------- decisions and their noise

def test_predictions_cover_every_row_and_standard_errors_match_direct_formulas():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 16)).astype("float32")
    y = rng.integers(0, 2, size=700)
    head = finetune.build_head(16, ("m", "f"), seed=2)
    probs, labels = finetune.predict_batches(head, dataset(x, y, batch_size=64))
    np.testing.assert_allclose(probs, head.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, y)
    assert finetune.standard_error(0.8, 400) == pytest.approx(np.sqrt(0.8 * 0.2 / 400))
    a = rng.random(700) < 0.8
    b = np.where(rng.random(700) < 0.9, a, ~a)  # B agrees with A on most faces
    delta, se = finetune.paired_difference(a, b)
    d = a.astype(float) - b.astype(float)
    assert delta == pytest.approx(a.mean() - b.mean())
    assert se == pytest.approx(np.sqrt(np.sum((d - d.mean()) ** 2) / 699 / 700))
    independent = np.hypot(finetune.standard_error(a.mean(), 700), finetune.standard_error(b.mean(), 700))
    assert se < independent  # pairing removes the faces both get right (or wrong)
    with pytest.raises(ValueError, match="equally long"):
        finetune.paired_difference(a, b[:-1])


def test_clustered_standard_errors_count_people_not_faces():
    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(40), 10)  # 40 people, 10 faces each
    alike = np.repeat(rng.random(40) < 0.7, 10).astype(float)  # a person's faces all right or all wrong
    p = alike.mean()
    direct = np.sqrt(sum((alike[users == u].sum() - p * 10) ** 2 for u in range(40))) / 400
    assert finetune.clustered_standard_error(alike, users) == pytest.approx(direct)
    # whole people right or wrong: the standard error of 40 answers, not of 400
    assert finetune.clustered_standard_error(alike, users) == pytest.approx(np.sqrt(p * (1 - p) / 40), rel=1e-9)
    independent = (rng.random(400) < 0.7).astype(float)
    assert finetune.clustered_standard_error(independent, np.arange(400)) == pytest.approx(  # one face each
        finetune.standard_error(independent.mean(), 400), rel=1e-9)
    other = np.where(rng.random(400) < 0.9, alike, 1 - alike)
    delta, se = finetune.paired_difference(alike, other, users)
    d = alike - other
    residual = [np.sum(d[users == u] - d.mean()) for u in range(40)]
    assert delta == pytest.approx(d.mean()) and se == pytest.approx(np.sqrt(np.sum(np.square(residual))) / 400)
    with pytest.raises(ValueError, match="one group per answer"):
        finetune.clustered_standard_error(alike, users[:-1])


def test_confident_mistakes_are_the_wrong_answers_in_order_of_confidence():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.97, 0.03], [0.55, 0.45], [0.08, 0.92]])
    labels = np.array([1, 1, 0, 1, 1, 0])
    assert finetune.confident_mistakes(probs, labels, k=3).tolist() == [3, 5, 0]
    assert finetune.confident_mistakes(probs, labels, k=10).tolist() == [3, 5, 0, 2, 4]


def test_lr_range_test_finds_the_falling_and_the_diverging_rates_and_restores_the_weights():
    rng = np.random.default_rng(0)
    labels = np.arange(600) % 2
    features = (rng.normal(size=(600, 32)) + labels[:, None] * 0.4).astype("float32")  # classes overlap
    head = finetune.build_head(32, ("m", "f"), seed=0)
    before = head.get_weights()
    table = finetune.lr_range_test(head, features, labels, min_lr=1e-6, max_lr=10.0, steps=150, batch_size=32)
    for a, b in zip(before, head.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert list(table.columns) == ["lr", "loss", "smoothed"]
    assert np.all(np.diff(table["lr"]) > 0) and table["lr"].iloc[0] == pytest.approx(1e-6)
    reading = finetune.suggest_learning_rate(table)
    assert 1e-4 < reading["steepest"] < reading["min_loss"] < 10.0
    assert reading["min_loss_value"] < 0.7 * reading["start_loss"]
    # the loss falls in the middle of the range and rises again at the top (or the test stopped early)
    assert finetune.loss_at(table, 1e-2) < finetune.loss_at(table, 1e-6)
    assert table["smoothed"].iloc[-1] > reading["min_loss_value"] or len(table) < 150
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        finetune.lr_range_test(head, features, labels, min_lr=1.0, max_lr=0.1)


# ----------------------------------------------------------------------------- figures

def test_show_batch_captions_truth_prediction_and_probability_with_mistakes_in_red():
    images = np.full((10, 8, 8, 3), 128.0)
    labels = np.array([0, 1] * 5)
    probs = np.tile([[0.9, 0.1]], (10, 1))
    fig = finetune.show_batch(images, labels, ("m", "f"), probs, ncols=4)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 10 and len(fig.axes) == 12  # 3 rows of 4, two empty
    assert titled[0].get_title() == "m → m 0.90" and titled[1].get_title() == "f → m 0.90"
    assert titled[1].title.get_color() == "tab:red" and titled[0].title.get_color() == "black"
    assert finetune.show_batch(images[:3], labels[:3], ("m", "f")).axes[0].get_title() == "true m"


# ----------------------------------------------------------------------------- the split and the summary

def five_folds(users_per_fold: int = 30, seed: int = 0) -> "pd.DataFrame":
    """Faces of whole users in folds 0-4 (3..20 faces each), both genders in every fold."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(5):
        for u in range(users_per_fold):
            gender = "m" if (u + fold) % 2 else "f"
            for i in range(int(rng.integers(3, 21))):
                rows.append({"fold": fold, "user_id": f"u{fold}_{u}", "face_id": i, "gender": gender,
                             "label": int(gender == "f"), "path": f"faces/u{fold}_{u}/{i}.jpg"})
    return pd.DataFrame(rows)


def test_case_study_split_keeps_fold_0_whole_and_draws_validation_users_from_folds_2_to_4():
    df = five_folds()
    split, spec = finetune.make_split(df, "case_study", seed=3)
    assert spec == {"kind": "case_study", "train_folds": [0], "test_fold": 1, "val_folds": [2, 3, 4],
                    "val_fraction": 0.25, "val_min_users": 50, "seed": 3}
    assert split.train.equals(df[df["fold"] == 0]) and split.test.equals(df[df["fold"] == 1])
    pool = df[df["fold"].isin([2, 3, 4])]  # 90 users
    assert set(split.val["fold"]) <= {2, 3, 4}
    # whole users only: every face of a chosen user, none of the others
    val_users = split.val.groupby("user_id").size()
    for user, n in val_users.items():
        assert n == (pool["user_id"] == user).sum()
    # 50 users are more than a quarter of the faces here: the users decide
    assert len(val_users) == 50 and len(split.val) >= 0.25 * len(pool)
    by_faces, spec_faces = finetune.make_split(df, "case_study", seed=3, val_min_users=1, val_fraction=0.4)
    users = by_faces.val.groupby("user_id").size()
    assert len(by_faces.val) >= 0.4 * len(pool) > len(by_faces.val) - users.max()  # just enough users
    assert spec_faces["val_min_users"] == 1
    everyone, _ = finetune.make_split(df, "case_study", seed=3, val_min_users=500)
    assert everyone.val.equals(pool)  # fewer users than asked for: all of them
    again, _ = finetune.make_split(df, **spec)
    assert again.val.equals(split.val)
    other, _ = finetune.make_split(df, **{**spec, "seed": 4})
    assert not other.val.equals(split.val)


def test_fold_split_and_bad_split_requests_name_what_is_wrong():
    df = five_folds()
    split, spec = finetune.make_split(df, "fold", test_fold=3, seed=1)
    assert spec == {"kind": "fold", "test_fold": 3, "val_fraction": 0.1, "seed": 1}
    assert set(split.test["fold"]) == {3} and 3 not in set(split.train["fold"]) | set(split.val["fold"])
    with pytest.raises(ValueError, match="unknown split kind 'random'"):
        finetune.make_split(df, "random")
    with pytest.raises(ValueError, match=r"no fold\(s\) \[4\]"):
        finetune.make_split(df[df["fold"] != 4], "case_study")
    with pytest.raises(ValueError, match="must not overlap"):
        finetune.make_split(df, "case_study", val_folds=[1, 2])
    with pytest.raises(ValueError, match="needs test_fold"):
        finetune.make_split(df, "fold")


def summary_fields(**changes):
    config = {"from_block": "block5", "val_accuracy": 0.81, "test_accuracy": 0.8, "epoch_seconds": 1.5,
              "trainable_params": 1000, "estimated_memory_bytes": 123456, "peak_memory_bytes": None,
              "epochs_run": 5}
    fields = dict(best="last_block",
                  configs={"head_only": {**config, "from_block": "head", "val_accuracy": 0.79},
                           "last_block": config,
                           "mine": {**config, "from_block": ["conv5_3", "fc7", "fc8"]},
                           "everything": {**config, "from_block": 1, "peak_memory_bytes": 2 ** 30}},
                  split={"kind": "case_study", "train_folds": [0], "test_fold": 1, "val_folds": [2, 3, 4],
                         "val_fraction": 0.25, "val_min_users": 50, "seed": 7},
                  protocol="binary", class_names=("m", "f"), image_size=(64, 64), resize="direct",
                  mode="quick", seed=7)
    fields.update(changes)
    return fields


def test_summary_round_trip_has_exactly_the_schema_keys_and_reproduces_the_split(tmp_path):
    path = tmp_path / "models" / finetune.SUMMARY_FILE
    finetune.write_summary(path, **summary_fields())
    summary = finetune.read_summary(path)
    assert list(summary) == list(finetune.SUMMARY_KEYS) and summary["schema"] == finetune.SUMMARY_SCHEMA
    assert summary["class_names"] == ["m", "f"] and summary["image_size"] == [64, 64]
    assert summary["configs"]["mine"]["from_block"] == ["conv5_3", "fc7", "fc8"]
    assert summary["configs"]["everything"]["from_block"] == 1
    assert summary["configs"]["last_block"]["peak_memory_bytes"] is None
    for config in summary["configs"].values():
        assert list(config) == list(finetune.CONFIG_KEYS)
    df = five_folds()
    split = finetune.split_from_summary(df, summary)
    expected, _ = finetune.make_split(df, "case_study", seed=7)
    for got, want in zip(split, expected):
        assert got.equals(want)


def test_summary_writer_refuses_what_the_reader_could_not_use(tmp_path):
    path = tmp_path / finetune.SUMMARY_FILE
    with pytest.raises(ValueError, match="best configuration 'nope' is not among"):
        finetune.write_summary(path, **summary_fields(best="nope"))
    fields = summary_fields()
    fields["configs"]["last_block"] = {**fields["configs"]["last_block"], "best_path": "x.keras"}
    with pytest.raises(ValueError, match=r"unexpected \['best_path'\]"):
        finetune.write_summary(path, **fields)
    fields = summary_fields()
    del fields["configs"]["head_only"]["epochs_run"]
    with pytest.raises(ValueError, match=r"'head_only'.*missing \['epochs_run'\]"):
        finetune.write_summary(path, **fields)
    fields = summary_fields()
    fields["configs"]["everything"]["from_block"] = 0
    with pytest.raises(ValueError, match="from_block must be"):
        finetune.write_summary(path, **fields)
    assert not path.exists()  # nothing half-written


def test_summary_reader_none_when_absent_or_of_another_schema_and_errors_when_broken(tmp_path, capsys):
    path = tmp_path / finetune.SUMMARY_FILE
    assert finetune.read_summary(path) is None
    path.write_text(json.dumps({"best": "last_block", "split": "case_study", "val_fraction": 0.1}))
    assert finetune.read_summary(path) is None
    assert "schema None" in capsys.readouterr().out
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path.name}: not valid JSON"):
        finetune.read_summary(path)
    finetune.write_summary(path, **summary_fields())
    broken = json.loads(path.read_text())
    del broken["split"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"missing \['split'\]"):
        finetune.read_summary(path)


def test_input_views_show_the_file_both_resizes_the_preprocessed_face_and_every_augmentation():
    rng = np.random.default_rng(0)
    original = rng.uniform(0, 255, (80, 80, 3)).astype("float32")
    face = original[:32, :32]
    augmented = rng.uniform(0, 255, (8, 32, 32, 3))
    preprocessed = keras.ops.convert_to_numpy(vggface.VGGFacePreprocess()(face[None]))[0]
    shown = finetune.preprocessed_for_display(preprocessed)
    assert shown.min() == 0 and shown.max() == pytest.approx(1.0)
    # B, G, R kept in the network's order: the display's first channel is blue minus its mean
    np.testing.assert_allclose(np.argsort(shown[..., 0].ravel()), np.argsort(face[..., 2].ravel()))
    fig = finetune.plot_input_views(original, augmented, preprocessed, face, face)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4 + 8 and titles[0] == "the file\n80×80 px"
    assert sum(t.startswith("augmented #") for t in titles) == 8 and any("BGR" in t for t in titles)


def test_comparison_and_curve_figures_draw_every_configuration_with_its_error_bars():
    import pandas as pd

    table = pd.DataFrame({"val_accuracy": [0.8, 0.85], "val_se": [0.03, 0.02],
                          "test_accuracy": [0.78, 0.83], "test_se": [0.04, 0.03]}, index=["head_only", "everything"])
    fig = finetune.plot_comparison(table, majority={"validation": 0.55, "test": 0.52})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["head_only", "everything"]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.78, 0.8, 0.83, 0.85]
    caps = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert sorted(round(line.get_ydata()[0], 2) for line in caps) == [0.52, 0.55]
    bars = [c for c in ax.collections]  # the error bars: ±2 SE around each bar
    segments = np.concatenate([c.get_segments() for c in bars])
    spans = sorted(round(float(abs(s[1][1] - s[0][1])), 3) for s in segments)
    assert spans == [0.08, 0.12, 0.12, 0.16]
    log = pd.DataFrame({"epoch": [0, 1, 2], "val_accuracy": [0.7, 0.8, 0.75]})
    fig = finetune.plot_validation_curves({"a": log, "b": log.assign(val_accuracy=[0.6, 0.65, 0.9])},
                                          head_epochs=1, majority=0.5, se=0.02, start=0.55)
    drawn = [line for line in fig.axes[0].lines if line.get_label() in ("a", "b")]
    assert [list(line.get_xdata()) for line in drawn] == [[0, 1, 2, 3]] * 2
    assert list(drawn[1].get_ydata()) == [0.55, 0.6, 0.65, 0.9]


def test_memory_figure_stacks_the_four_kinds_per_configuration():
    model = gender_model()
    estimates = {name: finetune.estimate_training_memory(model, FreezePlan.from_block(model, k), 8)
                 for name, k in (("head_only", "head"), ("everything", 1))}
    fig = finetune.plot_memory({"this run": estimates}, measured={"this run": {"everything": 10 * 2 ** 20}},
                               limits={"this run": (20 * 2 ** 20, "a limit")})
    ax = fig.axes[0]
    widths = np.array([p.get_width() for p in ax.patches]).reshape(4, 2)  # kinds x configurations
    totals = widths.sum(axis=0) * 2 ** 20
    np.testing.assert_allclose(totals, [estimates["head_only"].total, estimates["everything"].total], rtol=1e-9)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"weights", "gradients", "optimizer", "activations", "measured peak", "a limit"} <= labels


def test_dropping_the_optimizer_state_shrinks_saved_files_to_the_weights(tmp_path):
    model = gender_model()
    finetune.apply_freeze_plan(model, FreezePlan.from_block(model, 1))
    finetune.compile_for_stage(model, 3e-4)
    images, labels = toy_faces(16)
    model.fit(images, labels, epochs=1, verbose=0)
    model.save_weights(tmp_path / "with.weights.h5")
    finetune.drop_optimizer_state(model)
    assert finetune.learning_rate_of(model) == pytest.approx(3e-4)
    model.save_weights(tmp_path / "without.weights.h5")
    with_state, without = ((tmp_path / f).stat().st_size for f in ("with.weights.h5", "without.weights.h5"))
    # Adam's two moments per trainable weight (float32) are gone: at least 2 x 4 bytes per parameter
    assert with_state - without >= 2 * 4 * model.count_params()
    # a model never compiled in this session (every stage finished before a reconnect): nothing to drop
    fresh = gender_model()
    finetune.drop_optimizer_state(fresh)
    fresh.save_weights(tmp_path / "fresh.weights.h5")


def test_load_head_takes_notebook_04s_head_only_when_it_fits(tmp_path):
    model = gender_model()
    path = tmp_path / "head_only_fc8.keras"
    head, why = finetune.load_head(path, model, ("m", "f"))
    assert head is None and "no head_only_fc8.keras" in why
    finetune.build_head(16, ("m", "f"), seed=1).save(path)
    head, why = finetune.load_head(path, model, ("m", "f"))
    assert head is not None and str(path) in why
    head, why = finetune.load_head(path, model, ("m", "f", "u"))
    assert head is None and "['m', 'f', 'u']" in why
    finetune.build_head(8, ("m", "f")).save(path)
    assert finetune.load_head(path, model, ("m", "f"))[0] is None
