"""Levi & Hassner's gender CNN (CVPR Workshops 2015), the Adience baseline, beside ours.

The network that reached 86.8 ± 1.4% on Adience's five-fold protocol was trained from scratch
and released as Caffe files (asset ``levi_hassner_gender``: ``deploy_gender.prototxt``,
``gender_net.caffemodel``, ``mean.binaryproto``). The course converts it with the same code
path as VGG-Face (``helpers.caffe.convert.convert``), with the authors' preprocessing carried
by the model: images resized to 256x256, BGR minus their 256x256 mean image, the 227x227 centre
crop (their demo's ``caffe.Classifier(..., image_dims=(256, 256))``). The paper reports
85.9 ± 1.4% for that single centre crop and 86.8 ± 1.4% for ten crops averaged ("over-sample").

Which folds the released network saw is not stated by the authors (see ``TRAINING_FOLDS``):
its accuracy on any Adience fold may include faces it was trained on.

Here: where the release lies and whether it is the authors' (``release_files``,
``check_release``), its conversion (``convert_release``, ``load_or_convert``), a stand-in at
the real size and format for rehearsals (``write_stand_in``), and its evaluation on given faces
(``evaluate`` and ``score``: accuracy, per-class recall, per-age, per-fold, with user-bootstrap
intervals from ``helpers.evaluation``).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ASSET = "levi_hassner_gender"
FILES = ("deploy_gender.prototxt", "gender_net.caffemodel", "mean.binaryproto")
# Their demo's gender_list = ['Male', 'Female']: fc8's order, in the course's labels.
CLASS_NAMES = ("m", "f")
IMAGE_SIZE = (256, 256)  # what the authors resize every face to (convert_imageset, caffe.Classifier)
CROP = (227, 227)        # what the net sees (the deploy file's input)
# The paper's Table (gender, five-fold protocol), accuracy in %.
PUBLISHED = {"center crop": (85.9, 1.4), "over-sample": (86.8, 1.4)}
SOURCE = "Levi & Hassner, Age and Gender Classification Using Convolutional Neural Networks, CVPR Workshops 2015"

# Git blob ids (SHA-1 of "blob <size>\0" + bytes) of the files the authors pushed to
# github.com/GilLevi/AgeGenderDeepLearning on 2017-09-14 (commit ac00432, "pushed models") and
# of the deploy file there (gender_net_definitions/deploy.prototxt).
AUTHOR_BLOB_IDS = {
    "gender_net.caffemodel": "87862497f48764ea24eb162c21f542c2e007311e",
    "mean.binaryproto": "15c6049ca096085e3e741134b31e52e0873b534e",
    "deploy_gender.prototxt": "a0f7cb8c554782edfa32753891b49c9d69e1af3b",
}

TRAINING_FOLDS = (
    "Not stated. The paper reports the mean over five networks, each tested on the fold it did not "
    "train on; the authors' repository (GilLevi/AgeGenderDeepLearning) ships per-fold training files "
    "(train_val_test_fold_is_0..4) but one released gender_net.caffemodel and one mean.binaryproto, and "
    "neither the README, the project page, the demo notebook nor the paper says which folds that network "
    "was trained on. It was trained on Adience, so it saw at least four of the five folds: on any fold, "
    "its accuracy may include faces (and people) it was trained on, and no fold can be shown to be clean."
)


# ----------------------------------------------------------------------------- where the release is

def release_dir() -> Path:
    """Where ``python -m helpers.assets fetch levi_hassner_gender`` unpacks the release."""
    from .course import assets

    return assets.get_asset(ASSET).target_dir()


def release_files(root=None) -> dict[str, Path] | None:
    """``{file name: path}`` of the three files under ``root`` (default: the asset's folder),
    found wherever the archive put them; None when one is missing."""
    root = Path(root) if root is not None else release_dir()
    found = {}
    for name in FILES:
        hits = sorted(root.rglob(name)) if root.is_dir() else []
        if not hits:
            return None
        found[name] = hits[0]
    return found


def git_blob_id(path) -> str:
    """The id git gives a file's bytes (SHA-1 of ``b"blob <size>\\0"`` + bytes)."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_release(files: dict[str, Path]) -> list[str]:
    """The files that differ from the authors' copies on GitHub (empty: all match)."""
    return [f"{name}: git blob {git_blob_id(path)}, the authors' copy is {AUTHOR_BLOB_IDS[name]}"
            for name, path in files.items() if name in AUTHOR_BLOB_IDS and git_blob_id(path) != AUTHOR_BLOB_IDS[name]]


# ----------------------------------------------------------------------------- the network

def netspec(batch: int = 1):
    """Their gender network, as their ``deploy_gender.prototxt`` declares it (V1 syntax there):
    conv1 96x7x7 stride 4, pool, LRN; conv2 256x5x5 pad 2, pool, LRN; conv3 384x3x3 pad 1, pool;
    fc6 512, fc7 512 (ReLU, Dropout 0.5), fc8 2, softmax. Used to write the stand-in."""
    from .caffe.spec import LayerSpec, NetSpec

    layers = []

    def add(name, type_, bottom, top, params=None):
        layers.append(LayerSpec(name, type_, [bottom], [top], dict(params or {}), 0))

    lrn = {"local_size": 5, "alpha": 0.0001, "beta": 0.75}
    add("conv1", "Convolution", "data", "conv1", {"num_output": 96, "kernel_size": 7, "stride": 4})
    add("relu1", "ReLU", "conv1", "conv1")
    add("pool1", "Pooling", "conv1", "pool1", {"pool": "MAX", "kernel_size": 3, "stride": 2})
    add("norm1", "LRN", "pool1", "norm1", lrn)
    add("conv2", "Convolution", "norm1", "conv2", {"num_output": 256, "pad": 2, "kernel_size": 5})
    add("relu2", "ReLU", "conv2", "conv2")
    add("pool2", "Pooling", "conv2", "pool2", {"pool": "MAX", "kernel_size": 3, "stride": 2})
    add("norm2", "LRN", "pool2", "norm2", lrn)
    add("conv3", "Convolution", "norm2", "conv3", {"num_output": 384, "pad": 1, "kernel_size": 3})
    add("relu3", "ReLU", "conv3", "conv3")
    add("pool5", "Pooling", "conv3", "pool5", {"pool": "MAX", "kernel_size": 3, "stride": 2})
    for fc, bottom in (("fc6", "pool5"), ("fc7", "fc6")):
        add(fc, "InnerProduct", bottom, fc, {"num_output": 512})
        add(f"relu{fc[-1]}", "ReLU", fc, fc)
        add(f"drop{fc[-1]}", "Dropout", fc, fc, {"dropout_ratio": 0.5})
    add("fc8", "InnerProduct", "fc7", "fc8", {"num_output": 2})
    add("prob", "Softmax", "fc8", "prob")
    return NetSpec(name="CaffeNet", input_name="data", input_shape=(batch, 3, *CROP), layers=layers,
                   skipped=[], source="<levi_hassner.netspec>")


def preprocessing(mean_file):
    """The authors' recipe: BGR minus their 256x256 mean image, then the 227x227 centre crop."""
    from .caffe.preprocessing import Preprocessing

    return Preprocessing.from_mean_file(mean_file, crop=CROP, channel_order="BGR")


def write_stand_in(folder=None, seed: int = 0) -> dict[str, Path]:
    """A STAND-IN release at the real size and in the real formats (V1 prototxt, V1 caffemodel
    with legacy 4-D blobs, a 256x256 BlobProto mean), with seeded random weights and a smooth
    mean face: for rehearsing the conversion and the evaluation where the real files are absent.
    It has learned nothing; its predictions mean nothing. ``folder`` defaults to a new temporary
    folder on the local disk (46 MB that need not go to a Drive-backed build folder)."""
    import tempfile

    import keras

    from .caffe import keras_to_caffe_blobs, write_blobproto, write_caffemodel, write_prototxt
    from .caffe.keras_model import build_keras_model

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="levi_hassner_stand_in_"))
    folder.mkdir(parents=True, exist_ok=True)
    net = netspec(batch=10)  # the release declares 10 input_dim
    keras.utils.set_random_seed(seed)
    model = build_keras_model(net, random_init=True)  # VGG-Face's preprocessing: only the weights are used
    files = {
        "deploy_gender.prototxt": write_prototxt(folder / "deploy_gender.prototxt", net, syntax="v1"),
        "gender_net.caffemodel": write_caffemodel(folder / "gender_net.caffemodel", keras_to_caffe_blobs(model, net),
                                                  format="v1", legacy_dims=True, name=net.name),
    }
    yy, xx = np.mgrid[0:IMAGE_SIZE[0], 0:IMAGE_SIZE[1]] / IMAGE_SIZE[0]
    face = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 4)  # brighter in the middle, like a mean face
    mean = np.stack([78.4 + 40 * face, 87.8 + 40 * face, 114.9 + 40 * face]).astype(np.float32)  # B, G, R
    files["mean.binaryproto"] = write_blobproto(folder / "mean.binaryproto", mean)
    return files


def convert_release(files: dict[str, Path], out_path=None, progress: bool = False):
    """The release converted by the course's converter (the same code path as VGG-Face), its
    preprocessing (256x256 input, mean image, 227 crop) and class names inside the model."""
    from .caffe import convert

    return convert.convert(files["deploy_gender.prototxt"], files["gender_net.caffemodel"], out_path=out_path,
                           names=list(CLASS_NAMES), progress=progress,
                           preprocessing=preprocessing(files["mean.binaryproto"]))


def converted_path() -> Path:
    from .course import paths

    return paths.weights_dir() / "converted" / "levi_hassner_gender.keras"


def load_or_convert(files: dict[str, Path], progress: bool = False):
    """``converted_path()`` if it is newer than the caffemodel, else convert and save it."""
    from . import load_model

    target = converted_path()
    caffemodel = Path(files["gender_net.caffemodel"])
    if target.is_file() and target.stat().st_mtime >= caffemodel.stat().st_mtime:
        return load_model(target)
    return convert_release(files, out_path=target, progress=progress)


# ----------------------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    """The released network on given faces."""

    accuracy: float
    table: object          # accuracy and per-class recall with user-bootstrap intervals (pandas)
    per_age: object        # helpers.evaluation.group_accuracy per age group
    per_fold: object       # the same per fold (None without a ``fold`` column)
    probs: np.ndarray      # (N, 2): P(m), P(f), for the faces in ``index``
    index: object          # the frame index of the scored faces (m and f only)
    n_faces: int
    skipped: int           # faces of other classes than m/f (the network has no answer for them)
    seconds: float

    def probs_for(self, frame, class_names: Sequence[str] = ("m", "f")) -> np.ndarray:
        """The predictions for ``frame``'s m and f faces, for :func:`score` (each must have been
        evaluated: a subset of the evaluated frame)."""
        faces, _, _ = _kept(frame, class_names)
        position = {key: i for i, key in enumerate(self.index)}
        missing = [k for k in faces.index if k not in position]
        if missing:
            raise KeyError(f"{len(missing)} of the {len(frame)} faces were not evaluated (first: {missing[0]!r})")
        return self.probs[[position[k] for k in faces.index]]

    def summary(self) -> str:
        low, high = self.table.loc["accuracy", ["low", "high"]]
        folds = ""
        if self.per_fold is not None and len(self.per_fold) > 1:
            folds = (f"; per fold {self.per_fold.accuracy.mean():.1%} ± {self.per_fold.accuracy.std(ddof=0):.1%} "
                     f"over {len(self.per_fold)} folds")
        skipped = f" ({self.skipped} faces of other classes left out)" if self.skipped else ""
        return (f"Levi & Hassner's released network: accuracy {self.accuracy:.1%} "
                f"(interval {low:.1%}–{high:.1%}) on {self.n_faces} faces{skipped}{folds}")


def _kept(frame, class_names):
    names = [str(c) for c in class_names]
    keep = frame.label.map(lambda k: names[int(k)] in CLASS_NAMES).to_numpy(bool)
    if not keep.any():
        raise ValueError(f"no face of class {list(CLASS_NAMES)} among the {len(frame)} given (classes {names})")
    faces = frame[keep]
    y = np.array([CLASS_NAMES.index(names[int(k)]) for k in faces.label])
    return faces, y, int((~keep).sum())


def evaluate(model, frame, root, *, class_names: Sequence[str] = ("m", "f"), batch_size: int = 64,
             n_boot: int = 1000, seed: int = 0) -> Evaluation:
    """The network's predictions on ``frame``'s faces (``path``, ``label`` indexing
    ``class_names``, ``user_id``, ``age_group``, optionally ``fold``), resized to 256x256 as
    the authors did, scored by :func:`score`. Faces whose class is neither ``m`` nor ``f``
    (the three-class protocol's ``u``) are left out and counted."""
    from . import pipeline

    start = time.perf_counter()
    faces, _, _ = _kept(frame, class_names)
    size = tuple(model.input_shape[1:3])
    batches = pipeline.make_dataset(faces, root, image_size=size, resize="direct", training=False, labels=False,
                                    batch_size=batch_size)
    probs = model.predict(batches, verbose=0).astype("float64")
    result = score(frame, probs, class_names=class_names, n_boot=n_boot, seed=seed)
    result.seconds = time.perf_counter() - start
    return result


def score(frame, probs, *, class_names: Sequence[str] = ("m", "f"), n_boot: int = 1000, seed: int = 0) -> Evaluation:
    """Accuracy and per-class recall (``helpers.evaluation.user_bootstrap``), accuracy per age
    group and per fold (``group_accuracy``) of predictions ``probs`` for ``frame``'s m and f
    faces, in order (e.g. ``evaluation.probs_for(test)`` for a subset already predicted)."""
    from . import evaluation as ev

    faces, y, skipped = _kept(frame, class_names)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(faces), len(CLASS_NAMES)):
        raise ValueError(f"probs must be ({len(faces)}, {len(CLASS_NAMES)}) for the m/f faces, got {probs.shape}")
    pred = probs.argmax(axis=1)
    users = faces.user_id.to_numpy()
    boot = ev.user_bootstrap(y, pred, users, list(CLASS_NAMES), n_boot=n_boot, seed=seed)
    per_age = ev.group_accuracy(y, pred, faces.age_group, users, n_boot=n_boot, seed=seed)
    per_fold = None
    if "fold" in faces and faces.fold.notna().all():
        folds = sorted(int(f) for f in faces.fold.unique())
        per_fold = ev.group_accuracy(y, pred, faces.fold.astype(int), users, order=folds, n_boot=n_boot, seed=seed)
    return Evaluation(accuracy=float(np.mean(pred == y)), table=boot.table, per_age=per_age, per_fold=per_fold,
                      probs=probs, index=faces.index, n_faces=len(faces), skipped=skipped, seconds=0.0)


# ----------------------------------------------------------------------------- which folds? the mean image tells

def fold_mean_images(frame, root, *, class_names: Sequence[str] = ("m", "f"), max_per_fold: int | None = 500,
                     seed: int = 0, batch_size: int = 64):
    """``({fold: (3, 256, 256) BGR mean image}, {fold: its m and f faces})``: each fold's m and f
    faces (the authors' gender training lists hold no others) resized to 256x256 as their
    ``convert_imageset`` did, averaged over a seeded sample of ``max_per_fold`` faces per fold
    (all with None); the second dict counts every m/f face of the fold (the split weights)."""
    from . import pipeline

    kept, _, _ = _kept(frame, class_names)
    means, counts = {}, {}
    for fold, faces in kept.groupby("fold"):
        counts[int(fold)] = len(faces)
        if max_per_fold is not None and len(faces) > max_per_fold:
            faces = faces.sample(max_per_fold, random_state=seed)
        total = np.zeros((*IMAGE_SIZE, 3))
        for images in pipeline.make_dataset(faces, root, image_size=IMAGE_SIZE, resize="direct", training=False,
                                            labels=False, batch_size=batch_size):
            total += images.numpy().sum(axis=0)
        means[int(fold)] = (total / len(faces))[..., ::-1].transpose(2, 0, 1)  # RGB (H, W, C) -> BGR (C, H, W)
    return means, counts


def training_split_match(released_mean, fold_means: dict, fold_sizes: dict):
    """How close the released ``mean.binaryproto`` is to the mean of each five-fold training
    split (the four folds other than the test fold, weighted by their sizes), as a table sorted
    by RMS difference (per pixel and channel, 0-255 scale). The authors computed their mean on
    the training split of one fold (``make_mean_imag_test_fold_is_k.sh``): the nearest split is
    the evidence of which folds the released network trained on; ``gap`` says how clear it is."""
    import pandas as pd

    released = np.asarray(released_mean, dtype=np.float64)
    rows = []
    for test_fold in sorted(fold_means):
        train = [f for f in fold_means if f != test_fold]
        weights = np.array([fold_sizes[f] for f in train], dtype=np.float64)
        split_mean = np.tensordot(weights / weights.sum(), np.stack([fold_means[f] for f in train]), axes=1)
        rows.append({"test fold": test_fold, "trained on": ", ".join(map(str, train)),
                     "rms difference": float(np.sqrt(np.mean((split_mean - released) ** 2)))})
    table = pd.DataFrame(rows).sort_values("rms difference").reset_index(drop=True)
    table["gap"] = table["rms difference"] - table["rms difference"].iloc[0]
    return table
