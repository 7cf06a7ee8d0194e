"""Layer features of many images, extracted once and cached on disk (notebooks 03, 04, 06).

One forward pass per batch computes every requested layer (a multi-output feature model).
Spatial layers are reduced as they come out so that ``pool1`` (112×112×64 per image in full
mode) stays small: ``reduce="gap"`` keeps the global average per channel; ``"gap+proj"``
appends a fixed random projection of the map average-pooled to a 4×4 grid (some of *where*
survives); ``None`` keeps the raw outputs.

The cache: one ``.npy`` per layer (``np.save``, loaded with ``mmap_mode="r"`` and
``allow_pickle=False``: loading never runs pickle) plus a metadata JSON beside it. The file
name is a hash of the key (weights checksum, dataset id, preprocessing, image size, layer,
reduction), so changing any part of the key recomputes. Files are written atomically, the JSON
last, so an interrupted run never leaves an entry that looks complete.

The simple way, for a DataFrame of faces (what notebooks 04 and 06 call)::

    from helpers import features
    feats = features.features_for_frame(model, df, ASSETS.dataset_root, ["fc7"],
                                        image_size=(224, 224))
    X = feats["fc7"]        # (len(df), 4096), rows in df's order

The general way: ``extract_features(model, images_or_dataset, layers, key=cache_key(...))``.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .course import paths
from .course.fileio import atomic_path, hash_file, write_json_atomic

REDUCTIONS = ("gap", "gap+proj", None)
REQUIRED_KEY_PARTS = ("weights", "dataset", "preprocessing", "image_size")
PROJ_GRID = 4  # "gap+proj" pools the map to a PROJ_GRID × PROJ_GRID grid before projecting
CACHE_FORMAT = 1  # bump when the stored layout changes: every old entry is then a miss

_checksum_lock = threading.Lock()


def default_cache_dir() -> Path:
    return paths.build_dir() / "cache" / "features"


# --- keys --------------------------------------------------------------------------------------

def file_checksum(path: str | os.PathLike, *, index_path: str | os.PathLike | None = None) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime) so 580 MB is hashed once.

    The remembered checksums live in ``build/cache/checksums.json`` (``index_path``
    overrides); a file that changes size or modification time is hashed again.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"cannot checksum {path}: no such file")
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    index_path = Path(index_path) if index_path else paths.build_dir() / "cache" / "checksums.json"
    with _checksum_lock:
        index = _read_json(index_path) or {}
        hit = index.get(str(path))
        if hit and hit.get("stamp") == stamp:
            return hit["sha256"]
        index[str(path)] = {"stamp": stamp, "sha256": hash_file(path)["sha256"]}
        write_json_atomic(index_path, index)
    return index[str(path)]["sha256"]


def weights_fingerprint(model) -> str:
    """SHA-256 of a model's weights in memory (for a model that has no file, e.g. fine-tuned)."""
    digest = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        digest.update(w.path.encode() if hasattr(w, "path") else b"")
        digest.update(str(arr.shape).encode() + str(arr.dtype).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def frame_fingerprint(df, columns: Iterable[str] = ("path",)) -> str:
    """SHA-256 of a DataFrame's image list IN ORDER (cached rows follow the frame's rows)."""
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"frame_fingerprint: the frame has no column(s) {missing}; it has {list(df.columns)}")
    digest = hashlib.sha256()
    for values in df[columns].astype(str).itertuples(index=False, name=None):
        digest.update(("\t".join(values) + "\n").encode())
    return f"{len(df)}:{digest.hexdigest()}"


def cache_key(weights: str, dataset: str, preprocessing: str | dict, image_size, **extra) -> dict:
    """The cache key of ``extract_features``: every part that changes the features.

    ``weights``: a checksum (``file_checksum`` or ``weights_fingerprint``); ``dataset``: an id
    of the images in order (``frame_fingerprint``); ``preprocessing``: how images were loaded
    (e.g. ``"rgb0-255 resize=direct"``); ``image_size``: (H, W). ``extra`` parts are kept too.
    """
    key = {"weights": weights, "dataset": dataset, "preprocessing": preprocessing,
           "image_size": [int(s) for s in image_size], **extra}
    _check_key(key)
    return key


def _check_key(key: dict) -> None:
    if not isinstance(key, dict):
        raise TypeError(f"the feature cache key must be a dict, got {type(key).__name__}")
    missing = [k for k in REQUIRED_KEY_PARTS if k not in key]
    if missing:
        raise ValueError(
            f"the feature cache key lacks {missing}: it must name the weights, the dataset, the "
            "preprocessing and the image size (see helpers.features.cache_key)"
        )
    try:
        json.dumps(key, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the feature cache key must be plain JSON values: {err}") from None


def entry_name(key: dict, layer: str, reduce: str | None, proj_dim: int, seed: int) -> str:
    """The file stem of one cached layer: the layer name plus a hash of everything else."""
    full = _full_key(key, layer, reduce, proj_dim, seed)
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:24]
    safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in layer)
    return f"{safe}-{digest}"


def _full_key(key, layer, reduce, proj_dim, seed) -> dict:
    full = {"format": CACHE_FORMAT, "key": key, "layer": layer, "reduce": reduce}
    if reduce == "gap+proj":
        full.update(proj_dim=int(proj_dim), proj_seed=int(seed), proj_grid=PROJ_GRID)
    return full


# --- extraction --------------------------------------------------------------------------------

def extract_features(
    model,
    images_or_dataset,
    layers: Iterable[str],
    *,
    key: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    reduce: str | None = "gap",
    batch_size: int = 64,
    progress: bool = True,
    proj_dim: int = 256,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Features of ``layers`` for every image, in input order: ``{layer: (N, D) array}``.

    ``images_or_dataset``: a numpy array (N, H, W, 3) of RGB 0–255, or a ``tf.data.Dataset``
    of such batches (or of ``(images, labels, ...)`` tuples; only the images are used; it
    must not shuffle). With ``key`` (see ``cache_key``) each layer is looked up in
    ``cache_dir`` (default ``build/cache/features``) first, and only the missing layers are
    computed, all in one pass; without ``key`` nothing is cached. Cached arrays come back
    memory-mapped read-only. ``reduce``: ``"gap"``, ``"gap+proj"`` or ``None`` (raw outputs;
    spatial maps then keep their shape). Dense outputs are never reduced.
    """
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("extract_features: no layers requested")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    names = {layer.name for layer in model.layers}
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise ValueError(
            f"model {model.name!r} has no layer(s) {unknown}; its layers are: {', '.join(l.name for l in model.layers)}"
        )
    if key is not None:
        _check_key(key)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    found: dict[str, np.ndarray] = {}
    if key is not None:
        for layer in layers:
            hit = _load_entry(cache_dir, key, layer, reduce, proj_dim, seed)
            if hit is not None:
                found[layer] = hit
    todo = [layer for layer in layers if layer not in found]
    if todo:
        computed = _compute(model, images_or_dataset, todo, reduce=reduce, batch_size=batch_size,
                            progress=progress, proj_dim=proj_dim, seed=seed)
        n_found = {len(v) for v in found.values()}
        n_new = {len(v) for v in computed.values()}
        if n_found and n_found != n_new:
            raise ValueError(
                f"cached features hold {n_found.pop()} rows but the images give {n_new.pop()}: "
                "the dataset id in the key does not match the images passed"
            )
        for layer, arr in computed.items():
            if key is not None:
                found[layer] = _store_entry(cache_dir, key, layer, reduce, proj_dim, seed, arr)
            else:
                found[layer] = arr
    return {layer: found[layer] for layer in layers}



def _compute(model, images_or_dataset, layers, *, reduce, batch_size, progress, proj_dim, seed):
    from . import vggface

    fm = vggface.feature_model(model, list(layers))
    batches, n_batches = _batches(images_or_dataset, batch_size)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_batches, desc=f"features {', '.join(layers)}", unit="batch", disable=not progress)
    projections: dict[str, np.ndarray] = {}
    parts: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    try:
        for batch in batches:
            for layer, out in zip(layers, _forward(fm, batch)):
                parts[layer].append(_reduce(out, layer, reduce, projections, proj_dim, seed))
            bar.update(1)
    finally:
        bar.close()
    if not parts[layers[0]]:
        raise ValueError("extract_features: the images are empty (no batch came out)")
    return {layer: np.concatenate(chunks, axis=0) for layer, chunks in parts.items()}


def _forward(fm, batch) -> list[np.ndarray]:
    """One inference pass of the feature model: every layer's output for one batch."""
    import keras

    # A direct call (no predict_on_batch): no graph tracing per feature model, and on a GPU
    # the convolutions dominate anyway.
    outputs = fm(keras.ops.convert_to_tensor(batch, dtype="float32"), training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for o in outputs]


def _reduce(out: np.ndarray, layer: str, reduce, projections: dict, proj_dim: int, seed: int) -> np.ndarray:
    if out.ndim != 4 or reduce is None:
        return out
    gap = out.mean(axis=(1, 2))
    if reduce == "gap":
        return gap
    grid = _adaptive_avg_pool(out, PROJ_GRID).reshape(len(out), -1)
    if layer not in projections:
        projections[layer] = random_projection(grid.shape[1], proj_dim, seed)
    return np.concatenate([gap, grid @ projections[layer]], axis=1)


def random_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A fixed Gaussian projection (in_dim, out_dim), scaled so lengths are kept on average."""
    rng = np.random.default_rng([int(seed), int(in_dim), int(out_dim)])
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def _adaptive_avg_pool(maps: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W, C) -> (N, grid, grid, C), averaging over near-equal cells (like PyTorch's)."""
    n, h, w, c = maps.shape
    out = np.empty((n, grid, grid, c), dtype=np.float32)
    for i in range(grid):
        r0, r1 = (i * h) // grid, max(((i + 1) * h + grid - 1) // grid, (i * h) // grid + 1)
        for j in range(grid):
            c0, c1 = (j * w) // grid, max(((j + 1) * w + grid - 1) // grid, (j * w) // grid + 1)
            out[:, i, j] = maps[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def _batches(images_or_dataset, batch_size) -> tuple[Iterator[np.ndarray], int | None]:
    if isinstance(images_or_dataset, _LazyDataset):
        images_or_dataset = images_or_dataset.get()
    if isinstance(images_or_dataset, np.ndarray):
        images = images_or_dataset
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be an array (N, H, W, 3) of RGB 0-255, got shape {images.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(images)
        return ((images[i:i + batch_size].astype(np.float32, copy=False) for i in range(0, n, batch_size)),
                -(-n // batch_size))
    import tensorflow as tf

    if not isinstance(images_or_dataset, tf.data.Dataset):
        raise TypeError(
            "extract_features takes a numpy array (N, H, W, 3) or a tf.data.Dataset of batches, "
            f"got {type(images_or_dataset).__name__}"
        )
    ds = images_or_dataset
    card = int(ds.cardinality())
    n_batches = card if card >= 0 else None

    def gen():
        for element in ds.as_numpy_iterator():
            yield element[0] if isinstance(element, tuple) else element

    return gen(), n_batches




# --- cache entries -----------------------------------------------------------------------------

def _load_entry(cache_dir: Path, key, layer, reduce, proj_dim, seed) -> np.ndarray | None:
    stem = entry_name(key, layer, reduce, proj_dim, seed)
    npy, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    meta = _read_json(meta_path)
    if meta is None or not npy.is_file():
        return None
    if meta.get("full_key") != _full_key(key, layer, reduce, proj_dim, seed):
        return None  # a hash collision or a hand-edited file: recompute rather than trust it
    try:
        arr = np.load(npy, mmap_mode="r", allow_pickle=False)
    except ValueError as err:  # object arrays (pickles) refuse to load: never unpickle a cache
        warnings.warn(f"feature cache entry {npy} is not a plain numeric array ({err}); "
                      "recomputing it", stacklevel=3)
        return None
    if list(arr.shape) != meta.get("shape") or arr.dtype != np.float32:
        warnings.warn(f"feature cache entry {npy} does not match its metadata; recomputing it", stacklevel=3)
        return None
    return arr


def _store_entry(cache_dir: Path, key, layer, reduce, proj_dim, seed, arr: np.ndarray) -> np.ndarray:
    stem = entry_name(key, layer, reduce, proj_dim, seed)
    npy, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    with atomic_path(npy) as tmp:
        np.save(tmp, arr, allow_pickle=False)
    # The metadata is written last: it is what marks the entry complete.
    write_json_atomic(meta_path, {
        "full_key": _full_key(key, layer, reduce, proj_dim, seed),
        "shape": list(arr.shape), "dtype": str(arr.dtype), "file": npy.name,
    })
    return np.load(npy, mmap_mode="r", allow_pickle=False)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --- DataFrames of faces -----------------------------------------------------------------------

def features_for_frame(
    model,
    df,
    root: str | os.PathLike,
    layers: Iterable[str],
    *,
    image_size=(224, 224),
    resize: str = "direct",
    weights: str | None = None,
    weights_path: str | os.PathLike | None = None,
    reduce: str | None = "gap",
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Cached features of the faces of ``df`` (rows in ``df``'s order), images read by
    ``helpers.pipeline.make_dataset`` (evaluation mode: no augmentation, no shuffling).

    The weights part of the key is ``weights`` if given, else the checksum of
    ``weights_path`` (the file the model was loaded from), else a fingerprint of the model's
    weights in memory (always right, costs one pass over the weights).
    """
    from . import pipeline

    if weights is None:
        weights = file_checksum(weights_path) if weights_path else weights_fingerprint(model)
    image_size = tuple(int(s) for s in image_size)
    key = cache_key(weights, frame_fingerprint(df), f"pipeline rgb0-255 resize={resize}", image_size)
    # Built lazily: a full cache hit never opens an image.
    dataset = _LazyDataset(lambda: pipeline.make_dataset(
        df, root, image_size=image_size, resize=resize, training=False, batch_size=batch_size,
        labels=False))
    return extract_features(model, dataset, layers, key=key, cache_dir=cache_dir, reduce=reduce,
                            batch_size=batch_size, progress=progress)


class _LazyDataset:
    """Defers building a tf.data pipeline until extraction actually needs the images."""

    def __init__(self, build):
        self._build = build

    def get(self):
        return self._build()
