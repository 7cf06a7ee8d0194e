"""Do full mode's data paths fit a Colab T4 runtime (12.7 GB of RAM; the course's budget 10 GB)?
Peak anonymous memory of each data path at Adience's real counts, measured in one process.

Run it on a stand-in Adience with the real 19,487 fold rows (``helpers.course.standins``):

    python -m helpers.course.standins HOME --only data --faces 19487 --folds-from shared/reference/adience_folds
    COURSE_HOME=HOME python benchmarks/full_mode_data_paths.py

The phases are the notebooks' own calls, in their order and at their sizes:

- read: ``data.read_adience_folds`` (19,487 rows, the image check), ``apply_protocol``, the splits;
- prepare: the prepared cache, every face decoded once from 816 px (``pipeline.prepare_images``);
- features: ``features.features_for_frame`` over every face for notebook 03's layers, then what
  04 (a split) and 06 (every face) read back. The network here is VGG-Face's topology with
  four-channel convolutions and the real 4,096-wide ``fc6``/``fc7`` (the features have their real
  sizes; the real network's own 0.6 GB of weights come on top and are stated beside);
- scratch inputs: notebook 03's from-scratch demo, 3,000 pool and 1,500 test faces at 224 px
  (``pipeline.load_images``, uint8 as 03 loads them in full mode, and float32 for comparison),
  and the pool's tensor for its "all" point as a float32 copy (what ``ScratchTrainer.fit`` made
  before) beside the same tensor kept in uint8 and cast batch by batch (what it does now).

Memory is the process's ``RssAnon`` (what the OS cannot drop, unlike file pages), sampled every
0.1 s. The last line prints ``peak / budget`` (goal: at most 1).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

BUDGET_GB = 10.0
VGGFACE_WEIGHTS_GB = 145_002_878 * 4 / 1e9


def rss_anon_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


class Phases:
    """Peak RssAnon per phase, sampled by a thread."""

    def __init__(self):
        self.peak, self.rows, self._stop = rss_anon_gb(), [], threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_gb())
            time.sleep(0.1)

    def phase(self, name: str, fn):
        self.peak, start = rss_anon_gb(), time.perf_counter()
        out = fn()
        self.peak = max(self.peak, rss_anon_gb())
        self.rows.append((name, self.peak, rss_anon_gb(), time.perf_counter() - start))
        print(f"{name:<52} peak {self.peak:6.2f} GB   after {rss_anon_gb():6.2f} GB   {time.perf_counter() - start:7.1f} s",
              flush=True)
        return out


def feature_network():
    """VGG-Face's layers and names, 4-channel convolutions, the real 4,096-wide fc6/fc7."""
    from helpers.caffe import build_keras_model
    from helpers.vggface import vggface_netspec

    return build_keras_model(vggface_netspec(conv_widths=(4, 4, 4, 4, 4), fc_widths=(4096, 4096), n_classes=2622))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=3000, help="notebook 03's FEWSHOT_POOL in full mode")
    parser.add_argument("--test", type=int, default=1500, help="notebook 03's FEWSHOT_TEST in full mode")
    args = parser.parse_args(argv)

    from helpers import data, embeddings, features, pipeline
    from helpers.course import paths, standins

    root = paths.assets_for("full").dataset_root
    print(f"dataset: {root} ({', '.join(standins.present()) or 'no'} stand-in parts)")
    m = Phases()
    faces = m.phase("read folds, image check, binary protocol, splits", lambda: (
        lambda df: (df, data.apply_protocol(df, "binary")[0]))(data.read_adience_folds(root)))
    raw, binary = faces
    m.phase("  case-study split, five fold splits", lambda: [data.case_study_split(binary)]
            + [data.fold_split(binary, k) for k in range(5)])
    print(f"  {len(raw):,} faces read, {len(binary):,} in the binary protocol")
    m.phase("prepare: every face decoded once to 256 px", lambda: pipeline.prepare_images(raw, root))
    model = m.phase("build the feature network (4,096-wide fc6/fc7)", feature_network)
    layers = ["pool1", "pool2", "pool3", "pool4", "pool5", "fc6", "fc7"]
    kwargs = dict(image_size=(224, 224), resize="direct", batch_size=64)
    feats = m.phase("03: features of every face, 7 layers (extract + cache)",
                    lambda: features.features_for_frame(model, binary, root, layers, **kwargs))
    m.phase("03: the same, read back from the cache",
            lambda: {k: np.asarray(v) for k, v in features.features_for_frame(model, binary, root, layers, progress=False, **kwargs).items()})
    del feats
    split = data.case_study_split(binary)
    m.phase("04: fc7 of train, val and test, from the cache",
            lambda: [np.asarray(features.features_for_frame(model, part, root, ["fc7"], progress=False, **kwargs)["fc7"])
                     for part in split])
    m.phase("06: fc7 of every face, from the cache",
            lambda: np.asarray(features.features_for_frame(model, binary, root, ["fc7"], progress=False, **kwargs)["fc7"]))
    y = binary["label"].to_numpy()
    pool = np.flatnonzero(binary["fold"].to_numpy() != 4)
    test = np.flatnonzero(binary["fold"].to_numpy() == 4)
    pool = pool[embeddings.stratified_sample(binary["gender"].to_numpy()[pool], args.pool, seed=42)]
    test = test[embeddings.stratified_sample(binary["gender"].to_numpy()[test], args.test, seed=42)]
    images = m.phase(f"03: scratch inputs, {len(pool):,} + {len(test):,} faces, uint8",
                     lambda: [pipeline.load_images(binary.iloc[idx], root, (224, 224), resize="direct", dtype="uint8")
                              for idx in (pool, test)])

    def all_point():
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((np.asarray(images[0], dtype=np.float32), y[pool].astype(np.int32)))
        return next(iter(ds.batch(32)))[0].shape

    m.phase("03: the pool's tensor ('all') as a float32 copy", all_point)

    def all_point_uint8():  # the same pool kept in uint8, cast batch by batch: what ScratchTrainer.fit does
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((images[0], y[pool].astype(np.int32)))
        ds = ds.map(lambda x, label: (tf.cast(x, tf.float32), label))
        return next(iter(ds.batch(32)))[0].shape

    m.phase("03: ... the pool's tensor in uint8, cast per batch", all_point_uint8)
    del images
    m.phase("03: scratch inputs in float32, for comparison",
            lambda: [pipeline.load_images(binary.iloc[idx], root, (224, 224), resize="direct") for idx in (pool, test)])
    peak = max(r[1] for r in m.rows)
    print(f"\npeak of the data paths: {peak:.2f} GB (the real network adds its {VGGFACE_WEIGHTS_GB:.2f} GB of weights)")
    print(f"peak / budget = {peak / BUDGET_GB:.2f}   (budget {BUDGET_GB:.0f} GB of a Colab T4 runtime's 12.7 GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
