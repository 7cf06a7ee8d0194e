"""Three ways to ask a classifier where it looks: Grad-CAM, occlusion, integrated gradients.

Every method answers the same question about the same number: the **class margin**
``z_c - logsumexp(z_k, k != c)`` of the explained class ``c``, computed from the logits (``fc8``,
before the softmax). With two classes it is ``z_c - z_other``, the evidence for ``c`` against
the other class; unlike the probability it does not saturate on faces the model is sure about.
Each returns one map per image at the input's resolution, ``(N, H, W)`` float32: positive
where the region supports class ``c``.

- ``grad_cam``: gradient of the margin with respect to a convolutional layer's activations
  (``conv5_3``), averaged over space to one weight per channel, the weighted sum of the
  channels, ReLU, upsampled (Selvaraju et al. 2017). As coarse as the layer: 1/16 of the input.
- ``occlusion``: cover a square of the image with the network's "grey" and measure how much the
  margin drops; each pixel gets the mean drop of the squares that covered it (Zeiler & Fergus
  2014). No gradient at all, so it works on any model; costs one forward pass per position.
- ``integrated_gradients``: average the gradient along the straight path from a baseline image
  to the image and multiply by (image - baseline) (Sundararajan et al. 2017). Per pixel; the
  attributions add up to ``margin(image) - margin(baseline)`` (completeness), which the tests check.

The "grey" of occlusion and the baseline of integrated gradients are the same: VGG-Face's mean
colour, which the model's preprocessing maps to exactly zero, so a grey region tells the first
convolution nothing.

Everything is written with ``keras.ops`` and Keras models except two small functions side by
side: ``gradient_function``, the only place that asks the backend (TensorFlow in this course)
for automatic differentiation, and ``compiled_forward``, a forward pass compiled once per model
(``model.predict`` on any other backend).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

from ..vggface import VGGFACE_MEAN_BGR

# VGG-Face's mean colour in RGB: zero after the model's own preprocessing.
MEAN_RGB = tuple(VGGFACE_MEAN_BGR[::-1])
GRAD_CAM_LAYER = "conv5_3"
LOGITS_LAYER = "fc8"

METHODS = {  # key -> how figures and tables name it
    "grad_cam": "Grad-CAM",
    "occlusion": "occlusion",
    "integrated_gradients": "integrated gradients",
}
SIGNED = {"grad_cam": False, "occlusion": True, "integrated_gradients": True}


# ----------------------------------------------------------------------------- the one gradient call

def gradient_function(score_fn: Callable) -> Callable:
    """A function ``(x, *args) -> (score_fn(x, *args), d sum(score_fn(x, *args)) / dx)``, numpy out.

    ``score_fn`` maps a batch ``x`` (N, ...) to one score per row (N,); rows do not interact
    (the models run in inference mode), so row i of the gradient is d score_i / d x_i.
    This is the only place that asks the backend for automatic differentiation: everything else
    in the course's explanation code is ``keras.ops``. With TensorFlow the gradient is compiled
    once (``tf.function``; about twice as fast as eager on the 2-core CPU) for any batch size and
    reused for every batch. Another backend needs its own branch here (``jax.vjp``, ``torch.autograd.grad``).
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise NotImplementedError(
            f"helpers.explain.gradient_function knows the TensorFlow backend only (this is {backend!r}); "
            "add the backend's gradient call in this one function")
    import tensorflow as tf

    compiled = []  # traced once, at the first call, for any batch size (the batch dimension is None)

    def scores_and_gradient(x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores = score_fn(x, *args)
        return scores, tape.gradient(scores, x)

    def run(x, *args):
        tensors = [ops.convert_to_tensor(x, "float32"), *[ops.convert_to_tensor(a) for a in args]]
        if not compiled:
            signature = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in tensors]
            compiled.append(tf.function(scores_and_gradient, input_signature=signature))
        scores, grads = compiled[0](*tensors)
        if grads is None:
            raise ValueError("the score does not depend on the input: nothing to differentiate")
        return ops.convert_to_numpy(scores), ops.convert_to_numpy(grads)

    return run


def compiled_forward(model: keras.Model) -> Callable:
    """``x -> model(x, training=False)`` as a numpy array (float32), compiled once for any batch
    size with TensorFlow (``model.predict`` would trace again for every new batch shape and every
    model, and warn about it); with another backend, ``model.predict``."""
    if keras.backend.backend() != "tensorflow":
        return lambda x: np.asarray(model.predict(x, verbose=0), dtype="float32")
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), "float32")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda x: np.asarray(ops.convert_to_numpy(fn(ops.convert_to_tensor(x, "float32"))), dtype="float32")


# ----------------------------------------------------------------------------- shared pieces

def class_margin(logits, classes):
    """``z_c - logsumexp(z_k, k != c)`` per row: the evidence for class ``c`` against the others."""
    logits = ops.cast(logits, "float32")
    n_classes = logits.shape[-1]
    if n_classes is None or n_classes < 2:
        raise ValueError(f"a class margin needs at least 2 logits, got shape {tuple(logits.shape)}")
    onehot = ops.one_hot(ops.convert_to_tensor(classes, dtype="int32"), n_classes, dtype="float32")
    own = ops.sum(logits * onehot, axis=-1)
    others = ops.logsumexp(ops.where(onehot > 0, float("-inf"), logits), axis=-1)
    return own - others


def _layer(model: keras.Model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer {name!r}; its layers are "
                         f"{[layer.name for layer in model.layers]}") from None


def logits_model(model: keras.Model, logits: str = LOGITS_LAYER) -> keras.Model:
    """The same network ending at its logits layer (weights shared)."""
    return keras.Model(model.inputs[0], _layer(model, logits).output, name=f"{model.name}_logits")


def split_model(model: keras.Model, layer: str, logits: str = LOGITS_LAYER) -> tuple[keras.Model, keras.Model]:
    """``(input -> layer, layer -> logits)``: two models sharing ``model``'s weights.

    The second takes the layer's activations as its input, so that a gradient with respect to
    them is a gradient with respect to a model input (``gradient_function``'s one form).
    """
    split = _layer(model, layer)
    if len(split.output.shape) != 4:
        raise ValueError(f"layer {layer!r} of {model.name!r} outputs shape {tuple(split.output.shape)}; "
                         "Grad-CAM needs a convolutional layer's (N, H, W, C) maps")
    features = keras.Model(model.inputs[0], split.output, name=f"{model.name}_to_{layer}")
    try:
        tail = keras.Model(split.output, _layer(model, logits).output, name=f"{model.name}_{layer}_to_{logits}")
    except ValueError as err:
        raise ValueError(f"{model.name!r}: {logits!r} must depend on the image only through {layer!r} "
                         f"(a chain like VGG's); Keras says: {err}") from err
    return features, tail


class _Parts:
    """What the methods build from one model, built once so that compiled functions trace once:
    the logits model, the models split at a layer, and the gradients of the class margin."""

    def __init__(self, model: keras.Model, logits: str):
        self.model = model  # kept, so the cache key (its id) cannot be reused while cached
        self.logits_name = logits
        self.logits = logits_model(model, logits)
        self.forward = compiled_forward(self.logits)
        self.input_gradient = gradient_function(lambda x, c: class_margin(self.logits(x, training=False), c))
        self._splits: dict = {}

    def split(self, layer: str):
        if layer not in self._splits:
            features, tail = split_model(self.model, layer, self.logits_name)
            grad = gradient_function(lambda a, c: class_margin(tail(a, training=False), c))
            self._splits[layer] = (compiled_forward(features), tuple(features.output.shape[1:3]), grad)
        return self._splits[layer]


_PARTS: "OrderedDict[tuple, _Parts]" = OrderedDict()
_PARTS_KEPT = 4  # models whose parts are kept (least recently used dropped first): a full-size
#               VGG-Face holds 0.6 GB, and notebook 07 explains at most three models at a time


def _parts(model: keras.Model, logits: str) -> _Parts:
    key = (id(model), logits)
    if key in _PARTS and _PARTS[key].model is model:
        _PARTS.move_to_end(key)
        return _PARTS[key]
    _PARTS[key] = _Parts(model, logits)
    while len(_PARTS) > _PARTS_KEPT:
        _PARTS.popitem(last=False)
    return _PARTS[key]


def _batched(forward: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([forward(x[s:s + int(batch_size)]) for s in range(0, len(x), int(batch_size))])


def _logits(parts: _Parts, x: np.ndarray, batch_size: int) -> np.ndarray:
    return _batched(parts.forward, x, batch_size)


def _margins_np(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return ops.convert_to_numpy(class_margin(logits, classes))


def _images(images) -> np.ndarray:
    x = np.asarray(images, dtype="float32")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be RGB 0-255, (N, H, W, 3) or (H, W, 3); got shape {x.shape}")
    return x


def margins(model: keras.Model, images, classes, *, logits: str = LOGITS_LAYER, batch_size: int = 256) -> np.ndarray:
    """The class margin of every image (N,)."""
    x = _images(images)
    c = np.asarray(classes, dtype="int32").reshape(-1)
    if len(c) != len(x):
        raise ValueError(f"{len(c)} classes given for {len(x)} images")
    return _margins_np(_logits(_parts(model, logits), x, batch_size), c) if len(x) else np.zeros(0, "float32")


def predicted_classes(model: keras.Model, images, *, logits: str = LOGITS_LAYER, batch_size: int = 256) -> np.ndarray:
    """The class each image is assigned (argmax of the logits), (N,) int."""
    x = _images(images)
    if not len(x):
        return np.zeros(0, "int32")
    return _logits(_parts(model, logits), x, batch_size).argmax(-1).astype("int32")


def _classes(model, x, classes, logits) -> np.ndarray:
    if classes is None:
        return predicted_classes(model, x, logits=logits)
    c = np.asarray(classes, dtype="int64").reshape(-1)
    if len(c) != len(x):
        raise ValueError(f"{len(c)} classes given for {len(x)} images")
    n_out = _layer(model, logits).output.shape[-1]
    if len(c) and (c.min() < 0 or c.max() >= n_out):
        raise ValueError(f"classes must lie in 0..{n_out - 1} ({logits!r} has {n_out} outputs), "
                         f"got {c.min()}..{c.max()}")
    return c.astype("int32")


def _fill(fill, x) -> np.ndarray:
    """A colour (3,), an image (H, W, 3) or one image per input (N, H, W, 3), broadcast to ``x``."""
    f = np.asarray(fill, dtype="float32")
    try:
        return np.broadcast_to(f, x.shape) if f.ndim != 1 else np.broadcast_to(f.reshape(1, 1, 1, 3), x.shape)
    except ValueError:
        raise ValueError(f"a baseline/fill must be a colour (3,), an image {x.shape[1:]} or one image per "
                         f"input {x.shape}; got shape {f.shape}") from None


# ----------------------------------------------------------------------------- Grad-CAM

def grad_cam(model: keras.Model, images, classes=None, *, layer: str = GRAD_CAM_LAYER,
             logits: str = LOGITS_LAYER, batch_size: int = 64, upsample: bool = True) -> np.ndarray:
    """Grad-CAM maps of ``classes`` (default: the predicted ones), (N, H, W), non-negative.

    ``upsample=False`` returns the layer's own resolution (N, h, w).
    """
    x = _images(images)
    c = _classes(model, x, classes, logits)
    features, feature_hw, margin_gradient = _parts(model, logits).split(layer)
    maps = []
    for s in range(0, len(x), int(batch_size)):
        acts = features(x[s:s + batch_size])
        _, grads = margin_gradient(acts, c[s:s + batch_size])
        weights = ops.mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel: alpha_k
        maps.append(ops.convert_to_numpy(ops.relu(ops.sum(weights * acts, axis=-1))))
    cams = np.concatenate(maps) if maps else np.zeros((0, *feature_hw), "float32")
    if not upsample or not len(cams):
        return cams.astype("float32")
    h, w = x.shape[1:3]
    up = ops.image.resize(cams[..., None], (h, w), interpolation="bilinear")
    return np.maximum(ops.convert_to_numpy(up)[..., 0], 0.0).astype("float32")


# ----------------------------------------------------------------------------- occlusion

def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top (or left) edges of the patches along one side; the last patch touches the far edge,
    so every pixel is covered at least once."""
    if not 1 <= patch <= size or stride < 1:
        raise ValueError(f"patch {patch} must lie in 1..{size} and stride {stride} must be >= 1")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion(model: keras.Model, images, classes=None, *, patch: int | None = None, stride: int | None = None,
              fill=MEAN_RGB, logits: str = LOGITS_LAYER, batch_size: int = 256) -> np.ndarray:
    """Occlusion maps, (N, H, W): the mean drop of the class margin when a ``patch`` x ``patch``
    square (default a quarter of the image side) moved by ``stride`` (default a quarter of the
    patch) covers the pixel with ``fill`` (the network's grey). Positive: the region supported
    the class; negative: hiding it made the class more likely.
    """
    x = _images(images)
    c = _classes(model, x, classes, logits)
    n, h, w, _ = x.shape
    patch = int(patch or max(1, min(h, w) // 4))
    stride = int(stride or max(1, patch // 4))
    squares = [(t, l) for t in occlusion_positions(h, patch, stride) for l in occlusion_positions(w, patch, stride)]
    coverage = np.zeros((h, w), "float32")
    for t, l in squares:
        coverage[t:t + patch, l:l + patch] += 1
    fill = _fill(fill, x)
    parts = _parts(model, logits)
    base = _margins_np(_logits(parts, x, batch_size), c)
    maps = np.zeros((n, h, w), "float32")
    per_chunk = max(1, int(batch_size) // len(squares))  # images whose occluded copies make one batch
    for s in range(0, n, per_chunk):
        xb, fb = x[s:s + per_chunk], fill[s:s + per_chunk]
        copies = np.repeat(xb[:, None], len(squares), axis=1)  # (m, P, H, W, 3)
        for p, (t, l) in enumerate(squares):
            copies[:, p, t:t + patch, l:l + patch] = fb[:, t:t + patch, l:l + patch]
        flat = copies.reshape(-1, h, w, 3)
        cb = np.repeat(c[s:s + per_chunk], len(squares))
        scores = _margins_np(_logits(parts, flat, batch_size), cb).reshape(len(xb), len(squares))
        drops = base[s:s + per_chunk, None] - scores
        for p, (t, l) in enumerate(squares):
            maps[s:s + per_chunk, t:t + patch, l:l + patch] += drops[:, p, None, None]
    return maps / coverage


# ----------------------------------------------------------------------------- integrated gradients

def integrated_gradients(model: keras.Model, images, classes=None, *, steps: int = 32, baseline=MEAN_RGB,
                         logits: str = LOGITS_LAYER, batch_size: int = 256, per_channel: bool = False) -> np.ndarray:
    """Integrated gradients from ``baseline`` (a colour, an image, or one per input; default the
    network's grey), ``steps`` points of the midpoint rule, summed over the colour channels
    (N, H, W); ``per_channel=True`` keeps them (N, H, W, 3). The attributions of an image add
    up to ``margin(image) - margin(baseline)`` up to the integration error.
    """
    x = _images(images)
    c = _classes(model, x, classes, logits)
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base = _fill(baseline, x)
    alphas = ((np.arange(steps, dtype="float32") + 0.5) / steps).reshape(1, steps, 1, 1, 1)
    margin_gradient = _parts(model, logits).input_gradient
    n, h, w, _ = x.shape
    out = np.zeros((n, h, w, 3), "float32")
    per_chunk = max(1, int(batch_size) // steps)
    for s in range(0, n, per_chunk):
        xb, bb = x[s:s + per_chunk], base[s:s + per_chunk]
        path = (bb[:, None] + alphas * (xb - bb)[:, None]).reshape(-1, h, w, 3)
        cb = np.repeat(c[s:s + per_chunk], steps)
        _, grads = margin_gradient(path, cb)
        out[s:s + per_chunk] = (xb - bb) * grads.reshape(len(xb), steps, h, w, 3).mean(axis=1)
    return out if per_channel else out.sum(axis=-1)


# ----------------------------------------------------------------------------- one entry point

def explain(model: keras.Model, images, method: str, classes=None, **settings) -> np.ndarray:
    """``METHODS[method]``'s maps of ``classes`` (default: the predicted classes), (N, H, W)."""
    functions = {"grad_cam": grad_cam, "occlusion": occlusion, "integrated_gradients": integrated_gradients}
    if method not in functions:
        raise ValueError(f"unknown method {method!r}; choose one of {list(functions)}")
    return functions[method](model, images, classes, **settings)


def normalise(maps) -> np.ndarray:
    """Each map divided by its largest absolute value (a map of zeros stays zeros), for display
    and for averaging maps of different faces."""
    m = np.asarray(maps, dtype="float32")
    scale = np.abs(m).reshape(len(m), -1).max(axis=1) if len(m) else np.zeros(0, "float32")
    return m / np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (m.ndim - 1)))


def resize_maps(maps, size: Sequence[int]) -> np.ndarray:
    """Maps (N, h, w) resized bilinearly to ``size`` = (H, W) (e.g. to the masks' resolution)."""
    m = np.asarray(maps, dtype="float32")
    if tuple(m.shape[1:3]) == tuple(size):
        return m
    return ops.convert_to_numpy(ops.image.resize(m[..., None], tuple(int(v) for v in size),
                                                 interpolation="bilinear"))[..., 0]
