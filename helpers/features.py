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

The simple way, for a DataFrame of faces (what notebooks 03, 04 and 06 call): a cache over the
whole dataset, one row per face, that any subset of faces reads (``features_for_frame``)::

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


# --- DataFrames of faces: one cache over the whole dataset -------------------------------------

def layer_fingerprints(model, layers: Iterable[str]) -> dict[str, str]:
    """``{layer: SHA-256}`` of the weights each layer's output depends on (the layers between the
    input and it), in memory. The converted base and a gender model built on it
    (``vggface.replace_head``) give ``fc7`` the same fingerprint: they share those weights."""
    from . import vggface

    digests: dict[int, bytes] = {}
    out = {}
    for layer in layers:
        sub = vggface.feature_model(model, [layer])
        total = hashlib.sha256(f"{layer}|{_compute_dtype(model)}".encode())
        for w in sub.weights:
            if id(w) not in digests:
                arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
                d = hashlib.sha256(str(arr.shape).encode() + str(arr.dtype).encode())
                d.update(memoryview(arr).cast("B") if arr.size else b"")
                digests[id(w)] = d.digest()
            total.update(digests[id(w)])
        out[layer] = total.hexdigest()
    return out


def _compute_dtype(model) -> str:
    """float32, or float16 under mixed precision: features computed in either differ slightly."""
    policy = getattr(model, "dtype_policy", None)
    return str(getattr(policy, "compute_dtype", None) or "float32")


def dataset_id(root) -> str:
    """Which dataset ``root`` holds, for the feature cache: a SHA-256 of its fold files (and of a
    stand-in marker), so the cache follows the faces and not the folder they were unpacked to;
    the folder's path when it has no fold files."""
    root = Path(root if root is not None else ".")
    files = sorted(root.glob("fold_*_data.txt")) + [p for p in [root / "STAND-IN.txt"] if p.is_file()]
    if not files:
        return f"folder:{root.resolve()}"
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return f"folds:{digest.hexdigest()}"


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
    """Features of the faces of ``df`` (rows in ``df``'s order), images read by
    ``helpers.pipeline.make_dataset`` (evaluation mode: no augmentation, no shuffling).

    The cache holds, per layer, every face ever extracted with the same weights, dataset,
    preprocessing and image size, one row per face (its ``path``): any subset of faces (a
    split, a fold, a ``SUBSET`` run, another protocol) reads the rows it needs, and only faces
    never seen before go through the network. So notebook 04's ``fc7`` of a split is read from
    what notebook 03 extracted for every face.

    The weights part of the key is the fingerprint of the weights each layer depends on, in
    memory (:func:`layer_fingerprints`, about a second for VGG-Face), so any model holding
    those weights shares the entries; ``weights`` (a string) overrides it. ``weights_path`` is
    no longer needed and is ignored (it named a file that the model in hand may not match).
    """
    from . import pipeline

    del weights_path  # the weights in memory name the features (see the docstring)
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("features_for_frame: no layers requested")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if "path" not in df:
        raise ValueError("features_for_frame: the frame has no 'path' column; read it with a helpers.data reader")
    names = {layer.name for layer in model.layers}
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise ValueError(f"model {model.name!r} has no layer(s) {unknown}; its layers are: "
                         f"{', '.join(l.name for l in model.layers)}")
    image_size = tuple(int(s) for s in image_size)
    fingerprints = {l: weights for l in layers} if weights is not None else layer_fingerprints(model, layers)
    source = pipeline.source_description(df, root, pipeline.read_side(image_size, resize, training=False))
    key = {"dataset": dataset_id(root), "preprocessing": f"pipeline rgb0-255 resize={resize} source={source}",
           "image_size": list(image_size)}
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ids = [str(p) for p in df["path"]]
    stores = {l: _FaceStore(cache_dir, {**key, "weights": fingerprints[l]}, l, reduce) for l in layers}
    missing = list(dict.fromkeys(i for store in stores.values() for i in store.missing(ids)))
    if missing:
        todo = [l for l in layers if stores[l].missing(missing)]
        frame = df.loc[df["path"].astype(str).isin(set(missing))].drop_duplicates("path")
        dataset = pipeline.make_dataset(frame, root, image_size=image_size, resize=resize, training=False,
                                        batch_size=batch_size, labels=False)
        computed = _compute(model, dataset, todo, reduce=reduce, batch_size=batch_size, progress=progress,
                            proj_dim=256, seed=0)
        frame_ids = [str(p) for p in frame["path"]]
        for layer, arr in computed.items():
            if len(arr) != len(frame_ids):
                raise RuntimeError(f"extracted {len(arr)} rows of {layer} for {len(frame_ids)} faces")
            stores[layer].add(frame_ids, arr)
    return {layer: stores[layer].gather(ids) for layer in layers}


class _FaceStore:
    """One layer's features of one dataset, preprocessing and weights, a row per face, in chunks.

    ``<cache>/<layer>-<hash of the key>/``: ``key.json``, then chunks ``rows-<id>.npy`` (float32,
    written atomically) each with ``rows-<id>.json`` (the faces of its rows, in order) written
    LAST, so an interrupted extraction leaves no chunk that looks complete.
    """

    def __init__(self, cache_dir: Path, key: dict, layer: str, reduce):
        self.full_key = {"format": CACHE_FORMAT, "kind": "per-face", "key": key, "layer": layer, "reduce": reduce}
        digest = hashlib.sha256(json.dumps(self.full_key, sort_keys=True).encode()).hexdigest()[:24]
        safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in layer)
        self.folder = Path(cache_dir) / f"{safe}-{digest}"
        self._index: dict[str, tuple[Path, int]] | None = None

    def index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self._index = {}
            if _read_json(self.folder / "key.json") == self.full_key:
                for meta_path in sorted(self.folder.glob("rows-*.json")):
                    meta = _read_json(meta_path)
                    npy = meta_path.with_suffix(".npy")
                    if not meta or not npy.is_file():
                        continue
                    for row, face in enumerate(meta.get("faces", [])):
                        self._index[face] = (npy, row)
        return self._index

    def missing(self, ids: list[str]) -> list[str]:
        index = self.index()
        return [i for i in ids if i not in index]

    def add(self, ids: list[str], arr: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if _read_json(self.folder / "key.json") != self.full_key:
            write_json_atomic(self.folder / "key.json", self.full_key)
        chunk = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
        npy = self.folder / f"rows-{chunk}.npy"
        with atomic_path(npy) as tmp:
            np.save(tmp, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        write_json_atomic(self.folder / f"rows-{chunk}.json", {"faces": ids, "shape": list(arr.shape)}, indent=None)
        self._index = None

    def gather(self, ids: list[str]) -> np.ndarray:
        """The rows of ``ids`` in that order: memory-mapped when one chunk holds exactly them."""
        index = self.index()
        where = [index[i] for i in ids]
        files = {f for f, _ in where}
        arrays = {f: np.load(f, mmap_mode="r", allow_pickle=False) for f in files}
        if len(files) == 1:
            (f,) = files
            rows = np.fromiter((r for _, r in where), dtype=np.int64, count=len(where))
            if len(rows) == len(arrays[f]) and np.array_equal(rows, np.arange(len(rows))):
                return arrays[f]
        first = next(iter(arrays.values()))
        out = np.empty((len(ids), *first.shape[1:]), dtype=np.float32)
        for f, arr in arrays.items():
            positions = [k for k, (g, _) in enumerate(where) if g == f]
            rows = [where[k][1] for k in positions]
            order = np.argsort(rows)  # memory maps read fastest in file order
            out[np.asarray(positions)[order]] = arr[np.asarray(rows)[order]]
        return out
