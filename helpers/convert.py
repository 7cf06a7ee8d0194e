"""Caffe network -> Keras model: layers, weight layout, and ``python -m helpers.convert``.

The Keras model is built from the parsed prototxt (``helpers.caffe_format.NetSpec``), so the
same code serves the real VGG-Face and the miniature one. It keeps Caffe's layer names, takes
RGB float 0-255 (N, H, W, 3) and does its own VGG-Face preprocessing (first layer
``preprocess``). Three layout differences between the frameworks are handled here, and each
one silently ruins the predictions if forgotten:

- convolution kernels: Caffe (out, in, kh, kw) -> Keras (kh, kw, in, out);
- InnerProduct weights: Caffe (out, in) -> Keras (in, out);
- the first InnerProduct after a spatial blob: Caffe flattens (C, H, W), Keras (H, W, C), so
  its input axis is reordered.

``keras_to_caffe_blobs`` is the inverse, to publish a Keras-trained model as a caffemodel.
The verification helpers (``reference_forward``, ``opencv_forward``, ``trap_errors``) check a
converted model against an independent Caffe engine (notebook 01 and the tests).

Command line::

    python -m helpers.convert PROTOTXT CAFFEMODEL OUT.keras [--names names.txt]
                              [--weights-only OUT.weights.h5]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .fileio import atomic_path

SUPPORTED_TYPES = ("Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout", "Softmax", "Flatten")
# Layers that only declare the input; their shape is already in NetSpec.input_shape.
_INPUT_TYPES = ("Input",)
_WEIGHTED_TYPES = ("Convolution", "InnerProduct")


class ConversionError(ValueError):
    """The Caffe files cannot be turned into the Keras model (the message says where and why)."""


# ----------------------------------------------------------------------------- parameters

def _first(value, default=None):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def _pair(params: dict, key: str, key_h: str, key_w: str, default: int) -> tuple[int, int]:
    """Caffe's (h, w) from ``key`` (scalar or repeated) or ``key_h``/``key_w``."""
    if key_h in params or key_w in params:
        return int(params.get(key_h, default)), int(params.get(key_w, default))
    value = params.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return default, default
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _where(net, layer) -> str:
    return f"{net.source}, line {layer.line}, layer {layer.name!r} ({layer.type})"


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooling output size: rounded UP, minus a last window that would start in the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def keras_pool_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


# ----------------------------------------------------------------------------- model

def unsupported_layers(net) -> list[str]:
    """``"name (type, line N)"`` for every layer this converter cannot build."""
    return [f"{l.name} ({l.type}, line {l.line})" for l in net.layers
            if l.type not in SUPPORTED_TYPES and l.type not in _INPUT_TYPES]


def _fused_relus(net) -> set[str]:
    """Names of in-place ReLUs that directly follow a Convolution/InnerProduct (fused into it)."""
    fused = set()
    layers = net.layers
    for i, layer in enumerate(layers):
        if layer.type not in _WEIGHTED_TYPES:
            continue
        top = layer.tops[0]
        for nxt in layers[i + 1:]:
            if top in nxt.bottoms:
                in_place = nxt.type == "ReLU" and nxt.tops == [top]
                slope = float(_first(nxt.params.get("negative_slope"), 0.0))
                if in_place and slope == 0.0:
                    fused.add(nxt.name)
                break
    return fused


def build_keras_model(net, input_hw: tuple[int, int] | None = None,
                      class_names: Sequence[str] | None = None, *, random_init: bool = True):
    """A functional Keras model of ``net`` with Caffe's layer names, randomly initialised.

    ``input_hw`` overrides the prototxt's (H, W). ``class_names`` go into the final
    softmax's config (see ``helpers.vggface.class_names``). ``random_init=False`` starts every
    weight at zero, for weights that are loaded next: on the full-size model that saves
    several seconds and about 1 GB of memory that random initialisation leaves behind.
    """
    import keras

    from .vggface import ConstantPad2D, NamedSoftmax, VGGFacePreprocess

    bad = unsupported_layers(net)
    if bad:
        raise ConversionError(
            f"{net.source}: {len(bad)} layer(s) of unsupported type: {', '.join(bad)}; "
            f"supported types are {', '.join(SUPPORTED_TYPES)}")
    _, channels, h, w = net.input_shape
    if input_hw is not None:
        h, w = (int(v) for v in input_hw)
    if channels != 3:
        raise ConversionError(f"{net.source}: input {net.input_name!r} has {channels} channels; "
                              "VGG-Face preprocessing expects 3 (BGR)")
    fused = _fused_relus(net)
    init = "glorot_uniform" if random_init else "zeros"
    used_names: set[str] = set()

    def unique(name: str) -> str:
        candidate, k = name, 1
        while candidate in used_names:
            k += 1
            candidate = f"{name}_{k}"
        used_names.add(candidate)
        return candidate

    inputs = keras.Input(shape=(h, w, 3), name=unique(net.input_name))
    blobs = {net.input_name: VGGFacePreprocess(name=unique("preprocess"))(inputs)}
    consumed_after: dict[str, int] = {}
    for i, layer in enumerate(net.layers):
        for b in layer.bottoms:
            consumed_after[b] = i

    for layer in net.layers:
        if layer.type in _INPUT_TYPES or layer.name in fused:
            continue
        missing = [b for b in layer.bottoms if b not in blobs]
        if missing:
            raise ConversionError(f"{_where(net, layer)}: input blob(s) {missing} are produced by no earlier layer")
        if len(layer.bottoms) != 1 or len(layer.tops) != 1:
            raise ConversionError(f"{_where(net, layer)}: expected one bottom and one top, got "
                                  f"{layer.bottoms} -> {layer.tops}")
        x = blobs[layer.bottoms[0]]
        p = layer.params
        name = unique(layer.name)
        if layer.type == "Convolution":
            x = _conv(keras, net, layer, name, x, relu=_relu_follows(net, layer, fused), unique=unique,
                      init=init)
        elif layer.type == "InnerProduct":
            if len(x.shape) != 2:  # Caffe's InnerProduct flattens implicitly; Keras' Dense does not
                flat_name = "flatten" if "flatten" not in used_names else f"{layer.name}_flatten"
                x = keras.layers.Flatten(name=unique(flat_name))(x)
            axis = int(_first(p.get("axis"), 1))
            if axis != 1:
                raise ConversionError(f"{_where(net, layer)}: only axis 1 is supported, got {axis}")
            x = keras.layers.Dense(
                int(_first(p.get("num_output"))), name=name,
                activation="relu" if _relu_follows(net, layer, fused) else None,
                use_bias=bool(_first(p.get("bias_term"), True)), kernel_initializer=init)(x)
        elif layer.type == "ReLU":
            x = keras.layers.ReLU(negative_slope=float(_first(p.get("negative_slope"), 0.0)), name=name)(x)
        elif layer.type == "Pooling":
            x = _pool(keras, ConstantPad2D, net, layer, name, x, unique)
        elif layer.type == "Dropout":
            x = keras.layers.Dropout(float(_first(p.get("dropout_ratio"), 0.5)), name=name)(x)
        elif layer.type == "Softmax":
            x = NamedSoftmax(name=name)(x)
        elif layer.type == "Flatten":
            x = keras.layers.Flatten(name=name)(x)
        blobs[layer.tops[0]] = x

    outputs = []
    produced = [(i, l.tops[0]) for i, l in enumerate(net.layers) if l.type not in _INPUT_TYPES]
    seen = set()
    for i, top in produced:
        if consumed_after.get(top, -1) <= i and top not in seen:
            seen.add(top)
            outputs.append(blobs[top])
    if not outputs:
        raise ConversionError(f"{net.source}: the network has no output blob")
    model = keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=net.name or "caffe_net")
    if class_names is not None:
        set_class_names(model, class_names)
    return model


def set_class_names(model, class_names: Sequence[str]) -> None:
    """Store ``class_names`` in the model's final softmax (checks the count matches its outputs)."""
    from .vggface import NamedSoftmax

    softmaxes = [l for l in model.layers if isinstance(l, NamedSoftmax)]
    if not softmaxes:
        raise ConversionError(f"model {model.name!r} has no Softmax layer to carry class names")
    prob = softmaxes[-1]
    n_out = prob.output.shape[-1]
    names = [str(n) for n in class_names]
    if len(names) != n_out:
        raise ConversionError(f"{len(names)} class names given but layer {prob.name!r} has {n_out} outputs")
    prob.class_names = names


def _relu_follows(net, layer, fused) -> bool:
    top = layer.tops[0]
    idx = net.layers.index(layer)
    for nxt in net.layers[idx + 1:]:
        if top in nxt.bottoms:
            return nxt.name in fused
    return False


def _conv(keras, net, layer, name, x, relu, unique, init):
    p = layer.params
    group = int(_first(p.get("group"), 1))
    if group != 1:
        raise ConversionError(f"{_where(net, layer)}: grouped convolution (group={group}) is not supported")
    k = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    if min(k) <= 0:
        raise ConversionError(f"{_where(net, layer)}: kernel_size is missing")
    s = _pair(p, "stride", "stride_h", "stride_w", 1)
    pad = _pair(p, "pad", "pad_h", "pad_w", 0)
    d = _pair(p, "dilation", "dilation_h", "dilation_w", 1)
    _, h, w, _ = x.shape
    out_h = (h + 2 * pad[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    out_w = (w + 2 * pad[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise ConversionError(f"{_where(net, layer)}: input {h}x{w} is too small for kernel {k}, pad {pad}")
    same = s == (1, 1) and all(2 * pad[i] == d[i] * (k[i] - 1) for i in (0, 1))
    padding = "valid"
    if pad != (0, 0):
        if same:
            padding = "same"
        else:
            x = keras.layers.ZeroPadding2D((pad, pad), name=unique(f"{layer.name}_pad"))(x)
    return keras.layers.Conv2D(
        int(_first(p.get("num_output"))), k, strides=s, padding=padding, dilation_rate=d,
        activation="relu" if relu else None, use_bias=bool(_first(p.get("bias_term"), True)),
        kernel_initializer=init, name=name)(x)


def _pool(keras, ConstantPad2D, net, layer, name, x, unique):
    p = layer.params
    method = str(_first(p.get("pool"), "MAX")).upper()
    if method not in ("MAX", "AVE"):
        raise ConversionError(f"{_where(net, layer)}: pooling method {method} is not supported (MAX, AVE)")
    if bool(_first(p.get("global_pooling"), False)):
        cls = keras.layers.GlobalMaxPooling2D if method == "MAX" else keras.layers.GlobalAveragePooling2D
        return cls(keepdims=True, name=name)(x)
    k = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    if min(k) <= 0:
        raise ConversionError(f"{_where(net, layer)}: kernel_size is missing")
    s = _pair(p, "stride", "stride_h", "stride_w", 1)
    pad = _pair(p, "pad", "pad_h", "pad_w", 0)
    _, h, w, _ = x.shape
    want = (caffe_pool_size(h, k[0], s[0], pad[0]), caffe_pool_size(w, k[1], s[1], pad[1]))
    if min(want) <= 0:
        raise ConversionError(f"{_where(net, layer)}: input {h}x{w} is too small for pooling kernel {k}")
    cls = keras.layers.MaxPooling2D if method == "MAX" else keras.layers.AveragePooling2D

    def fits(padding):
        return all(keras_pool_size(size, k[i], s[i], padding) == want[i] for i, size in enumerate((h, w)))

    def same_pads_after_only():
        # TF's "same" puts the extra row/column after; Caffe's extra window is also at the end.
        totals = [max((want[i] - 1) * s[i] + k[i] - size, 0) for i, size in enumerate((h, w))]
        return all(t // 2 == 0 for t in totals)

    if pad == (0, 0) and fits("valid"):
        return cls(k, strides=s, padding="valid", name=name)(x)
    if pad == (0, 0) and fits("same") and same_pads_after_only():
        # Padded cells are ignored by both max and the average's divisor, as in Caffe without pad.
        return cls(k, strides=s, padding="same", name=name)(x)
    after = [max((want[i] - 1) * s[i] + k[i] - size - pad[i], 0) for i, size in enumerate((h, w))]
    if method == "AVE" and any(after[i] > pad[i] for i in (0, 1)):
        raise ConversionError(f"{_where(net, layer)}: average pooling whose last window runs past the "
                              f"padding (input {h}x{w}, kernel {k}, stride {s}, pad {pad}) is not supported")
    value = float("-inf") if method == "MAX" else 0.0
    x = ConstantPad2D(((pad[0], after[0]), (pad[1], after[1])), value=value,
                      name=unique(f"{layer.name}_pad"))(x)
    return cls(k, strides=s, padding="valid", name=name)(x)


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
        if self.unused:
            out.append(f"not loaded ({len(self.unused)} caffemodel layer(s) absent from the prototxt): "
                       + ", ".join(self.unused))
        return "\n".join(out)


def flatten_source_shape(model, layer_name: str) -> tuple[int, int, int] | None:
    """(H, W, C) of the spatial blob a Dense layer's input was flattened from, else None."""
    import keras

    passthrough = (keras.layers.Dropout, keras.layers.ReLU, keras.layers.Activation)
    tensor = model.get_layer(layer_name).input
    while True:
        op = tensor._keras_history.operation
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

    weighted = [l for l in net.layers if l.type in _WEIGHTED_TYPES]
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
        klayer = model.get_layer(layer.name)
        kshapes = [tuple(v.shape) for v in klayer.weights]
        flat_from = flatten_source_shape(model, layer.name) if layer.type == "InnerProduct" else None
        caffe_blobs = blobs[layer.name].blobs
        arrays = caffe_to_keras_arrays(layer.type, caffe_blobs, kshapes, flat_from,
                                       where=_where(net, layer), ops=keras.ops)
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
    from .caffe_format import CaffeLayerBlobs

    out = []
    for layer in net.layers:
        if layer.type in _INPUT_TYPES:
            continue
        if layer.type not in _WEIGHTED_TYPES:
            out.append(CaffeLayerBlobs(name=layer.name, type=layer.type, blobs=[]))
            continue
        try:
            klayer = model.get_layer(layer.name)
        except ValueError:
            raise ConversionError(f"{_where(net, layer)}: model {model.name!r} has no layer of that name") from None
        flat_from = flatten_source_shape(model, layer.name) if layer.type == "InnerProduct" else None
        arrays = keras_to_caffe_arrays(layer.type, [v.numpy() for v in klayer.weights], flat_from)
        out.append(CaffeLayerBlobs(name=layer.name, type=layer.type, blobs=arrays))
    return out


# ----------------------------------------------------------------------------- verification
# An independent check of a converted model: the same Caffe blobs run by a reference engine
# (OpenCV's Caffe importer when installed, else the numpy forward pass below) on inputs
# preprocessed the Caffe way (BGR, minus the mean, NCHW), computed here without the model.

VERIFIED_BLOBS = ("pool5", "fc7", "fc8")


def caffe_input(rgb, mean_bgr=None, bgr: bool = True) -> np.ndarray:
    """RGB 0-255 (N, H, W, 3) -> the Caffe input blob: BGR minus the mean, (N, 3, H, W) float32."""
    from .vggface import VGGFACE_MEAN_BGR

    mean = np.asarray(VGGFACE_MEAN_BGR if mean_bgr is None else mean_bgr, dtype=np.float32)
    rgb = np.asarray(rgb, dtype=np.float32)
    channels = rgb[..., ::-1] if bgr else rgb
    return np.ascontiguousarray((channels - mean).transpose(0, 3, 1, 2))


def reference_forward(net, blobs: dict, data: np.ndarray, outputs=VERIFIED_BLOBS) -> dict[str, np.ndarray]:
    """Caffe's forward pass in plain numpy (NCHW, float64): the blobs named in ``outputs``.

    Written from Caffe's definitions (cross-correlation, ceil-mode pooling with Caffe's
    average divisor, C*H*W flattening), sharing no code with the Keras model.
    """
    values = {net.input_name: np.asarray(data, dtype=np.float64)}
    for layer in net.layers:
        if layer.type in _INPUT_TYPES:
            continue
        x, p = values[layer.bottoms[0]], layer.params
        if layer.type == "Convolution":
            w, *b = [np.asarray(a, np.float64) for a in blobs[layer.name].blobs]
            o = int(_first(p.get("num_output")))
            kh, kw = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
            w = w.reshape(o, -1, kh, kw)
            sh, sw = _pair(p, "stride", "stride_h", "stride_w", 1)
            ph, pw = _pair(p, "pad", "pad_h", "pad_w", 0)
            xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
            x = np.einsum("ncijhw,ochw->noij", win, w, optimize=True)
            if b:
                x = x + b[0].reshape(1, o, 1, 1)
        elif layer.type == "ReLU":
            slope = float(_first(p.get("negative_slope"), 0.0))
            x = np.where(x > 0, x, slope * x)
        elif layer.type == "Pooling":
            x = _reference_pool(x, p)
        elif layer.type == "InnerProduct":
            w, *b = [np.asarray(a, np.float64) for a in blobs[layer.name].blobs]
            o = int(_first(p.get("num_output")))
            x = x.reshape(len(x), -1) @ w.reshape(o, -1).T
            if b:
                x = x + b[0].reshape(1, o)
        elif layer.type == "Softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        elif layer.type == "Flatten":
            x = x.reshape(len(x), -1)
        elif layer.type != "Dropout":  # Dropout is the identity at test time
            raise ConversionError(f"{_where(net, layer)}: the reference forward pass does not implement it")
        values[layer.tops[0]] = x
    return {name: values[name] for name in outputs}


def _reference_pool(x: np.ndarray, p: dict) -> np.ndarray:
    n, c, h, w = x.shape
    method = str(_first(p.get("pool"), "MAX")).upper()
    if bool(_first(p.get("global_pooling"), False)):
        return x.max(axis=(2, 3), keepdims=True) if method == "MAX" else x.mean(axis=(2, 3), keepdims=True)
    (kh, kw), (sh, sw) = _pair(p, "kernel_size", "kernel_h", "kernel_w", 0), _pair(p, "stride", "stride_h", "stride_w", 1)
    ph, pw = _pair(p, "pad", "pad_h", "pad_w", 0)
    oh, ow = caffe_pool_size(h, kh, sh, ph), caffe_pool_size(w, kw, sw, pw)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        h0, h1 = i * sh - ph, min(i * sh - ph + kh, h + ph)
        for j in range(ow):
            w0, w1 = j * sw - pw, min(j * sw - pw + kw, w + pw)
            area = (h1 - h0) * (w1 - w0)  # Caffe's divisor counts the padding inside h + pad
            window = x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
            out[:, :, i, j] = window.max(axis=(2, 3)) if method == "MAX" else window.sum(axis=(2, 3)) / area
    return out


def opencv_forward(prototxt, caffemodel, net, data: np.ndarray, outputs=VERIFIED_BLOBS) -> dict[str, np.ndarray]:
    """The same blobs computed by OpenCV's Caffe importer (``cv2`` is a test-only dependency)."""
    import cv2

    def producer(blob):  # OpenCV names outputs by layer: the last non-Dropout layer writing the blob
        writers = [l.name for l in net.layers if blob in l.tops and l.type != "Dropout"]
        return writers[-1]

    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    cv_net.setInput(np.ascontiguousarray(data, dtype=np.float32))
    results = cv_net.forward([producer(b) for b in outputs])
    return {b: np.asarray(r, dtype=np.float64) for b, r in zip(outputs, results)}


def keras_forward(model, images, outputs=VERIFIED_BLOBS) -> dict[str, np.ndarray]:
    """The model's outputs of the named layers; spatial ones transposed to Caffe's NCHW."""
    from .vggface import feature_model

    values = feature_model(model, list(outputs))(np.asarray(images, dtype=np.float32), training=False)
    result = {}
    for name, v in zip(outputs, values):
        v = np.asarray(v, dtype=np.float64)
        result[name] = v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
    return result


def relative_errors(reference: dict, other: dict) -> dict[str, float]:
    """Per blob: max |difference| / max |reference| (shape mismatch -> inf)."""
    errors = {}
    for name, ref in reference.items():
        got = other[name]
        if ref.shape != got.shape:
            errors[name] = float("inf")
        else:
            errors[name] = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30))
    return errors


TRAPS = {
    "flatten_order": "fc6 input axis left in Caffe's C*H*W order",
    "kernel_reshaped": "convolution kernels reshaped to (kh, kw, in, out) instead of transposed",
    "rgb_not_bgr": "images fed in BGR to a model that expects RGB (the channel order swapped once too often)",
}


def trap_errors(model, net, blobs: dict, images, reference: dict) -> dict[str, dict[str, float]]:
    """What each classic conversion mistake does to the outputs, against ``reference``.

    The model's weights are restored afterwards.
    """
    errors = {}
    saved = {l.name: model.get_layer(l.name).get_weights() for l in net.layers if l.type in _WEIGHTED_TYPES}
    try:
        first_fc = next(l for l in net.layers if l.type == "InnerProduct")
        w, *b = blobs[first_fc.name].blobs
        out = int(_first(first_fc.params.get("num_output")))
        model.get_layer(first_fc.name).set_weights([np.asarray(w).reshape(out, -1).T, *[np.reshape(x, -1) for x in b]])
        errors["flatten_order"] = relative_errors(reference, keras_forward(model, images))
        model.get_layer(first_fc.name).set_weights(saved[first_fc.name])
        for layer in net.layers:
            if layer.type == "Convolution":
                k = model.get_layer(layer.name)
                w, *b = blobs[layer.name].blobs
                k.set_weights([np.asarray(w).reshape(k.weights[0].shape), *[np.reshape(x, -1) for x in b]])
        errors["kernel_reshaped"] = relative_errors(reference, keras_forward(model, images))
    finally:
        for name, weights in saved.items():
            model.get_layer(name).set_weights(weights)
    errors["rgb_not_bgr"] = relative_errors(reference, keras_forward(model, np.asarray(images)[..., ::-1]))
    return errors


# ----------------------------------------------------------------------------- end to end

def _names_list(names) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, (str, os.PathLike)):
        from .vggface import read_names

        return read_names(names)
    return [str(n) for n in names]


def convert(prototxt, caffemodel, out_path=None, names=None, progress: bool = True,
            weights_only_path=None, verbose: bool = False):
    """Parse, build, copy weights, and (if ``out_path``) save atomically. Returns the model.

    ``names``: a ``names.txt`` path or a list of class names (fc8 order). Nothing is written
    to ``out_path`` (or ``weights_only_path``) unless everything succeeds.
    """
    from .caffe_format import parse_prototxt, read_caffemodel

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
        save_atomically(model, out_path, weights_only_path)
    return model


def save_atomically(model, out_path=None, weights_only_path=None) -> None:
    """Write the ``.keras`` file and/or the ``.weights.h5`` file; both or neither appear."""
    import contextlib

    for p, suffix in ((out_path, ".keras"), (weights_only_path, ".weights.h5")):
        if p is not None and not str(p).endswith(suffix):
            raise ConversionError(f"{p}: the file name must end with {suffix}")
    with contextlib.ExitStack() as stack:
        if weights_only_path is not None:
            tmp = stack.enter_context(atomic_path(weights_only_path))
            model.save_weights(tmp)
        if out_path is not None:
            tmp = stack.enter_context(atomic_path(out_path))
            model.save(tmp)


def load_or_convert(assets, progress: bool = True):
    """``assets.keras_model`` if it exists and is newer than the caffemodel, else convert and save it."""
    import keras

    from . import vggface  # noqa: F401  (registers the custom layers)

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
