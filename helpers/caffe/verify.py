"""Is a converted model right? The same Caffe blobs run by an independent engine.

OpenCV's Caffe importer when it is installed (OpenCV 4.x; OpenCV 5 dropped it), otherwise
``reference_forward``, a plain numpy forward pass written from Caffe's definitions that shares
no code with the Keras model. The reference gets inputs preprocessed the Caffe way (BGR, minus
the mean, NCHW) computed here without the model. ``trap_errors`` shows what each classic
conversion mistake does to the outputs (notebook 01).
"""
from __future__ import annotations


import numpy as np

from .spec import ConversionError, INPUT_TYPES, WEIGHTED_TYPES, caffe_pool_size, first_value, param_pair, where

# ----------------------------------------------------------------------------- verification
# An independent check of a converted model: the same Caffe blobs run by a reference engine
# (OpenCV's Caffe importer when installed, else the numpy forward pass below) on inputs
# preprocessed the Caffe way (BGR, minus the mean, NCHW), computed here without the model.

VERIFIED_BLOBS = ("pool5", "fc7", "fc8")


def caffe_input(rgb, mean_bgr=None, bgr: bool = True) -> np.ndarray:
    """RGB 0-255 (N, H, W, 3) -> the Caffe input blob: BGR minus the mean, (N, 3, H, W) float32."""
    from ..vggface import VGGFACE_MEAN_BGR

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
        if layer.type in INPUT_TYPES:
            continue
        x, p = values[layer.bottoms[0]], layer.params
        if layer.type == "Convolution":
            w, *b = [np.asarray(a, np.float64) for a in blobs[layer.name].blobs]
            o = int(first_value(p.get("num_output")))
            kh, kw = param_pair(p, "kernel_size", "kernel_h", "kernel_w", 0)
            w = w.reshape(o, -1, kh, kw)
            sh, sw = param_pair(p, "stride", "stride_h", "stride_w", 1)
            ph, pw = param_pair(p, "pad", "pad_h", "pad_w", 0)
            xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
            x = np.einsum("ncijhw,ochw->noij", win, w, optimize=True)
            if b:
                x = x + b[0].reshape(1, o, 1, 1)
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
        elif layer.type != "Dropout":  # Dropout is the identity at test time
            raise ConversionError(f"{where(net, layer)}: the reference forward pass does not implement it")
        values[layer.tops[0]] = x
    return {name: values[name] for name in outputs}


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
    from ..vggface import feature_model

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
    saved = {l.name: model.get_layer(l.name).get_weights() for l in net.layers if l.type in WEIGHTED_TYPES}
    try:
        first_fc = next(l for l in net.layers if l.type == "InnerProduct")
        w, *b = blobs[first_fc.name].blobs
        out = int(first_value(first_fc.params.get("num_output")))
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


