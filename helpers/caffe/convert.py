"""Caffe files -> a saved Keras model, end to end, and ``python -m helpers.convert``.

Command line::

    python -m helpers.convert PROTOTXT CAFFEMODEL OUT.keras [--names names.txt]
                              [--weights-only OUT.weights.h5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence


from ..course.fileio import save_model
from .keras_model import build_keras_model
from .caffemodel import read_caffemodel
from .prototxt import parse_prototxt
from .spec import ConversionError
from .weights import load_caffe_weights

# ----------------------------------------------------------------------------- end to end

def _names_list(names) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, (str, os.PathLike)):
        from ..vggface import read_names

        return read_names(names)
    return [str(n) for n in names]


def convert(prototxt, caffemodel, out_path=None, names=None, progress: bool = True,
            weights_only_path=None, verbose: bool = False):
    """Parse, build, copy weights, and (if ``out_path``) save atomically. Returns the model.

    ``names``: a ``names.txt`` path or a list of class names (fc8 order). Nothing is written
    to ``out_path`` (or ``weights_only_path``) unless everything succeeds.
    """

    net = parse_prototxt(prototxt)
    class_names = _names_list(names)
    model = build_keras_model(net, class_names=class_names, random_init=False)
    blobs = read_caffemodel(caffemodel)
    report = load_caffe_weights(model, blobs, net, progress=progress)
    del blobs
    model.caffe_report = report
    if verbose:
        print(report.table())
    if out_path is not None or weights_only_path is not None:
        save_model(model, out_path, weights_only_path)
    return model



def load_or_convert(assets, progress: bool = True):
    """``assets.keras_model`` if it exists and is newer than the caffemodel, else convert and save it."""
    import keras

    from .. import vggface  # noqa: F401  (registers the custom layers)

    target = Path(assets.keras_model)
    if target.is_file() and (not Path(assets.caffemodel).is_file()
                             or target.stat().st_mtime >= Path(assets.caffemodel).stat().st_mtime):
        return keras.saving.load_model(target)
    for p in (assets.prototxt, assets.caffemodel):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p} is missing: cannot convert the {assets.mode}-mode VGG-Face")
    names = assets.names if Path(assets.names).is_file() else None
    return convert(assets.prototxt, assets.caffemodel, out_path=target, names=names, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("prototxt")
    parser.add_argument("caffemodel")
    parser.add_argument("out", help="the .keras file to write")
    parser.add_argument("--names", help="names.txt: one class name per line, in fc8's order")
    parser.add_argument("--weights-only", metavar="OUT.weights.h5", help="also write the weights alone")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    try:
        model = convert(args.prototxt, args.caffemodel, out_path=args.out, names=args.names,
                        progress=not args.no_progress, weights_only_path=args.weights_only)
    except (ConversionError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        print(f"nothing written to {args.out}", file=sys.stderr)
        return 1
    print(model.caffe_report.table())
    written = [args.out] + ([args.weights_only] if args.weights_only else [])
    print(f"wrote {', '.join(written)} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
