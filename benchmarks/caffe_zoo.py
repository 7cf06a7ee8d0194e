"""The converter on BVLC/caffe's own network definitions: does each parse, does each deploy net
convert, and does the conversion compute what OpenCV's Caffe importer computes?

The files are not in this repository (BVLC's licence is BSD, but the course ships none of
them): point the script at a checkout of https://github.com/BVLC/caffe. For every
``*.prototxt`` under ``models/`` and ``examples/`` (solver files only when they hold a net,
like ``lenet_consolidated_solver.prototxt``) it:

1. parses the file in the TEST phase and in the TRAIN phase (stages: the first one the file's
   rules name, when the phase has no input without one);
2. for deploy nets (no loss layer in the TEST phase, every layer convertible), writes seeded
   random weights in Caffe's layout, converts with ``helpers.caffe.convert.convert`` (VGG-Face's
   preprocessing for 3 channels, none for 1: the same recipe is given to both engines), and
   compares every output blob, and the output of every LRN and Concat layer, with OpenCV on
   two random images: the largest relative error (max |difference| / max |OpenCV|), also on
   the logits under a final softmax (with random weights a softmax saturates and would hide
   errors).

    python benchmarks/caffe_zoo.py PATH/TO/caffe [--json out.json]

Prints one row per file and a closing line ``N parse, M of K deploy nets convert, max error E``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from helpers import caffe as cf  # noqa: E402
from helpers.caffe import convert, verify  # noqa: E402
from helpers.caffe.preprocessing import Preprocessing  # noqa: E402
from helpers.caffe.spec import CaffeFormatError, ConversionError  # noqa: E402
from tests.tiny_vgg import write_caffe_files  # noqa: E402  (seeded weights in Caffe's layout)

LOSS_TYPES = ("SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "ContrastiveLoss", "Accuracy",
              "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "Python")


def net_files(root: Path) -> list[Path]:
    files = []
    for folder in ("models", "examples"):
        for path in sorted((root / folder).rglob("*.prototxt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            if "solver" in path.name and "net_param" not in text:
                continue  # a solver that only names its net's file
            files.append(path)
    return files


def parse_phase(path: Path, phase: str):
    """(net or None, note)."""
    try:
        return cf.parse_prototxt(path, phase=phase), ""
    except CaffeFormatError as exc:
        stages = _stages_named(exc)
        if not stages:
            return None, str(exc).splitlines()[0][:120]
        try:
            return cf.parse_prototxt(path, phase=phase, stages=stages[:1]), f"stage {stages[0]!r}"
        except CaffeFormatError as exc2:
            return None, str(exc2)[:120]


def _stages_named(exc) -> list[str]:
    text = str(exc)
    if "name the stages" not in text:
        return []
    part = text.split("name the stages", 1)[1].split(":")[0]
    return [s.strip().strip("'") for s in part.split(",") if s.strip()]


def compare_with_opencv(path: Path, net, folder: Path) -> tuple[float, list[str]]:
    """Seeded weights, converted; the largest relative error against OpenCV over the compared blobs."""
    shape = (1, *net.input_shape[1:])
    one = cf.parse_prototxt(path, input_shape=shape)
    _, caffemodel = write_caffe_files(folder, one, seed=0, syntax="v2", stem=path.stem)
    model = convert.convert(path, caffemodel, progress=False, input_shape=shape)
    channels, h, w = shape[1:]
    preprocessing = Preprocessing.vggface() if channels == 3 else Preprocessing.identity(channels)
    images = np.random.default_rng(1).uniform(0, 255, (2, h, w, channels)).astype(np.float32)
    # the outputs, the logits under a final softmax (a saturated softmax would hide errors),
    # and what every LRN and Concat layer makes
    finals = _output_blobs(one)
    logits = [l.bottoms[0] for l in one.layers if l.type == "Softmax" and l.tops[0] in finals]
    checked = [l.tops[0] for l in one.layers if l.type in ("LRN", "Concat")]
    outputs = list(dict.fromkeys(finals + logits + checked))
    data = preprocessing.to_blob(images)
    reference = verify.opencv_forward(path, caffemodel, one, data, outputs)
    got = verify.keras_forward(model, images, outputs, net=one)
    errors = verify.relative_errors(reference, got)
    return max(errors.values()), outputs


def _output_blobs(net) -> list[str]:
    consumed = {b for l in net.layers for b in l.bottoms}
    tops = []
    for l in net.layers:
        if l.type not in cf.spec.INPUT_TYPES and l.tops[0] not in consumed and l.tops[0] not in tops:
            tops.append(l.tops[0])
    return tops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caffe_root", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in net_files(args.caffe_root):
            rel = str(path.relative_to(args.caffe_root))
            test, test_note = parse_phase(path, "TEST")
            train, train_note = parse_phase(path, "TRAIN")
            row = {"file": rel, "parses_test": test is not None, "parses_train": train is not None,
                   "note": "; ".join(n for n in (test_note, train_note) if n), "deploy": False,
                   "converts": None, "max_rel_error": None, "seconds": None}
            if test is not None:
                losses = [l for l in test.layers if l.type in LOSS_TYPES]
                data_input = any(l.name == test.input_layer and l.type != "Input" for l in test.layers)
                row["deploy"] = not losses and not data_input and test.input_shape is not None
            if row["deploy"]:
                start = time.perf_counter()
                try:
                    row["max_rel_error"], row["compared"] = compare_with_opencv(path, test, Path(tmp))
                    row["converts"] = True
                except (ConversionError, ValueError) as exc:
                    row["converts"], row["note"] = False, str(exc)[:160]
                row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            err = "" if row["max_rel_error"] is None else f"{row['max_rel_error']:.1e}"
            conv = {None: "-", True: "yes", False: "NO"}[row["converts"]]
            print(f"{rel:70s} test={'yes' if row['parses_test'] else 'NO':3s} "
                  f"train={'yes' if row['parses_train'] else 'NO':3s} converts={conv:3s} {err:8s} {row['note']}",
                  flush=True)
    parsed = sum(r["parses_test"] and r["parses_train"] for r in rows)
    deploy = [r for r in rows if r["deploy"]]
    worst = max((r["max_rel_error"] for r in deploy if r["max_rel_error"] is not None), default=float("nan"))
    print(f"{parsed} of {len(rows)} parse in both phases, {sum(bool(r['converts']) for r in deploy)} of "
          f"{len(deploy)} deploy nets convert, max relative error vs OpenCV {worst:.1e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
