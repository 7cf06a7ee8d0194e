"""Caffe files -> a saved Keras model, end to end, and ``python -m helpers.convert``.

Command line::

    python -m helpers.convert PROTOTXT CAFFEMODEL OUT.keras [--names names.txt]
                              [--weights-only OUT.weights.h5]
                              [--input-shape N,C,H,W] [--phase TEST] [--stage NAME ...]
                              [--mean-file mean.binaryproto | --mean B,G,R] [--scale S]
                              [--crop H,W] [--channel-order BGR|RGB|GRAY]

Without preprocessing options a 3-channel net gets VGG-Face's (BGR minus VGG-Face's mean) and
a 1-channel net none; the table printed at the end says which the model carries.
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
from .preprocessing import Preprocessing
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
            weights_only_path=None, verbose: bool = False, *, preprocessing: Preprocessing | None = None,
            input_shape=None, phase: str = "TEST", stages=(), input_hw=None):
    """Parse, build, copy weights, and (if ``out_path``) save atomically. Returns the model.

    ``names``: a ``names.txt`` path or a list of class names (fc8 order). ``preprocessing``:
    the net's input recipe (default VGG-Face's for 3 channels). ``input_shape``, ``phase`` and
    ``stages`` go to :func:`parse_prototxt`. Nothing is written to ``out_path`` (or
    ``weights_only_path``) unless everything succeeds. The model's ``caffe_report`` is the
    weight table, with the preprocessing it carries.
    """

    net = parse_prototxt(prototxt, phase=phase, stages=stages, input_shape=input_shape)
    class_names = _names_list(names)
    model = build_keras_model(net, input_hw=input_hw, class_names=class_names, random_init=False,
                              preprocessing=preprocessing)
    blobs = read_caffemodel(caffemodel)
    report = load_caffe_weights(model, blobs, net, progress=progress)
    del blobs
    report.preprocessing = describe_preprocessing(model)
    model.caffe_report = report
    if verbose:
        print(report.table())
    if out_path is not None or weights_only_path is not None:
        save_model(model, out_path, weights_only_path)
    return model


def describe_preprocessing(model) -> str:
    """What the model's ``preprocess`` layer does, in one line (from the layer's own settings)."""
    layer = model.get_layer("preprocess")
    config = layer.get_config()
    if "mean_bgr" in config:  # VGGFacePreprocess
        return Preprocessing(mean=config["mean_bgr"], source="VGG-Face's").describe()
    shape = config.get("mean_image_shape")
    image = None if shape is None else layer.mean_image.numpy().transpose(2, 0, 1)
    return Preprocessing(channel_order=config["channel_order"], mean=config["mean"], mean_image=image,
                         scale=config["scale"], crop=config["crop"], source="carried by the model").describe()


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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())


def preprocessing_from_args(args) -> Preprocessing | None:
    """The command line's preprocessing options, or None when none was given (the default)."""
    given = [args.mean_file, args.mean, args.scale, args.crop, args.channel_order]
    if all(v is None for v in given):
        return None
    order = (args.channel_order or "BGR").upper()
    crop = _ints(args.crop) if args.crop else None
    scale = 1.0 if args.scale is None else float(args.scale)
    if args.mean_file:
        return Preprocessing.from_mean_file(args.mean_file, crop=crop, channel_order=order, scale=scale)
    mean = tuple(float(v) for v in args.mean.split(",")) if args.mean else None
    return Preprocessing(channel_order=order, mean=mean, scale=scale, crop=crop, source="command line")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("prototxt")
    parser.add_argument("caffemodel")
    parser.add_argument("out", help="the .keras file to write")
    parser.add_argument("--names", help="names.txt: one class name per line, in fc8's order")
    parser.add_argument("--weights-only", metavar="OUT.weights.h5", help="also write the weights alone")
    parser.add_argument("--input-shape", metavar="N,C,H,W", help="the input's shape, when the prototxt does not give it")
    parser.add_argument("--phase", default="TEST", choices=["TEST", "TRAIN"], help="Caffe phase to filter layers by")
    parser.add_argument("--stage", action="append", default=[], help="a Caffe stage (repeatable)")
    parser.add_argument("--mean-file", help="mean.binaryproto: the mean image the net subtracts")
    parser.add_argument("--mean", metavar="B,G,R", help="per-channel mean, in the net's channel order")
    parser.add_argument("--scale", type=float, help="multiplies the input after the mean (e.g. 0.00390625)")
    parser.add_argument("--crop", metavar="H,W", help="centre crop the net sees (the model takes the mean image's size)")
    parser.add_argument("--channel-order", choices=["BGR", "RGB", "GRAY"], help="the net's input channel order")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    try:
        model = convert(args.prototxt, args.caffemodel, out_path=args.out, names=args.names,
                        progress=not args.no_progress, weights_only_path=args.weights_only,
                        preprocessing=preprocessing_from_args(args), phase=args.phase, stages=args.stage,
                        input_shape=_ints(args.input_shape) if args.input_shape else None)
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
