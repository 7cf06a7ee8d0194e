"""Stand-ins for full mode's assets: rehearse full mode where VGG-Face and Adience cannot be had.

Full mode reads the VGG-Face Caffe release and Adience (``helpers.course.paths.assets_for("full")``).
Neither can be downloaded in CI, so this module writes stand-ins **in exactly the layout, formats
and sizes full mode reads**, so that the very same code runs at the very same sizes:

- ``weights/vgg_face_caffe/``: ``VGG_FACE_deploy.prototxt`` (the release's V1 syntax, the real
  topology from ``helpers.vggface.vggface_netspec()``), ``VGG_FACE.caffemodel`` (V1 binary with
  legacy 4-D blob dims, 145,002,878 seeded weights, 580 MB), ``names.txt`` (2,622 names) and
  ``ak.png``, a face that the stand-in network calls ``Aamir_Khan`` (fc8's row for that name is
  set from the face's own fc7, so the release's check "ak.png is Aamir Khan" holds);
- ``data/adience/``: ``fold_0_data.txt`` ... ``fold_4_data.txt`` in Adience's format (tab-separated,
  its header, its quirks: ages such as ``35``, ``None`` or ``(25, 23)``, empty genders) and
  ``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` JPEGs of 816 x 816 px,
  with a few real-world defects on purpose: one image missing, one truncated JPEG, one age that
  maps to no group. The fold rows come from real fold files when given (``--folds-from``; the
  files are read at run time, never copied into the repository), else they are generated in the
  same format. Any number of faces: whole users, every fold kept.

Beside each part a ``STAND-IN.txt`` marker says what it is; the course detects it
(:func:`present`), ``environment.start`` prints :func:`banner`, and ``results.json`` records it:
**numbers computed on stand-ins mean nothing about VGG-Face or Adience.**

    python -m helpers.course.standins HOME                 # 50 faces: what CI rehearses on
    python -m helpers.course.standins HOME --faces 19487 --folds-from DIR   # Adience's real counts
    COURSE_HOME=HOME python -m helpers.course --mode full --smoke
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import paths
from .fileio import atomic_dir

MARKER = "STAND-IN.txt"
ADIENCE_FACES = 19_487       # rows of the public fold files (shared/reference/README.md)
ADIENCE_PERSONS = 2_285      # distinct (user_id, face_id) pairs in them
IMAGE_SIDE = 816             # Adience's aligned faces are 816 x 816 JPEGs
JPEG_QUALITY = 90
N_IDENTITIES = 2_622
SAMPLE_IDENTITY = paths.FULL_SAMPLE_IDENTITY  # "Aamir_Khan"
FOLD_HEADER = ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
               "tilt_ang", "fiducial_yaw_angle", "fiducial_score")
AGE_GROUPS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)")
# Ages as the real fold files also write them (single numbers, None, odd ranges), and how often.
_AGE_QUIRKS = ("35", "13", "22", "None", "(27, 32)", "(38, 42)", "(25, 23)")
_AGE_QUIRK_P = 0.09
_GENDER_P = {"m": 0.42, "f": 0.48, "u": 0.06, "": 0.04}

BANNER = ("STAND-IN ASSETS: {what} are stand-ins written by helpers.course.standins (seeded random "
          "weights, drawn faces). Full mode's code runs at full size on them, but every number this "
          "run reports means nothing about VGG-Face or Adience.")


# ----------------------------------------------------------------------------- detection

def markers(assets=None) -> dict[str, Path]:
    """``{part: marker path}`` for each full-mode asset that is a stand-in (``weights``, ``data``)."""
    assets = assets or paths.assets_for("full")
    found = {}
    for part, folder in (("weights", assets.caffe_dir), ("data", assets.dataset_root)):
        marker = Path(folder) / MARKER
        if marker.is_file():
            found[part] = marker
    return found


def present(assets=None) -> list[str]:
    """Which full-mode assets are stand-ins: ``[]``, ``["weights"]``, ``["data"]`` or both."""
    return [part for part in ("weights", "data") if part in markers(assets)]


def banner(assets=None) -> str | None:
    """The line every stand-in run prints, or ``None`` when full mode's assets are the real ones."""
    parts = present(assets)
    if not parts:
        return None
    what = {"weights": "the VGG-Face weights", "data": "the Adience faces"}
    return BANNER.format(what=" and ".join(what[p] for p in parts))


# ----------------------------------------------------------------------------- fold rows

@dataclass
class FoldRow:
    """One line of a fold file, every field kept as the text it is."""

    fields: list[str]

    @property
    def user_id(self) -> str:
        return self.fields[0]

    @property
    def face_id(self) -> str:
        return self.fields[2]

    @property
    def age(self) -> str:
        return self.fields[3]

    @property
    def gender(self) -> str:
        return self.fields[4]

    @property
    def image_path(self) -> str:
        return f"aligned/{self.fields[0]}/landmark_aligned_face.{self.fields[2]}.{self.fields[1]}"


def read_fold_rows(folds_dir) -> list[list[FoldRow]]:
    """The rows of ``fold_0_data.txt`` ... ``fold_4_data.txt`` in ``folds_dir``, fold by fold."""
    folds = []
    for k in range(5):
        path = Path(folds_dir) / f"fold_{k}_data.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: --folds-from needs the five fold files fold_0_data.txt ... fold_4_data.txt")
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t") if lines else []
        if tuple(h.strip() for h in header) != FOLD_HEADER:
            raise ValueError(f"{path}, line 1: expected Adience's header {FOLD_HEADER}, got {header}")
        rows = []
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(FOLD_HEADER):
                raise ValueError(f"{path}, line {lineno}: {len(fields)} fields, expected {len(FOLD_HEADER)}")
            rows.append(FoldRow(fields))
        folds.append(rows)
    return folds


def synthetic_fold_rows(n_faces: int, seed: int = 0) -> list[list[FoldRow]]:
    """``n_faces`` rows in Adience's format: Flickr-style users dealt to five folds (none in two),
    a few persons (face ids) per user, several photos per person, and the real files' quirks."""
    if n_faces < 20:
        raise ValueError(f"{n_faces} faces cannot fill five folds of at least two users with both genders: use 20 or more")
    rng = np.random.default_rng([seed, 1])
    n_users = max(10, round(n_faces * 168 / ADIENCE_FACES))
    # faces per user: skewed like the real files (1 to ~750 faces per user) when there are many
    # users, less so with few (ten users of which two hold half the faces would unbalance the folds)
    weights = rng.lognormal(0.0, 1.0 if n_users >= 50 else 0.35, n_users)
    sizes = np.maximum(2, np.floor(weights / weights.sum() * n_faces)).astype(int)
    while sizes.sum() > n_faces:
        sizes[int(np.argmax(sizes))] -= 1
    sizes[: n_faces - sizes.sum()] += 1
    folds: list[list[FoldRow]] = [[] for _ in range(5)]
    load = np.zeros(5, int)
    users_in = np.zeros(5, int)
    face_id = 0
    order = np.argsort(-sizes, kind="stable")
    for rank, u in enumerate(order):
        # largest users first, each to the fold with the fewest faces so far; near the end only
        # to folds that still lack their second user
        short = np.flatnonzero(users_in < 2)
        needed = int(np.sum(2 - users_in[short]))
        candidates = short if needed >= n_users - rank else np.arange(5)
        k = int(candidates[np.argmin(load[candidates])])
        user_id = f"{int(rng.integers(10_000_000, 130_000_000))}@N0{int(rng.integers(0, 9))}"
        persons = []
        for _ in range(int(rng.integers(1, 4))):
            face_id += 1
            gender = rng.choice(list(_GENDER_P), p=list(_GENDER_P.values()))
            persons.append((face_id, str(gender), AGE_GROUPS[int(rng.integers(0, len(AGE_GROUPS)))]))
        if users_in[k] < 2:  # every fold's first two users: one man, one woman
            persons[0] = (persons[0][0], "m" if users_in[k] == 0 else "f", persons[0][2])
        photo = None
        for i in range(int(sizes[u])):
            pid, gender, age = persons[0] if i == 0 else persons[int(rng.integers(0, len(persons)))]
            if photo is None or rng.random() < 0.85:  # now and then two faces share one photo
                photo = f"{int(rng.integers(10**10, 2 * 10**10))}_{rng.bytes(5).hex()}_o.jpg"
            if i > 0 and rng.random() < _AGE_QUIRK_P:
                age = str(rng.choice(_AGE_QUIRKS))
            side = int(rng.integers(300, 1400))
            folds[k].append(FoldRow([user_id, photo, str(pid), age, gender, str(int(rng.integers(0, 2000))),
                                     str(int(rng.integers(0, 1500))), str(side), str(side + int(rng.integers(0, 3))),
                                     str(int(rng.integers(-180, 180))), str(int(rng.choice([-45, -30, -15, 0, 0, 0, 15, 30]))),
                                     str(int(rng.integers(5, 180)))]))
        load[k] += sizes[u]
        users_in[k] += 1
    return folds


def choose_rows(folds: list[list[FoldRow]], n_faces: int, seed: int = 0) -> list[list[FoldRow]]:
    """About ``n_faces`` rows out of ``folds``, every fold kept in proportion, each fold's rows from
    at least two of its users (in a seeded order) and with both genders where the fold has them.
    ``n_faces`` at or above the total keeps every row, in the files' order."""
    total = sum(len(f) for f in folds)
    if n_faces >= total:
        return [list(f) for f in folds]
    rng = np.random.default_rng([seed, 2])
    chosen = []
    for k, rows in enumerate(folds):
        target = max(4, round(n_faces * len(rows) / total))
        by_user: dict[str, list[FoldRow]] = {}
        for r in rows:
            by_user.setdefault(r.user_id, []).append(r)
        users = sorted(by_user)
        rng.shuffle(users)
        # users with both genders first: two of them give the fold men and women
        users.sort(key=lambda u: -len({r.gender for r in by_user[u]} & {"m", "f"}))
        n_users = max(2, math.ceil(target / 40))
        per_user = math.ceil(target / n_users)
        picked: list[FoldRow] = []
        for u in users:
            if len(picked) >= target:
                break
            picked.extend(_interleave_genders(by_user[u])[: min(per_user, target - len(picked))])
        chosen.append(picked)
    return chosen


def _interleave_genders(rows: list[FoldRow]) -> list[FoldRow]:
    groups: dict[str, list[FoldRow]] = {}
    for r in rows:
        groups.setdefault(r.gender, []).append(r)
    out, queues = [], [groups[g] for g in sorted(groups, key=lambda g: ("mfu".find(g) % 4, g))]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


# ----------------------------------------------------------------------------- the network

def blob_shapes(net) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{layer: (kernel shape, bias shape)}`` in Caffe's layouts (conv ``(out, in, kh, kw)``, fc
    ``(out, in)``) for a plain chain of "same" convolutions, poolings and inner products."""
    _, channels, h, w = net.input_shape
    flat = None  # the width of the last inner product, once there is one
    shapes = {}
    for layer in net.layers:
        p = layer.params
        if layer.type == "Pooling":
            k, s = int(p["kernel_size"]), int(p["stride"])
            h, w = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1  # Caffe pools with ceil
        elif layer.type == "Convolution":
            k, out = int(p["kernel_size"]), int(p["num_output"])
            shapes[layer.name] = ((out, channels, k, k), (out,))
            channels = out
        elif layer.type == "InnerProduct":
            out = int(p["num_output"])
            shapes[layer.name] = ((out, flat if flat is not None else channels * h * w), (out,))
            flat = out
    return shapes


def he_normal_blobs(net, seed: int = 0) -> dict:
    """``{layer name: CaffeLayerBlobs}`` for every layer of ``net`` with weights (see
    :func:`blob_shapes`): He-normal kernels, small random biases, float32, seeded."""
    from ..caffe import CaffeLayerBlobs

    rng = np.random.default_rng([seed, 3])
    layers = {layer.name: layer for layer in net.layers}
    blobs = {}
    for name, (shape, bias_shape) in blob_shapes(net).items():
        kernel = rng.standard_normal(shape, dtype=np.float32)
        kernel *= np.float32(math.sqrt(2.0 / int(np.prod(shape[1:]))))
        bias = 0.01 * rng.standard_normal(bias_shape, dtype=np.float32)
        layer = layers[name]
        blobs[name] = CaffeLayerBlobs(name=name, type=layer.type, blobs=[kernel, bias],
                                      bottoms=list(layer.bottoms), tops=list(layer.tops))
    return blobs


def identity_names(n: int = N_IDENTITIES, sample_index: int = 2) -> list[str]:
    """``n`` stand-in identity names with ``Aamir_Khan`` at ``sample_index`` (the release lists
    its 2,622 celebrities alphabetically; Aamir Khan is its third)."""
    names = [f"Stand-in_identity_{i:04d}" for i in range(1, n + 1)]
    names[sample_index] = SAMPLE_IDENTITY
    return names


def make_sample_true(net, blobs: dict, image: np.ndarray, target: int, margin: float = 0.1) -> float:
    """Rewrite fc8's row ``target`` (and bias) so that ``image`` scores highest for that class:
    the row points along the image's own fc7, scaled to beat every other class by ``margin`` of
    the logits' range. Returns the new margin in logits. Uses the numpy reference forward pass."""
    from ..caffe.verify import caffe_input, reference_forward

    out = reference_forward(net, blobs, caffe_input(image[None]), outputs=("fc7", "fc8"))
    fc7, fc8 = out["fc7"][0], out["fc8"][0]
    others = np.delete(fc8, target)
    wanted = others.max() + margin * (others.max() - others.min()) + 1.0
    w, b = blobs["fc8"].blobs
    w[target] = (fc7 * (wanted / float(fc7 @ fc7))).astype(np.float32)
    b[target] = 0.0
    return float(wanted - others.max())


def write_weights(caffe_dir, seed: int = 0, progress: bool = True, net=None) -> dict:
    """The VGG-Face stand-in in the release's formats and names (atomic: all or nothing): the
    full-size network unless ``net`` (a ``NetSpec`` of the same topology, e.g. narrower for tests)."""
    from ..caffe import write_caffemodel, write_prototxt
    from ..vggface import vggface_netspec

    t0 = time.perf_counter()
    net = net or vggface_netspec()
    blobs = he_normal_blobs(net, seed)
    n_classes = blob_shapes(net)["fc8"][0][0]
    names = identity_names(n_classes)
    target = names.index(SAMPLE_IDENTITY)
    sample = draw_face(np.random.default_rng([seed, 4]), int(net.input_shape[2]), "m", 4)
    margin = make_sample_true(net, blobs, sample.astype(np.float32), target)
    n_params = sum(b.size for layer in blobs.values() for b in layer.blobs)
    caffe_dir = Path(caffe_dir)
    with atomic_dir(caffe_dir) as tmp:
        write_prototxt(tmp / "VGG_FACE_deploy.prototxt", net, syntax="v1")
        ordered = [blobs[l.name] for l in net.layers if l.name in blobs]
        write_caffemodel(tmp / "VGG_FACE.caffemodel", ordered, format="v1", legacy_dims=True, name=net.name)
        (tmp / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        from PIL import Image

        Image.fromarray(sample).save(tmp / "ak.png")
        (tmp / MARKER).write_text(
            "STAND-IN for the VGG-Face Caffe release (vgg_face_caffe.tar.gz), written by "
            "python -m helpers.course.standins.\n"
            f"Same topology, file names and formats (V1 prototxt, V1 caffemodel with legacy 4-D blobs), "
            f"{n_params:,} parameters, but SEEDED RANDOM weights (He-normal, seed {seed}): "
            f"it recognises nobody. names.txt holds {n_classes:,} stand-in names; ak.png is a drawn face "
            f"that fc8 was set to call {SAMPLE_IDENTITY} (margin {margin:.1f} logits).\n"
            "Every number computed with these weights means nothing about VGG-Face.\n", encoding="utf-8")
    info = {"parameters": int(n_params), "caffemodel_bytes": (caffe_dir / "VGG_FACE.caffemodel").stat().st_size,
            "sample_margin_logits": round(margin, 2), "seconds": round(time.perf_counter() - t0, 1)}
    if progress:
        print(f"stand-in VGG-Face: {n_params:,} parameters, {info['caffemodel_bytes'] / 1e6:.0f} MB -> {caffe_dir}")
    return info


# ----------------------------------------------------------------------------- the faces

def draw_face(rng: np.random.Generator, side: int, gender: str = "", age_index: int = 4) -> np.ndarray:
    """A plainly drawn face (uint8 RGB, side x side) with a photo's JPEG statistics once noise is
    added: a stand-in picture, not a model of faces (quick mode's renderer is that)."""
    from PIL import Image, ImageDraw, ImageFilter

    s = side / 100.0
    background = tuple(int(v) for v in rng.integers(40, 220, 3))
    img = Image.new("RGB", (side, side), background)
    d = ImageDraw.Draw(img)
    for _ in range(6):  # background clutter
        x, y = rng.uniform(0, side, 2)
        r = rng.uniform(5, 25) * s
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    skin = tuple(int(v) for v in np.array([224, 172, 130]) * rng.uniform(0.55, 1.1))
    hair = tuple(int(v) for v in rng.integers(20, 140, 3))
    long_hair = gender == "f" or (gender not in ("m", "f") and rng.random() < 0.5)
    cx, cy = 50 * s + rng.normal(0, 2) * s, 52 * s + rng.normal(0, 2) * s
    hw, hh = rng.uniform(20, 25) * s, rng.uniform(27, 32) * s
    if long_hair:
        d.rounded_rectangle([cx - hw - 6 * s, cy - hh - 4 * s, cx + hw + 6 * s, cy + hh * 1.2], radius=int(12 * s), fill=hair)
    d.rectangle([cx - 8 * s, cy + hh * 0.7, cx + 8 * s, side], fill=skin)  # neck
    d.ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=skin)
    d.chord([cx - hw, cy - hh - 3 * s, cx + hw, cy - hh * 0.1], 180, 360, fill=hair)
    for ex in (cx - 9 * s, cx + 9 * s):
        d.ellipse([ex - 4 * s, cy - 6 * s, ex + 4 * s, cy - 1 * s], fill=(245, 245, 245))
        d.ellipse([ex - 2 * s, cy - 5 * s, ex + 2 * s, cy - 2 * s], fill=(50, 35, 25))
        d.line([ex - 5 * s, cy - 9 * s, ex + 5 * s, cy - 10 * s], fill=hair, width=max(1, int(1.5 * s)))
    d.line([cx, cy - 2 * s, cx - 2 * s, cy + 8 * s, cx + 1 * s, cy + 9 * s], fill=tuple(int(v * 0.8) for v in skin), width=max(1, int(s)))
    d.chord([cx - 8 * s, cy + 10 * s, cx + 8 * s, cy + 18 * s], 0, 180, fill=(160, 60, 60))
    if gender == "m" and age_index >= 4 and rng.random() < 0.4:
        d.chord([cx - hw * 0.9, cy + 2 * s, cx + hw * 0.9, cy + hh], 0, 180, fill=hair)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.6 * s))
    return np.asarray(img, dtype=np.uint8)


def _noise_tile(seed: int, side: int) -> np.ndarray:
    return np.random.default_rng([seed, 5]).normal(0, 3.0, (side, side, 3)).astype(np.int16)


def _write_person(task) -> list[tuple[str, int]]:
    """Worker: one person's photos (a base drawing, varied per photo), written as JPEGs."""
    from PIL import Image

    root, seed, key, gender, age_index, paths_ = task
    rng = np.random.default_rng([seed, 6, *key])
    base = draw_face(rng, IMAGE_SIDE, gender, age_index).astype(np.int16)
    noise = _noise_tile(seed, IMAGE_SIDE)
    written = []
    for rel in paths_:
        shift = rng.integers(-24, 25, 2)
        img = np.roll(base, tuple(int(v) for v in shift), axis=(0, 1))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = img * rng.uniform(0.8, 1.15) + np.roll(noise, tuple(int(v) for v in rng.integers(0, IMAGE_SIDE, 2)), axis=(0, 1))
        out = Path(root) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=JPEG_QUALITY)
        written.append((rel, out.stat().st_size))
    return written


@dataclass
class Defects:
    missing_image: str = ""
    truncated_image: str = ""
    unreadable_age: list = field(default_factory=list)  # "fold k, line n: age 'x'"


def _plant_defects(folds: list[list[FoldRow]], seed: int) -> tuple[Defects, set[str], set[str]]:
    """Choose the rows whose image goes missing (fold 0) or gets truncated (fold 1), and make sure
    at least one age maps to no group (a reversed range, as the real files have)."""
    from ..data import age_to_group

    rng = np.random.default_rng([seed, 7])
    defects = Defects()
    # a missing and a truncated image, each on a row whose photo no other row shares
    counts: dict[str, int] = {}
    for rows in folds:
        for r in rows:
            counts[r.image_path] = counts.get(r.image_path, 0) + 1
    for k, attr in ((0, "missing_image"), (1, "truncated_image")):
        candidates = [r for r in folds[k][1:] if counts[r.image_path] == 1]
        if candidates:
            setattr(defects, attr, candidates[int(rng.integers(0, len(candidates)))].image_path)
    bad = [(k, i, r) for k, rows in enumerate(folds) for i, r in enumerate(rows)
           if age_to_group(r.age)[0] is None and r.age.strip() not in ("", "None")]
    if not bad:
        k = 2
        i = len(folds[k]) - 1
        folds[k][i].fields[3] = "(25, 23)"
        bad = [(k, i, folds[k][i])]
    defects.unreadable_age = [f"fold {k}, line {i + 2}: age {r.age!r}" for k, i, r in bad[:5]]
    return defects, {defects.missing_image} - {""}, {defects.truncated_image} - {""}


ARCHIVE_LAYOUTS = ("folder", "both", "archive")


def write_adience(dataset_root, folds: list[list[FoldRow]], seed: int = 0, *, source: str = "generated",
                  layout: str = "folder", workers: int | None = None, progress: bool = True) -> dict:
    """The Adience stand-in: fold files and 816 x 816 JPEGs in the real layout, with the defects
    of :func:`_plant_defects` (atomic: the folder appears complete or not at all).

    ``layout``: ``"folder"`` (``aligned/`` unpacked, as full mode reads it), ``"archive"`` (the
    download as a learner puts it on Google Drive: ``aligned.tar.gz`` beside the fold files) or
    ``"both"``."""
    if layout not in ARCHIVE_LAYOUTS:
        raise ValueError(f"layout must be one of {ARCHIVE_LAYOUTS}, got {layout!r}")
    from ..data import age_to_group

    t0 = time.perf_counter()
    defects, missing, truncated = _plant_defects(folds, seed)
    persons: dict[tuple[str, str], dict] = {}
    for rows in folds:
        for r in rows:
            p = persons.setdefault((r.user_id, r.face_id), {"gender": "", "age": 4, "paths": []})
            if r.gender in ("m", "f") and not p["gender"]:
                p["gender"] = r.gender
            group = age_to_group(r.age)[0]
            if group in AGE_GROUPS:
                p["age"] = AGE_GROUPS.index(group)
            if r.image_path not in p["paths"]:
                p["paths"].append(r.image_path)
    dataset_root = Path(dataset_root)
    sizes: list[int] = []
    with atomic_dir(dataset_root) as tmp:
        tasks = [(str(tmp), seed, (i,), p["gender"], p["age"], p["paths"]) for i, p in enumerate(persons.values())]
        workers = workers or os.cpu_count() or 1
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(t[-1]) for t in tasks), desc="stand-in faces (816 px JPEGs)", unit="img",
                   mininterval=2.0, disable=not progress)
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for written in pool.map(_write_person, tasks, chunksize=8):
                    sizes += [s for _, s in written]
                    bar.update(len(written))
        else:
            for task in tasks:
                written = _write_person(task)
                sizes += [s for _, s in written]
                bar.update(len(written))
        bar.close()
        for rel in missing:
            (tmp / rel).unlink()
        for rel in truncated:
            data = (tmp / rel).read_bytes()
            (tmp / rel).write_bytes(data[: len(data) // 2])
        for k, rows in enumerate(folds):
            text = "\t".join(FOLD_HEADER) + "\n" + "".join("\t".join(r.fields) + "\n" for r in rows)
            (tmp / f"fold_{k}_data.txt").write_text(text, encoding="utf-8")
        if layout in ("archive", "both"):
            import shutil
            import tarfile

            with tarfile.open(tmp / "aligned.tar.gz", "w:gz", compresslevel=1) as tar:  # JPEGs barely compress
                tar.add(tmp / "aligned", arcname="aligned")
            if layout == "archive":
                shutil.rmtree(tmp / "aligned")
        n_rows = sum(len(f) for f in folds)
        users = len({r.user_id for f in folds for r in f})
        (tmp / MARKER).write_text(
            "STAND-IN for Adience's aligned faces and fold files, written by python -m helpers.course.standins.\n"
            f"{n_rows:,} rows ({', '.join(str(len(f)) for f in folds)} per fold), {users} users, "
            f"{len(persons):,} persons; fold rows {source}; images are DRAWN faces "
            f"({IMAGE_SIDE} x {IMAGE_SIDE} JPEG, quality {JPEG_QUALITY}, seed {seed}, "
            f"{np.mean(sizes) / 1e3:.0f} kB on average), not photos.\n"
            f"Defects on purpose: missing image {defects.missing_image or '-'}; truncated JPEG "
            f"{defects.truncated_image or '-'}; ages that map to no group: {'; '.join(defects.unreadable_age)}.\n"
            "Every number computed on these faces means nothing about Adience.\n", encoding="utf-8")
    info = {"faces": n_rows, "faces_per_fold": [len(f) for f in folds], "users": users, "persons": len(persons),
            "images_written": len(sizes) - len(missing), "image_bytes": int(sum(sizes)),
            "mean_image_bytes": int(np.mean(sizes)), "missing_image": defects.missing_image,
            "truncated_image": defects.truncated_image, "unreadable_age": defects.unreadable_age,
            "seconds": round(time.perf_counter() - t0, 1)}
    if progress:
        print(f"stand-in Adience: {n_rows:,} faces of {users} users ({info['faces_per_fold']} per fold), "
              f"{info['image_bytes'] / 1e6:.0f} MB of JPEGs -> {dataset_root}")
    return info


# ----------------------------------------------------------------------------- build

def build(home=None, *, faces: int = 50, folds_from=None, seed: int = 0, parts=("weights", "data"),
          layout: str = "folder", workers: int | None = None, progress: bool = True) -> dict:
    """Write the stand-ins into ``home`` (default: ``COURSE_HOME`` / the repository) in the places
    ``paths.assets_for("full")`` names. Returns what was written (counts, bytes, defects)."""
    unknown = set(parts) - {"weights", "data"}
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}: expected 'weights' and/or 'data'")
    with course_home(home):
        assets = paths.assets_for("full")
        info: dict = {"home": str(paths.assets_home())}
        if "weights" in parts:
            info["weights"] = write_weights(assets.caffe_dir, seed=seed, progress=progress)
        if "data" in parts:
            if folds_from:
                folds, source = choose_rows(read_fold_rows(folds_from), faces, seed), f"from the fold files in {folds_from}"
            else:
                folds, source = synthetic_fold_rows(faces, seed), "generated in Adience's format"
            info["data"] = write_adience(assets.dataset_root, folds, seed=seed, source=source, layout=layout,
                                         workers=workers, progress=progress)
        return info


@contextlib.contextmanager
def course_home(home=None):
    """``COURSE_HOME`` set to ``home`` for the duration (nothing changes when ``home`` is None)."""
    previous = os.environ.get(paths.ENV_HOME)
    if home is not None:
        os.environ[paths.ENV_HOME] = str(Path(home).resolve())
    try:
        yield
    finally:
        if home is not None:
            if previous is None:
                os.environ.pop(paths.ENV_HOME, None)
            else:
                os.environ[paths.ENV_HOME] = previous


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course.standins", description=__doc__.split("\n\n")[0])
    parser.add_argument("home", type=Path, help="the course home to write into (weights/ and data/ inside); use it as COURSE_HOME")
    parser.add_argument("--faces", type=int, default=50, help=f"fold rows to keep (default 50; {ADIENCE_FACES} or more: every row)")
    parser.add_argument("--folds-from", type=Path, default=None,
                        help="real Adience fold files to take the rows from (read, never copied into the repository)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["weights", "data"], default=None, help="write one part only")
    parser.add_argument("--layout", choices=ARCHIVE_LAYOUTS, default="folder",
                        help="Adience as full mode reads it (folder: aligned/), as a learner uploads it to Drive "
                             "(archive: aligned.tar.gz beside the fold files), or both")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing faces (default: every CPU)")
    args = parser.parse_args(argv)
    parts = (args.only,) if args.only else ("weights", "data")
    info = build(args.home, faces=args.faces, folds_from=args.folds_from, seed=args.seed, parts=parts,
                 layout=args.layout, workers=args.workers)
    with course_home(args.home):
        print(banner())
    print(f"use it with: COURSE_HOME={args.home.resolve()} python -m helpers.course --mode full --smoke")
    return 0 if info else 1


if __name__ == "__main__":
    raise SystemExit(main())
