"""Is the input pipeline fast enough? Images per second of ``helpers.pipeline`` alone versus
the model's forward pass alone, measured side by side on this machine.

Generates JPEG faces in a temporary folder (Adience-like sizes: a bit larger than the input,
not square), reads them with ``make_dataset(training=True)`` (decode, resize, random crop,
flip), and times a VGG-shaped Keras model (``helpers.vggface.vggface_netspec`` built by
``helpers.caffe.build_keras_model``; a plain VGG16-like stack when those are unavailable) on
batches already in memory. The last line prints ``pipeline/forward``: above 1 the pipeline
is not what limits training.

    python benchmarks/input_pipeline.py --size quick   # 64 px, the miniature VGG-Face
    python benchmarks/input_pipeline.py --size full    # 224 px, the full-width VGG-Face
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

SIZES = {
    # image px, conv widths, fc widths, images to time
    "quick": (64, (8, 16, 32, 64, 64), (256, 256), 512),
    "full": (224, (64, 128, 256, 512, 512), (4096, 4096), 32),
}


def write_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> pd.DataFrame:
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = int(size * rng.uniform(1.1, 1.5)), int(size * rng.uniform(1.1, 1.5))
        # smooth content (like a face) rather than noise, so JPEG sizes are realistic
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        img.save(folder / f"{i}.jpg", quality=90)
        rows.append({"path": f"{i}.jpg", "label": i % 2})
    return pd.DataFrame(rows)


def build_model(size: int, conv_widths, fc_widths):
    try:
        from helpers.caffe import build_keras_model
        from helpers.vggface import vggface_netspec

        net = vggface_netspec(conv_widths=conv_widths, fc_widths=fc_widths, n_classes=2, input_hw=(size, size))
        return build_keras_model(net), "helpers.caffe.build_keras_model(vggface_netspec(...))"
    except ImportError:
        import keras

        inputs = keras.Input((size, size, 3))
        x = inputs
        for width, n_convs in zip(conv_widths, (2, 2, 3, 3, 3)):
            for _ in range(n_convs):
                x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        for width in fc_widths:
            x = keras.layers.Dense(width, activation="relu")(x)
        outputs = keras.layers.Dense(2, activation="softmax")(x)
        return keras.Model(inputs, outputs), "a VGG16-like keras.Sequential stand-in"


def time_pipeline(df, root, size, batch_size, repeats, **options) -> float:
    from helpers.pipeline import make_dataset

    ds = make_dataset(df, root, image_size=(size, size), training=True, batch_size=batch_size, **options)
    for _ in ds:  # warm-up epoch: graph tracing, file cache, (cache=True: filling it)
        pass
    best = 0.0
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for images, _labels in ds:
            n += int(images.shape[0])
        best = max(best, n / (time.perf_counter() - start))
    return best


def time_forward(model, images: np.ndarray, batch_size: int, repeats: int) -> float:
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False), jit_compile=False)
    batches = [tf.constant(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    forward(batches[0]).numpy()  # warm-up: tracing
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            forward(b).numpy()
        best = max(best, len(images) / (time.perf_counter() - start))
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--images", type=int, default=None, help="images to time (default per size)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from helpers.pipeline import load_images

    size, conv_widths, fc_widths, default_n = SIZES[args.size]
    n = args.images or default_n
    print(f"size={args.size}: {n} JPEGs of about {size}x{size}..{int(size * 1.5)} px, batch {args.batch_size}, "
          f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        df = write_jpegs(root, n, size)
        pipe = time_pipeline(df, root, size, args.batch_size, args.repeats)
        pipe_cached = time_pipeline(df, root, size, args.batch_size, args.repeats, cache=True)
        images = load_images(df, root, (size, size))
    model, how = build_model(size, conv_widths, fc_widths)
    fwd = time_forward(model, images, args.batch_size, args.repeats)
    print(f"model: {how}, {model.count_params():,} parameters")
    print(f"pipeline (decode+resize+crop+flip): {pipe:9.1f} images/s")
    print(f"pipeline, cache=True:              {pipe_cached:9.1f} images/s")
    print(f"forward pass alone:                 {fwd:9.1f} images/s")
    print(f"cached pipeline/forward = {pipe_cached / fwd:.2f}")
    print(f"pipeline/forward = {pipe / fwd:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
