"""Explanation maps: compiled gradient and forward pass against eager / ``predict``, side by side.

``helpers.explain.methods`` compiles the class margin's gradient (``gradient_function``) and the
forward pass (``compiled_forward``) once per model, for any batch size. This measures, in one
run, on a network of quick mode's shape (VGG-Face's 16 layers at 1/8 of the widths, 64 px, seeded
weights: a stand-in, its maps mean nothing):

(a) integrated gradients' work (gradients of 16 x 32 path images, in batches of 256 rows):
    eager ``tf.GradientTape`` per batch vs the compiled ``gradient_function``;
(b) occlusion's work (forward passes of 32 faces x 49 squares, batches of 245 rows, then the
    single face of a demo and the odd last batch): ``model.predict`` per call vs ``compiled_forward``.

Targets: the compiled gradient at least 1.3x faster than eager; the compiled forward no slower than
``predict`` (its point is one trace per model for any batch size: ``predict`` traces again for new
batch shapes and new models, and TensorFlow warns about it). The ratios are printed on the last line.

    python benchmarks/explain_compiled.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import vggface  # noqa: E402
from helpers.caffe import build_keras_model  # noqa: E402
from helpers.explain import methods  # noqa: E402


def best_of(fn, repeats=3):
    fn()  # warm-up: tracing and first allocations are not what is compared
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    keras.utils.set_random_seed(0)
    net = vggface.vggface_netspec(conv_widths=(8, 16, 32, 64, 64), fc_widths=(256, 256), n_classes=2, input_hw=(64, 64))
    model = build_keras_model(net, class_names=["m", "f"])
    logits = methods.logits_model(model)
    rng = np.random.default_rng(0)
    path = rng.uniform(0, 255, (16 * 32, 64, 64, 3)).astype("float32")
    classes = rng.integers(0, 2, len(path)).astype("int32")

    def eager():
        for s in range(0, len(path), 256):
            x = tf.convert_to_tensor(path[s:s + 256])
            with tf.GradientTape() as tape:
                tape.watch(x)
                score = methods.class_margin(logits(x, training=False), classes[s:s + 256])
            tape.gradient(score, x).numpy()

    compiled_gradient = methods.gradient_function(lambda x, c: methods.class_margin(logits(x, training=False), c))

    def compiled():
        for s in range(0, len(path), 256):
            compiled_gradient(path[s:s + 256], classes[s:s + 256])

    t_eager, t_compiled = best_of(eager), best_of(compiled)
    print(f"(a) gradients of {len(path)} images: eager {t_eager:.2f} s, compiled {t_compiled:.2f} s")

    occluded = rng.uniform(0, 255, (32 * 49, 64, 64, 3)).astype("float32")
    calls = [occluded[s:s + 245] for s in range(0, len(occluded), 245)] + [occluded[:1], occluded[:7]]
    forward = methods.compiled_forward(logits)

    def with_predict():
        for batch in calls:
            logits.predict(batch, batch_size=256, verbose=0)

    def with_compiled():
        for batch in calls:
            forward(batch)

    t_predict, t_forward = best_of(with_predict), best_of(with_compiled)
    print(f"(b) forward passes of {sum(len(c) for c in calls)} images in {len(calls)} calls: "
          f"predict {t_predict:.2f} s, compiled {t_forward:.2f} s")
    print(f"ratios: gradient eager/compiled {t_eager / t_compiled:.2f}x (target >= 1.3); "
          f"forward predict/compiled {t_predict / t_forward:.2f}x (target >= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
