"""Fine-tuning VGG-Face for gender: freezing plans, a head on cached features, two-stage training.

The pieces notebooks 04 and 05 (and the cross-validation of notebook 06) train with:

- **Freezing plans.** ``FreezePlan`` is a plain object (the set of layers that train, a
  learning rate and a number of epochs per stage) that the freezing panel of
  ``helpers.widgets`` edits and the training functions take, so a notebook runs headless with
  the default plan. ``apply_freeze_plan`` sets ``layer.trainable``; only layers with weights are
  touched, so Dropout (``drop6``, ``drop7``) stays active while training whatever is frozen,
  and frozen layers run in inference mode.
- **The head on cached features.** With the base frozen and in inference mode, ``drop7`` is the
  identity, so the new ``fc8`` sees exactly ``fc7``'s output: training a small head model on
  ``fc7`` features extracted once is the same computation as training ``fc8`` on the frozen
  network fed with images (minus augmentation), only much faster. ``assemble_gender_model``
  puts the trained head back on the network.
- **Two stages.** Train the head, then unfreeze the plan's layers and continue at a low
  learning rate, with Keras' own machinery: ``ModelCheckpoint`` (best ``.keras``),
  ``CSVLogger``, ``EarlyStopping``, ``BackupAndRestore`` (an interrupted run resumes from its
  last finished epoch), ``TensorBoard``, progress bars.
- **Reproducibility and precision.** ``set_seeds`` (seeded, deterministic ops on CPU),
  ``EpochSeededDropout`` (dropout masks depend on the epoch only, so a resumed run equals an
  uninterrupted one), ``with_precision`` (``mixed_float16`` on a GPU, output layer in float32).
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
    """Bytes training needs, by kind (float32 unless ``bytes_per_value`` says otherwise)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def __str__(self) -> str:
        return (f"~{format_bytes(self.total)} (weights {format_bytes(self.weights)}, gradients "
                f"{format_bytes(self.gradients)}, optimizer {format_bytes(self.optimizer)}, "
                f"activations {format_bytes(self.activations)})")


def estimate_training_memory(model: keras.Model, plan: FreezePlan, batch_size: int, *,
                             optimizer_slots: int = 2, bytes_per_value: int = 4) -> MemoryEstimate:
    """A first-order estimate of the memory one training step needs under ``plan``.

    Weights are all held; gradients exist for trainable weights only; Adam keeps
    ``optimizer_slots`` (2) values per trainable weight. Backpropagation must keep the output
    of every layer from the first trainable one up (and that layer's input) for the batch;
    below it, only one layer's output lives at a time, so frozen early blocks cost little.
    """
    counts = trainable_counts(model, plan)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    first = next((i for i, layer in enumerate(layers) if layer.name in plan.trainable), len(layers))
    sizes = [_output_values(layer) for layer in layers]
    kept = sum(sizes[first:]) + (sizes[first - 1] if 0 < first < len(sizes) else 0)
    transient = max(sizes[:first], default=0)
    activations = int(batch_size) * (kept + transient) * bytes_per_value
    return MemoryEstimate(
        weights=counts["total"] * bytes_per_value,
        gradients=counts["trainable"] * bytes_per_value,
        optimizer=counts["trainable"] * optimizer_slots * bytes_per_value,
        activations=activations,
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
    return keras.Model(model.inputs, model.get_layer(HEAD_LAYER).output, name=f"{model.name}_logits")


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


def accuracy(model: keras.Model, data, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` arrays or a dataset of ``(x, y[, w])`` batches,
    counted over every row.

    Called eagerly batch by batch: ``predict`` would retrace its graph for every new array size.
    """
    if isinstance(data, tuple):
        data = array_batches(*data, batch_size=batch_size)
    correct = total = 0
    for batch in data:
        images, labels = batch[0], np.asarray(batch[1])
        predicted = keras.ops.convert_to_numpy(model(images, training=False)).argmax(-1)
        correct += int(np.sum(predicted == labels))
        total += len(labels)
    if total == 0:
        raise ValueError("cannot measure accuracy on an empty dataset")
    return correct / total


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



# ============================================================================ precision

def precision_policy() -> str:
    """``mixed_float16`` when a GPU is present (Tensor Cores), else ``float32``."""
    return "mixed_float16" if gpu_available() else "float32"


def with_precision(model: keras.Model, policy: str) -> keras.Model:
    """A copy of ``model`` whose layers compute in ``policy``, with ``FLOAT32_LAYERS`` in float32.

    Mixed precision keeps the variables in float32 (so the weights copy over exactly) and
    computes in float16; the model's output stays float32.
    """
    if policy == "float32":
        return model

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in FLOAT32_LAYERS else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
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


# ============================================================================ two-stage training

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


def training_callbacks(run_dir, stage: str, *, monitor: str = "val_accuracy", patience: int = 3,
                       best_value: float | None = None, tensorboard: bool = True,
                       seed_dropout: bool = True) -> list[keras.callbacks.Callback]:
    """Keras' callbacks for one stage of a run in ``run_dir``.

    ``best.keras`` (ModelCheckpoint, across stages: ``best_value`` carries the best score so
    far into the next stage), ``training_log.csv`` (CSVLogger, appended), EarlyStopping on
    ``monitor`` (its patience counter restarts after a resume), ``backup/<stage>`` (BackupAndRestore: rerun the
    same cell after an interruption and training resumes after the last finished epoch),
    ``logs/`` (TensorBoard).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup" / stage)),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=monitor, mode="max",
                                        save_best_only=True, initial_value_threshold=best_value),
        keras.callbacks.CSVLogger(str(run_dir / "training_log.csv"), append=True),
        # No restore_best_weights: its memory of the best epoch is not part of the backup, so a
        # resumed run would end on different weights. The best weights are in best.keras.
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(patience)),
    ]
    if seed_dropout:
        callbacks.insert(0, EpochSeededDropout())
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


def run_stage(model: keras.Model, train, val, *, name: str, trainable: Iterable[str], learning_rate: float,
              epochs: int, initial_epoch: int, run_dir, patience: int = 3, best_value: float | None = None,
              extra_callbacks: Sequence[keras.callbacks.Callback] = (), tensorboard: bool = True,
              verbose: int | str = "auto") -> StageResult:
    """Freeze everything but ``trainable``, recompile, and fit epochs ``initial_epoch`` .. ``epochs - 1``.

    The stage's completion is recorded in ``run_dir/stages.json`` with its weights in
    ``run_dir/<name>.weights.h5``; calling it again for a finished stage loads those and
    returns the recorded result (so a rerun after an interruption skips finished stages).
    """
    run_dir = Path(run_dir)
    done = _finished_stages(run_dir)
    trainable = sorted(trainable)
    if name in done:
        model.load_weights(run_dir / f"{name}.weights.h5")
        return StageResult(**done[name])
    apply_freeze_plan(model, FreezePlan(), trainable=trainable)
    compile_for_stage(model, learning_rate)
    timer = EpochTimer()
    reset_peak_memory()
    # the timer first, so an epoch's time is training and validation, not checkpoint writing
    callbacks = [timer, *training_callbacks(run_dir, name, patience=patience, best_value=best_value,
                                            tensorboard=tensorboard), *extra_callbacks]
    # shuffle=False: the dataset shuffles itself (helpers.pipeline, seeded); Keras cannot shuffle one
    history = model.fit(train, validation_data=val, epochs=int(epochs), initial_epoch=int(initial_epoch),
                        callbacks=callbacks, verbose=verbose, shuffle=False)
    result = StageResult(name=name, trainable=trainable, learning_rate=float(learning_rate),
                         epochs_run=len(history.epoch), epoch_seconds=timer.seconds,
                         history={k: [float(v) for v in vs] for k, vs in history.history.items()},
                         peak_memory=peak_memory_bytes())
    with atomic_path(run_dir / f"{name}.weights.h5") as tmp:
        model.save_weights(tmp)
    done[name] = dataclasses.asdict(result)
    write_json_atomic(run_dir / "stages.json", done)
    return result


def _finished_stages(run_dir: Path) -> dict:
    path = run_dir / "stages.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_directory(root, name: str, **settings) -> Path:
    """``root/<name>-<hash of settings>``: a rerun with the same settings finds (and resumes or
    skips) its earlier run; changed settings start afresh instead of resuming a different run."""
    import hashlib

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(root) / f"{name}-{digest}"


def best_score(run_dir, monitor: str = "val_accuracy") -> float | None:
    """The best ``monitor`` value logged so far in ``run_dir`` (None before any finished epoch)."""
    log = read_log(run_dir)
    return float(log[monitor].max()) if monitor in log and len(log) else None


def read_log(run_dir) -> pd.DataFrame:
    """``training_log.csv`` of a run; empty when no epoch has finished yet (the CSVLogger
    creates the file, header-less, before the first epoch ends)."""
    path = Path(run_dir) / "training_log.csv"
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def train_two_stage(model: keras.Model, train, val, plan: FreezePlan, *, run_dir, patience: int = 3,
                    eval_sets: Mapping[str, object] | None = None, tensorboard: bool = True,
                    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
                    verbose: int | str = "auto") -> TrainingRun:
    """Stage ``head`` (fc8 alone at ``plan.head_lr``), then stage ``finetune`` (``plan.trainable``
    at ``plan.finetune_lr``), continuing the epoch count; the best epoch of both is ``best.keras``.

    ``model`` must already carry the gender head (``assemble_gender_model`` or
    ``vggface.replace_head``). ``train``/``val`` are datasets of (images, labels) batches.
    ``eval_sets`` are scored before and after every epoch (``AccuracyCurve``).
    On return the model holds the last epoch's weights; ``run.best_path`` the best epoch's model.
    """
    plan.check(model)
    run_dir = Path(run_dir)
    run = TrainingRun(run_dir=run_dir, best_path=run_dir / "best.keras")
    curve = AccuracyCurve(eval_sets) if eval_sets else None
    extra = [*([curve] if curve else []), *extra_callbacks]
    epoch = 0
    if plan.head_epochs:
        head = run_stage(model, train, val, name="head", trainable=[HEAD_LAYER], learning_rate=plan.head_lr,
                         epochs=plan.head_epochs, initial_epoch=0, run_dir=run_dir, patience=patience,
                         extra_callbacks=extra, tensorboard=tensorboard, verbose=verbose)
        run.stages.append(head)
        epoch = plan.head_epochs
    if plan.finetune_epochs:
        fine = run_stage(model, train, val, name="finetune", trainable=plan.trainable,
                         learning_rate=plan.finetune_lr, epochs=epoch + plan.finetune_epochs,
                         initial_epoch=epoch, run_dir=run_dir, patience=patience,
                         best_value=best_score(run_dir), extra_callbacks=extra,
                         tensorboard=tensorboard, verbose=verbose)
        run.stages.append(fine)
    if curve is not None:
        run.curve = curve.frame
    return run


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
# enough for those decisions: whole users drawn from folds 2-4, which share nobody with either.
# A quarter of those folds: >= ~150 faces in quick mode (a standard error of <= 3 points), ~2,600
# in full mode (a quarter of a training epoch's cost), and fold 0 stays whole for training.
CASE_STUDY_TRAIN_FOLDS = (0,)
CASE_STUDY_TEST_FOLD = 1
CASE_STUDY_VAL_FOLDS = (2, 3, 4)
CASE_STUDY_VAL_FRACTION = 0.25
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
               train_folds: Sequence[int] | None = None):
    """The (train, val, test) split notebooks 04 and 05 train on, and its description.

    ``"case_study"``: train on fold 0, test on fold 1, validation = whole users drawn (seeded) from
    folds 2-4 until they hold ``val_fraction`` (0.25) of those folds' faces. ``"fold"``: test on
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
    pool = df.loc[df["fold"].isin(val_folds)]
    _, val = data.carve_validation(pool, fraction, seed)
    split = data.Split(df.loc[df["fold"].isin(train_folds)].copy(), val,
                       df.loc[df["fold"] == test_fold].copy())
    data.check_subject_exclusive(*split, context="the case-study split")
    spec = {"kind": "case_study", "train_folds": train_folds, "test_fold": test_fold, "val_folds": val_folds,
            "val_fraction": fraction, "seed": seed}
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
