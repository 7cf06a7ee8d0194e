"""Caffe layers -> Keras layers: ``build_keras_model`` builds a functional Keras model from a
parsed prototxt, keeping Caffe's layer names ('/' becomes '.', which Keras allows).

Read it as a dispatcher plus one short function per Caffe layer type (``BUILDERS``): each takes
the Keras tensors of the layer's bottoms and returns the tensor of its top. The model takes RGB
(or grey) float 0-255 (N, H, W, C) and does the net's own preprocessing in its first layer
(``preprocess``: VGG-Face's unless told otherwise, see ``preprocessing``). An in-place ReLU is
fused into the Convolution/InnerProduct before it; Caffe's ceil-mode pooling is reproduced
exactly (with -inf padding where Keras' own modes disagree).
"""
from __future__ import annotations

from typing import Sequence

from .preprocessing import Preprocessing
from .spec import (ConversionError, INPUT_TYPES, WEIGHTED_TYPES, caffe_pool_size, first_value, keras_layer_name,
                   keras_pool_size, param_pair, where)


# ----------------------------------------------------------------------------- the dispatcher

def build_keras_model(net, input_hw: tuple[int, int] | None = None,
                      class_names: Sequence[str] | None = None, *, random_init: bool = True,
                      preprocessing: Preprocessing | None = None):
    """A functional Keras model of ``net`` with Caffe's layer names, randomly initialised.

    ``input_hw`` overrides the net's (H, W) (with a crop: the image size the model takes).
    ``class_names`` go into the final softmax's config (see ``helpers.vggface.class_names``).
    ``preprocessing`` is the net's input recipe (default VGG-Face's for a 3-channel net, none
    for a 1-channel one). ``random_init=False`` starts every weight at zero, for weights that are
    loaded next: on the full-size VGG-Face that saves seconds and about 1 GB of memory.
    """
    import keras

    _check_convertible(net)
    b = _Build(keras, net, "glorot_uniform" if random_init else "zeros")
    inputs, x = _input(b, preprocessing, input_hw)
    blobs = {net.input_name: x}
    for layer in net.layers:
        if layer.type in INPUT_TYPES or layer.name in b.fused:
            continue
        missing = [name for name in layer.bottoms if name not in blobs]
        if missing:
            raise ConversionError(f"{where(net, layer)}: input blob(s) {missing} are produced by no earlier layer")
        if len(layer.tops) != 1:
            raise ConversionError(f"{where(net, layer)}: expected one top, got {layer.tops}")
        bottoms = [blobs[name] for name in layer.bottoms]
        if layer.type != "Concat" and len(bottoms) != 1:
            raise ConversionError(f"{where(net, layer)}: expected one bottom, got {layer.bottoms}")
        blobs[layer.tops[0]] = BUILDERS[layer.type](b, layer, *bottoms)
    model = keras.Model(inputs, _outputs(net, blobs), name=keras_layer_name(net.name or "caffe_net"))
    if class_names is not None:
        set_class_names(model, class_names)
    return model


def unsupported_layers(net) -> list[str]:
    """``"name (type, line N)"`` for every layer this converter cannot build."""
    return [f"{l.name} ({l.type}, line {l.line})" for l in net.layers
            if l.type not in BUILDERS and l.type not in INPUT_TYPES]


def set_class_names(model, class_names: Sequence[str]) -> None:
    """Store ``class_names`` in the model's final softmax (checks the count matches its outputs)."""
    from ..vggface import NamedSoftmax

    softmaxes = [l for l in model.layers if isinstance(l, NamedSoftmax)]
    if not softmaxes:
        raise ConversionError(f"model {model.name!r} has no Softmax layer to carry class names")
    prob = softmaxes[-1]
    n_out = prob.output.shape[-1]
    names = [str(n) for n in class_names]
    if len(names) != n_out:
        raise ConversionError(f"{len(names)} class names given but layer {prob.name!r} has {n_out} outputs")
    prob.class_names = names


def keras_layer_for_blob(net, blob: str) -> str:
    """The Keras layer whose output is Caffe's blob ``blob`` once the net has run (after the
    in-place ReLU that may follow it; Dropout is the identity at test time)."""
    fused = _fused_relus(net)
    writers = [l for l in net.layers if blob in l.tops and l.type not in INPUT_TYPES
               and l.name not in fused and l.type != "Dropout"]
    if not writers:
        raise KeyError(f"{net.source}: no layer writes blob {blob!r}")
    return keras_layer_name(writers[-1].name)


# ----------------------------------------------------------------------------- one function per type

def _convolution(b, layer, x):
    p = layer.params
    k = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    if min(k) <= 0:
        raise ConversionError(f"{b.where(layer)}: kernel_size is missing")
    s = param_pair(p, "stride", "stride_h", "stride_w", 1)
    pad = param_pair(p, "pad", "pad_h", "pad_w", 0)
    d = param_pair(p, "dilation", "dilation_h", "dilation_w", 1)
    group = int(first_value(p.get("group"), 1))
    _, h, w, channels = x.shape
    if channels % group or int(first_value(p.get("num_output"))) % group:
        raise ConversionError(f"{b.where(layer)}: group {group} does not divide the {channels} input and "
                              f"{first_value(p.get('num_output'))} output channels")
    out_h = (h + 2 * pad[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    out_w = (w + 2 * pad[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise ConversionError(f"{b.where(layer)}: input {h}x{w} is too small for kernel {k}, pad {pad}")
    padding = "valid"
    if s == (1, 1) and all(2 * pad[i] == d[i] * (k[i] - 1) for i in (0, 1)):
        padding = "same"  # Keras pads exactly Caffe's pad on each side here
    elif pad != (0, 0):  # ((top, bottom), (left, right)): pad_h above and below, pad_w left and right
        x = b.keras.layers.ZeroPadding2D(((pad[0], pad[0]), (pad[1], pad[1])), name=b.unique(f"{layer.name}_pad"))(x)
    return b.keras.layers.Conv2D(
        int(first_value(p.get("num_output"))), k, strides=s, padding=padding, dilation_rate=d, groups=group,
        activation="relu" if b.relu_after(layer) else None, use_bias=bool(first_value(p.get("bias_term"), True)),
        kernel_initializer=b.init, name=b.name(layer))(x)


def _inner_product(b, layer, x):
    p = layer.params
    if len(x.shape) != 2:  # Caffe's InnerProduct flattens implicitly; Keras' Dense does not
        flat_name = "flatten" if "flatten" not in b.used else f"{layer.name}_flatten"
        x = b.keras.layers.Flatten(name=b.unique(flat_name))(x)
    axis = int(first_value(p.get("axis"), 1))
    if axis != 1:
        raise ConversionError(f"{b.where(layer)}: only axis 1 is supported, got {axis}")
    return b.keras.layers.Dense(
        int(first_value(p.get("num_output"))), activation="relu" if b.relu_after(layer) else None,
        use_bias=bool(first_value(p.get("bias_term"), True)), kernel_initializer=b.init, name=b.name(layer))(x)


def _relu(b, layer, x):
    slope = float(first_value(layer.params.get("negative_slope"), 0.0))
    return b.keras.layers.ReLU(negative_slope=slope, name=b.name(layer))(x)


def _pooling(b, layer, x):
    from .layers import ConstantPad2D

    p, keras = layer.params, b.keras
    method = str(first_value(p.get("pool"), "MAX")).upper()
    if method not in ("MAX", "AVE"):
        raise ConversionError(f"{b.where(layer)}: pooling method {method} is not supported (MAX, AVE)")
    if bool(first_value(p.get("global_pooling"), False)):
        cls = keras.layers.GlobalMaxPooling2D if method == "MAX" else keras.layers.GlobalAveragePooling2D
        return cls(keepdims=True, name=b.name(layer))(x)
    k = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    if min(k) <= 0:
        raise ConversionError(f"{b.where(layer)}: kernel_size is missing")
    s = param_pair(p, "stride", "stride_h", "stride_w", 1)
    pad = param_pair(p, "pad", "pad_h", "pad_w", 0)
    _, h, w, _ = x.shape
    want = (caffe_pool_size(h, k[0], s[0], pad[0]), caffe_pool_size(w, k[1], s[1], pad[1]))
    if min(want) <= 0:
        raise ConversionError(f"{b.where(layer)}: input {h}x{w} is too small for pooling kernel {k}")
    cls = keras.layers.MaxPooling2D if method == "MAX" else keras.layers.AveragePooling2D
    fits = lambda padding: all(keras_pool_size(size, k[i], s[i], padding) == want[i] for i, size in enumerate((h, w)))
    # TF's "same" puts the extra row/column after; Caffe's extra window is also at the end.
    totals = [max((want[i] - 1) * s[i] + k[i] - size, 0) for i, size in enumerate((h, w))]
    if pad == (0, 0) and fits("valid"):
        return cls(k, strides=s, padding="valid", name=b.name(layer))(x)
    if pad == (0, 0) and fits("same") and all(t // 2 == 0 for t in totals):
        # Padded cells are ignored by both max and the average's divisor, as in Caffe without pad.
        return cls(k, strides=s, padding="same", name=b.name(layer))(x)
    after = [max((want[i] - 1) * s[i] + k[i] - size - pad[i], 0) for i, size in enumerate((h, w))]
    if method == "AVE" and any(after[i] > pad[i] for i in (0, 1)):
        raise ConversionError(f"{b.where(layer)}: average pooling whose last window runs past the "
                              f"padding (input {h}x{w}, kernel {k}, stride {s}, pad {pad}) is not supported")
    x = ConstantPad2D(((pad[0], after[0]), (pad[1], after[1])), value=float("-inf") if method == "MAX" else 0.0,
                      name=b.unique(f"{layer.name}_pad"))(x)
    return cls(k, strides=s, padding="valid", name=b.name(layer))(x)


def _lrn(b, layer, x):
    from .layers import LRN

    p = layer.params
    if len(x.shape) != 4:
        raise ConversionError(f"{b.where(layer)}: LRN needs a (N, C, H, W) blob, got rank {len(x.shape)}")
    return LRN(local_size=int(first_value(p.get("local_size"), 5)), alpha=float(first_value(p.get("alpha"), 1.0)),
               beta=float(first_value(p.get("beta"), 0.75)), k=float(first_value(p.get("k"), 1.0)),
               norm_region=str(first_value(p.get("norm_region"), "ACROSS_CHANNELS")), name=b.name(layer))(x)


def _concat(b, layer, *xs):
    p = layer.params
    rank = len(xs[0].shape)
    axis = int(first_value(p.get("axis"), first_value(p.get("concat_dim"), 1)))
    axis = axis + rank if axis < 0 else axis
    # Caffe's axes are (N, C, H, W); Keras' tensors are (N, H, W, C)
    keras_axis = {1: rank - 1, 2: 1, 3: 2}.get(axis, 0) if rank == 4 else axis
    if keras_axis == 0 or not 0 < axis < rank:
        raise ConversionError(f"{b.where(layer)}: concatenation along axis {axis} of rank-{rank} blobs is not supported")
    return b.keras.layers.Concatenate(axis=keras_axis, name=b.name(layer))(list(xs))


def _dropout(b, layer, x):
    return b.keras.layers.Dropout(float(first_value(layer.params.get("dropout_ratio"), 0.5)), name=b.name(layer))(x)


def _softmax(b, layer, x):
    from ..vggface import NamedSoftmax

    axis = int(first_value(layer.params.get("axis"), 1))
    if axis != 1:
        raise ConversionError(f"{b.where(layer)}: only a softmax over channels (axis 1) is supported, got {axis}")
    return NamedSoftmax(name=b.name(layer))(x)  # Keras' last axis is Caffe's channel axis


def _flatten(b, layer, x):
    return b.keras.layers.Flatten(name=b.name(layer))(x)


BUILDERS = {
    "Convolution": _convolution, "InnerProduct": _inner_product, "ReLU": _relu, "Pooling": _pooling,
    "LRN": _lrn, "Concat": _concat, "Dropout": _dropout, "Softmax": _softmax, "Flatten": _flatten,
}
SUPPORTED_TYPES = tuple(BUILDERS)


# ----------------------------------------------------------------------------- bookkeeping

class _Build:
    """What every layer function needs: Keras, the net, the initialiser, the names in use and
    which ReLUs are fused into the layer before them."""

    def __init__(self, keras, net, init: str):
        self.keras, self.net, self.init = keras, net, init
        self.fused = _fused_relus(net)
        self.used: set[str] = set()

    def where(self, layer) -> str:
        return where(self.net, layer)

    def unique(self, name: str) -> str:
        """A free Keras name for a helper layer (``conv1_pad``, ``flatten``)."""
        candidate, k = keras_layer_name(name), 1
        while candidate in self.used:
            k += 1
            candidate = f"{keras_layer_name(name)}_{k}"
        self.used.add(candidate)
        return candidate

    def name(self, layer) -> str:
        """The Keras name of a Caffe layer, which the weights and the checks find it by."""
        name = keras_layer_name(layer.name)
        if name in self.used:
            raise ConversionError(f"{self.where(layer)}: the Keras name {name!r} is taken by an earlier layer")
        self.used.add(name)
        return name

    def relu_after(self, layer) -> bool:
        top, idx = layer.tops[0], self.net.layers.index(layer)
        nxt = next((l for l in self.net.layers[idx + 1:] if top in l.bottoms), None)
        return nxt is not None and nxt.name in self.fused


def _check_convertible(net) -> None:
    bad = unsupported_layers(net)
    if bad:
        raise ConversionError(f"{net.source}: {len(bad)} layer(s) of unsupported type: {', '.join(bad)}; "
                              f"supported types are {', '.join(SUPPORTED_TYPES)}")
    first_line: dict[str, int] = {}
    for l in net.layers:
        if l.name in first_line:
            raise ConversionError(f"{where(net, l)}: the layer name is used again (first at line "
                                  f"{first_line[l.name]}); weights are found by name, so each must be unique")
        first_line[l.name] = l.line
    if net.input_shape is None:
        source = next((l for l in net.layers if l.name == net.input_layer), None)
        origin = f"layer {source.name!r} ({source.type}, line {source.line})" if source else "the file"
        raise ConversionError(
            f"{net.source}: the shape of input {net.input_name!r}, which comes from {origin}, is not in the "
            "file: parse it with input_shape=(N, C, H, W), e.g. parse_prototxt(path, input_shape=(1, 3, 227, 227)), "
            "or pass --input-shape 1,3,227,227 to python -m helpers.convert")
    if net.extra_inputs:
        raise ConversionError(f"{net.source}: {1 + len(net.extra_inputs)} network inputs ({net.input_name}, "
                              f"{', '.join(net.extra_inputs)}); only single-input networks convert")


def _input(b, preprocessing, input_hw):
    """The model's input and its ``preprocess`` layer: the tensor the net's first layer reads."""
    from ..vggface import VGGFacePreprocess
    from .layers import CaffePreprocess

    _, channels, h, w = b.net.input_shape
    if preprocessing is None:
        preprocessing = Preprocessing.vggface() if channels == 3 else Preprocessing.identity(channels)
    if preprocessing.channels != channels:
        raise ConversionError(f"{b.net.source}: input {b.net.input_name!r} has {channels} channel(s) but the "
                              f"preprocessing ({preprocessing.describe()}) makes {preprocessing.channels}")
    if preprocessing.crop is not None:
        net_hw = preprocessing.crop
        image_hw = tuple(int(v) for v in input_hw) if input_hw is not None else preprocessing.model_input_hw(net_hw)
        if image_hw[0] < net_hw[0] or image_hw[1] < net_hw[1]:
            raise ConversionError(f"{b.net.source}: a {net_hw[0]}x{net_hw[1]} crop needs images at least that "
                                  f"large, got {image_hw[0]}x{image_hw[1]}")
    else:
        image_hw = tuple(int(v) for v in input_hw) if input_hw is not None else preprocessing.model_input_hw((h, w))
    inputs = b.keras.Input(shape=(*image_hw, channels), name=b.unique(b.net.input_name))
    if preprocessing.is_vggface:
        layer = VGGFacePreprocess(name=b.unique("preprocess"))
    else:
        layer = CaffePreprocess(**preprocessing.layer_config(), name=b.unique("preprocess"))
    x = layer(inputs)
    if preprocessing.mean_image is not None:
        layer.mean_image.assign(preprocessing.mean_image.transpose(1, 2, 0))  # (C, H, W) -> NHWC
    return inputs, x


def _fused_relus(net) -> set[str]:
    """Names of in-place ReLUs that directly follow a Convolution/InnerProduct (fused into it)."""
    fused = set()
    layers = net.layers
    for i, layer in enumerate(layers):
        if layer.type not in WEIGHTED_TYPES:
            continue
        top = layer.tops[0]
        for nxt in layers[i + 1:]:
            if top in nxt.bottoms:
                in_place = nxt.type == "ReLU" and nxt.tops == [top]
                slope = float(first_value(nxt.params.get("negative_slope"), 0.0))
                if in_place and slope == 0.0:
                    fused.add(nxt.name)
                break
    return fused


def _outputs(net, blobs):
    """The blobs no later layer reads (Caffe's net outputs), in the order they were made."""
    consumed_after: dict[str, int] = {}
    for i, layer in enumerate(net.layers):
        for name in layer.bottoms:
            consumed_after[name] = i
    outputs, seen = [], set()
    for i, layer in enumerate(net.layers):
        if layer.type in INPUT_TYPES:
            continue
        top = layer.tops[0]
        if consumed_after.get(top, -1) <= i and top not in seen:
            seen.add(top)
            outputs.append(blobs[top])
    if not outputs:
        raise ConversionError(f"{net.source}: the network has no output blob")
    return outputs[0] if len(outputs) == 1 else outputs
