"""Fine-tuning VGG-Face for gender: the bookkeeping around what notebooks 04 and 05 teach.

Notebooks 04 and 05 write the lesson in plain Keras in their cells (the head swap, freezing with
``layer.trainable``, ``compile``, ``fit`` with Keras' callbacks, the recompile after unfreezing).
This module holds what they and notebook 06 need around it:

- **Layer groups and freezing plans.** ``layer_groups`` (block1 .. block5, fc, head) and
  ``FreezePlan`` (the layers that train, a rate and a number of epochs per stage): the plain
  object the freezing panel of ``helpers.widgets`` edits.
- **Memory.** ``estimate_training_memory`` (weights, gradients, Adam's moments, the activations
  backpropagation keeps), from a model or from layer sizes: ``full_size_layer_sizes()`` counts the
  real 145 M-parameter network from its spec without building it.
- **The head on cached features** (``build_head``, ``train_head_on_features``, ``AccuracyCurve``)
  and ``lr_range_test`` (Leslie Smith's learning-rate range test, seconds on cached features).
- **Runs.** ``Run``: a configuration's folder named by its settings; finished stages skipped on a
  rerun, an interrupted one resumed (``BackupAndRestore``), superseded folders pruned, files
  without optimizer state once a stage is over, the best epoch left in the model.
  ``train_two_stage`` is notebook 05's two stages as one function (for notebook 06).
- **Reproducibility and precision.** ``set_seeds``, ``EpochSeededDropout`` (dropout masks depend
  on the epoch only, so a resumed run equals an uninterrupted one), ``with_precision``
  (``mixed_float16`` on a GPU, output layers in float32, loss scaling).
- **Decisions and their noise.** ``predict_batches``, ``accuracy``, ``standard_error``,
  ``clustered_standard_error`` and ``paired_difference`` (people, not faces, are the unit).
- **The split and the summary.** ``make_split`` (the case study's split with a validation set
  of whole users from folds 2-4), ``write_summary`` / ``read_summary`` / ``split_from_summary``:
  ``finetune_summary.json``, the one schema notebook 05 writes and notebook 06 reads.
- **Figures** of notebooks 04 and 05 (``show_batch``, ``plot_input_views``, ``plot_lr_range``,
  ``plot_validation_curves``, ``plot_comparison``, ``plot_memory``, ``plot_plan``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import keras
import numpy as np
import pandas as pd

from . import vggface
from .course import environment
from .course.fileio import atomic_path, write_json_atomic

FEATURE_LAYER = "fc7"
HEAD_LAYER = "fc8"
OUTPUT_LAYER = "prob"
# The case study's head learning rate, and the customary 10x lower one for fine-tuning.
DEFAULT_HEAD_LR = 1e-3
DEFAULT_FINETUNE_LR = 1e-4
# Layers kept in float32 under mixed precision: softmax and the logits feeding it are where
# float16 overflows and rounding hurt; the mean subtraction needs more than float16's 11 bits at 255.
FLOAT32_LAYERS = ("preprocess", HEAD_LAYER, OUTPUT_LAYER)


# ============================================================================ reproducibility

def set_seeds(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend; with ``deterministic``, ask TF for deterministic ops.

    Two runs with the same seed then give bit-identical weights on CPU (GPUs may still differ
    in the last bits for some kernels).
    """
    environment.set_seeds(int(seed))
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def gpu_available() -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


class EpochSeededDropout(keras.callbacks.Callback):
    """Make every epoch's dropout masks a function of the epoch number alone.

    Keras' ``BackupAndRestore`` restores weights, optimizer state and the epoch, but not the
    state of the random generators behind Dropout; a resumed run would then draw different
    masks than an uninterrupted one. Resetting each generator's counter at the start of an
    epoch to a value fixed by that epoch makes both runs draw the same masks.
    """

    def __init__(self, stride: int = 1 << 24):
        super().__init__()
        self.stride = int(stride)

    def on_epoch_begin(self, epoch, logs=None):
        # A generator's state is [seed, counter]; the seed part never changes, so the masks of
        # epoch e depend on (seed, e) alone, whichever stage or process runs that epoch.
        for gen in _dropout_seed_generators(self.model):
            seed = keras.ops.convert_to_numpy(gen.state.value)[0]
            gen.state.assign(np.array([seed, epoch * self.stride], dtype=gen.state.dtype))


def _dropout_seed_generators(model: keras.Model) -> list:
    """The ``seed_generator`` of every Dropout layer, nested models included (public attributes)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _dropout_seed_generators(layer)
        elif isinstance(layer, keras.layers.Dropout):
            found.append(layer.seed_generator)
    return found


# ============================================================================ layer groups

def weighted_layers(model: keras.Model) -> list[str]:
    """Names of the layers that own weights, in model order."""
    return [layer.name for layer in model.layers if layer.weights]


def layer_groups(model: keras.Model) -> dict[str, list[str]]:
    """Ordered groups of weighted layers, from the input up: ``block1`` … ``block5``, ``fc`` (fc6,
    fc7), ``head`` (fc8). "Train from group k up" means every group at index ≥ k.

    Built on ``vggface.layer_blocks``; the classifier is split so that head-only training is
    one of the choices. Raises if a weighted layer fits no group (nothing is silently left out).
    """
    blocks = vggface.layer_blocks(model)
    if blocks.get("other"):
        raise ValueError(
            f"model {model.name!r} has layers with weights outside the VGG-Face naming "
            f"(conv<b>_<i>, fc6, fc7, fc8): {blocks['other']}"
        )
    groups = {name: list(layers) for name, layers in blocks.items() if name.startswith("block") and layers}
    fc = blocks.get("fc", [])
    groups["fc"] = [n for n in fc if n != HEAD_LAYER]
    groups["head"] = [n for n in fc if n == HEAD_LAYER]
    if not groups["head"]:
        raise ValueError(f"model {model.name!r} has no {HEAD_LAYER!r} layer to train as the head")
    if not groups["fc"]:
        del groups["fc"]
    return groups


def _params(layer) -> int:
    return int(sum(int(np.prod(w.shape)) for w in layer.weights))


# ============================================================================ freezing plans

@dataclass
class FreezePlan:
    """Which layers train, and how: the plain state the freezing panel edits.

    ``trainable``: names of the layers with weights that train in the fine-tuning stage (every
    other layer with weights is frozen). Stage ``head`` trains ``fc8`` alone at ``head_lr`` for
    ``head_epochs`` (0 skips it, e.g. when starting from notebook 04's head); stage ``finetune``
    trains ``trainable`` at ``finetune_lr`` for ``finetune_epochs``.
    """

    trainable: frozenset[str] = frozenset({HEAD_LAYER})
    head_lr: float = DEFAULT_HEAD_LR
    finetune_lr: float = DEFAULT_FINETUNE_LR
    head_epochs: int = 3
    finetune_epochs: int = 3

    def __post_init__(self):
        self.trainable = frozenset(str(n) for n in self.trainable)
        for name in ("head_lr", "finetune_lr"):
            value = float(getattr(self, name))
            if not value > 0:
                raise ValueError(f"FreezePlan.{name} must be a positive learning rate, got {value}")
            setattr(self, name, value)
        for name in ("head_epochs", "finetune_epochs"):
            value = int(getattr(self, name))
            if value < 0:
                raise ValueError(f"FreezePlan.{name} must be >= 0, got {value}")
            setattr(self, name, value)

    @classmethod
    def from_block(cls, model: keras.Model, k: int | str, **stages) -> "FreezePlan":
        """Train everything from group ``k`` up (1-based index into ``layer_groups``, or a name).

        ``k=1`` trains everything, ``"block5"`` the last conv block and the classifier,
        ``"head"`` (the last index) only ``fc8``.
        """
        names = list(layer_groups(model))
        index = _group_index(names, k)
        groups = layer_groups(model)
        trainable = [layer for g in names[index - 1:] for layer in groups[g]]
        return cls(trainable=frozenset(trainable), **stages)

    @classmethod
    def head_only(cls, model: keras.Model, **stages) -> "FreezePlan":
        return cls.from_block(model, "head", **stages)

    def block_index(self, model: keras.Model) -> int | None:
        """The k for which this plan equals ``from_block(model, k)``; None for other choices."""
        for k in range(1, len(layer_groups(model)) + 1):
            if FreezePlan.from_block(model, k).trainable == self.trainable:
                return k
        return None

    def replace(self, **changes) -> "FreezePlan":
        return dataclasses.replace(self, **changes)

    def check(self, model: keras.Model) -> None:
        known = set(weighted_layers(model))
        unknown = sorted(self.trainable - known)
        if unknown:
            raise ValueError(
                f"freeze plan names layer(s) {unknown} that model {model.name!r} does not have "
                f"among its layers with weights {sorted(known)}"
            )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "trainable": sorted(self.trainable)}


def _group_index(names: Sequence[str], k: int | str) -> int:
    if isinstance(k, str):
        if k not in names:
            raise ValueError(f"unknown layer group {k!r}: expected one of {list(names)}")
        return names.index(k) + 1
    k = int(k)
    if not 1 <= k <= len(names):
        raise ValueError(f"group index {k} out of range 1..{len(names)} (groups: {list(names)})")
    return k


def apply_freeze_plan(model: keras.Model, plan: FreezePlan, trainable: Iterable[str] | None = None) -> keras.Model:
    """Set ``trainable`` on every layer with weights: True for the plan's layers, else False.

    ``trainable`` overrides the plan's set (used for the head stage). Layers without weights
    (preprocess, pooling, flatten, dropout) are left alone: Dropout draws its masks whenever
    Keras calls it with ``training=True``, whatever is frozen. Recompile after this.
    """
    names = frozenset(plan.trainable if trainable is None else trainable)
    FreezePlan(trainable=names).check(model)
    model.trainable = True
    for layer in model.layers:
        if layer.weights:
            layer.trainable = layer.name in names
    return model


def trainable_counts(model: keras.Model, plan: FreezePlan) -> dict[str, int]:
    """Trainable, frozen and total parameters under ``plan`` (the model is not changed)."""
    plan.check(model)
    trainable = frozen = 0
    for layer in model.layers:
        if layer.weights:
            if layer.name in plan.trainable:
                trainable += _params(layer)
            else:
                frozen += _params(layer)
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs, by kind."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total}

    def __str__(self) -> str:
        return (f"~{format_bytes(self.total)} (weights {format_bytes(self.weights)}, gradients "
                f"{format_bytes(self.gradients)}, optimizer {format_bytes(self.optimizer)}, "
                f"activations {format_bytes(self.activations)})")


@dataclass(frozen=True)
class LayerSize:
    """What the memory estimate needs of a layer: its parameters and its output values per image."""

    name: str
    params: int
    values: int


def layer_sizes(model: keras.Model) -> list[LayerSize]:
    """Parameters and output values per image of every layer of ``model`` but its inputs, in order."""
    return [LayerSize(layer.name, _params(layer), _output_values(layer)) for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)]


def netspec_layer_sizes(net, n_classes: int | None = None) -> list[LayerSize]:
    """``layer_sizes`` of the Keras model ``helpers.caffe`` builds from a VGG-style ``NetSpec``,
    computed from the spec alone (no weights are allocated): the full-size VGG-Face's 145 M
    parameters can be estimated on any machine. ``n_classes`` replaces ``fc8``'s width (the
    gender head). Layers are those of the converted model: ``preprocess``, convolutions with
    their ReLU fused, pools, ``flatten``, ``fc6``/``drop6``/``fc7``/``drop7``, ``fc8``, ``prob``.
    """
    _, c, h, w = net.input_shape
    sizes = [LayerSize("preprocess", 0, c * h * w)]
    flat = None
    for layer in net.layers:
        p = layer.params
        if layer.type == "Convolution":
            k, pad, stride, out = int(p["kernel_size"]), int(p.get("pad", 0)), int(p.get("stride", 1)), int(p["num_output"])
            h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            sizes.append(LayerSize(layer.name, (k * k * c + 1) * out, out * h * w))
            c = out
        elif layer.type == "Pooling":
            k, stride = int(p["kernel_size"]), int(p.get("stride", 1))
            h, w = -(-(h - k) // stride) + 1, -(-(w - k) // stride) + 1  # Caffe pools with ceil
            sizes.append(LayerSize(layer.name, 0, c * h * w))
        elif layer.type == "InnerProduct":
            if flat is None:
                flat = c * h * w
                sizes.append(LayerSize("flatten", 0, flat))
            out = int(n_classes) if (n_classes is not None and layer.name == HEAD_LAYER) else int(p["num_output"])
            sizes.append(LayerSize(layer.name, (flat + 1) * out, out))
            flat = out
        elif layer.type == "Dropout":
            sizes.append(LayerSize(layer.name, 0, flat))
        elif layer.type == "Softmax":
            sizes.append(LayerSize(layer.name, 0, flat))
        elif layer.type != "ReLU":  # ReLUs are fused into the layer before them
            raise ValueError(f"layer {layer.name!r}: netspec_layer_sizes knows VGG's layer types "
                             f"(Convolution, Pooling, InnerProduct, ReLU, Dropout, Softmax), not {layer.type!r}")
    return sizes


def full_size_layer_sizes(n_classes: int = 2) -> list[LayerSize]:
    """The real VGG-Face at 224 px with an ``n_classes`` head, as ``netspec_layer_sizes`` counts it."""
    return netspec_layer_sizes(vggface.vggface_netspec(), n_classes=n_classes)


# Bytes per activation value under each precision policy (the variables stay float32 in both).
ACTIVATION_BYTES = {"float32": 4, "mixed_float16": 2, "mixed_bfloat16": 2}


def estimate_training_memory(model: keras.Model | Sequence[LayerSize], plan: FreezePlan, batch_size: int, *,
                             optimizer_slots: int = 2, bytes_per_value: int = 4,
                             policy: str | None = None) -> MemoryEstimate:
    """A first-order estimate of the memory one training step needs under ``plan``.

    ``model`` is a Keras model or its ``layer_sizes`` (``full_size_layer_sizes()`` for the real
    network). Weights are all held; gradients exist for trainable weights only; Adam keeps
    ``optimizer_slots`` (2) values per trainable weight. Backpropagation must keep the output
    of every layer from the first trainable one up (and that layer's input) for the batch;
    below it, only one layer's output lives at a time, so frozen early blocks cost little.
    ``policy`` ("mixed_float16") stores activations in 2 bytes; weights, gradients and Adam's
    moments stay float32 (``bytes_per_value``).
    """
    if isinstance(model, keras.Model):
        plan.check(model)
        sizes = layer_sizes(model)
    else:
        sizes = list(model)
        unknown = sorted(plan.trainable - {s.name for s in sizes if s.params})
        if unknown:
            raise ValueError(f"freeze plan names layer(s) {unknown} that the layer list does not have among its "
                             "layers with weights")
    activation_bytes = bytes_per_value if policy is None else ACTIVATION_BYTES[policy]
    trainable = sum(s.params for s in sizes if s.name in plan.trainable)
    total = sum(s.params for s in sizes)
    first = next((i for i, s in enumerate(sizes) if s.name in plan.trainable), len(sizes))
    values = [s.values for s in sizes]
    kept = sum(values[first:]) + (values[first - 1] if 0 < first < len(values) else 0)
    transient = max(values[:first - 1], default=0) if first > 1 else 0  # below: one output at a time
    return MemoryEstimate(
        weights=total * bytes_per_value,
        gradients=trainable * bytes_per_value,
        optimizer=trainable * optimizer_slots * bytes_per_value,
        activations=int(batch_size) * (kept + transient) * activation_bytes,
    )


def _output_values(layer) -> int:
    shape = layer.output.shape
    return int(np.prod([d for d in shape[1:] if d is not None]))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def describe_plan(model: keras.Model, plan: FreezePlan, batch_size: int) -> str:
    """The freezing panel's live line: trainable/frozen parameters and the memory estimate."""
    c = trainable_counts(model, plan)
    share = c["trainable"] / c["total"] if c["total"] else 0.0
    mem = estimate_training_memory(model, plan, batch_size)
    return (f"{len(plan.trainable)} layer(s) train: {c['trainable']:,} trainable parameters "
            f"({share:.1%}), {c['frozen']:,} frozen; training memory at batch {batch_size}: {mem}")


# ============================================================================ head on features

def build_head(feature_dim: int, class_names: Sequence[str] = ("m", "f"), seed: int | None = None) -> keras.Model:
    """The gender head alone: ``fc7`` features in, ``fc8`` logits, ``prob`` softmax out.

    No Dropout: the equivalence is with ``fc8`` on the frozen network in inference mode. The
    layers carry the full model's names so ``copy_head_weights`` can move them across.
    """
    inputs = keras.Input((int(feature_dim),), name=f"{FEATURE_LAYER}_features")
    logits = keras.layers.Dense(len(class_names), name=HEAD_LAYER,
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(inputs)
    probs = vggface.NamedSoftmax(class_names=list(class_names), name=OUTPUT_LAYER)(logits)
    return keras.Model(inputs, probs, name="gender_head")


def logits_model(model: keras.Model) -> keras.Model:
    """The same model, ending at ``fc8`` (logits) instead of ``prob``."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # one input stays one tensor
    return keras.Model(inputs, model.get_layer(HEAD_LAYER).output, name=f"{model.name}_logits")


def copy_head_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy ``fc8``'s kernel and bias from ``source`` to ``target`` (shapes checked)."""
    src, dst = source.get_layer(HEAD_LAYER), target.get_layer(HEAD_LAYER)
    src_shapes = [tuple(w.shape) for w in src.get_weights()]
    dst_shapes = [tuple(w.shape) for w in dst.get_weights()]
    if src_shapes != dst_shapes:
        raise ValueError(f"cannot copy {HEAD_LAYER!r}: {source.name!r} has weight shapes {src_shapes}, "
                         f"{target.name!r} expects {dst_shapes}")
    dst.set_weights(src.get_weights())


def assemble_gender_model(base: keras.Model, head: keras.Model) -> keras.Model:
    """The converted network with ``head``'s ``fc8`` in place of the identity classifier.

    The base's layers are shared (no copy), as in ``vggface.replace_head``.
    """
    names = vggface.class_names(head) or [str(i) for i in range(head.get_layer(HEAD_LAYER).units)]
    model = vggface.replace_head(base, class_names=names)
    copy_head_weights(head, model)
    return model


def array_batches(x, y, batch_size: int = 256):
    """``(x, y)`` arrays in slices of ``batch_size`` rows.

    A function of its own, so the slices read this call's ``x`` and ``y``: a generator
    expression inside the caller would read the caller's names when it runs, after the
    caller's loop has rebound them to the first batch.
    """
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    for start in range(0, len(x), int(batch_size)):
        yield x[start:start + batch_size], y[start:start + batch_size]


def predict_batches(model: keras.Model, data, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, labels)`` of every row of ``(x, y)`` arrays or of a dataset of
    ``(x, y[, w])`` batches, in order, in inference mode.

    Called eagerly batch by batch: ``predict`` would retrace its graph for every new array size.
    """
    if isinstance(data, tuple):
        data = array_batches(*data, batch_size=batch_size)
    probs, labels = [], []
    for batch in data:
        probs.append(keras.ops.convert_to_numpy(model(batch[0], training=False)))
        labels.append(np.asarray(batch[1]))
    if not probs:
        raise ValueError("cannot predict on an empty dataset")
    return np.concatenate(probs), np.concatenate(labels)


def accuracy(model: keras.Model, data, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` arrays or a dataset of ``(x, y[, w])`` batches,
    counted over every row."""
    probs, labels = predict_batches(model, data, batch_size)
    return float(np.mean(probs.argmax(-1) == labels))


def standard_error(p: float, n: int) -> float:
    """One standard error of an accuracy ``p`` measured on ``n`` faces: sqrt(p(1-p)/n)."""
    if n <= 0:
        raise ValueError(f"a standard error needs at least one face, got n={n}")
    return float(np.sqrt(p * (1 - p) / n))


def clustered_standard_error(correct, groups) -> float:
    """The standard error of an accuracy when faces come in groups that are alike (a person's
    faces): the cluster-robust (sandwich) estimate, sqrt(sum_g (c_g - p n_g)^2) / N, with c_g the
    correct answers and n_g the faces of group g. Equals about ``standard_error`` when every
    group holds one face; grows when whole groups are right or wrong together."""
    correct = np.asarray(correct, dtype=float)
    groups = np.asarray(groups)
    if correct.ndim != 1 or len(correct) != len(groups) or len(correct) == 0:
        raise ValueError(f"need one group per answer, got {correct.shape} answers and {groups.shape} groups")
    p = correct.mean()
    _, index = np.unique(groups, return_inverse=True)
    c = np.bincount(index, weights=correct)
    n = np.bincount(index)
    return float(np.sqrt(np.sum((c - p * n) ** 2)) / len(correct))


def paired_difference(correct_a, correct_b, groups=None) -> tuple[float, float]:
    """Accuracy of A minus accuracy of B on the SAME faces, and the standard error of that
    difference: per-face differences, so the faces both get right or both get wrong cancel (far
    less noisy than two independent standard errors). With ``groups`` (the person of each face)
    the standard error is cluster-robust, as in ``clustered_standard_error``."""
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equally long per-face correctness vectors (n >= 2), got {a.shape} and {b.shape}")
    d = a - b
    if groups is None:
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    groups = np.asarray(groups)
    if len(groups) != len(d):
        raise ValueError(f"{len(d)} faces but {len(groups)} groups")
    _, index = np.unique(groups, return_inverse=True)
    residual = np.bincount(index, weights=d - d.mean())
    return float(d.mean()), float(np.sqrt(np.sum(residual ** 2)) / len(d))


class AccuracyCurve(keras.callbacks.Callback):
    """Accuracy on named data sets before training (epoch 0, the random head) and after each epoch.

    Measured in inference mode (no dropout) on the data as given: pass the training images
    WITHOUT augmentation to get the case study's train column without augmentation (Keras'
    own ``accuracy`` log is measured on the augmented batches, with dropout, while the weights move).
    """

    def __init__(self, eval_sets: Mapping[str, object], batch_size: int = 256):
        super().__init__()
        self.eval_sets = dict(eval_sets)
        self.batch_size = int(batch_size)
        self.rows: list[dict] = []

    def _measure(self, epoch: int) -> None:
        row = {"epoch": epoch}
        for name, data in self.eval_sets.items():
            row[f"{name}_accuracy"] = accuracy(self.model, data, self.batch_size)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + [row]

    def on_epoch_begin(self, epoch, logs=None):
        # Before the first epoch of a fit (the random head, or where a resumed run starts): the
        # epoch Keras begins with is the one fit(initial_epoch=...) or BackupAndRestore chose.
        if not any(r["epoch"] == epoch for r in self.rows):
            self._measure(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._measure(epoch + 1)

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).sort_values("epoch").reset_index(drop=True)


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds per epoch (the first includes tracing; see ``steady_epoch_seconds``)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def steady_epoch_seconds(seconds: Sequence[float]) -> float:
    """Seconds per epoch without the first epoch's graph tracing (when there is more than one)."""
    seconds = list(seconds)
    if not seconds:
        return float("nan")
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


@dataclass
class HeadRun:
    head: keras.Model
    curve: pd.DataFrame  # epoch (0 = random head), <set>_accuracy per eval set
    epoch_seconds: list[float]
    history: dict

    @property
    def seconds_per_epoch(self) -> float:
        return steady_epoch_seconds(self.epoch_seconds)


def train_head_on_features(features, labels, *, class_names: Sequence[str] = ("m", "f"),
                           eval_sets: Mapping[str, tuple] | None = None, epochs: int = 10,
                           batch_size: int = 32, learning_rate: float = DEFAULT_HEAD_LR,
                           seed: int = 0, validation: tuple | None = None,
                           callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 0) -> HeadRun:
    """Train a new ``fc8`` on cached ``fc7`` features (N, D) with integer labels.

    ``eval_sets`` (name -> (features, labels)) are scored before training and after every epoch
    (``"train"`` is added: the training features, no augmentation exists on this path).
    """
    x = np.asarray(features, dtype="float32")
    y = np.asarray(labels).astype("int32")
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D) {FEATURE_LAYER} vectors, got shape {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise ValueError(f"labels must lie in 0..{len(class_names) - 1} for classes {list(class_names)}, "
                         f"got {y.min()}..{y.max()}")
    keras.utils.set_random_seed(int(seed))
    head = build_head(x.shape[1], class_names, seed=seed)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    curve = AccuracyCurve({"train": (x, y), **dict(eval_sets or {})}, batch_size=max(batch_size, 256))
    timer = EpochTimer()
    # the timer first: its epoch ends before the curve's measurements, which are not training
    history = head.fit(x, y, epochs=int(epochs), batch_size=int(batch_size), shuffle=True,
                       validation_data=validation, callbacks=[timer, curve, *callbacks], verbose=verbose)
    return HeadRun(head=head, curve=curve.frame, epoch_seconds=timer.seconds, history=dict(history.history))



# ============================================================================ learning-rate range test

def lr_range_test(model: keras.Model, x, y, *, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 120,
                  batch_size: int = 32, seed: int = 0, diverge: float = 4.0, smoothing: float = 0.9,
                  loss: str = "sparse_categorical_crossentropy") -> pd.DataFrame:
    """Leslie Smith's learning-rate range test (fast.ai's ``lr_find``): train with Adam, one batch
    per rate, the rate growing exponentially from ``min_lr`` to ``max_lr``; stop once the
    smoothed loss exceeds ``diverge`` times its lowest value.

    Returns one row per step: ``lr``, ``loss`` (that batch's) and ``smoothed`` (an exponential
    moving average, bias-corrected). The model's weights are put back afterwards; the model is
    left compiled for the test, so compile it again before training. Cheap on cached features:
    a few hundred steps of a one-layer head take seconds.
    """
    x = np.asarray(x, dtype="float32")
    y = np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"lr_range_test needs as many labels as inputs (and some), got {len(x)} and {len(y)}")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    steps = int(steps)
    if steps < 2:
        raise ValueError(f"a range test needs at least 2 steps, got {steps}")
    weights = model.get_weights()
    model.compile(optimizer=keras.optimizers.Adam(min_lr), loss=loss)
    rng = np.random.default_rng(int(seed))
    order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-steps * batch_size // len(x)) + 1)])
    rates = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    rows, average, lowest = [], 0.0, np.inf
    try:
        for step, lr in enumerate(rates):
            model.optimizer.learning_rate.assign(float(lr))
            rows_of_batch = order[step * batch_size:(step + 1) * batch_size]
            batch_loss = float(model.train_on_batch(x[rows_of_batch], y[rows_of_batch]))
            average = smoothing * average + (1 - smoothing) * batch_loss
            smoothed = average / (1 - smoothing ** (step + 1))
            rows.append({"lr": float(lr), "loss": batch_loss, "smoothed": smoothed})
            lowest = min(lowest, smoothed)
            if not np.isfinite(batch_loss) or (step > 5 and smoothed > diverge * lowest):
                break
    finally:
        model.set_weights(weights)
    return pd.DataFrame(rows)


def suggest_learning_rate(table: pd.DataFrame) -> dict[str, float]:
    """Two readings of a range test: ``steepest`` (where the smoothed loss falls fastest per
    decade of rate) and ``min_loss`` (the rate of the lowest smoothed loss; a tenth of it is
    fast.ai's rule of thumb). Rates before the first 10% of the steps are ignored (noise)."""
    if len(table) < 5:
        raise ValueError(f"a range test of {len(table)} steps is too short to read")
    t = table.reset_index(drop=True)
    start = max(1, len(t) // 10)
    loss, log_lr = t["smoothed"].to_numpy(), np.log10(t["lr"].to_numpy())
    w = max(2, len(t) // 20)  # the slope over a window of steps: one batch's noise is not a trend
    centres = np.arange(max(start, w), len(t) - w)
    if len(centres) == 0:
        raise ValueError(f"a range test of {len(t)} steps is too short to read")
    slope = (loss[centres + w] - loss[centres - w]) / (log_lr[centres + w] - log_lr[centres - w])
    steep = int(centres[np.argmin(slope)])
    low = start + int(np.argmin(loss[start:]))
    return {"steepest": float(t["lr"][steep]), "min_loss": float(t["lr"][low]),
            "min_loss_value": float(t["smoothed"][low]), "start_loss": float(t["smoothed"][0])}


def loss_at(table: pd.DataFrame, lr: float) -> float:
    """The smoothed loss of a range test at the step whose rate is closest to ``lr`` (log scale)."""
    i = int(np.argmin(np.abs(np.log(table["lr"].to_numpy()) - np.log(lr))))
    return float(table["smoothed"].iloc[i])


# ============================================================================ precision

def precision_policy() -> str:
    """``mixed_float16`` when a GPU is present (Tensor Cores), else ``float32``."""
    return "mixed_float16" if gpu_available() else "float32"


def with_precision(model: keras.Model, policy: str) -> keras.Model:
    """A copy of ``model`` whose layers compute in ``policy``, with ``FLOAT32_LAYERS`` in float32.

    Mixed precision keeps the variables in float32 (so the weights copy over exactly) and
    computes in float16; the model's output stays float32. The copy itself carries the policy,
    so ``compile`` wraps its optimizer in a ``LossScaleOptimizer`` (float16 gradients would
    otherwise underflow). Drop the original afterwards: one model alive at a time.
    """
    if policy == "float32":
        return model

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in FLOAT32_LAYERS else policy
        return layer.__class__.from_config(config)

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # the new functional model takes the global policy as its own
    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


# ============================================================================ memory on the device

def reset_peak_memory() -> None:
    if gpu_available():
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory_bytes() -> int | None:
    """Peak GPU memory since the last ``reset_peak_memory``; None on CPU (no allocator stats)."""
    if not gpu_available():
        return None
    import tensorflow as tf

    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


# ============================================================================ two-stage training: the bookkeeping

STAGES_FILE = "stages.json"
LOG_FILE = "training_log.csv"
BEST_WEIGHTS = "best.weights.h5"


@dataclass
class StageResult:
    name: str
    trainable: list[str]
    learning_rate: float
    epochs_run: int
    epoch_seconds: list[float]
    history: dict
    peak_memory: int | None = None

    @property
    def seconds_per_epoch(self) -> float:
        return steady_epoch_seconds(self.epoch_seconds)


def training_callbacks(run_dir, stage: str, *, monitor: str = "val_accuracy", patience: int = 3,
                       best_value: float | None = None, tensorboard: bool = True) -> list[keras.callbacks.Callback]:
    """Keras' own callbacks for one stage of a run in ``run_dir`` (notebook 05 writes them out).

    ``backup/<stage>`` (BackupAndRestore: rerun the same cell after an interruption and training
    resumes after the last finished epoch), ``best.weights.h5`` (ModelCheckpoint of the best
    epoch across stages: ``best_value`` carries the best score so far into the next stage;
    weights only, so no optimizer state is ever kept for it), ``training_log.csv`` (CSVLogger,
    appended), EarlyStopping on ``monitor`` (its patience restarts after a resume), ``logs/``
    (TensorBoard, when installed).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup" / stage)),
        keras.callbacks.ModelCheckpoint(str(run_dir / BEST_WEIGHTS), monitor=monitor, mode="max",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_value),
        keras.callbacks.CSVLogger(str(run_dir / LOG_FILE), append=True),
        # No restore_best_weights: its memory of the best epoch is not part of the backup, so a
        # resumed run would end on different weights. The best weights are in best.weights.h5.
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(patience)),
    ]
    if tensorboard and not tensorboard_available():
        print("TensorBoard is not installed (pip install tensorboard; Colab has it): no TensorBoard logs this run")
    elif tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs" / stage), histogram_freq=0,
                                                     write_graph=False, profile_batch=0))
    return callbacks


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def compile_for_stage(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def run_directory(root, name: str, **settings) -> Path:
    """``root/<name>-<hash of settings>``: a rerun with the same settings finds (and resumes or
    skips) its earlier run; changed settings start afresh instead of resuming a different run."""
    import hashlib

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(root) / f"{name}-{digest}"


def folder_bytes(path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Run:
    """The bookkeeping around Keras' ``fit`` for one configuration: its folder, what is finished,
    timing and memory. The Keras steps themselves (freeze, compile, fit) are the caller's.

    ``Run(root, name, settings)`` works in ``root/<name>-<hash of settings>`` (``run_directory``):
    a rerun with the same settings skips its finished stages (``restore``) and resumes its
    interrupted one (BackupAndRestore's backup); other settings start afresh, and the folders of
    earlier runs of ``name`` with other settings are deleted (``prune``): they can never be
    resumed, they only fill the disk. ``fresh=True`` discards this run's own folder too.

    On disk: ``stages.json`` (each finished stage's layers, rate, epochs, seconds),
    ``training_log.csv``, ``best.weights.h5`` (the best epoch so far, no optimizer state),
    ``<stage>.weights.h5`` of the LAST finished stage only (what the next stage starts from;
    earlier ones are superseded and deleted) and, while a stage runs, ``backup/<stage>``
    (weights and optimizer state, deleted by Keras when the stage ends). ``complete(model)``
    leaves the best epoch's weights in the model and deletes the last stage's weights: a
    finished run is its best weights, its log and its TensorBoard events.

    ``Run(folder)`` (no name) uses ``folder`` as it is: no settings hash, nothing pruned.
    """

    def __init__(self, root, name: str | None = None, settings: Mapping | None = None, *, fresh: bool = False,
                 prune: bool = True):
        import shutil

        self.settings = dict(settings or {})
        if name is None:  # ``root`` is the run's folder itself, used as is (notebook 06's folds)
            self.dir, self.name, prune = Path(root), Path(root).name, False
        else:
            self.name = str(name)
            self.dir = run_directory(root, self.name, **self.settings)
        self.pruned: list[Path] = []
        self.pruned_bytes = 0
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        if prune and self.dir.parent.is_dir():
            for other in sorted(self.dir.parent.glob(f"{self.name}-*")):
                if other != self.dir and other.is_dir() and len(other.name) == len(self.dir.name):
                    self.pruned_bytes += folder_bytes(other)
                    shutil.rmtree(other)
                    self.pruned.append(other)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._timer: EpochTimer | None = None

    # ------------------------------------------------------------------ state on disk
    @property
    def best_path(self) -> Path:
        return self.dir / BEST_WEIGHTS

    def finished(self) -> dict:
        """``{stage: StageResult fields}`` of the finished stages, in the order they ran."""
        path = self.dir / STAGES_FILE
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {k: v for k, v in data.items() if k != "complete"}

    @property
    def is_complete(self) -> bool:
        path = self.dir / STAGES_FILE
        return path.is_file() and bool(json.loads(path.read_text(encoding="utf-8")).get("complete"))

    def stages(self) -> list[StageResult]:
        return [StageResult(**fields) for fields in self.finished().values()]

    def history(self) -> pd.DataFrame:
        """Every finished epoch of every stage, one row each (the CSVLogger file)."""
        return read_log(self.dir)

    def best_score(self, monitor: str = "val_accuracy") -> float | None:
        return best_score(self.dir, monitor)

    def _write(self, finished: dict, complete: bool = False) -> None:
        write_json_atomic(self.dir / STAGES_FILE, {**finished, **({"complete": True} if complete else {})})

    # ------------------------------------------------------------------ around fit
    def restore(self, stage: str, model: keras.Model) -> bool:
        """True when ``stage`` finished in an earlier session (skip it); the model then gets the
        weights the next stage starts from (those of the last finished stage)."""
        finished = self.finished()
        if stage not in finished:
            return False
        if list(finished)[-1] == stage and not self.is_complete:
            model.load_weights(self.dir / f"{stage}.weights.h5")
        return True

    def bookkeeping(self, stage: str) -> list[keras.callbacks.Callback]:
        """Callbacks that measure, not train: seconds per epoch, dropout masks fixed by the epoch
        (so a resumed run equals an uninterrupted one). Put them first in ``callbacks``."""
        reset_peak_memory()
        self._timer = EpochTimer()
        return [EpochSeededDropout(), self._timer]

    def finish_stage(self, stage: str, model: keras.Model, history) -> StageResult:
        """Record a stage that ``fit`` completed: its layers, rate, epochs and seconds, and its
        final weights (what the next stage starts from); the previous stage's weights are
        deleted and the optimizer state leaves both those files and ``best.weights.h5``."""
        trainable = sorted(layer.name for layer in model.layers if layer.trainable and layer.weights)
        result = StageResult(name=stage, trainable=trainable, learning_rate=learning_rate_of(model),
                             epochs_run=len(history.epoch),
                             epoch_seconds=list(self._timer.seconds) if self._timer else [],
                             history={k: [float(v) for v in vs] for k, vs in history.history.items()},
                             peak_memory=peak_memory_bytes())
        drop_optimizer_state(model)
        with atomic_path(self.dir / f"{stage}.weights.h5") as tmp:
            model.save_weights(tmp)
        if self.best_path.is_file():  # ModelCheckpoint wrote the optimizer's moments with the weights
            final = model.get_weights()
            load_weights_quietly(model, self.best_path)
            with atomic_path(self.best_path) as tmp:
                model.save_weights(tmp)
            model.set_weights(final)
        finished = self.finished()
        for earlier in finished:
            (self.dir / f"{earlier}.weights.h5").unlink(missing_ok=True)
        finished[stage] = dataclasses.asdict(result)
        self._write(finished)
        return result

    def complete(self, model: keras.Model) -> None:
        """The run is over: the best epoch's weights into ``model``, superseded files deleted."""
        finished = self.finished()
        if self.best_path.is_file():
            load_weights_quietly(model, self.best_path)
            for stage in finished:
                (self.dir / f"{stage}.weights.h5").unlink(missing_ok=True)
        backup = self.dir / "backup"
        if backup.is_dir() and not any(backup.iterdir()):  # Keras deletes backup/<stage>, not backup/
            backup.rmdir()
        self._write(finished, complete=True)

    # ------------------------------------------------------------------ numbers
    def peak_memory(self) -> int | None:
        measured = [s.peak_memory for s in self.stages() if s.peak_memory]
        return max(measured) if measured else None

    def summary(self, *, from_block, test_accuracy: float, trainable_params: int,
                estimated_memory_bytes: int) -> dict:
        """This configuration's entry of ``finetune_summary.json`` (exactly ``CONFIG_KEYS``)."""
        stages = self.stages()
        return {"from_block": from_block, "val_accuracy": self.best_score(), "test_accuracy": float(test_accuracy),
                "epoch_seconds": stages[-1].seconds_per_epoch if stages else None,
                "trainable_params": int(trainable_params), "estimated_memory_bytes": int(estimated_memory_bytes),
                "peak_memory_bytes": self.peak_memory(), "epochs_run": sum(s.epochs_run for s in stages)}

    def disk_bytes(self) -> int:
        return folder_bytes(self.dir)


def learning_rate_of(model: keras.Model) -> float:
    """The learning rate ``model`` was compiled with (through a mixed-precision loss-scale wrapper)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def drop_optimizer_state(model: keras.Model) -> None:
    """Recompile ``model`` with a fresh Adam at the same rate, so that files saved from it hold
    weights only. Keras writes a built optimizer's state into ``.keras`` AND ``.weights.h5``
    files: Adam's two moments per trainable weight, up to twice the weights (1.2 GB for the
    full VGG-Face). Call it once a stage is over; the next stage compiles anew anyway. A model
    never compiled in this session (every stage was finished before a reconnect) has no
    optimizer, hence no state: nothing to do."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        compile_for_stage(model, learning_rate_of(model))


def load_weights_quietly(model: keras.Model, path) -> None:
    """``model.load_weights(path)`` without the warning Keras gives when the file's optimizer
    state (a checkpoint written mid-stage) does not match the model's fresh optimizer: only the
    layers' weights matter here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


@dataclass
class TrainingRun:
    run_dir: Path
    best_path: Path
    stages: list[StageResult] = field(default_factory=list)
    curve: pd.DataFrame | None = None

    @property
    def history(self) -> pd.DataFrame:
        """Both stages' logs, one row per epoch (the CSVLogger file)."""
        return read_log(self.run_dir)


def best_score(run_dir, monitor: str = "val_accuracy") -> float | None:
    """The best ``monitor`` value logged so far in ``run_dir`` (None before any finished epoch)."""
    log = read_log(run_dir)
    return float(log[monitor].max()) if monitor in log and len(log) else None


def read_log(run_dir) -> pd.DataFrame:
    """``training_log.csv`` of a run; empty when no epoch has finished yet (the CSVLogger
    creates the file, header-less, before the first epoch ends)."""
    path = Path(run_dir) / LOG_FILE
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def train_two_stage(model: keras.Model, train, val, plan: FreezePlan, *, run_dir=None, run: Run | None = None,
                    patience: int = 3, eval_sets: Mapping[str, object] | None = None, tensorboard: bool = True,
                    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
                    verbose: int | str = "auto") -> TrainingRun:
    """Notebook 05's two stages as one function (for notebook 06 and later): stage ``head``
    (``fc8`` alone at ``plan.head_lr``), then stage ``finetune`` (``plan.trainable`` at
    ``plan.finetune_lr``), continuing the epoch count, each skipped when an earlier session
    finished it and resumed when it was interrupted.

    ``model`` must already carry the gender head (``vggface.replace_head``). ``train``/``val``
    are datasets of (images, labels) batches. ``run`` (a ``Run``) or ``run_dir`` (a folder, used
    as is) holds the bookkeeping. ``eval_sets`` are scored before and after every epoch
    (``AccuracyCurve``). On return the model holds the BEST epoch's weights (chosen on
    validation; ``run.best_path``), as the notebook's cell leaves it.
    """
    plan.check(model)
    if run is None:
        if run_dir is None:
            raise ValueError("train_two_stage needs run_dir or run")
        run = Run(run_dir)
    curve = AccuracyCurve(eval_sets) if eval_sets else None
    stages = [("head", {HEAD_LAYER}, plan.head_lr, 0, plan.head_epochs),
              ("finetune", plan.trainable, plan.finetune_lr, plan.head_epochs,
               plan.head_epochs + plan.finetune_epochs)]
    for stage, trainable, learning_rate, first, last in stages:
        if first == last or run.restore(stage, model):
            continue
        for layer in model.layers:
            layer.trainable = layer.name in trainable
        compile_for_stage(model, learning_rate)
        # shuffle=False: the dataset shuffles itself (helpers.pipeline, seeded); Keras cannot shuffle one
        history = model.fit(train, validation_data=val, initial_epoch=first, epochs=last, shuffle=False,
                            callbacks=[*run.bookkeeping(stage),
                                       *training_callbacks(run.dir, stage, patience=patience,
                                                           best_value=run.best_score(), tensorboard=tensorboard),
                                       *([curve] if curve else []), *extra_callbacks],
                            verbose=verbose)
        run.finish_stage(stage, model, history)
    run.complete(model)
    return TrainingRun(run_dir=run.dir, best_path=run.best_path, stages=run.stages(),
                       curve=curve.frame if curve is not None else None)


def estimate_stage_seconds(model: keras.Model, images, labels, *, trainable: Iterable[str],
                           steps_per_epoch: int, learning_rate: float = DEFAULT_FINETUNE_LR,
                           timed_steps: int = 3) -> float:
    """Seconds one epoch of a stage will take, from a few timed steps on a copy of the model.

    ``images``/``labels`` are ONE batch. The first step (graph tracing) is not timed. The
    model itself is not changed.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    apply_freeze_plan(copy, FreezePlan(), trainable=trainable)
    compile_for_stage(copy, learning_rate)
    copy.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(int(timed_steps)):
        copy.train_on_batch(images, labels)
    return (time.perf_counter() - start) / int(timed_steps) * int(steps_per_epoch)


# ============================================================================ the split, and what 05 leaves for 06

# The case study trains on fold 0 and tests on fold 1. Its validation set decides the best epoch,
# the best configuration (and, in notebook 06, a threshold and a temperature), so it must be large
# enough for those decisions: whole users drawn from folds 2-4, which share nobody with either, so
# fold 0 stays whole for training. Faces of one person are alike, so what counts is people as much
# as faces: at least a quarter of those folds' faces AND at least 50 users. Full mode (~460 users
# per fold): a quarter, ~2,600 faces, ~1/4 of a training epoch's cost. Quick mode (~36 users per
# fold): about half, ~600 faces (>= ~150 needed; the person-level standard error ~3 points).
CASE_STUDY_TRAIN_FOLDS = (0,)
CASE_STUDY_TEST_FOLD = 1
CASE_STUDY_VAL_FOLDS = (2, 3, 4)
CASE_STUDY_VAL_FRACTION = 0.25
CASE_STUDY_VAL_MIN_USERS = 50
FOLD_VAL_FRACTION = 0.1
SPLIT_KINDS = ("case_study", "fold")

SUMMARY_SCHEMA = 1
SUMMARY_FILE = "finetune_summary.json"
SUMMARY_KEYS = ("schema", "best", "configs", "split", "protocol", "class_names", "image_size", "resize",
                "mode", "seed")
CONFIG_KEYS = ("from_block", "val_accuracy", "test_accuracy", "epoch_seconds", "trainable_params",
               "estimated_memory_bytes", "peak_memory_bytes", "epochs_run")


def make_split(df: pd.DataFrame, kind: str = "case_study", *, seed: int = 0, test_fold: int | None = None,
               val_folds: Sequence[int] | None = None, val_fraction: float | None = None,
               val_min_users: int | None = None, train_folds: Sequence[int] | None = None):
    """The (train, val, test) split notebooks 04 and 05 train on, and its description.

    ``"case_study"``: train on fold 0, test on fold 1, validation = whole users drawn (seeded) from
    folds 2-4 until they hold ``val_fraction`` (0.25) of those folds' faces and at least
    ``val_min_users`` (50) users (all of them when there are fewer). ``"fold"``: test on
    ``test_fold``, train on the other folds, validation carved by user from training
    (``val_fraction`` 0.1, ``data.fold_split``). Returns ``(data.Split, spec)``; ``spec`` is the
    ``split`` entry of ``finetune_summary.json`` and ``make_split(df, **spec)`` gives the same split.
    """
    from . import data

    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}: expected one of {SPLIT_KINDS}")
    if "fold" not in df or df["fold"].isna().all():
        raise ValueError("the faces have no folds (a folder, CSV or UTKFace reader leaves fold empty): "
                         "call helpers.data.assign_folds(df) first")
    seed = int(seed)
    if kind == "fold":
        if test_fold is None:
            raise ValueError("a 'fold' split needs test_fold")
        fraction = FOLD_VAL_FRACTION if val_fraction is None else float(val_fraction)
        split = data.fold_split(df, int(test_fold), val_fraction=fraction, seed=seed)
        spec = {"kind": "fold", "test_fold": int(test_fold), "val_fraction": fraction, "seed": seed}
        return split, spec
    train_folds = [int(f) for f in (CASE_STUDY_TRAIN_FOLDS if train_folds is None else train_folds)]
    test_fold = CASE_STUDY_TEST_FOLD if test_fold is None else int(test_fold)
    val_folds = [int(f) for f in (CASE_STUDY_VAL_FOLDS if val_folds is None else val_folds)]
    fraction = CASE_STUDY_VAL_FRACTION if val_fraction is None else float(val_fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {fraction}")
    roles = [*train_folds, test_fold, *val_folds]
    if len(set(roles)) != len(roles):
        raise ValueError(f"train folds {train_folds}, test fold {test_fold} and validation folds {val_folds} "
                         "must not overlap")
    present = set(int(f) for f in df["fold"].dropna().unique())
    missing = sorted(set(roles) - present)
    if missing:
        raise ValueError(f"the case-study split needs folds {sorted(roles)}; the faces have no fold(s) {missing} "
                         f"(folds present: {sorted(present)})")
    min_users = CASE_STUDY_VAL_MIN_USERS if val_min_users is None else int(val_min_users)
    pool = df.loc[df["fold"].isin(val_folds)]
    users = np.array(sorted(pool["user_id"].unique()))
    np.random.default_rng(seed).shuffle(users)
    per_user = pool["user_id"].value_counts()
    faces = np.cumsum(per_user[users].to_numpy())
    # the first users (in the seeded order) that reach both targets
    enough = np.flatnonzero((faces >= fraction * len(pool)) & (np.arange(1, len(users) + 1) >= min_users))
    chosen = users[:enough[0] + 1] if len(enough) else users
    val = pool.loc[pool["user_id"].isin(chosen)].copy()
    split = data.Split(df.loc[df["fold"].isin(train_folds)].copy(), val,
                       df.loc[df["fold"] == test_fold].copy())
    data.check_subject_exclusive(*split, context="the case-study split")
    spec = {"kind": "case_study", "train_folds": train_folds, "test_fold": test_fold, "val_folds": val_folds,
            "val_fraction": fraction, "val_min_users": min_users, "seed": seed}
    return split, spec


def split_from_summary(df: pd.DataFrame, summary: Mapping):
    """The split a summary (``read_summary``) names, reproduced on ``df``: a ``data.Split``."""
    return make_split(df, **summary["split"])[0]


def _check_from_block(name: str, value) -> None:
    ok = (isinstance(value, str) and bool(value)) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1) \
        or (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value))
    if not ok:
        raise ValueError(f"configuration {name!r}: from_block must be a layer group name ('head', 'block5'), "
                         f"a group number 1.., or a list of layer names; got {value!r}")


def _check_summary(summary: Mapping, where: str) -> None:
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    extra = [k for k in summary if k not in SUMMARY_KEYS]
    if missing or extra:
        raise ValueError(f"{where}: a fine-tuning summary has exactly the keys {list(SUMMARY_KEYS)}; "
                         f"missing {missing}, unexpected {extra}")
    configs = summary["configs"]
    if not isinstance(configs, Mapping) or not configs:
        raise ValueError(f"{where}: 'configs' must map configuration names to their numbers, got {configs!r}")
    for name, config in configs.items():
        missing = [k for k in CONFIG_KEYS if k not in config]
        extra = [k for k in config if k not in CONFIG_KEYS]
        if missing or extra:
            raise ValueError(f"{where}: configuration {name!r} has exactly the keys {list(CONFIG_KEYS)}; "
                             f"missing {missing}, unexpected {extra}")
        _check_from_block(name, config["from_block"])
    if summary["best"] not in configs:
        raise ValueError(f"{where}: best configuration {summary['best']!r} is not among {list(configs)}")
    split = summary["split"]
    if not isinstance(split, Mapping) or split.get("kind") not in SPLIT_KINDS:
        raise ValueError(f"{where}: 'split' must be a dict whose kind is one of {SPLIT_KINDS}, got {split!r}")


def write_summary(path, *, best: str, configs: Mapping[str, Mapping], split: Mapping, protocol: str,
                  class_names: Sequence[str], image_size: Sequence[int], resize: str, mode: str,
                  seed: int) -> Path:
    """Write ``finetune_summary.json`` (notebook 05 -> notebook 06), atomically, in schema ``SUMMARY_SCHEMA``.

    ``configs``: name -> the ``CONFIG_KEYS`` (``peak_memory_bytes`` None where not measured);
    ``best``: the configuration chosen on validation; ``split``: ``make_split``'s spec.
    """
    from .course import results
    from .course.fileio import write_json_atomic

    summary = {"schema": SUMMARY_SCHEMA, "best": str(best),
               "configs": {str(n): dict(c) for n, c in configs.items()},
               "split": dict(split), "protocol": str(protocol), "class_names": [str(c) for c in class_names],
               "image_size": [int(v) for v in image_size], "resize": str(resize), "mode": str(mode),
               "seed": int(seed)}
    summary = results.to_jsonable(summary)
    _check_summary(summary, str(path))
    return write_json_atomic(path, summary, allow_nan=False)


def read_summary(path) -> dict | None:
    """``finetune_summary.json`` as a dict with exactly ``SUMMARY_KEYS``, or None.

    None when the file does not exist, or when it was written in another schema (an older
    course version): a line says so, and the caller proceeds as without a summary. A file in
    this schema that is broken raises ``ValueError`` naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it and rerun notebook 05") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    if summary.get("schema") != SUMMARY_SCHEMA:
        print(f"{path} was written in schema {summary.get('schema')!r}, this course reads schema "
              f"{SUMMARY_SCHEMA}: ignored (rerun notebook 05 to rewrite it)")
        return None
    _check_summary(summary, str(path))
    return summary


def load_head(path, model: keras.Model, class_names: Sequence[str]) -> tuple[keras.Model | None, str]:
    """Notebook 04's head (``head_only_fc8.keras``) when it fits ``model``'s ``fc7`` and these
    classes: ``(head, what)``; ``(None, why not)`` otherwise (a fresh runtime has no file)."""
    path = Path(path)
    if not path.is_file():
        return None, f"no {path.name} (notebook 04 has not run here, or its files are not on this runtime)"
    head = keras.saving.load_model(path, compile=False)  # the weights; no optimizer to restore
    names = vggface.class_names(head)
    width = model.get_layer(FEATURE_LAYER).units
    if names != list(class_names) or head.input_shape[-1] != width:
        return None, (f"{path.name} predicts {names} from {head.input_shape[-1]} features; this model needs "
                      f"{list(class_names)} from {width}")
    return head, f"notebook 04's head ({path})"


# ============================================================================ figures of notebooks 04 and 05
# Each draws on its own figure and returns it (matplotlib is imported here, not at module import).

def _caption_color(true: int, predicted: int | None) -> str:
    return "black" if predicted is None or predicted == true else "tab:red"


def show_batch(images, labels, class_names: Sequence[str], probs=None, *, ncols: int = 8, title: str = ""):
    """Faces (RGB 0-255) with their true label; with ``probs``, also the prediction and its
    probability (mistakes in red): fast.ai's ``show_batch`` / ``show_results``."""
    from . import plots

    images = np.asarray(images)
    labels = np.asarray(labels).astype(int)
    captions, colors = [], []
    for i, label in enumerate(labels):
        if probs is None:
            caption, predicted = f"true {class_names[label]}", None
        else:
            predicted = int(np.argmax(probs[i]))
            caption = f"{class_names[label]} → {class_names[predicted]} {float(probs[i][predicted]):.2f}"
        captions.append(caption)
        colors.append(_caption_color(label, predicted))
    return plots.face_gallery(images, captions, title=title, ncols=ncols, colors=colors)


def confident_mistakes(probs, labels, k: int = 8) -> np.ndarray:
    """Indices of the ``k`` mistakes made with the highest probability for the wrong class."""
    probs = np.asarray(probs)
    labels = np.asarray(labels).astype(int)
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} predictions but {len(labels)} labels")
    predicted = probs.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:int(k)]


def preprocessed_for_display(preprocessed) -> np.ndarray:
    """What the network's first convolution reads (BGR minus the mean), rescaled to 0-1 for
    display, channels kept in the network's B, G, R order (so skin looks blue)."""
    x = np.asarray(preprocessed, dtype="float32")
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def plot_input_views(original, augmented, preprocessed, direct, crop, *, title: str = ""):
    """One training face: the file as stored, what the pipeline's augmentations make of it (a
    grid), what the model's preprocessing layer makes of it, and the two resizes side by side."""
    import matplotlib.pyplot as plt

    augmented = np.asarray(augmented)
    ncols = max(4, -(-len(augmented) // 2))
    fig = plt.figure(figsize=(2.0 * ncols, 6.6))
    grid = fig.add_gridspec(3, ncols)
    original = np.asarray(original)
    panels = [(original, f"the file\n{original.shape[1]}×{original.shape[0]} px"),
              (direct, f"'direct' resize\nto {direct.shape[1]}×{direct.shape[0]}"),
              (crop, "'crop': short side ×256/224,\ncentre crop"),
              (preprocessed_for_display(preprocessed), "preprocess: BGR − mean\n(rescaled, B,G,R shown as R,G,B)")]
    for j, (img, caption) in enumerate(panels):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(img if img.dtype.kind == "f" and img.max() <= 1.0 else np.clip(img, 0, 255).astype(np.uint8))
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    for i, img in enumerate(augmented[:2 * ncols]):
        ax = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
        ax.set_title(f"augmented #{i + 1}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title or "one training face, as the network receives it", fontsize=10)
    fig.tight_layout()
    return fig


def plot_lr_range(table: pd.DataFrame, *, chosen: float | None = None, suggestion: Mapping | None = None,
                  title: str = "learning-rate range test"):
    """Smoothed loss against the learning rate (log scale), with the chosen rate and the test's readings."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(table["lr"], table["loss"], color="lightgrey", lw=1, label="loss of each batch")
    ax.plot(table["lr"], table["smoothed"], color="tab:blue", lw=2, label="smoothed")
    if suggestion:
        ax.axvline(suggestion["steepest"], color="tab:green", ls="--",
                   label=f"steepest descent {suggestion['steepest']:.0e}")
        ax.axvline(suggestion["min_loss"], color="tab:orange", ls="--", label=f"lowest loss {suggestion['min_loss']:.0e}")
    if chosen is not None:
        ax.axvline(chosen, color="black", lw=2, label=f"the rate we train with {chosen:.0e}")
    top = float(np.nanpercentile(table["smoothed"], 95))
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=title,
           ylim=(0, max(top, float(table["smoothed"].iloc[0])) * 1.3))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_validation_curves(curves: Mapping[str, pd.DataFrame], *, head_epochs: int = 0, majority: float | None = None,
                           se: float | None = None, start: float | None = None,
                           title: str = "validation accuracy, epoch by epoch"):
    """Each configuration's validation accuracy per epoch (``epoch`` 0-based as Keras logs it,
    drawn as 1..n) on one plot, from ``start`` (the accuracy every configuration starts from, at
    epoch 0); a line where stage 2 starts, the majority class, and a band of ±2 standard errors
    below the best point (how far apart two epochs must be to differ)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.8))
    best = None
    for name, log in curves.items():
        if len(log) == 0:
            continue
        epochs = log["epoch"].to_numpy() + 1
        values = log["val_accuracy"].to_numpy()
        if start is not None:
            epochs, values = np.concatenate([[0], epochs]), np.concatenate([[start], values])
        ax.plot(epochs, values, "o-", label=name)
        top = float(log["val_accuracy"].max())
        best = top if best is None else max(best, top)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if head_epochs:
        ax.axvline(head_epochs + 0.5, color="grey", ls=":", label="stage 2 begins")
    if majority is not None:
        ax.axhline(majority, color="black", ls="--", lw=1, label=f"majority class {majority:.1%}")
    if se is not None and best is not None:
        ax.axhspan(best - 2 * se, best, color="tab:blue", alpha=0.08, label=f"best − 2 SE (±{2 * se:.1%})")
    ax.set(xlabel="epoch" + (" (0: where every configuration starts)" if start is not None else ""),
           ylabel="validation accuracy", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_comparison(table: pd.DataFrame, *, majority: Mapping[str, float] | None = None,
                    title: str = "configurations: accuracy ± 2 standard errors"):
    """Bars of validation and test accuracy per configuration (``table`` indexed by name with
    ``val_accuracy``, ``val_se``, ``test_accuracy``, ``test_se``), error bars of ±2 standard
    errors, and each set's majority-class accuracy as a dashed line."""
    import matplotlib.pyplot as plt

    names = list(table.index)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(names) + 2), 3.8))
    for offset, (column, color, label) in zip((-0.2, 0.2), (("val", "tab:orange", "validation"),
                                                            ("test", "tab:blue", "test"))):
        acc = table[f"{column}_accuracy"].astype(float).to_numpy()
        ax.bar(x + offset, acc, width=0.4, color=color, alpha=0.8, label=label)
        ax.errorbar(x + offset, acc, yerr=2 * table[f"{column}_se"].astype(float).to_numpy(), fmt="none",
                    ecolor="black", capsize=3)
        if majority and label in majority:
            ax.axhline(majority[label], color=color, ls="--", lw=1, label=f"majority class, {label} {majority[label]:.1%}")
    acc = table[["val_accuracy", "test_accuracy"]].to_numpy(dtype=float)
    lowest = float((acc - 2 * table[["val_se", "test_se"]].to_numpy(dtype=float)).min())
    if majority:
        lowest = min(lowest, *majority.values())
    ax.set_xticks(x, names, rotation=15)
    ax.set(ylabel="accuracy", ylim=(max(0.0, lowest - 0.05), 1.0), title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_memory(estimates: Mapping[str, Mapping[str, MemoryEstimate]], *,
                measured: Mapping[str, Mapping[str, int | None]] | None = None,
                limits: Mapping[str, tuple[float, str]] | None = None):
    """Stacked bars of the training-memory estimate per configuration (weights, gradients, Adam's
    moments, activations), one panel per setting (``{setting: {configuration: MemoryEstimate}}``,
    e.g. this run, and the full size on a T4); ``measured`` (``{setting: {configuration: bytes}}``,
    a GPU allocator's peak) as a black tick, ``limits`` (``{setting: (bytes, label)}``) as a line."""
    import matplotlib.pyplot as plt

    kinds = (("weights", "tab:grey"), ("gradients", "tab:orange"), ("optimizer", "tab:red"), ("activations", "tab:blue"))
    fig, axes = plt.subplots(1, len(estimates), figsize=(5.4 * len(estimates), 0.5 * max(map(len, estimates.values())) + 2.2),
                             squeeze=False)
    for ax, (setting, per_config) in zip(axes[0], estimates.items()):
        names = list(per_config)
        y = np.arange(len(names))
        largest = max([e.total for e in per_config.values()] + [(limits or {}).get(setting, (0, ""))[0]])
        scale, unit = (2 ** 30, "GiB") if largest > 2 ** 30 else (2 ** 20, "MiB")
        left = np.zeros(len(names))
        for kind, color in kinds:
            values = np.array([getattr(per_config[n], kind) for n in names]) / scale
            ax.barh(y, values, left=left, color=color, label=kind)
            left += values
        peaks = {n: p for n, p in (measured or {}).get(setting, {}).items() if p}
        for i, n in enumerate(names):
            ax.text(left[i], i, f" {per_config[n].total / scale:.2f} {unit}", va="center", fontsize=8)
            if n in peaks:
                ax.plot([peaks[n] / scale] * 2, [i - 0.4, i + 0.4], color="black", lw=2,
                        label="measured peak" if n == next(iter(peaks)) else None)
        if limits and setting in limits:
            limit, label = limits[setting]
            ax.axvline(limit / scale, color="black", ls="--", lw=1, label=label)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set(xlabel=unit, title=setting, xlim=(0, largest / scale * 1.3))
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), fontsize=8, loc="lower center", ncol=len(handles))
    fig.suptitle("training memory per configuration, estimated", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_plan(model: keras.Model, plan: FreezePlan):
    """Parameters per layer group (log scale): orange where the plan trains, grey where it freezes."""
    import matplotlib.pyplot as plt

    groups = layer_groups(model)
    params = {g: sum(_params(model.get_layer(n)) for n in names) for g, names in groups.items()}
    trains = {g: any(n in plan.trainable for n in names) for g, names in groups.items()}
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.bar(list(params), list(params.values()), color=["tab:orange" if trains[g] else "tab:grey" for g in params])
    ax.set(yscale="log", ylabel="parameters", title="orange: trains in stage 2, grey: frozen")
    fig.tight_layout()
    return fig
