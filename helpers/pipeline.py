"""A face table (``helpers.data``) -> ``tf.data`` batches that Keras 3 ``model.fit`` reads.

Four small steps, each a function of its own: :func:`decode_image` (a file to RGB pixels),
:func:`resize_image` (to the network's size, or a little larger when a random crop follows),
:func:`augment_image` (a random crop and a horizontal flip when training, the centre otherwise) and
:func:`make_dataset`, which strings them together, shuffles and batches.

Images leave this module as RGB float32 in 0-255, shape (N, H, W, 3): the model does its own
VGG-Face preprocessing (BGR, mean subtraction), so nothing here touches colours or means.

Resizing follows the case study: ``resize="crop"`` scales the short side to 256/224 of the
target and takes a centre crop (a random crop when training); ``resize="direct"`` scales
straight to the target (when training, to 256/224 of it, then a random crop). All randomness
is stateless and seeded: the same ``shuffle_seed`` gives the same order and the same
augmentations, epoch after epoch, while consecutive epochs differ from each other.

**Decoded once: the prepared cache.** Adience's aligned faces are 816 x 816 JPEGs; decoding
them again in every epoch of every notebook costs more CPU than a GPU waits for. The first
time a table of such large images is read, :func:`prepare_images` decodes each once and writes
it as a 256 px JPEG (the training size plus the crop margin) into a cache on the runtime's
local disk (:func:`prepared_dir`; never Google Drive, where many small files are slow); every
later read, in any notebook, takes the small files. Images no larger than the cache's size are
read as they are (quick mode's 64 px faces never go through it).

Files are checked before the first batch (missing or empty files raise an error listing them),
so a run never dies mid-epoch on a file that is not there; ``helpers.data.read_adience_folds``
already leaves out missing and truncated images, and ``helpers.data.validate_images`` decodes
every image when a dataset is in doubt.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

CROP_RATIO = 256 / 224  # the case study's: resize to 256, crop 224
RESIZE_MODES = ("crop", "direct")
AUGMENTATIONS = ("crop", "flip")  # what training may apply: a random crop, a random horizontal flip
PREPARED_SIDE = 256      # the prepared cache's short side: 224 plus the crop margin
PREPARED_QUALITY = 95    # JPEG quality of the prepared cache (see benchmarks/input_pipeline.py)
ENV_PREPARED = "COURSE_PREPARED_DIR"
COLAB_LOCAL_DISK = Path("/content/local_cache")


# ----------------------------------------------------------------------------- the four steps

def decode_image(path):
    """An image file (JPEG, PNG, BMP, GIF, WebP) -> RGB uint8 (H, W, 3); grey and RGBA become RGB."""
    import tensorflow as tf

    img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    img.set_shape([None, None, 3])
    return img


def resize_image(image, size: tuple[int, int], mode: str = "crop"):
    """uint8 or float (H, W, 3) -> float32 at ``size`` = (h, w) (``"direct"``) or with its short
    side scaled to cover ``size`` (``"crop"``: the aspect ratio kept, a crop of ``size`` follows)."""
    import tensorflow as tf

    h, w = size
    image = tf.cast(image, tf.float32)
    if mode == "direct":
        return tf.image.resize(image, [h, w], method="bilinear", antialias=True)
    if mode != "crop":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.maximum(h / shape[0], w / shape[1])
    new = tf.maximum(tf.cast(tf.math.ceil(shape * scale), tf.int32), [h, w])
    return tf.image.resize(image, new, method="bilinear", antialias=True)


def augment_image(image, size: tuple[int, int], seed=None, training: bool = False, augment=AUGMENTATIONS):
    """(H, W, 3) at least ``size`` -> ``size``: when ``training``, the augmentations named in
    ``augment`` (a random crop, a random horizontal flip; ``seed``: int32[2], stateless, so an
    epoch can be replayed); the centre otherwise, and in place of a crop not asked for."""
    import tensorflow as tf

    augment = _check_augment(augment)
    h, w = size
    if training and "crop" in augment:
        image = tf.image.stateless_random_crop(image, [h, w, 3], seed=seed)
    else:
        shape = tf.shape(image)
        top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
        image = image[top:top + h, left:left + w, :]
    if training and "flip" in augment:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + [0, 1])
    return tf.ensure_shape(image, [h, w, 3])


def _check_augment(augment) -> tuple:
    augment = tuple(augment or ())
    unknown = [a for a in augment if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}: expected some of {AUGMENTATIONS}")
    return augment


def make_dataset(df: pd.DataFrame, root=None, *, image_size=(224, 224), resize: str = "crop",
                 training: bool = False, batch_size: int = 32, shuffle_seed: int = 0, labels: bool = True,
                 augment=AUGMENTATIONS):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches, or of images alone (``labels=False``).

    ``df`` needs ``path`` (relative to ``root``) and, with ``labels``, an int ``label`` column
    (``helpers.data.apply_protocol``). ``training=True`` shuffles every epoch and applies
    ``augment`` (any of ``AUGMENTATIONS``: "crop", "flip"); evaluation is deterministic and keeps the table's order.
    Large images are read from the prepared cache (see the module docstring).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if len(df) == 0:
        raise ValueError("the DataFrame is empty: nothing to read")
    augment = _check_augment(augment)
    size = _target_size(image_size)
    pre = _read_size(size, resize, training)
    if labels and "label" not in df:
        raise ValueError("the DataFrame has no int 'label' column: call helpers.data.apply_protocol first")
    files = image_files(df, root, min_side=max(pre))
    check_files(files)
    label_array = df["label"].to_numpy().astype(np.int32) if labels else None
    return files_dataset(files, label_array, image_size=size, resize=resize, training=training,
                         batch_size=batch_size, shuffle_seed=shuffle_seed, augment=augment)


def files_dataset(files: list[str], labels=None, *, image_size=(224, 224), resize: str = "crop",
                  training: bool = False, batch_size: int = 32, shuffle_seed: int = 0, augment=AUGMENTATIONS):
    """:func:`make_dataset`'s batches from a list of image files (and int labels, or ``None``):
    the same decode, resize, augment and batch, with no prepared cache in between."""
    import tensorflow as tf

    augment = _check_augment(augment)
    size = _target_size(image_size)
    pre = _read_size(size, resize, training)
    pre_mode = "crop" if resize == "crop" else "direct"
    with_labels = labels is not None
    label_array = np.asarray(labels, dtype=np.int32) if with_labels else np.zeros(len(files), np.int32)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(files), label_array))
    if training:  # shuffling file names is cheap: a full buffer, a perfect shuffle
        ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).batch(2)

    def example(item, seed):
        path, label = item
        image = augment_image(resize_image(decode_image(path), pre, pre_mode), size, tf.cast(seed, tf.int32), training,
                              augment)
        return (image, label) if with_labels else image

    ds = tf.data.Dataset.zip((ds, seeds)).map(example, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_images(df: pd.DataFrame, root=None, image_size=(224, 224), resize: str = "crop",
                batch_size: int = 64, dtype="float32") -> np.ndarray:
    """All of ``df``'s images as one array (N, H, W, 3) in 0-255, in the table's order, through
    the same decoding and resizing as :func:`make_dataset` in evaluation mode.

    The array is allocated once and filled batch by batch (no second copy). ``dtype="uint8"``
    rounds the pixels and takes a quarter of the memory: 4,500 faces at 224 px are 0.7 GB
    instead of 2.7 GB (Keras casts to float32 batch by batch).
    """
    h, w = _target_size(image_size)
    out = np.empty((len(df), h, w, 3), dtype=dtype)
    if len(df) == 0:
        return out
    i = 0
    for batch in make_dataset(df, root, image_size=(h, w), resize=resize, training=False,
                              batch_size=batch_size, labels=False):
        b = batch.numpy()
        out[i:i + len(b)] = np.rint(b) if out.dtype.kind in "iu" else b
        i += len(b)
    if i != len(df):
        raise RuntimeError(f"read {i} images for {len(df)} rows")
    return out


def read_side(image_size, resize: str = "crop", training: bool = False) -> int:
    """The largest side :func:`make_dataset` resizes an image to before cropping it."""
    return max(_read_size(_target_size(image_size), resize, training))


def _read_size(size: tuple[int, int], resize: str, training: bool) -> tuple[int, int]:
    # a random crop comes from a larger image; "crop" always scales to that larger size first
    if resize == "crop" or training:
        return round(size[0] * CROP_RATIO), round(size[1] * CROP_RATIO)
    return size


def _target_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def check_files(files: list[str]) -> None:
    """Raise ``FileNotFoundError`` listing missing or empty files (cheap: one stat per file)."""
    problems = []
    for f in files:
        try:
            if os.stat(f).st_size == 0:
                problems.append(f"{f} (empty)")
        except OSError:
            problems.append(f"{f} (missing)")
    if problems:
        raise FileNotFoundError(
            f"{len(problems)} of {len(files)} image file(s) are missing or empty, e.g. {problems[:5]}. "
            "Run helpers.data.validate_images(df, root) and helpers.data.drop_invalid(df, report) "
            "to exclude them explicitly.")


# ----------------------------------------------------------------------------- the prepared cache

def prepared_dir() -> Path:
    """Where prepared images live: ``COURSE_PREPARED_DIR``, else on Colab the runtime's local
    disk (``/content/local_cache/prepared``, even when build/ is on Drive), else
    ``build/cache/prepared``."""
    from .course import paths

    override = os.environ.get(ENV_PREPARED)
    if override:
        return Path(override).expanduser().resolve()
    if paths.in_colab():
        # the runtime's /content (paths.colab_content(), where the Colab simulation has it)
        content = paths.colab_content() if hasattr(paths, "colab_content") else Path("/content")
        return Path(content) / COLAB_LOCAL_DISK.name / "prepared"
    return paths.build_dir() / "cache" / "prepared"


def source_description(df: pd.DataFrame, root, min_side: int) -> str:
    """Where :func:`make_dataset` reads ``df``'s pixels from: ``"original files"`` or
    ``"prepared <side> px JPEG q<quality>"`` (part of the feature cache's key)."""
    return f"prepared {PREPARED_SIDE} px JPEG q{PREPARED_QUALITY}" if _use_prepared(df, root, min_side) else "original files"


def image_files(df: pd.DataFrame, root, min_side: int = PREPARED_SIDE) -> list[str]:
    """The files :func:`make_dataset` reads for ``df``: the prepared copies when the originals
    are larger than the prepared cache and ``min_side`` (the largest side the reader resizes to)
    fits in it (prepared first if missing), else the originals."""
    if "path" not in df:
        raise ValueError("the DataFrame has no 'path' column; read it with a helpers.data reader")
    root = Path(root) if root is not None else Path(".")
    if not _use_prepared(df, root, min_side):
        return [str(root / p) for p in df["path"]]
    report = prepare_images(df, root)
    return [str(report.folder / p) for p in df["path"]]


def _use_prepared(df, root, min_side: int) -> bool:
    if min_side > PREPARED_SIDE or len(df) == 0:
        return False
    first = Path(root if root is not None else ".") / df["path"].iloc[0]
    try:
        from PIL import Image

        with Image.open(first) as im:  # reads the header only
            return min(im.size) > PREPARED_SIDE
    except Exception:  # missing or unreadable: check_files and the decoder will say so
        return False


class PreparedReport:
    """What :func:`prepare_images` did: the cache folder, images written now, already there."""

    def __init__(self, folder: Path, written: int, reused: int, seconds: float):
        self.folder, self.written, self.reused, self.seconds = folder, written, reused, seconds

    def __repr__(self) -> str:
        return (f"PreparedReport({self.folder}, written={self.written}, reused={self.reused}, "
                f"seconds={self.seconds:.1f})")


def prepare_images(df: pd.DataFrame, root, *, side: int = PREPARED_SIDE, quality: int = PREPARED_QUALITY,
                   folder=None, workers: int | None = None, progress: bool = True) -> PreparedReport:
    """Decode each image of ``df`` once and write it with its short side at ``side`` px (JPEG,
    ``quality``) under ``folder`` (default: :func:`prepared_dir` / a name for ``root``), in the
    same relative paths. Images already prepared from the same file (its size and modification
    time, kept in ``manifest.json``) are skipped; each file is written atomically. Images no
    larger than ``side`` are copied as they are. Raises naming every image that cannot be decoded.
    """
    from PIL import Image

    from .course.fileio import atomic_path, write_json_atomic

    root = Path(root)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    folder = Path(folder) if folder is not None else prepared_dir() / f"{root.name or 'images'}-{tag}-{side}q{quality}"
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        manifest = {}
    todo, stamps = [], {}
    for rel in dict.fromkeys(df["path"]):
        try:
            st = (root / rel).stat()
        except OSError:
            continue  # check_files names it
        stamps[rel] = [st.st_size, st.st_mtime_ns]
        if manifest.get(rel) != stamps[rel] or not (folder / rel).is_file():
            todo.append(rel)
    start = time.perf_counter()
    if not todo:
        return PreparedReport(folder, 0, len(stamps), 0.0)

    def prepare(rel: str) -> tuple[str, str] | None:
        try:
            with Image.open(root / rel) as im:
                if min(im.size) <= side:
                    data = (root / rel).read_bytes()
                    with atomic_path(folder / rel) as tmp:
                        tmp.write_bytes(data)
                    return None
                scale = side / min(im.size)
                target = (max(side, round(im.size[0] * scale)), max(side, round(im.size[1] * scale)))
                im.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 ... of the size, no smaller than target
                small = im.convert("RGB").resize(target, Image.Resampling.LANCZOS)
            with atomic_path(folder / rel, suffix=".jpg") as tmp:
                small.save(tmp, format="JPEG", quality=quality)
        except Exception as exc:  # a corrupt file: collected and reported together below
            return rel, f"{type(exc).__name__}: {exc}"
        return None

    from tqdm.auto import tqdm

    if progress:
        print(f"prepared cache: decoding {len(todo):,} image(s) once to {side} px JPEGs in {folder} "
              "(later reads, in every notebook, take these)")
    failures = []
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:  # PIL releases the GIL
        for problem in tqdm(pool.map(prepare, todo), total=len(todo), desc="preparing images", unit="img",
                            mininterval=2.0, disable=not progress):
            if problem:
                failures.append(problem)
    failed = {rel for rel, _ in failures}
    done = {rel: stamps[rel] for rel in todo if rel not in failed}
    write_json_atomic(manifest_path, {**manifest, **done}, indent=None)
    if failures:
        examples = [f"{root / rel} ({why})" for rel, why in failures[:5]]
        raise ValueError(f"{len(failures)} image(s) could not be decoded, e.g. {examples}. Exclude them with "
                         "helpers.data.drop_invalid(df, helpers.data.validate_images(df, root)).")
    return PreparedReport(folder, len(todo), len(stamps) - len(todo), time.perf_counter() - start)
