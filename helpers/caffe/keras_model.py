"""Caffe layers -> Keras layers: ``build_keras_model`` builds a functional Keras model from a
parsed prototxt, keeping Caffe's layer names.

The model takes RGB float 0-255 (N, H, W, 3) and does its own VGG-Face preprocessing (first
layer ``preprocess``). In-place ReLUs are fused into the layer before them; Caffe's ceil-mode
pooling is reproduced exactly (with -inf padding where Keras' own modes disagree).
"""
from __future__ import annotations

from typing import Sequence


from .spec import ConversionError, INPUT_TYPES, WEIGHTED_TYPES, caffe_pool_size, first_value, keras_pool_size, param_pair, where

SUPPORTED_TYPES = ("Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout", "Softmax", "Flatten")

def unsupported_layers(net) -> list[str]:
    """``"name (type, line N)"`` for every layer this converter cannot build."""
    return [f"{l.name} ({l.type}, line {l.line})" for l in net.layers
            if l.type not in SUPPORTED_TYPES and l.type not in INPUT_TYPES]


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


def build_keras_model(net, input_hw: tuple[int, int] | None = None,
                      class_names: Sequence[str] | None = None, *, random_init: bool = True):
    """A functional Keras model of ``net`` with Caffe's layer names, randomly initialised.

    ``input_hw`` overrides the prototxt's (H, W). ``class_names`` go into the final
    softmax's config (see ``helpers.vggface.class_names``). ``random_init=False`` starts every
    weight at zero, for weights that are loaded next: on the full-size model that saves
    several seconds and about 1 GB of memory that random initialisation leaves behind.
    """
    import keras

    from ..vggface import NamedSoftmax, VGGFacePreprocess
    from .layers import ConstantPad2D

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
        if layer.type in INPUT_TYPES or layer.name in fused:
            continue
        missing = [b for b in layer.bottoms if b not in blobs]
        if missing:
            raise ConversionError(f"{where(net, layer)}: input blob(s) {missing} are produced by no earlier layer")
        if len(layer.bottoms) != 1 or len(layer.tops) != 1:
            raise ConversionError(f"{where(net, layer)}: expected one bottom and one top, got "
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
            axis = int(first_value(p.get("axis"), 1))
            if axis != 1:
                raise ConversionError(f"{where(net, layer)}: only axis 1 is supported, got {axis}")
            x = keras.layers.Dense(
                int(first_value(p.get("num_output"))), name=name,
                activation="relu" if _relu_follows(net, layer, fused) else None,
                use_bias=bool(first_value(p.get("bias_term"), True)), kernel_initializer=init)(x)
        elif layer.type == "ReLU":
            x = keras.layers.ReLU(negative_slope=float(first_value(p.get("negative_slope"), 0.0)), name=name)(x)
        elif layer.type == "Pooling":
            x = _pool(keras, ConstantPad2D, net, layer, name, x, unique)
        elif layer.type == "Dropout":
            x = keras.layers.Dropout(float(first_value(p.get("dropout_ratio"), 0.5)), name=name)(x)
        elif layer.type == "Softmax":
            x = NamedSoftmax(name=name)(x)
        elif layer.type == "Flatten":
            x = keras.layers.Flatten(name=name)(x)
        blobs[layer.tops[0]] = x

    outputs = []
    produced = [(i, l.tops[0]) for i, l in enumerate(net.layers) if l.type not in INPUT_TYPES]
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


def _relu_follows(net, layer, fused) -> bool:
    top = layer.tops[0]
    idx = net.layers.index(layer)
    for nxt in net.layers[idx + 1:]:
        if top in nxt.bottoms:
            return nxt.name in fused
    return False


def _conv(keras, net, layer, name, x, relu, unique, init):
    p = layer.params
    group = int(first_value(p.get("group"), 1))
    if group != 1:
        raise ConversionError(f"{where(net, layer)}: grouped convolution (group={group}) is not supported")
    k = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    if min(k) <= 0:
        raise ConversionError(f"{where(net, layer)}: kernel_size is missing")
    s = param_pair(p, "stride", "stride_h", "stride_w", 1)
    pad = param_pair(p, "pad", "pad_h", "pad_w", 0)
    d = param_pair(p, "dilation", "dilation_h", "dilation_w", 1)
    _, h, w, _ = x.shape
    out_h = (h + 2 * pad[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    out_w = (w + 2 * pad[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise ConversionError(f"{where(net, layer)}: input {h}x{w} is too small for kernel {k}, pad {pad}")
    same = s == (1, 1) and all(2 * pad[i] == d[i] * (k[i] - 1) for i in (0, 1))
    padding = "valid"
    if pad != (0, 0):
        if same:
            padding = "same"
        else:
            x = keras.layers.ZeroPadding2D((pad, pad), name=unique(f"{layer.name}_pad"))(x)
    return keras.layers.Conv2D(
        int(first_value(p.get("num_output"))), k, strides=s, padding=padding, dilation_rate=d,
        activation="relu" if relu else None, use_bias=bool(first_value(p.get("bias_term"), True)),
        kernel_initializer=init, name=name)(x)


def _pool(keras, ConstantPad2D, net, layer, name, x, unique):
    p = layer.params
    method = str(first_value(p.get("pool"), "MAX")).upper()
    if method not in ("MAX", "AVE"):
        raise ConversionError(f"{where(net, layer)}: pooling method {method} is not supported (MAX, AVE)")
    if bool(first_value(p.get("global_pooling"), False)):
        cls = keras.layers.GlobalMaxPooling2D if method == "MAX" else keras.layers.GlobalAveragePooling2D
        return cls(keepdims=True, name=name)(x)
    k = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    if min(k) <= 0:
        raise ConversionError(f"{where(net, layer)}: kernel_size is missing")
    s = param_pair(p, "stride", "stride_h", "stride_w", 1)
    pad = param_pair(p, "pad", "pad_h", "pad_w", 0)
    _, h, w, _ = x.shape
    want = (caffe_pool_size(h, k[0], s[0], pad[0]), caffe_pool_size(w, k[1], s[1], pad[1]))
    if min(want) <= 0:
        raise ConversionError(f"{where(net, layer)}: input {h}x{w} is too small for pooling kernel {k}")
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
        raise ConversionError(f"{where(net, layer)}: average pooling whose last window runs past the "
                              f"padding (input {h}x{w}, kernel {k}, stride {s}, pad {pad}) is not supported")
    value = float("-inf") if method == "MAX" else 0.0
    x = ConstantPad2D(((pad[0], after[0]), (pad[1], after[1])), value=value,
                      name=unique(f"{layer.name}_pad"))(x)
    return cls(k, strides=s, padding="valid", name=name)(x)


