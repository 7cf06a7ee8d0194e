"""Notebook 06's cross-validation at full size: peak memory per fold, side by side (issue 18).

STAND-INS, NOT THE REAL ASSETS: a full-size VGG-Face (``vggface_netspec()``, 145,002,878
parameters, seeded random weights, saved as ``.keras``) and 80 faces of 816×816 JPEGs in
Adience's layout (16 users, 5 folds). The accuracies printed mean nothing; the memory does.

The run cross-validates what notebook 06 cross-validates in full mode: ``last_block``
(block5 + fc6 + fc7 + the head train) with ``helpers.evaluation.finetune_trainer`` over five
folds, each fold starting from a head (as notebook 06 starts from the head-only heads), then
``--configs`` more times the same (what notebook 05 does: several configurations in one
kernel). A sampler thread reads the process's anonymous resident memory (``RssAnon``: not the
file pages the kernel can drop) every 0.2 s; the table gives the peak of each fold, and the
last line the ratio of the last fold's peak to the first's (flat: about 1.0).

    flock /work/heavy.lock nice -n 10 python benchmarks/cv_memory.py [--work DIR] [--epochs 2] [--configs 1]
        [--users 16 --faces 5] [--folds 5]

A whole-process cross-check: ``/work/shared/tools/peak_anon.sh OUT -- python benchmarks/cv_memory.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

NAMES = ("m", "f")


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler(threading.Thread):
    """The peak RssAnon since the last ``take()``, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop = interval, rss_anon_bytes(), threading.Event()

    def run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_anon_bytes())

    def take(self) -> int:
        peak, self.peak = max(self.peak, rss_anon_bytes()), rss_anon_bytes()
        return peak

    def stop(self):
        self._stop.set()


def make_standins(work: Path, n_users: int = 16, faces: int = 5, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    """The full-size network (.keras) and the faces, made once in ``work``."""
    from PIL import Image

    model_path = work / "vggface_full_standin.keras"
    if not model_path.is_file():
        import keras

        from helpers.caffe import build_keras_model
        from helpers.course.fileio import save_model
        from helpers.vggface import vggface_netspec

        keras.utils.set_random_seed(seed)
        save_model(build_keras_model(vggface_netspec()), model_path)
    rows, rng = [], np.random.default_rng(seed)
    for u in range(n_users):
        label = u % 2
        for i in range(faces):
            rel = f"aligned/standin_user_{u:02d}/landmark_aligned_face.{u}.{i}.jpg"
            path = work / rel
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                level = 170 if label else 90
                img = np.clip(rng.normal(level, 40, (816, 816, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(path, quality=90)
            rows.append({"user_id": f"standin_user_{u:02d}", "face_id": i, "fold": u % 5, "label": label,
                         "gender": NAMES[label], "age_group": "(25, 32)", "path": rel})
    return model_path, pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_cv_memory")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per fold")
    ap.add_argument("--configs", type=int, default=1, help="cross-validations in a row (05 runs three configurations)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--users", type=int, default=16, help="users (5 faces each unless --faces)")
    ap.add_argument("--faces", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5, help="cross-validate the first N of the five folds")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    model_path, df = make_standins(args.work, n_users=args.users, faces=args.faces)
    import keras

    from helpers import evaluation as ev
    from helpers import finetune

    sampler = PeakSampler()
    sampler.start()
    print(f"STAND-INS (numbers of accuracy mean nothing): full-size VGG-Face {model_path.name}, "
          f"{len(df)} faces 816x816 of {df.user_id.nunique()} users; start {rss_anon_bytes() / 2**30:.2f} GiB RssAnon")
    rows = []
    heads = {(f,): finetune.build_head(4096, NAMES, seed=f) for f in range(5)}
    for c in range(args.configs):
        t0 = time.perf_counter()
        fold_log = []

        def log(line, c=c):
            fold_log.append(line)
            peak = sampler.take()
            rows.append({"config": c, "fold": len(fold_log) - 1, "peak_GiB": peak / 2**30,
                         "seconds": time.perf_counter() - t0})
            print(f"  config {c} fold {len(fold_log) - 1}: peak {peak / 2**30:.2f} GiB RssAnon ({line})", flush=True)

        trainer = ev.finetune_trainer(
            lambda: keras.saving.load_model(model_path), args.work, NAMES,
            make_plan=lambda m: ev.plan_for_config(m, {"from_block": "block5"}, head_epochs=1,
                                                   finetune_epochs=args.epochs),
            image_size=(224, 224), run_root=args.work / "cv" / f"config_{c}", batch_size=args.batch,
            initial_heads=heads)
        ev.cross_validate(df, trainer, folds=range(args.folds), class_names=NAMES, val_fraction=0.25,
                          name=f"last_block#{c}", log=log)
    sampler.stop()
    table = pd.DataFrame(rows)
    print(table.round(2).to_string(index=False))
    first, last = table.peak_GiB.iloc[0], table.peak_GiB.iloc[-1]
    print(f"peak RssAnon: first fold {first:.2f} GiB, last fold {last:.2f} GiB, highest {table.peak_GiB.max():.2f} GiB; "
          f"ratio last/first {last / first:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
