"""Is the input pipeline fast enough for full mode? Training batches per second from Adience-sized
816 x 816 JPEGs against the prepared cache (decoded once to 256 px), measured side by side.

Full mode reads Adience's aligned faces: 816 x 816 JPEGs, about 60-70 kB each. Decoding one costs
far more than the 224 x 224 the network wants, and a Colab T4 runs VGG16 at roughly 350 images/s
in float16 (inference; a third of that when training every layer) while Colab gives two vCPUs:
from the raw JPEGs, the GPU would wait for the CPU. ``helpers.pipeline`` therefore decodes every
face once into a prepared cache of 256 px images. This script writes stand-in faces
(``helpers.course.standins``: drawn faces with a photo's JPEG statistics) in a temporary folder
and times, on the same faces, in one run:

1. ``raw``: ``pipeline.files_dataset`` on the 816 px originals (decode, resize, random crop, flip);
2. ``prepared``: ``pipeline.make_dataset``, which reads the prepared 256 px JPEGs (the course's choice);
3. ``uint8 array``: the same faces as one uint8 ``.npy`` of 256 x 256 images, memory-mapped
   (the alternative: no decoding at all, but 4x the disk and a page cache it must fit in);

plus the one-time cost of preparing, and the disk each form takes for Adience's 19,487 faces.
The line to read is ``prepared/raw`` (goal: at least 3).

    python benchmarks/input_pipeline.py                  # 256 faces, 224 px training batches
    python benchmarks/input_pipeline.py --images 1024 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ADIENCE_FACES = 19_487


def write_faces(root: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` stand-in faces at Adience's size, ten photos per drawn person."""
    from helpers.course import standins

    rows, tasks = [], []
    for person in range(-(-n // 10)):
        rels = [f"aligned/u{person % 17}/landmark_aligned_face.{person}.{k}_o.jpg"
                for k in range(min(10, n - 10 * person))]
        tasks.append((str(root), seed, (person,), "mf"[person % 2], 4, rels))
        rows += [{"path": r, "label": person % 2} for r in rels]
    for task in tasks:
        standins._write_person(task)
    return pd.DataFrame(rows)


def epochs_per_second(ds, repeats: int) -> float:
    """Images per second, the best of ``repeats`` epochs after one warm-up epoch."""
    for _ in ds:  # warm-up: graph tracing, the file cache
        pass
    best = 0.0
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for images, _labels in ds:
            n += int(images.shape[0])
        best = max(best, n / (time.perf_counter() - start))
    return best


def uint8_dataset(array_path: Path, labels: np.ndarray, size: int, batch_size: int, seed: int = 0):
    """Training batches from a memory-mapped uint8 (N, 256, 256, 3) array: random crop and flip."""
    import tensorflow as tf

    from helpers import pipeline

    images = np.load(array_path, mmap_mode="r")
    n = len(images)

    def rows():
        for i in np.random.default_rng(seed).permutation(n):
            yield images[i], labels[i]

    spec = (tf.TensorSpec(images.shape[1:], tf.uint8), tf.TensorSpec((), tf.int32))
    ds = tf.data.Dataset.from_generator(rows, output_signature=spec)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)

    def example(item, s):
        image, label = item
        pre = pipeline.read_side((size, size), "direct", training=True)
        big = pipeline.resize_image(image, (pre, pre), "direct")
        return pipeline.augment_image(big, (size, size), tf.cast(s, tf.int32), training=True), label

    return tf.data.Dataset.zip((ds, seeds)).map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def folder_bytes(folder: Path, suffix: str) -> int:
    return sum(p.stat().st_size for p in folder.rglob(f"*{suffix}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="stand-in faces to time (default 256)")
    parser.add_argument("--size", type=int, default=224, help="the network's input size (default 224)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from helpers import pipeline

    print(f"{args.images} stand-in faces of 816 x 816 px -> training batches of {args.batch_size} at "
          f"{args.size} px (decode, resize, random crop, flip); TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPU(s), {len(tf.config.list_physical_devices('GPU'))} GPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "adience", Path(tmp) / "prepared"
        os.environ[pipeline.ENV_PREPARED] = str(cache)
        t0 = time.perf_counter()
        df = write_faces(root, args.images)
        print(f"wrote the faces in {time.perf_counter() - t0:.0f} s")
        opts = dict(image_size=(args.size, args.size), resize="direct", training=True, batch_size=args.batch_size)
        raw_files = [str(root / p) for p in df["path"]]
        raw = epochs_per_second(pipeline.files_dataset(raw_files, df["label"], **opts), args.repeats)

        t0 = time.perf_counter()
        report = pipeline.prepare_images(df, root, progress=False)
        prepare_rate = report.written / (time.perf_counter() - t0)
        prepared = epochs_per_second(pipeline.make_dataset(df, root, **opts), args.repeats)
        used = pipeline.image_files(df, root, min_side=pipeline.read_side((args.size,) * 2, "direct", training=True))
        assert all(Path(f).is_relative_to(cache) for f in used), "make_dataset did not read the prepared cache"

        side = pipeline.PREPARED_SIDE
        arr = np.lib.format.open_memmap(Path(tmp) / "faces.npy", mode="w+", dtype=np.uint8, shape=(len(df), side, side, 3))
        for i, f in enumerate(used):
            arr[i] = pipeline.decode_image(f).numpy()[:side, :side]
        arr.flush()
        del arr
        array = epochs_per_second(uint8_dataset(Path(tmp) / "faces.npy", df["label"].to_numpy(np.int32), args.size,
                                                args.batch_size), args.repeats)
        per_face = {"raw": folder_bytes(root, ".jpg") / len(df), "prepared": folder_bytes(report.folder, ".jpg") / len(df),
                    "uint8 array": (Path(tmp) / "faces.npy").stat().st_size / len(df)}
    gb = {k: v * ADIENCE_FACES / 1e9 for k, v in per_face.items()}
    print(f"{'source':<14}{'images/s':>10}{'kB/face':>10}{'GB for Adience':>16}")
    for name, rate in (("raw 816 px", raw), ("prepared", prepared), ("uint8 array", array)):
        key = name.split(" ")[0] if name != "uint8 array" else name
        print(f"{name:<14}{rate:>10.1f}{per_face[key] / 1e3:>10.1f}{gb[key]:>16.2f}")
    print(f"preparing (once): {prepare_rate:.1f} images/s, so {ADIENCE_FACES / prepare_rate / 60:.1f} min for Adience here")
    print(f"uint8 array/raw = {array / raw:.2f}")
    print(f"prepared/raw = {prepared / raw:.2f}")
    if not tf.config.list_physical_devices("GPU"):
        print("no GPU here: the GPU's utilisation during training is not measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
