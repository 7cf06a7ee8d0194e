"""A face table (``helpers.data``) -> ``tf.data`` batches that Keras 3 ``model.fit`` reads.

Images leave this module as RGB float32 in 0-255, shape (N, H, W, 3): the model does its own
VGG-Face preprocessing (BGR, mean subtraction), so nothing here touches colours or means.

Resizing follows the case study: ``resize="crop"`` scales the short side to 256/224 of the
target and takes a centre crop (a random crop when training); ``resize="direct"`` scales
straight to the target. Training adds a horizontal flip and, optionally, colour jitter. All
randomness is stateless and seeded: the same ``shuffle_seed`` gives the same order and the same
augmentations, epoch after epoch, while consecutive epochs differ from each other.

Files are checked before the first batch (missing or empty files raise an error listing them),
so a run never dies mid-epoch on a file that is not there; content is checked up front by
``helpers.data.validate_images`` and excluded only by ``helpers.data.drop_invalid``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

CROP_RATIO = 256 / 224  # the case study's: resize to 256, crop 224
RESIZE_MODES = ("crop", "direct")
AUGMENTATIONS = ("crop", "flip")


def class_weight_dict(labels, n_classes: int) -> dict[int, float]:
    """Keras ``class_weight=``: n / (n_classes * count_c), so every class weighs the same in
    total. A class with no example gets 1.0 (it never contributes to the loss anyway)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels, minlength=n_classes)
    n = labels.size
    return {c: (float(n / (n_classes * counts[c])) if counts[c] else 1.0) for c in range(n_classes)}


def _image_paths(df: pd.DataFrame, root) -> list[str]:
    if "path" not in df:
        raise ValueError("the DataFrame has no 'path' column; read it with a helpers.data reader")
    root = Path(root) if root is not None else Path(".")
    return [str(root / p) for p in df["path"]]


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


def check_decodable(df: pd.DataFrame, root) -> None:
    """Decode every image once with Pillow (``helpers.data.validate_images``, cached under
    ``build/cache``) and raise if any is unreadable, so that training cannot fail mid-epoch."""
    from .course import paths
    from .data import validate_images

    report = validate_images(df, root if root is not None else ".",
                             cache_path=paths.build_dir() / "cache" / "image_validation.json")
    if not report.ok:
        raise ValueError(f"{report}\nExclude them explicitly with helpers.data.drop_invalid(df, report).")


def _target_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def make_dataset(df: pd.DataFrame, root=None, *, image_size=(224, 224), resize: str = "crop",
                 training: bool = False, batch_size: int = 32, shuffle_seed: int = 0,
                 augment=AUGMENTATIONS, color_jitter: bool = False, cache=False,
                 class_weights=None, sample: str = "none", labels: bool = True,
                 shuffle: bool | None = None, check: bool = True, drop_remainder: bool = False,
                 num_parallel_calls=None):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches, or ``(images, labels, weights)``
    when ``class_weights`` is ``"balanced"`` or a {class: weight} dict, or images alone when
    ``labels=False``.

    ``df`` needs ``path`` (relative to ``root``) and, with ``labels``, an int ``label`` column
    (``helpers.data.apply_protocol``). ``training=True`` shuffles (``shuffle`` overrides) and
    applies ``augment`` (any of "crop", "flip") and ``color_jitter``; evaluation is
    deterministic and keeps the table's order. ``sample="balanced"`` draws every class equally
    often (with replacement; an epoch keeps ``len(df)`` images). ``cache=True`` keeps decoded
    images in memory after the first epoch (a string caches to that file).

    ``check=True`` stats every file first and raises on missing or empty ones; ``"decode"``
    also decodes each once (cached), so a corrupt JPEG cannot stop training mid-epoch;
    ``False`` skips both.
    """
    import tensorflow as tf

    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    augment = tuple(augment or ())
    unknown = [a for a in augment if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}: expected some of {AUGMENTATIONS}")
    if sample not in ("none", "balanced"):
        raise ValueError(f"sample must be 'none' or 'balanced', got {sample!r}")
    if len(df) == 0:
        raise ValueError("the DataFrame is empty: nothing to read")
    height, width = _target_size(image_size)
    files = _image_paths(df, root)
    if check == "decode":
        check_files(files)
        check_decodable(df, root)
    elif check:
        check_files(files)
    need_labels = labels or class_weights is not None or sample == "balanced"
    if need_labels:
        if "label" not in df:
            raise ValueError("the DataFrame has no int 'label' column: call helpers.data.apply_protocol first")
        label_array = df["label"].to_numpy().astype(np.int32)
    else:
        label_array = np.zeros(len(df), np.int32)
    n_classes = int(label_array.max()) + 1 if need_labels else 1
    protocol = df.attrs.get("protocol")
    if protocol is not None:  # a split may lack the last class; the protocol knows them all
        from .data import PROTOCOLS

        n_classes = max(n_classes, len(PROTOCOLS[protocol]))
    weights = None
    if class_weights is not None:
        if class_weights == "balanced":
            cw = class_weight_dict(label_array, n_classes)
        elif isinstance(class_weights, dict):
            cw = {int(k): float(v) for k, v in class_weights.items()}
        else:
            raise ValueError(f"class_weights must be None, 'balanced' or a dict, got {class_weights!r}")
        weights = np.array([cw.get(int(l), 1.0) for l in label_array], np.float32)
    if weights is None:
        weights = np.ones(len(df), np.float32)
    do_shuffle = training if shuffle is None else shuffle
    random_crop = training and "crop" in augment
    flip = training and "flip" in augment
    jitter = training and color_jitter
    # Random crops come from a larger image; in "direct" mode that image is stretched too.
    if resize == "crop" or random_crop:
        pre_h, pre_w = round(height * CROP_RATIO), round(width * CROP_RATIO)
    else:
        pre_h, pre_w = height, width

    def load(path):
        raw = tf.io.read_file(path)
        img = tf.io.decode_image(raw, channels=3, expand_animations=False)
        img.set_shape([None, None, 3])
        img = tf.cast(img, tf.float32)
        if resize == "crop":
            # Scale the short side to pre_size, keeping the aspect ratio.
            shape = tf.cast(tf.shape(img)[:2], tf.float32)
            scale = tf.maximum(pre_h / shape[0], pre_w / shape[1])
            new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
            new = tf.maximum(new, [pre_h, pre_w])
            img = tf.image.resize(img, new, method="bilinear", antialias=True)
        else:
            img = tf.image.resize(img, [pre_h, pre_w], method="bilinear", antialias=True)
        return img

    def center(img):
        shape = tf.shape(img)
        top = (shape[0] - height) // 2
        left = (shape[1] - width) // 2
        return img[top:top + height, left:left + width, :]

    def finish(img, seed):
        # seed: int64[2] unique to this element and epoch -> stateless, reproducible randomness
        seed = tf.cast(seed, tf.int32)
        if random_crop:
            img = tf.image.stateless_random_crop(img, [height, width, 3], seed=seed)
        else:
            img = center(img)
        if flip:
            img = tf.image.stateless_random_flip_left_right(img, seed=seed + [0, 1])
        if jitter:
            img = tf.image.stateless_random_brightness(img, 0.15 * 255, seed=seed + [0, 2])
            img = tf.image.stateless_random_contrast(img, 0.8, 1.2, seed=seed + [0, 3])
            img = tf.image.stateless_random_saturation(img, 0.8, 1.2, seed=seed + [0, 4])
            img = tf.clip_by_value(img, 0.0, 255.0)
        img = tf.ensure_shape(img, [height, width, 3])
        return img

    autotune = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    n = len(df)

    def source(indices):
        ds = tf.data.Dataset.from_tensor_slices((np.asarray(files)[indices], label_array[indices],
                                                 weights[indices]))
        return ds

    if sample == "balanced":
        per_class = [np.flatnonzero(label_array == c) for c in range(n_classes)]
        present = [idx for idx in per_class if idx.size]
        parts = [source(idx).shuffle(idx.size, seed=shuffle_seed + c, reshuffle_each_iteration=True).repeat()
                 for c, idx in enumerate(present)]
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=[1 / len(parts)] * len(parts),
                                                  seed=shuffle_seed, rerandomize_each_iteration=True)
        ds = ds.take(n)
        ds = ds.map(lambda p, l, w: (load(p), l, w), num_parallel_calls=autotune)
        if cache:
            raise ValueError("cache=True with sample='balanced' would freeze one draw; use one or the other")
    else:
        ds = source(np.arange(n))
        if cache:
            ds = ds.map(lambda p, l, w: (load(p), l, w), num_parallel_calls=autotune)
            ds = ds.cache(cache if isinstance(cache, str) else "")
            if do_shuffle:  # shuffling decoded images: the buffer holds at most 2048 of them
                ds = ds.shuffle(min(n, 2048), seed=shuffle_seed, reshuffle_each_iteration=True)
        else:
            if do_shuffle:  # shuffling file names is cheap: a full buffer, a perfect shuffle
                ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
            ds = ds.map(lambda p, l, w: (load(p), l, w), num_parallel_calls=autotune)

    seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def to_example(item, seed):
        img, label, weight = item
        img = finish(img, seed)
        if not labels:
            return img
        if class_weights is not None:
            return img, label, weight
        return img, label

    ds = ds.map(to_example, num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_images(df: pd.DataFrame, root=None, image_size=(224, 224), resize: str = "crop",
                batch_size: int = 64) -> np.ndarray:
    """All of ``df``'s images as one float32 array (N, H, W, 3) in 0-255, in the table's order,
    through the same decoding and resizing as :func:`make_dataset` (for small datasets)."""
    h, w = _target_size(image_size)
    if len(df) == 0:
        return np.zeros((0, h, w, 3), np.float32)
    ds = make_dataset(df, root, image_size=(h, w), resize=resize, training=False,
                      batch_size=batch_size, labels=False)
    out = np.concatenate([b.numpy() for b in ds], axis=0).astype(np.float32, copy=False)
    if len(out) != len(df):
        raise RuntimeError(f"read {len(out)} images for {len(df)} rows")
    return out
