"""Caffe blobs <-> Keras weights: the layouts differ, and each difference silently ruins the
predictions if forgotten:

- convolution kernels: Caffe (out, in, kh, kw) -> Keras (kh, kw, in, out);
- InnerProduct weights: Caffe (out, in) -> Keras (in, out);
- the first InnerProduct after a spatial blob: Caffe flattens (C, H, W), Keras (H, W, C), so
  its input axis is reordered.

``keras_to_caffe_blobs`` is the inverse, to publish a Keras-trained model as a caffemodel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .spec import INPUT_TYPES, WEIGHTED_TYPES, CaffeLayerBlobs, ConversionError, keras_layer_name, where

# ----------------------------------------------------------------------------- weights

@dataclass
class LayerRow:
    """One line of the conversion table."""

    name: str
    caffe_shapes: list[tuple[int, ...]]
    keras_shapes: list[tuple[int, ...]]
    params: int


@dataclass
class LoadReport:
    rows: list[LayerRow] = field(default_factory=list)
    # caffemodel layers that carry blobs but are not in the prototxt (not loaded)
    unused: list[str] = field(default_factory=list)
    # what the model's preprocess layer does (set by convert.convert)
    preprocessing: str = ""

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    def table(self) -> str:
        def fmt(shapes):
            return " ".join("x".join(str(d) for d in s) for s in shapes)

        head = ("layer", "caffe blobs", "keras weights", "params")
        lines = [head] + [(r.name, fmt(r.caffe_shapes), fmt(r.keras_shapes), f"{r.params:,}") for r in self.rows]
        lines.append(("total", "", "", f"{self.params:,}"))
        widths = [max(len(row[i]) for row in lines) for i in range(4)]
        out = [" | ".join(c.ljust(widths[i]) if i < 3 else c.rjust(widths[i]) for i, c in enumerate(row))
               for row in lines]
        out.insert(1, "-+-".join("-" * wd for wd in widths))
        if self.preprocessing:
            out.append(f"preprocessing: {self.preprocessing}")
        if self.unused:
            out.append(f"not loaded ({len(self.unused)} caffemodel layer(s) absent from the prototxt): "
                       + ", ".join(self.unused))
        return "\n".join(out)


def flatten_source_shape(model, layer_name: str) -> tuple[int, int, int] | None:
    """(H, W, C) of the spatial blob a Dense layer's input was flattened from, else None."""
    import keras

    passthrough = (keras.layers.Dropout, keras.layers.ReLU, keras.layers.Activation)
    # Which layer produced a tensor, from public attributes: the layer whose output it is.
    producer = {id(layer.output): layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}
    tensor = model.get_layer(layer_name).input
    while True:
        op = producer.get(id(tensor))
        if isinstance(op, keras.layers.Flatten):
            shape = tuple(op.input.shape[1:])
            return shape if len(shape) == 3 else None
        if isinstance(op, passthrough):
            tensor = op.input
            continue
        return None


def _squeeze_leading(shape: tuple[int, ...], ndim: int) -> tuple[int, ...] | None:
    """Caffe's legacy 4-D (num, channels, height, width) dims without the leading 1s."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return shape if len(shape) == ndim else None


def _caffe_layout(kind: str, keras_shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "Convolution" and len(keras_shape) == 4:
        kh, kw, i, o = keras_shape
        return (o, i, kh, kw)
    if kind == "InnerProduct" and len(keras_shape) == 2:
        i, o = keras_shape
        return (o, i)
    return tuple(keras_shape)


def release_mapped_pages(arr: np.ndarray) -> bool:
    """Drop the resident pages of a read-only memory-mapped array (re-read from disk if touched).

    Without it every page of a 580 MB caffemodel stays in the process' resident memory until
    the map closes, on top of the model's own copy. Returns False when ``arr`` is not a view
    of an ``mmap`` (nothing to do).
    """
    import mmap

    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mm = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mm, mmap.mmap) or not hasattr(mm, "madvise") or arr.nbytes == 0:
        return False
    try:
        origin = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
        start = arr.ctypes.data - origin
        first_page = start - start % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, first_page, start + arr.nbytes - first_page)
    except (ValueError, OSError):  # a closed map or an odd platform: only memory is at stake
        return False
    return True


def caffe_to_keras_arrays(kind: str, blobs: Sequence[np.ndarray], keras_shapes, flat_from=None,
                          where: str = "", ops=None) -> list:
    """Caffe blobs of one layer -> arrays in Keras layout (checks every shape first).

    With ``ops=None`` the results are numpy arrays (views where possible). With
    ``ops=keras.ops`` the rearrangement runs in the backend, as backend tensors: one
    copy-in plus one blocked, multi-threaded transpose per blob, several times faster than
    numpy on fc6 (102 M weights) and never more than two copies of a blob alive.
    """
    if len(blobs) != len(keras_shapes):
        raise ConversionError(f"{where}: the caffemodel has {len(blobs)} blob(s) "
                              f"{[tuple(b.shape) for b in blobs]}, the prototxt implies {len(keras_shapes)} "
                              f"{[_caffe_layout(kind, tuple(s)) for s in keras_shapes]}")
    shapes = []
    for j, (blob, kshape) in enumerate(zip(blobs, keras_shapes)):
        expected = _caffe_layout(kind, tuple(kshape))
        if _squeeze_leading(blob.shape, len(expected)) != expected:
            raise ConversionError(f"{where}: blob {j} has shape {tuple(blob.shape)} in the caffemodel but "
                                  f"the prototxt implies {expected} (Caffe layout)")
        shapes.append(expected)
    arrays = []
    for j, (blob, expected) in enumerate(zip(blobs, shapes)):
        arr = blob.reshape(expected)
        if ops is not None:
            arr = ops.convert_to_tensor(arr)
            release_mapped_pages(blob)  # copied in: the file's pages need not stay in memory
        if j == 0 and kind == "Convolution":  # (out, in, kh, kw) -> (kh, kw, in, out)
            arr = arr.transpose(2, 3, 1, 0) if ops is None else ops.transpose(arr, (2, 3, 1, 0))
        elif j == 0 and kind == "InnerProduct":  # (out, in) -> (in, out)
            out = expected[0]
            if flat_from is None:
                arr = arr.T if ops is None else ops.transpose(arr)
            else:  # input axis: Caffe's (C, H, W) order -> Keras' (H, W, C)
                h, w, c = flat_from
                if ops is None:
                    arr = arr.reshape(out, c, h * w).transpose(0, 2, 1).reshape(out, h * w * c).T
                else:
                    arr = ops.transpose(ops.reshape(arr, (out, c, h * w)), (2, 1, 0))
                    arr = ops.reshape(arr, (h * w * c, out))
        arrays.append(arr)
    return arrays


def keras_to_caffe_arrays(kind: str, weights: Sequence[np.ndarray], flat_from=None) -> list[np.ndarray]:
    """The inverse of ``caffe_to_keras_arrays``: Keras layout -> Caffe blob arrays (float32, owned)."""
    arrays = []
    for j, wt in enumerate(weights):
        wt = np.asarray(wt, dtype=np.float32)
        if j == 0 and kind == "Convolution":
            wt = wt.transpose(3, 2, 0, 1)
        elif j == 0 and kind == "InnerProduct":
            if flat_from is not None:
                h, w, c = flat_from
                out = wt.shape[1]
                wt = wt.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)
            else:
                wt = wt.T
        arrays.append(np.ascontiguousarray(wt, dtype=np.float32))
    return arrays


def load_caffe_weights(model, blobs: dict, net, progress: bool = False) -> LoadReport:
    """Copy the caffemodel's blobs into ``model`` (built from ``net``), layer by layer.

    Every shape is checked against the prototxt: a mismatch raises ``ConversionError``
    naming the layer and both shapes. Layers with weights missing from the caffemodel are
    an error; caffemodel layers with blobs that the prototxt lacks are reported in
    ``LoadReport.unused``.
    """
    import keras

    weighted = [l for l in net.layers if l.type in WEIGHTED_TYPES]
    missing = [l.name for l in weighted if l.name not in blobs or not blobs[l.name].blobs]
    if missing:
        raise ConversionError(f"{net.source}: the caffemodel has no weights for layer(s) {missing}")
    wanted = {l.name for l in weighted}
    report = LoadReport(unused=[n for n, b in blobs.items() if b.blobs and n not in wanted])
    iterator = weighted
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(weighted, desc="copying weights", unit="layer")
    for layer in iterator:
        klayer = model.get_layer(keras_layer_name(layer.name))
        kshapes = [tuple(v.shape) for v in klayer.weights]
        flat_from = flatten_source_shape(model, klayer.name) if layer.type == "InnerProduct" else None
        caffe_blobs = blobs[layer.name].blobs
        arrays = caffe_to_keras_arrays(layer.type, caffe_blobs, kshapes, flat_from,
                                       where=where(net, layer), ops=keras.ops)
        # one layer at a time, so at most one converted layer is alive besides the model
        for variable, arr in zip(klayer.weights, arrays):
            variable.assign(arr)
        report.rows.append(LayerRow(layer.name, [tuple(b.shape) for b in caffe_blobs], kshapes,
                                    int(sum(int(np.prod(s)) for s in kshapes))))
        del arrays
    return report


def keras_to_caffe_blobs(model, net) -> list:
    """The model's weights as ``caffe_format.CaffeLayerBlobs``, one per layer of ``net`` (file order).

    Layers without weights are included with ``blobs=[]``, as in a caffemodel written by Caffe.
    """

    out = []
    for layer in net.layers:
        if layer.type in INPUT_TYPES:
            continue
        if layer.type not in WEIGHTED_TYPES:
            out.append(CaffeLayerBlobs(name=layer.name, type=layer.type, blobs=[]))
            continue
        try:
            klayer = model.get_layer(keras_layer_name(layer.name))
        except ValueError:
            raise ConversionError(f"{where(net, layer)}: model {model.name!r} has no layer of that name") from None
        flat_from = flatten_source_shape(model, klayer.name) if layer.type == "InnerProduct" else None
        arrays = keras_to_caffe_arrays(layer.type, [v.numpy() for v in klayer.weights], flat_from)
        out.append(CaffeLayerBlobs(name=layer.name, type=layer.type, blobs=arrays))
    return out


