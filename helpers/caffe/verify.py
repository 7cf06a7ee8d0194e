"""Is a converted model right? The same Caffe blobs run by an independent engine.

OpenCV's Caffe importer when the installed ``cv2`` has one (OpenCV 4.x; OpenCV 5, Colab's,
dropped it), otherwise ``reference_forward``, a plain numpy forward pass written from Caffe's
definitions that shares no code with the Keras model (``reference_engine`` says which;
``independent_forward`` runs it). The reference gets inputs preprocessed the Caffe way (the
net's channel order, minus its mean, channels first), computed here without the model.
``trap_errors`` shows what each classic conversion mistake does to the outputs (notebook 01).
"""
from __future__ import annotations


import numpy as np

from .spec import (ConversionError, INPUT_TYPES, WEIGHTED_TYPES, caffe_pool_size, first_value, keras_layer_name,
                   param_pair, where)

VERIFIED_BLOBS = ("pool5", "fc7", "fc8")
# What reference_forward implements; anything else it refuses, naming the layer.
REFERENCE_TYPES = ("Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax", "Flatten", "Dropout", "LRN", "Concat")


def caffe_input(rgb, mean_bgr=None, bgr: bool = True, preprocessing=None) -> np.ndarray:
    """Images as the model takes them -> the Caffe input blob (N, C, H, W) float32.

    With ``preprocessing`` (a ``helpers.caffe.preprocessing.Preprocessing``) its recipe;
    otherwise VGG-Face's: BGR (``bgr=False`` keeps RGB) minus ``mean_bgr`` (default VGG-Face's).
    """
    from .preprocessing import VGGFACE_MEAN_BGR, Preprocessing

    if preprocessing is None:
        preprocessing = Preprocessing(channel_order="BGR" if bgr else "RGB",
                                      mean=VGGFACE_MEAN_BGR if mean_bgr is None else mean_bgr)
    return preprocessing.to_blob(rgb)


def reference_forward(net, blobs: dict, data: np.ndarray, outputs=VERIFIED_BLOBS) -> dict[str, np.ndarray]:
    """Caffe's forward pass in plain numpy (NCHW, float64): the blobs named in ``outputs``.

    Written from Caffe's definitions (cross-correlation with groups, ceil-mode pooling with
    Caffe's average divisor, LRN as ``lrn_layer.cpp`` computes it, C*H*W flattening), sharing
    no code with the Keras model. A layer it does not implement (or a dilated convolution) is
    refused before anything runs, naming the layer: an unchecked layer never passes as checked.
    """
    refused = [f"{l.name} ({l.type}, line {l.line})" for l in net.layers
               if l.type not in INPUT_TYPES and l.type not in REFERENCE_TYPES]
    refused += [f"{l.name} (Convolution with dilation {d}, line {l.line})" for l in net.layers
                if l.type == "Convolution"
                and (d := param_pair(l.params, "dilation", "dilation_h", "dilation_w", 1)) != (1, 1)]
    if refused:
        raise ConversionError(f"{net.source}: the numpy reference cannot check {', '.join(refused)}; "
                              "verify this net with OpenCV's Caffe importer instead")
    values = {net.input_name: np.asarray(data, dtype=np.float64)}
    for layer in net.layers:
        if layer.type in INPUT_TYPES:
            continue
        x, p = values[layer.bottoms[0]], layer.params
        if layer.type == "Convolution":
            x = _reference_conv(x, p, [np.asarray(a, np.float64) for a in blobs[layer.name].blobs])
        elif layer.type == "ReLU":
            slope = float(first_value(p.get("negative_slope"), 0.0))
            x = np.where(x > 0, x, slope * x)
        elif layer.type == "Pooling":
            x = _reference_pool(x, p)
        elif layer.type == "InnerProduct":
            w, *b = [np.asarray(a, np.float64) for a in blobs[layer.name].blobs]
            o = int(first_value(p.get("num_output")))
            x = x.reshape(len(x), -1) @ w.reshape(o, -1).T
            if b:
                x = x + b[0].reshape(1, o)
        elif layer.type == "Softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            x = e / e.sum(axis=1, keepdims=True)
        elif layer.type == "Flatten":
            x = x.reshape(len(x), -1)
        elif layer.type == "LRN":
            x = _reference_lrn(x, p)
        elif layer.type == "Concat":
            axis = int(first_value(p.get("axis"), first_value(p.get("concat_dim"), 1)))
            x = np.concatenate([values[name] for name in layer.bottoms], axis=axis)
        # Dropout is the identity at test time
        values[layer.tops[0]] = x
    return {name: values[name] for name in outputs}


def _reference_conv(x: np.ndarray, p: dict, blobs: list) -> np.ndarray:
    w, *b = blobs
    o, group = int(first_value(p.get("num_output"))), int(first_value(p.get("group"), 1))
    kh, kw = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
    sh, sw = param_pair(p, "stride", "stride_h", "stride_w", 1)
    ph, pw = param_pair(p, "pad", "pad_h", "pad_w", 0)
    w = w.reshape(o, -1, kh, kw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    cin, cout = x.shape[1] // group, o // group  # group g: inputs g*cin.., outputs g*cout..
    out = np.concatenate([np.einsum("ncijhw,ochw->noij", win[:, g * cin:(g + 1) * cin],
                                    w[g * cout:(g + 1) * cout], optimize=True) for g in range(group)], axis=1)
    return out + b[0].reshape(1, o, 1, 1) if b else out


def _reference_lrn(x: np.ndarray, p: dict) -> np.ndarray:
    n = int(first_value(p.get("local_size"), 5))
    alpha, beta = float(first_value(p.get("alpha"), 1.0)), float(first_value(p.get("beta"), 0.75))
    k, pad = float(first_value(p.get("k"), 1.0)), (n - 1) // 2
    sq = x ** 2
    if str(first_value(p.get("norm_region"), "ACROSS_CHANNELS")).upper() == "ACROSS_CHANNELS":
        padded = np.pad(sq, ((0, 0), (pad, pad), (0, 0), (0, 0)))
        total = sum(padded[:, i:i + x.shape[1]] for i in range(n))
        return x * (k + alpha / n * total) ** -beta
    padded = np.pad(sq, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    total = np.lib.stride_tricks.sliding_window_view(padded, (n, n), axis=(2, 3)).sum(axis=(-2, -1))
    return x * (1 + alpha / (n * n) * total) ** -beta  # WITHIN_CHANNEL: Caffe's Power layer shifts by 1, not k


def _reference_pool(x: np.ndarray, p: dict) -> np.ndarray:
    n, c, h, w = x.shape
    method = str(first_value(p.get("pool"), "MAX")).upper()
    if bool(first_value(p.get("global_pooling"), False)):
        return x.max(axis=(2, 3), keepdims=True) if method == "MAX" else x.mean(axis=(2, 3), keepdims=True)
    (kh, kw), (sh, sw) = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0), param_pair(p, "stride", "stride_h", "stride_w", 1)
    ph, pw = param_pair(p, "pad", "pad_h", "pad_w", 0)
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


def opencv_has_caffe(cv2_module=None) -> bool:
    """Whether this OpenCV can read Caffe files (4.x can; OpenCV 5 dropped the importer)."""
    if cv2_module is None:
        try:
            import cv2 as cv2_module
        except ImportError:
            return False
    return callable(getattr(getattr(cv2_module, "dnn", None), "readNetFromCaffe", None))


def reference_engine() -> str:
    """The independent engine available here, as a notebook prints it."""
    if opencv_has_caffe():
        import cv2

        return f"OpenCV {cv2.__version__} (its Caffe importer)"
    return "the numpy reference forward pass (helpers.caffe.verify.reference_forward)"


def independent_forward(prototxt, caffemodel, net, blobs, data, outputs=VERIFIED_BLOBS):
    """``(outputs, engine)``: the blobs computed by OpenCV's Caffe importer when this ``cv2`` has
    one, else by ``reference_forward``; ``engine`` says which (``reference_engine()``)."""
    if opencv_has_caffe():
        return opencv_forward(prototxt, caffemodel, net, data, outputs), reference_engine()
    return reference_forward(net, blobs, data, outputs), reference_engine()


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


def keras_forward(model, images, outputs=VERIFIED_BLOBS, net=None) -> dict[str, np.ndarray]:
    """The model's values of the named blobs; spatial ones transposed to Caffe's NCHW.

    Without ``net`` the names are Keras layer names (VGG-Face's blobs are named like their
    layers); with it, Caffe blob names, mapped to the layer that last writes each.
    """
    from ..vggface import feature_model
    from .keras_model import keras_layer_for_blob

    names = [keras_layer_for_blob(net, b) for b in outputs] if net is not None else list(outputs)
    values = feature_model(model, names)(np.asarray(images, dtype=np.float32), training=False)
    if len(names) == 1 and not isinstance(values, (list, tuple)):
        values = [values]  # a one-output model returns its tensor alone
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
    saved = {keras_layer_name(l.name): model.get_layer(keras_layer_name(l.name)).get_weights()
             for l in net.layers if l.type in WEIGHTED_TYPES}
    try:
        first_fc = next(l for l in net.layers if l.type == "InnerProduct")
        w, *b = blobs[first_fc.name].blobs
        out = int(first_value(first_fc.params.get("num_output")))
        fc = model.get_layer(keras_layer_name(first_fc.name))
        fc.set_weights([np.asarray(w).reshape(out, -1).T, *[np.reshape(x, -1) for x in b]])
        errors["flatten_order"] = relative_errors(reference, keras_forward(model, images))
        fc.set_weights(saved[fc.name])
        for layer in net.layers:
            if layer.type == "Convolution":
                k = model.get_layer(keras_layer_name(layer.name))
                w, *b = blobs[layer.name].blobs
                k.set_weights([np.asarray(w).reshape(k.weights[0].shape), *[np.reshape(x, -1) for x in b]])
        errors["kernel_reshaped"] = relative_errors(reference, keras_forward(model, images))
    finally:
        for name, weights in saved.items():
            model.get_layer(name).set_weights(weights)
    errors["rgb_not_bgr"] = relative_errors(reference, keras_forward(model, np.asarray(images)[..., ::-1]))
    return errors


