"""The synthetic world's populations, written in Adience's layout, built once and cached.

- the **source** population: synthetic people with identity labels
  (``data/synthetic/source/faces.npz``), on which the miniature VGG-Face is pretrained;
- the **target** population, disjoint from it, written exactly like Adience
  (``data/synthetic/adience``: ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>``
  JPEGs and ``fold_0_data.txt`` ... ``fold_4_data.txt``), labelled with gender and age.

``ensure_built()`` builds everything once; a manifest written LAST records the parameters and
package versions, and a later call with the same ones does nothing. Every part is built in a
temporary folder and renamed when complete, so an interrupted build never looks complete.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ..course import paths
from ..course.fileio import atomic_dir, atomic_path, write_json_atomic
from .faces import AGE_GROUPS, Person, render_face, sample_nuisance, sample_person

# Bump when the renderer or the training recipe changes: a new version rebuilds cached worlds.
GENERATOR_VERSION = 5
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
    source_images_per_identity: int = 20
    source_heldout_per_identity: int = 2  # of those, kept out of pretraining to measure it
    target_users: int = 240
    persons_per_user: tuple[int, int] = (1, 3)  # inclusive range
    faces_per_person: tuple[int, int] = (3, 8)  # inclusive range
    n_folds: int = 5
    conv_widths: tuple[int, ...] = (8, 16, 32, 64, 64)
    fc_widths: tuple[int, ...] = (256, 256)
    epochs: int = 10
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

    @classmethod
    def from_json(cls, values: dict) -> "SyntheticConfig":
        """The config a manifest stores (``to_json``'s lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# A SMOKE run's world (COURSE_SMOKE=1): the same renderer and network, a few identities, tens of
# users, two pretraining epochs, so that a fresh runtime builds it in seconds. Its numbers mean nothing.
SMOKE_SIZES = {"source_identities": 12, "source_images_per_identity": 5, "source_heldout_per_identity": 1,
               "target_users": 40, "epochs": 2}
# The world's seed when ensure_built() is not given one: COURSE_WORLD_SEED, else 0 (the course's world).
ENV_WORLD_SEED = "COURSE_WORLD_SEED"


def world_seed() -> int:
    value = os.environ.get(ENV_WORLD_SEED, "").strip()
    try:
        return int(value) if value else 0
    except ValueError:
        raise ValueError(f"{ENV_WORLD_SEED}={value!r}: expected an integer seed") from None


def default_config(seed: int | None = None) -> SyntheticConfig:
    """The world this run builds and uses: quick mode's (seed ``world_seed()`` unless given), or
    in a SMOKE run (``helpers.course.paths.smoke()``) the tiny ``SMOKE_SIZES`` world."""
    config = SyntheticConfig(seed=world_seed() if seed is None else int(seed))
    return dataclasses.replace(config, **SMOKE_SIZES) if paths.smoke() else config


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


def render_source(config: SyntheticConfig, progress: bool = False) -> dict[str, np.ndarray]:
    """All source images: ``images`` uint8 (N, S, S, 3), ``labels`` (identity index),
    ``heldout`` (bool: kept out of pretraining), ``names`` (identity names, fc8 order)."""
    people = source_people(config)
    n_img = config.source_images_per_identity
    images = np.empty((len(people) * n_img, config.image_size, config.image_size, 3), np.uint8)
    labels = np.repeat(np.arange(len(people), dtype=np.int32), n_img)
    heldout = np.tile(np.arange(n_img) >= n_img - config.source_heldout_per_identity, len(people))
    bar = tqdm(total=len(images), desc="source faces", mininterval=1.0, disable=not progress)
    for i, (_, person) in enumerate(people):
        for k in range(n_img):
            images[i * n_img + k] = render_face(person, _rng(config.seed, _STREAM_SOURCE, i, k + 1), config.image_size)
        bar.update(n_img)
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


def target_stream(config: SyntheticConfig, face: TargetFace):
    """The random stream of one target image and its nuisance, as ``write_adience`` draws them
    (so that ``trait_masks`` re-renders exactly the face on disk)."""
    rng = _rng(config.seed, _STREAM_TARGET, face.person_index, face.image_index + 1)
    return rng, sample_nuisance(rng)


def write_adience(root: str | os.PathLike, config: SyntheticConfig, progress: bool = False,
                  render: Callable = render_face) -> dict:
    """Render the target population into ``root`` in Adience's layout (atomic: all or nothing)."""
    from PIL import Image

    people, faces = target_people(config)
    rows: list[list[str]] = [[] for _ in range(config.n_folds)]
    bar = tqdm(total=len(faces), desc="target faces (Adience layout)", mininterval=1.0, disable=not progress)
    with atomic_dir(root) as tmp:
        for face in faces:
            rng, nuisance = target_stream(config, face)
            image = render(people[face.person_index], rng, config.image_size, nuisance=nuisance)
            out = tmp / face.path
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out, format="JPEG", quality=config.jpeg_quality)
            rows[face.fold].append(_fold_row(face, rng, nuisance))
            bar.update(1)
        for k, fold_rows in enumerate(rows):
            text = "\t".join(ADIENCE_COLUMNS) + "\n" + "".join(r + "\n" for r in fold_rows)
            (tmp / f"fold_{k}_data.txt").write_text(text, encoding="utf-8")
        (tmp / "README.txt").write_text(
            "SYNTHETIC faces drawn by helpers/synthetic/ for the course's quick mode; not Adience.\n"
            "Same layout as Adience: aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>\n"
            "and fold_0_data.txt ... fold_4_data.txt (tab-separated, Adience's columns).\n", encoding="utf-8")
    bar.close()
    genders = [f.gender for f in faces]
    return {"faces": len(faces), "users": config.target_users, "persons": len(people),
            "faces_per_fold": [len(r) for r in rows],
            "gender_counts": {g: genders.count(g) for g in ("m", "f", "u")}}


# ----------------------------------------------------------------------------- build and cache

def world_dir() -> Path:
    """The folder of quick mode's world: ``adience/`` (the target faces), ``source/``, the manifest."""
    return paths.assets_for("quick").dataset_root.parent


def source_path() -> Path:
    return world_dir() / "source" / "faces.npz"


def manifest_path() -> Path:
    return world_dir() / "manifest.json"


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


def ensure_built(force: bool = False, seed: int | None = None, progress: bool = True,
                 config: SyntheticConfig | None = None) -> dict:
    """Build the quick-mode world (data + miniature weights) unless an identical build exists.

    Returns the manifest (parameters, versions, counts, held-out identity accuracy, seconds)
    plus ``"built_now"``. ``config`` overrides every parameter (tests use tiny worlds);
    otherwise ``default_config(seed)``: the course's world (seed ``COURSE_WORLD_SEED`` or 0),
    or the tiny SMOKE world in its own folders when ``COURSE_SMOKE=1``.
    """
    config = (config or default_config(seed)).validate()
    if not force and is_built(config):
        manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
        if progress:
            print(f"synthetic world already built ({manifest_path()}); use force=True / --force to rebuild")
        return {**manifest, "built_now": False}

    from .pretrain import export_caffe, fold_batchnorm, pretrain  # Keras loads only when a build is needed

    t_start = time.time()
    # The old manifest goes first: from here until the new one is written, nothing looks complete.
    manifest_path().unlink(missing_ok=True)
    assets = paths.assets_for("quick")
    say = print if progress else (lambda *a, **k: None)
    say(f"Building quick mode's SYNTHETIC face world (drawn faces, not real people) and a miniature VGG-Face"
        f"{' (the tiny world of SMOKE runs)' if paths.smoke() else ''}, seed {config.seed}.")

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


