"""Full-size VGG-Face conversion, measured side by side (takes a few minutes on 2 cores).

Writes a full-size VGG-Face caffemodel with random weights (145,002,878 parameters, about
580 MB) to a temporary folder, then measures in one run:

(a) reading every blob into owned numpy arrays with ``helpers.caffe.read_caffemodel``;
(b) the same with OpenCV's importer (``readNetFromCaffe`` + ``getParam`` for every blob);
(c) the whole ``python -m helpers.convert`` (subprocess: wall time and peak RSS);
(d) Keras alone building the same model and saving it to ``.keras`` (subprocess; the floor).

Targets: (a) <= 0.5 x (b); (c) <= 1.2 x (d) in wall time and in peak memory.
The ratios are printed on the last line.

    python benchmarks/convert_vggface.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from helpers import caffe as cf  # noqa: E402

# (d): the same model, built by Keras alone and saved; no Caffe file is read.
KERAS_FLOOR = """
import sys
from helpers.caffe import build_keras_model
from helpers.vggface import vggface_netspec
build_keras_model(vggface_netspec()).save(sys.argv[1])
"""


def write_full_size(folder: Path, seed: int = 0) -> tuple[Path, Path, int]:
    from helpers.caffe.spec import WEIGHTED_TYPES as _WEIGHTED_TYPES
    from helpers.vggface import vggface_netspec

    net = vggface_netspec()
    prototxt = cf.write_prototxt(folder / "VGG_FACE_deploy.prototxt", net)
    rng = np.random.default_rng(seed)
    c, hw, layers, params = 3, 224, [], 0
    for layer in net.layers:
        blobs = []
        if layer.type == "Pooling":
            hw //= 2
        elif layer.type in _WEIGHTED_TYPES:
            o = layer.params["num_output"]
            shape = (o, c, 3, 3) if layer.type == "Convolution" else (1, 1, o, c * hw * hw)
            blobs = [rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01),
                     rng.standard_normal((1, 1, 1, o), dtype=np.float32)]
            params += sum(b.size for b in blobs)
            c, hw = o, (hw if layer.type == "Convolution" else 1)
        layers.append(cf.CaffeLayerBlobs(name=layer.name, type=layer.type, blobs=blobs))
    caffemodel = cf.write_caffemodel(folder / "VGG_FACE.caffemodel", layers, format="v1")
    return prototxt, caffemodel, params


def read_ours(caffemodel: Path) -> tuple[float, int]:
    start = time.perf_counter()
    layers = cf.read_caffemodel(caffemodel, copy=True)
    n = sum(b.size for layer in layers.values() for b in layer.blobs)
    return time.perf_counter() - start, n


def read_opencv(prototxt: Path, caffemodel: Path) -> tuple[float, int]:
    import cv2

    start = time.perf_counter()
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    n = 0
    for name in net.getLayerNames():
        layer_id = net.getLayerId(name)
        for i in range(len(net.getLayer(layer_id).blobs)):
            n += net.getParam(name, i).size
    return time.perf_counter() - start, n


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    output = proc.stdout.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="write into this folder and keep the files")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of (c) and (d); the best counts")
    args = parser.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="vggface_bench_")
    folder = Path(args.keep or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        prototxt, caffemodel, params = write_full_size(folder)
        size_mb = caffemodel.stat().st_size / 1e6
        print(f"wrote {caffemodel.name}: {params:,} parameters, {size_mb:.0f} MB "
              f"in {time.perf_counter() - start:.1f} s")

        t_ours, n_ours = read_ours(caffemodel)
        t_cv, n_cv = read_opencv(prototxt, caffemodel)
        assert n_ours == params == n_cv, (n_ours, params, n_cv)
        print(f"(a) read_caffemodel (owned arrays): {t_ours:6.2f} s")
        print(f"(b) OpenCV readNetFromCaffe+getParam: {t_cv:6.2f} s")

        out = folder / "converted.keras"
        floor = folder / "keras_only.keras"
        convert_cmd = [sys.executable, "-m", "helpers.convert", str(prototxt), str(caffemodel), str(out),
                       "--no-progress"]
        floor_cmd = [sys.executable, "-c", KERAS_FLOOR, str(floor)]
        # Interleaved repeats, best of each: on a shared machine one run can be slowed by others.
        runs_c, runs_d = [], []
        for _ in range(args.repeats):
            runs_c.append(run_measured(convert_cmd))
            runs_d.append(run_measured(floor_cmd))
        wall_c, rss_c = min(w for w, _ in runs_c), min(r for _, r in runs_c)
        wall_d, rss_d = min(w for w, _ in runs_d), min(r for _, r in runs_d)
        every = lambda runs: ", ".join(f"{w:.1f} s/{r:.0f} MiB" for w, r in runs)  # noqa: E731
        print(f"(c) python -m helpers.convert:       {wall_c:6.1f} s, peak RSS {rss_c:7.0f} MiB  (runs: {every(runs_c)})")
        print(f"(d) Keras build + save (floor):      {wall_d:6.1f} s, peak RSS {rss_d:7.0f} MiB  (runs: {every(runs_d)})")
        print(f"    .keras sizes: converted {out.stat().st_size / 1e6:.0f} MB, "
              f"floor {floor.stat().st_size / 1e6:.0f} MB")
        print(f"ratios: read ours/opencv {t_ours / t_cv:.2f} (target <= 0.5); "
              f"convert/keras wall {wall_c / wall_d:.2f} (<= 1.2); "
              f"convert/keras peak RSS {rss_c / rss_d:.2f} (<= 1.2)")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
