"""Quick mode's world: synthetic faces in Adience's layout and a miniature VGG-Face pretrained on them.

The real course fine-tunes VGG-Face (580 MB, trained on 2.6 million photos of 2,622 people)
on Adience. Quick mode replaces both with a faithful miniature of the same story, built on
this machine in a few minutes, and says plainly that it is synthetic:

- a **source** population of synthetic people with identity labels
  (``data/synthetic/source/faces.npz``), on which a miniature VGG-Face (same 13 convolutions,
  same layer names, 1/8 of the channels, 64x64 input) is trained to recognise identities;
- a disjoint **target** population written exactly like Adience
  (``data/synthetic/adience``: ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>``
  JPEGs and ``fold_0_data.txt`` ... ``fold_4_data.txt``), labelled with gender and age;
- the miniature network published like the real release (``weights/mini_vggface``:
  ``VGG_FACE_deploy.prototxt`` in the V1 syntax, ``VGG_FACE.caffemodel``, ``names.txt``,
  ``sample.png``, ``sample_identity.txt``), so that the conversion notebook runs the same
  code on both.

The network is trained with BatchNorm (plain VGG trains badly from scratch) and the
BatchNorm is folded into the convolution and fc weights before export, so what is published
is the plain Caffe topology.

``ensure_built()`` (and ``python -m helpers.synthetic [--force] [--seed N]``) builds
everything once; a manifest written LAST records the parameters and package versions, and a
later call with the same ones does nothing. Every part is built in a temporary folder and
renamed when complete, so an interrupted build never looks complete. ``story_checks()``
measures that transfer really helps (the numbers the course quotes in quick mode).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import paths
from .fileio import atomic_dir, atomic_path, write_json_atomic, write_text_atomic
from .synthetic_faces import AGE_GROUPS, Person, render_face, sample_nuisance, sample_person

# Bump when the renderer or the training recipe changes: a new version rebuilds cached worlds.
GENERATOR_VERSION = 3
MIN_IMAGE_SIZE = 32  # five 2x2 poolings need at least 32 px to leave a 1x1 map
ADIENCE_COLUMNS = ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
                   "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
# Share of each age group (roughly Adience's own mix) in the target population ...
TARGET_AGE_P = (0.11, 0.10, 0.10, 0.09, 0.28, 0.14, 0.09, 0.09)
# ... and in the source population (mostly adults, like VGG-Face's celebrities).
SOURCE_AGE_P = (0.03, 0.03, 0.05, 0.12, 0.30, 0.22, 0.14, 0.11)
# Probability that a face's gender is written "u" (in Adience mostly babies).
UNKNOWN_GENDER_P = (0.25, 0.10, 0.03, 0.01, 0.01, 0.01, 0.01, 0.02)

# Random streams: every person and image has its own generator, so changing one size never
# reshuffles the rest of the world.
_STREAM_SOURCE, _STREAM_TARGET, _STREAM_USERS = 1, 2, 3

_MALE_NAMES = ("Aaron", "Bruno", "Carl", "Dev", "Emil", "Farid", "Goran", "Hugo", "Ivan", "Jonas",
               "Kofi", "Liam", "Mateo", "Nils", "Omar", "Pavel", "Quentin", "Rafael", "Sven", "Tariq",
               "Umar", "Viktor", "Wei", "Xavier", "Yusuf", "Zane")
_FEMALE_NAMES = ("Ada", "Bea", "Chloe", "Dana", "Elif", "Fatima", "Greta", "Hana", "Ines", "Jia",
                 "Kira", "Lena", "Maya", "Nora", "Olga", "Priya", "Quinn", "Rosa", "Sofia", "Tara",
                 "Uma", "Vera", "Wen", "Ximena", "Yara", "Zoe")


@dataclass(frozen=True)
class SyntheticConfig:
    """Every parameter of the quick-mode world; the manifest stores them all."""

    seed: int = 0
    image_size: int = 64
    source_identities: int = 100
    source_images_per_identity: int = 22
    source_heldout_per_identity: int = 4  # of those, kept out of pretraining to measure it
    target_users: int = 180
    persons_per_user: tuple[int, int] = (1, 3)  # inclusive range
    faces_per_person: tuple[int, int] = (3, 8)  # inclusive range
    n_folds: int = 5
    conv_widths: tuple[int, ...] = (8, 16, 32, 64, 64)
    fc_widths: tuple[int, ...] = (256, 256)
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 3e-3
    dropout: float = 0.3
    jpeg_quality: int = 95

    def validate(self) -> "SyntheticConfig":
        problems = []
        if self.source_identities < 2:
            problems.append(f"source_identities={self.source_identities}: need at least 2 identities to pretrain on")
        if self.source_images_per_identity - self.source_heldout_per_identity < 1:
            problems.append(f"source_images_per_identity={self.source_images_per_identity} with "
                            f"source_heldout_per_identity={self.source_heldout_per_identity}: no training image left")
        if self.source_heldout_per_identity < 1:
            problems.append("source_heldout_per_identity must be at least 1 (held-out accuracy is measured on them)")
        if self.image_size < MIN_IMAGE_SIZE:
            problems.append(f"image_size={self.image_size}: the network's five 2x2 poolings need at least "
                            f"{MIN_IMAGE_SIZE} px")
        if self.n_folds != 5:
            problems.append(f"n_folds={self.n_folds}: Adience's protocol has exactly 5 folds")
        if self.target_users < self.n_folds:
            problems.append(f"target_users={self.target_users}: need at least one user per fold ({self.n_folds})")
        for name in ("persons_per_user", "faces_per_person"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                problems.append(f"{name}={(lo, hi)}: need 1 <= low <= high")
        if len(self.conv_widths) != 5 or len(self.fc_widths) != 2 or min(*self.conv_widths, *self.fc_widths) < 1:
            problems.append(f"conv_widths={self.conv_widths}, fc_widths={self.fc_widths}: need 5 and 2 positive widths")
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            problems.append(f"epochs={self.epochs}, batch_size={self.batch_size}, learning_rate={self.learning_rate}: must be positive")
        if problems:
            raise ValueError("invalid synthetic-world parameters:\n  " + "\n  ".join(problems))
        return self

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------- populations

def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, *[int(i) for i in index]])


def identity_name(index: int, gender: str) -> str:
    """``Synth_0001_Ada``: a made-up name that says it is synthetic, unique by its number."""
    pool = _MALE_NAMES if gender == "m" else _FEMALE_NAMES
    return f"Synth_{index + 1:04d}_{pool[(index * 7) % len(pool)]}"


def source_people(config: SyntheticConfig) -> list[tuple[str, Person]]:
    """The pretraining identities: (name, traits), in fc8's order."""
    people = []
    for i in range(config.source_identities):
        rng = _rng(config.seed, _STREAM_SOURCE, i)
        gender = "m" if rng.random() < 0.5 else "f"
        age = int(rng.choice(len(AGE_GROUPS), p=SOURCE_AGE_P))
        people.append((identity_name(i, gender), sample_person(rng, gender, age)))
    return people


@dataclass(frozen=True)
class TargetFace:
    """One row of the Adience-layout target set."""

    user_id: str
    face_id: int
    original_image: str
    person_index: int  # index of the person in the target population (for tests and analysis)
    image_index: int  # index of this image among the person's images
    gender: str  # the label as written: m, f or u
    age: str  # an Adience age group string
    fold: int

    @property
    def path(self) -> str:
        return f"aligned/{self.user_id}/landmark_aligned_face.{self.face_id}.{self.original_image}"


def target_people(config: SyntheticConfig) -> tuple[list[Person], list[TargetFace]]:
    """The target population (traits per person) and its faces, with users dealt to folds."""
    users = _rng(config.seed, _STREAM_USERS, 0)
    order = users.permutation(config.target_users)  # users dealt round-robin to folds after shuffling
    fold_of_user = {int(u): int(k % config.n_folds) for k, u in enumerate(order)}
    taken_ids: set[str] = set()
    people: list[Person] = []
    faces: list[TargetFace] = []
    for u in range(config.target_users):
        rng = _rng(config.seed, _STREAM_USERS, 1, u)
        while True:  # Flickr-style account ids, unique
            user_id = f"{int(rng.integers(10_000_000, 99_999_999))}@N0{int(rng.integers(0, 9))}"
            if user_id not in taken_ids:
                taken_ids.add(user_id)
                break
        n_persons = int(rng.integers(config.persons_per_user[0], config.persons_per_user[1] + 1))
        for face_id in range(1, n_persons + 1):
            index = len(people)
            prng = _rng(config.seed, _STREAM_TARGET, index)
            gender = "m" if prng.random() < 0.5 else "f"
            age = int(prng.choice(len(AGE_GROUPS), p=TARGET_AGE_P))
            people.append(sample_person(prng, gender, age))
            label = "u" if prng.random() < UNKNOWN_GENDER_P[age] else gender
            n_faces = int(prng.integers(config.faces_per_person[0], config.faces_per_person[1] + 1))
            for k in range(n_faces):
                photo = f"{int(prng.integers(10**10, 10**11))}_{prng.bytes(5).hex()}_o.jpg"
                faces.append(TargetFace(user_id, face_id, photo, index, k, label, AGE_GROUPS[age], fold_of_user[u]))
    return people, faces


# ----------------------------------------------------------------------------- rendering and writing

def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in requirements.txt; printing is the fallback
        print(f"{desc}: {total} ...", flush=True)
        return None
    return tqdm(total=total, desc=desc, leave=True, mininterval=1.0)


def render_source(config: SyntheticConfig, progress: bool = False) -> dict[str, np.ndarray]:
    """All source images: ``images`` uint8 (N, S, S, 3), ``labels`` (identity index),
    ``heldout`` (bool: kept out of pretraining), ``names`` (identity names, fc8 order)."""
    people = source_people(config)
    n_img = config.source_images_per_identity
    images = np.empty((len(people) * n_img, config.image_size, config.image_size, 3), np.uint8)
    labels = np.repeat(np.arange(len(people), dtype=np.int32), n_img)
    heldout = np.tile(np.arange(n_img) >= n_img - config.source_heldout_per_identity, len(people))
    bar = _progress(progress, len(images), "source faces")
    for i, (_, person) in enumerate(people):
        for k in range(n_img):
            images[i * n_img + k] = render_face(person, _rng(config.seed, _STREAM_SOURCE, i, k + 1), config.image_size)
        if bar is not None:
            bar.update(n_img)
    if bar is not None:
        bar.close()
    return {"images": images, "labels": labels, "heldout": heldout,
            "names": np.array([name for name, _ in people]),
            "genders": np.array([p.gender for _, p in people]),
            "ages": np.array([AGE_GROUPS[p.age_index] for _, p in people])}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An ``.npz`` (``numpy.load`` reads it, no pickle) with fixed zip timestamps: same arrays, same bytes."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for key in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    return Path(path)


def load_source(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The source (pretraining) set written by ``ensure_built``."""
    path = Path(path) if path else source_path()
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _fold_row(face: TargetFace, rng: np.random.Generator, nuisance) -> str:
    # Where the face sat in the (imaginary) original photo, and the aligner's angles/score.
    side = int(rng.integers(300, 1400))
    values = (face.user_id, face.original_image, face.face_id, face.age, face.gender,
              int(rng.integers(0, 2000)), int(rng.integers(0, 1500)), side, side + int(rng.integers(0, 3)),
              int(round(-nuisance.angle)), int(round((1 - nuisance.yaw) * 300 * (1 if rng.random() < 0.5 else -1))),
              int(rng.integers(5, 160)))
    return "\t".join(str(v) for v in values)


def write_adience(root: str | os.PathLike, config: SyntheticConfig, progress: bool = False,
                  render: Callable = render_face) -> dict:
    """Render the target population into ``root`` in Adience's layout (atomic: all or nothing)."""
    from PIL import Image

    people, faces = target_people(config)
    rows: list[list[str]] = [[] for _ in range(config.n_folds)]
    bar = _progress(progress, len(faces), "target faces (Adience layout)")
    with atomic_dir(root) as tmp:
        for face in faces:
            rng = _rng(config.seed, _STREAM_TARGET, face.person_index, face.image_index + 1)
            nuisance = sample_nuisance(rng)
            image = render(people[face.person_index], rng, config.image_size, nuisance=nuisance)
            out = tmp / face.path
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out, format="JPEG", quality=config.jpeg_quality)
            rows[face.fold].append(_fold_row(face, rng, nuisance))
            if bar is not None:
                bar.update(1)
        for k, fold_rows in enumerate(rows):
            text = "\t".join(ADIENCE_COLUMNS) + "\n" + "".join(r + "\n" for r in fold_rows)
            (tmp / f"fold_{k}_data.txt").write_text(text, encoding="utf-8")
        (tmp / "README.txt").write_text(
            "SYNTHETIC faces drawn by helpers/synthetic.py for the course's quick mode; not Adience.\n"
            "Same layout as Adience: aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>\n"
            "and fold_0_data.txt ... fold_4_data.txt (tab-separated, Adience's columns).\n", encoding="utf-8")
    if bar is not None:
        bar.close()
    genders = [f.gender for f in faces]
    return {"faces": len(faces), "users": config.target_users, "persons": len(people),
            "faces_per_fold": [len(r) for r in rows],
            "gender_counts": {g: genders.count(g) for g in ("m", "f", "u")}}


# ----------------------------------------------------------------------------- the miniature VGG-Face

def build_training_model(n_classes: int, config: SyntheticConfig):
    """The training twin of the mini VGG-Face: Caffe's names, BatchNorm after every conv and fc.

    Input RGB 0-255; the first layer is the same ``VGGFacePreprocess`` the converted model
    uses, so the weights learned here see exactly what they will see after conversion.
    """
    import keras

    from .vggface import VGGFacePreprocess

    s = config.image_size
    inputs = keras.Input((s, s, 3), name="data")
    x = VGGFacePreprocess(name="preprocess")(inputs)
    for b, (width, n_convs) in enumerate(zip(config.conv_widths, (2, 2, 3, 3, 3)), start=1):
        for i in range(1, n_convs + 1):
            name = f"conv{b}_{i}"
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=name)(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"relu{b}_{i}")(x)
        x = keras.layers.MaxPooling2D(2, 2, name=f"pool{b}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j, width in zip((6, 7), config.fc_widths):
        x = keras.layers.Dense(width, use_bias=False, name=f"fc{j}")(x)
        x = keras.layers.BatchNormalization(name=f"fc{j}_bn")(x)
        x = keras.layers.ReLU(name=f"relu{j}")(x)
        x = keras.layers.Dropout(config.dropout, name=f"drop{j}")(x)
    x = keras.layers.Dense(n_classes, name="fc8")(x)
    outputs = keras.layers.Softmax(name="prob")(x)
    return keras.Model(inputs, outputs, name="mini_vggface_train")


def _augment(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random horizontal flips and small shifts (edge-padded), in numpy so that they are exactly reproducible."""
    n, h, w, _ = images.shape
    flip = rng.random(n) < 0.5
    out = images.copy()
    out[flip] = out[flip, :, ::-1]
    pad = np.pad(out, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    dy = rng.integers(0, 2 * max_shift + 1, n)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    for i in range(n):
        out[i] = pad[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def pretrain(source: dict[str, np.ndarray], config: SyntheticConfig, progress: bool = True):
    """Train the BatchNorm twin on the source identities; returns (model, held-out accuracy)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    try:
        train = ~source["heldout"]
        x_train = source["images"][train].astype(np.float32)
        y_train = source["labels"][train]
        x_held = source["images"][~train].astype(np.float32)
        y_held = source["labels"][~train]
        n_classes = len(source["names"])
        model = build_training_model(n_classes, config)
        steps = config.epochs * int(np.ceil(len(x_train) / config.batch_size))
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.02)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        rng = _rng(config.seed, 9, 0)
        shift = max(1, config.image_size // 16)
        for epoch in range(config.epochs):
            order = rng.permutation(len(x_train))
            xb = _augment(x_train[order], rng, shift)
            t0 = time.time()
            hist = model.fit(xb, y_train[order], batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
            if progress:
                print(f"pretraining epoch {epoch + 1}/{config.epochs}: loss {hist.history['loss'][-1]:.3f}, "
                      f"train accuracy {hist.history['accuracy'][-1]:.3f} ({time.time() - t0:.1f} s)", flush=True)
        probs = model.predict(x_held, batch_size=256, verbose=0)
        accuracy = float(np.mean(np.argmax(probs, -1) == y_held))
        if progress:
            print(f"pretraining: identity accuracy on held-out images {accuracy:.3f}", flush=True)
        return model, accuracy
    finally:
        _disable_op_determinism()


def _disable_op_determinism():
    # Determinism costs speed in the notebooks that train later; public TF only offers "enable".
    try:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
    except (ImportError, AttributeError):
        pass


def netspec_for(config: SyntheticConfig, n_classes: int):
    from .vggface import vggface_netspec

    return vggface_netspec(conv_widths=config.conv_widths, fc_widths=config.fc_widths, n_classes=n_classes,
                           input_hw=(config.image_size, config.image_size), name="MINI_VGG_FACE_synthetic")


def fold_batchnorm(train_model, config: SyntheticConfig, names: list[str]):
    """The plain (Caffe-topology) Keras model with each BatchNorm folded into the layer before it."""
    from .convert import build_keras_model

    net = netspec_for(config, len(names))
    plain = build_keras_model(net, class_names=list(names))
    for layer in train_model.layers:
        if not (layer.name.startswith("conv") or layer.name.startswith("fc")) or layer.name.endswith("_bn"):
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        bias = weights[1] if len(weights) > 1 else np.zeros(kernel.shape[-1], np.float32)
        try:
            bn = train_model.get_layer(f"{layer.name}_bn")
        except ValueError:
            bn = None
        if bn is not None:
            gamma, beta, mean, var = bn.get_weights()
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = kernel * scale  # scales the output channel (last axis) of conv and dense kernels
            bias = (bias - mean) * scale + beta
        target = plain.get_layer(layer.name)
        expected = [tuple(w.shape) for w in target.get_weights()]
        if expected != [kernel.shape, bias.shape]:
            raise ValueError(f"layer {layer.name!r}: folded weights {[kernel.shape, bias.shape]} do not fit the "
                             f"plain model's {expected}")
        target.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return plain, net


def export_caffe(plain_model, net, folder: str | os.PathLike, names: list[str],
                 sample_image: np.ndarray, sample_identity: str) -> None:
    """Write the tarball layout (prototxt V1, caffemodel V1, names, sample) into ``folder``."""
    from PIL import Image

    from .caffe_format import write_caffemodel, write_prototxt
    from .convert import keras_to_caffe_blobs

    folder = Path(folder)
    write_prototxt(folder / "VGG_FACE_deploy.prototxt", net, syntax="v1")
    write_caffemodel(folder / "VGG_FACE.caffemodel", keras_to_caffe_blobs(plain_model, net), format="v1")
    write_text_atomic(folder / "names.txt", "".join(f"{n}\n" for n in names))
    with atomic_path(folder / "sample.png") as tmp:
        Image.fromarray(sample_image).save(tmp, format="PNG")
    write_text_atomic(folder / "sample_identity.txt", sample_identity + "\n")
    write_text_atomic(folder / "README.txt",
                      "A MINIATURE VGG-Face trained on SYNTHETIC faces by helpers/synthetic.py (quick mode).\n"
                      "Same topology and layer names as VGG-Face, 1/8 of the channels, 64x64 input.\n"
                      "Not the real network: for the real one run `python -m helpers.assets fetch vgg_face_caffe`.\n")


# ----------------------------------------------------------------------------- build and cache

def source_path() -> Path:
    return paths.data_dir() / "synthetic" / "source" / "faces.npz"


def manifest_path() -> Path:
    return paths.data_dir() / "synthetic" / "manifest.json"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "generator": str(GENERATOR_VERSION)}
    for name in ("numpy", "pillow", "tensorflow", "keras"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _expected_files() -> list[Path]:
    a = paths.assets_for("quick")
    return [source_path(), *a.fold_files, a.dataset_root / "aligned", a.prototxt, a.caffemodel, a.names,
            a.sample_image, a.caffe_dir / "sample_identity.txt"]


def is_built(config: SyntheticConfig) -> bool:
    """True when a complete build with exactly these parameters and package versions is on disk."""
    try:
        manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (manifest.get("config") == config.to_json() and manifest.get("versions") == _versions()
            and all(p.exists() for p in _expected_files()))


def ensure_built(force: bool = False, seed: int = 0, progress: bool = True,
                 config: SyntheticConfig | None = None) -> dict:
    """Build the quick-mode world (data + miniature weights) unless an identical build exists.

    Returns the manifest (parameters, versions, counts, held-out identity accuracy, seconds)
    plus ``"built_now"``. ``config`` overrides every parameter (tests use tiny worlds);
    otherwise the defaults with ``seed``.
    """
    config = (config or SyntheticConfig(seed=seed)).validate()
    if not force and is_built(config):
        manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
        if progress:
            print(f"synthetic world already built ({manifest_path()}); use force=True / --force to rebuild")
        return {**manifest, "built_now": False}

    t_start = time.time()
    # The old manifest goes first: from here until the new one is written, nothing looks complete.
    manifest_path().unlink(missing_ok=True)
    assets = paths.assets_for("quick")
    say = print if progress else (lambda *a, **k: None)
    say("Building quick mode's SYNTHETIC face world (drawn faces, not real people) and a miniature VGG-Face.")

    t0 = time.time()
    say("1/4 rendering the pretraining (source) identities ...")
    source = render_source(config, progress=progress)
    write_npz(source_path(), source)
    t_source = time.time() - t0

    t0 = time.time()
    say(f"2/4 rendering the target faces into {assets.dataset_root} (Adience layout) ...")
    target = write_adience(assets.dataset_root, config, progress=progress)
    t_target = time.time() - t0

    t0 = time.time()
    say("3/4 pretraining the miniature VGG-Face on identities ...")
    train_model, accuracy = pretrain(source, config, progress=progress)
    t_train = time.time() - t0

    t0 = time.time()
    say(f"4/4 folding BatchNorm and exporting Caffe files to {assets.caffe_dir} ...")
    names = [str(n) for n in source["names"]]
    plain, net = fold_batchnorm(train_model, config, names)
    held = np.flatnonzero(source["heldout"])
    x_held = source["images"][held].astype(np.float32)
    p_train = train_model.predict(x_held, batch_size=256, verbose=0)
    p_plain = plain.predict(x_held, batch_size=256, verbose=0)
    fold_error = float(np.max(np.abs(p_train - p_plain)))
    if fold_error > 1e-3:
        raise RuntimeError(f"folding BatchNorm changed the network's output by {fold_error:.2e} (expected < 1e-3)")
    correct = np.flatnonzero(np.argmax(p_plain, -1) == source["labels"][held])
    if len(correct) == 0:
        raise RuntimeError("the pretrained network recognises none of the held-out source images")
    sample = int(held[correct[0]])
    with atomic_dir(assets.caffe_dir) as tmp:
        export_caffe(plain, net, tmp, names, source["images"][sample], names[source["labels"][sample]])
    t_export = time.time() - t0

    manifest = {
        "what": "synthetic faces and a miniature VGG-Face for the course's quick mode (not real data)",
        "config": config.to_json(),
        "versions": _versions(),
        "source": {"identities": config.source_identities, "images": int(len(source["images"])),
                   "heldout_images": int(source["heldout"].sum()), "path": str(source_path())},
        "target": {**target, "root": str(assets.dataset_root)},
        "pretrain": {"identity_accuracy_heldout": accuracy, "bn_fold_max_abs_error": fold_error},
        "seconds": {"source": round(t_source, 1), "target": round(t_target, 1), "pretrain": round(t_train, 1),
                    "export": round(t_export, 1), "total": round(time.time() - t_start, 1)},
    }
    write_json_atomic(manifest_path(), manifest)  # last: the build is complete only now
    say(f"synthetic world built in {manifest['seconds']['total']:.0f} s: {target['faces']} target faces of "
        f"{target['users']} users, {len(names)} source identities, held-out identity accuracy {accuracy:.3f}")
    return {**manifest, "built_now": True}


# ----------------------------------------------------------------------------- story checks

def _load_target(max_faces: int | None, seed: int):
    from PIL import Image

    from .data import apply_protocol, read_adience_folds

    root = paths.assets_for("quick").dataset_root
    df, _ = apply_protocol(read_adience_folds(root), "binary")
    if max_faces is not None and len(df) > max_faces:
        df = df.sample(n=max_faces, random_state=seed).sort_index()
    images = np.stack([np.asarray(Image.open(root / p).convert("RGB"), np.float32) for p in df["path"]])
    return df.reset_index(drop=True), images


def _probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_splits: int = 5) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    correct = 0
    for train, test in GroupKFold(n_splits=n_splits).split(features, labels, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(features[train], labels[train])
        correct += int(np.sum(clf.predict(features[test]) == labels[test]))
    return correct / len(labels)


def story_checks(*, shots: int = 5, draws: int = 5, max_faces: int | None = None, scratch_epochs: int = 40,
                 seed: int = 0, record: bool = True, progress: bool = True) -> dict:
    """Measure the quick-mode story on the built world, with the CONVERTED miniature weights.

    - ``probe_pool1`` / ``probe_fc7``: subject-exclusive (GroupKFold by user) logistic-regression
      probes for gender on globally average-pooled ``pool1`` features and on ``fc7`` features;
    - ``fewshot_transfer`` / ``fewshot_scratch``: with ``shots`` labelled faces per class (from
      the training folds), logistic regression on L2-normalised transferred ``fc7`` features against the same
      network trained from scratch on those faces; test on the other users; mean over ``draws``;
    - ``identity_accuracy``: the pretraining's held-out identity accuracy (from the manifest).

    Records ``synthetic.probe.pool1``, ``synthetic.probe.fc7``, ``synthetic.fewshot<shots>.transfer``,
    ``synthetic.fewshot<shots>.scratch`` and ``synthetic.pretrain.identity_accuracy``.
    """
    import keras
    from .convert import convert
    from .embeddings import fewshot_classifier
    from .vggface import feature_model

    manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
    config = SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()})
    assets = paths.assets_for("quick")
    model = convert(assets.prototxt, assets.caffemodel, names=assets.names, progress=False)
    df, images = _load_target(max_faces, seed)
    labels = df["label"].to_numpy()
    groups = df["user_id"].to_numpy()
    pool1, fc7 = feature_model(model, ["pool1", "fc7"]).predict(images, batch_size=128, verbose=0)
    pool1 = pool1.mean(axis=(1, 2))
    out = {"faces": len(df), "users": int(df["user_id"].nunique())}
    out["probe_pool1"] = _probe_accuracy(pool1, labels, groups)
    out["probe_fc7"] = _probe_accuracy(fc7, labels, groups)
    if progress:
        print(f"gender probes (GroupKFold by user, {len(df)} faces): pool1 {out['probe_pool1']:.3f}, fc7 {out['probe_fc7']:.3f}")

    rng = np.random.default_rng(seed)
    test_mask = df["fold"].to_numpy() == 0  # test on fold 0's users; labelled shots come from the others
    transfer, scratch = [], []
    # One scratch network, compiled once (tracing dominates at this size); every draw restarts
    # it from its own fresh random initialisation and a zeroed optimizer state.
    keras.utils.set_random_seed(seed)
    net = build_training_model(2, config)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    for draw in range(draws):
        pick = []
        for c in (0, 1):
            pool = np.flatnonzero(~test_mask & (labels == c))
            pick.extend(rng.choice(pool, size=min(shots, len(pool)), replace=False))
        pick = np.array(pick)
        clf = fewshot_classifier().fit(fc7[pick], labels[pick])  # notebook 03's recipe
        transfer.append(float(np.mean(clf.predict(fc7[test_mask]) == labels[test_mask])))
        keras.utils.set_random_seed(seed * 1000 + draw)
        net.set_weights(build_training_model(2, config).get_weights())
        for variable in net.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        x = np.concatenate([images[pick], images[pick][:, :, ::-1]])  # + mirrored copies
        y = np.concatenate([labels[pick], labels[pick]])
        net.fit(x, y, epochs=scratch_epochs, batch_size=len(x), verbose=0)
        pred = np.argmax(net.predict(images[test_mask], batch_size=256, verbose=0), -1)
        scratch.append(float(np.mean(pred == labels[test_mask])))
    out[f"fewshot{shots}_transfer"] = float(np.mean(transfer))
    out[f"fewshot{shots}_scratch"] = float(np.mean(scratch))
    out["identity_accuracy"] = float(manifest["pretrain"]["identity_accuracy_heldout"])
    if progress:
        print(f"{shots} faces per class ({draws} draws): transfer (L2-normalised fc7 + logistic regression) "
              f"{out[f'fewshot{shots}_transfer']:.3f}, from scratch {out[f'fewshot{shots}_scratch']:.3f}")
    out["shots"] = shots
    if record:
        record_story(out)
    return out


def record_story(story: dict) -> None:
    """Write story_checks() numbers to build/results.json under their ``synthetic.*`` keys."""
    from . import results

    shots = story.get("shots", 5)
    results.record("synthetic.probe.pool1", story["probe_pool1"])
    results.record("synthetic.probe.fc7", story["probe_fc7"])
    results.record(f"synthetic.fewshot{shots}.transfer", story[f"fewshot{shots}_transfer"])
    results.record(f"synthetic.fewshot{shots}.scratch", story[f"fewshot{shots}_scratch"])
    results.record("synthetic.pretrain.identity_accuracy", story["identity_accuracy"])


def story_path() -> Path:
    return manifest_path().with_name("story.json")


def story_numbers(record: bool = True, progress: bool = True) -> dict:
    """story_checks() of the built world, computed once per build and cached beside the manifest.

    The cache names the manifest's SHA-256, so a rebuilt world is measured again. With
    ``record`` the numbers also go to build/results.json (the course runner does this on
    every quick run, so results.json always says how strong the synthetic story is).
    """
    if not manifest_path().is_file():
        raise FileNotFoundError(f"no synthetic world at {manifest_path()}: run python -m helpers.synthetic first")
    build_id = hashlib.sha256(manifest_path().read_bytes()).hexdigest()
    cached = json.loads(story_path().read_text(encoding="utf-8")) if story_path().is_file() else {}
    if cached.get("manifest_sha256") == build_id:
        story = cached["story"]
        if progress:
            print(f"story checks of this build (cached in {story_path()}):")
    else:
        if progress:
            print("measuring the story of this build once (linear probes, 5-shot transfer vs scratch) ...")
        story = story_checks(record=False, progress=progress)
        write_json_atomic(story_path(), {"manifest_sha256": build_id, "story": story})
    if progress:
        shots = story.get("shots", 5)
        print(f"  gender probe on pool1 {story['probe_pool1']:.3f}, on fc7 {story['probe_fc7']:.3f}; "
              f"{shots} faces per class: transfer {story[f'fewshot{shots}_transfer']:.3f}, "
              f"from scratch {story[f'fewshot{shots}_scratch']:.3f}; "
              f"identity accuracy of the pretraining {story['identity_accuracy']:.3f}")
    if record:
        record_story(story)
    return story


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the whole world (default 0)")
    parser.add_argument("--check", action="store_true", help="also run story_checks() and print the numbers")
    args = parser.parse_args(argv)
    manifest = ensure_built(force=args.force, seed=args.seed, progress=True)
    print(json.dumps({k: manifest[k] for k in ("target", "pretrain", "seconds")}, indent=2))
    if args.check:
        print(json.dumps(story_numbers(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
