"""VGG-Face in Keras: the preprocessing layer, identity names, head replacement, layer groups.

Everything here works on any model built by ``helpers.caffe.build_keras_model`` (the real
VGG-Face and the miniature one alike), because those models keep Caffe's layer names.

Two custom layers live here and are registered for ``keras.saving.load_model`` under the
package name ``helpers`` (``import helpers`` imports this module):

- ``VGGFacePreprocess`` (layer ``preprocess``): RGB float 0-255 in, BGR minus the VGG-Face
  mean out, so that nothing outside the model ever subtracts means or swaps channels;
- ``NamedSoftmax`` (layer ``prob``): a softmax that carries the class names in its config,
  so a saved model prints identity names (or ``m``/``f``) without a side file.

Imports stay light (numpy and keras; the Caffe parser only inside ``vggface_netspec``).
"""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from .caffe.layers import CaffePreprocess  # importing it registers the Caffe layers a converted model uses
from .caffe.preprocessing import VGGFACE_MEAN_BGR  # the mean face colour (B, G, R) of VGG-Face's training set

# Layers of the VGG-16 topology, per block (Caffe names).
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)


@keras.saving.register_keras_serializable(package="helpers")
class VGGFacePreprocess(CaffePreprocess):
    """RGB float 0-255 (N, H, W, 3) -> BGR minus the per-channel mean, as Caffe's VGG-Face expects.

    VGG-Face's case of ``helpers.caffe.layers.CaffePreprocess`` (the layer other Caffe nets get,
    with their own mean, scale, crop); its config stays ``mean_bgr`` only, so models saved
    before that layer existed still load.
    """

    def __init__(self, mean_bgr: Sequence[float] = VGGFACE_MEAN_BGR, **kwargs):
        if len(mean_bgr) != 3:
            raise ValueError(f"mean_bgr must hold 3 values (B, G, R), got {mean_bgr!r}")
        super().__init__(channel_order="BGR", mean=mean_bgr, **kwargs)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        return {**config, "mean_bgr": list(self.mean_bgr)}


@keras.saving.register_keras_serializable(package="helpers")
class NamedSoftmax(keras.layers.Softmax):
    """A softmax whose config carries the names of its classes (in output order)."""

    def __init__(self, class_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.class_names = None if class_names is None else [str(n) for n in class_names]

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}



# ----------------------------------------------------------------------------- identities

def class_names(model: keras.Model) -> list[str] | None:
    """The class names the model's softmax carries (``prob`` first), or None."""
    candidates = [layer for layer in model.layers if isinstance(layer, NamedSoftmax)]
    candidates.sort(key=lambda layer: layer.name != "prob")
    for layer in candidates:
        if layer.class_names is not None:
            return list(layer.class_names)
    return None


def read_names(path) -> list[str]:
    """``names.txt``: one identity per line, in fc8's order (blank trailing lines ignored)."""
    from pathlib import Path

    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"{path}: empty identity name on line(s) {empty[:10]}")
    return names


def load_image(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as the model wants it: RGB float32 0-255, (H, W, 3), resized to ``size`` = (H, W)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32)


def top_identities(model: keras.Model, images, k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes per image, as ``(name, probability)`` pairs.

    ``images`` is RGB float 0-255, (N, H, W, 3) or a single (H, W, 3) image.
    Without class names in the model, the names are the class indices as strings.
    """
    batch = np.asarray(images, dtype="float32")
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"images must be RGB (N, H, W, 3) or (H, W, 3), got shape {batch.shape}")
    # a direct call skips predict()'s tracing, which dominates for the few images of a demo
    probs = keras.ops.convert_to_numpy(model(batch, training=False)) if len(batch) <= 32 else model.predict(batch, verbose=0)
    names = class_names(model) or [str(i) for i in range(probs.shape[-1])]
    if len(names) != probs.shape[-1]:
        raise ValueError(f"the model has {probs.shape[-1]} outputs but {len(names)} class names")
    k = min(int(k), probs.shape[-1])
    order = np.argsort(-probs, axis=-1)[:, :k]
    return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


# ----------------------------------------------------------------------------- structure

def layer_blocks(model: keras.Model) -> dict[str, list[str]]:
    """``block1`` .. ``block5`` and ``fc`` -> names of the layers with weights, in model order.

    Layers with weights that follow neither naming (``conv<b>_<i>``, ``fc*``) go to ``other``
    (present only when non-empty), so nothing is silently left out of a freezing plan.
    """
    blocks: dict[str, list[str]] = {f"block{b}": [] for b in range(1, 6)}
    blocks["fc"] = []
    other = []
    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        if name.startswith("conv") and "_" in name and name[4:name.index("_")].isdigit():
            key = f"block{name[4:name.index('_')]}"
            blocks.setdefault(key, []).append(name)
        elif name.startswith("fc"):
            blocks["fc"].append(name)
        else:
            other.append(name)
    if other:
        blocks["other"] = other
    return blocks


def replace_head(model: keras.Model, class_names: Sequence[str] = ("m", "f"), seed=None) -> keras.Model:
    """A new ``fc8`` (one output per class) and ``prob`` on top of ``drop7`` (or ``fc7``).

    Every other layer is SHARED with ``model`` (the Keras transfer-learning idiom: no copy of
    the 500 MB of weights), so training the new model also changes ``model``'s layers.
    """
    class_names = [str(n) for n in class_names]
    if len(class_names) < 2:
        raise ValueError(f"a classifier head needs at least 2 classes, got {class_names}")
    base = _layer_or_none(model, "drop7") or _layer_or_none(model, "fc7")
    if base is None:
        raise ValueError(f"model {model.name!r} has neither a 'drop7' nor an 'fc7' layer to put a head on")
    x = base.output
    x = keras.layers.Dense(
        len(class_names),
        name="fc8",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
    )(x)
    out = NamedSoftmax(class_names=class_names, name="prob")(x)
    return keras.Model(_inputs(model), out, name=f"{model.name}_{len(class_names)}way")


def feature_model(model: keras.Model, layers: str | Sequence[str]) -> keras.Model:
    """A model from the same input to the output(s) of the named layer(s) (weights shared).

    One name gives one output; a list of names gives a list of outputs in that order.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    known = [layer.name for layer in model.layers]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"model {model.name!r} has no layer(s) {unknown}; its layers are {known}")
    outputs = [model.get_layer(n).output for n in names]
    return keras.Model(_inputs(model), outputs[0] if isinstance(layers, str) else outputs,
                       name=f"{model.name}_features")


def _inputs(model):
    # a single input stays a single tensor, so calling the new model with an array does not warn
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _layer_or_none(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- topology

def vggface_netspec(
    conv_widths: Sequence[int] = (64, 128, 256, 512, 512),
    fc_widths: Sequence[int] = (4096, 4096),
    n_classes: int = 2622,
    input_hw: tuple[int, int] = (224, 224),
    name: str = "VGG_FACE_16_layers",
):
    """The VGG-Face deploy network as a ``caffe_format.NetSpec``, at any width.

    The same layers, names, in-place ReLUs and Dropouts as the published
    ``VGG_FACE_deploy.prototxt``; ``conv_widths`` gives each block's channels.
    """
    from .caffe.spec import LayerSpec, NetSpec

    if len(conv_widths) != 5 or len(fc_widths) != 2:
        raise ValueError(f"expected 5 conv widths and 2 fc widths, got {conv_widths} and {fc_widths}")
    layers = []

    def add(name, type_, bottom, top, params=None):
        layers.append(LayerSpec(name=name, type=type_, bottoms=[bottom], tops=[top],
                                params=dict(params or {}), line=0))

    blob = "data"
    for b, (width, n_convs) in enumerate(zip(conv_widths, _CONVS_PER_BLOCK), start=1):
        for i in range(1, n_convs + 1):
            conv = f"conv{b}_{i}"
            add(conv, "Convolution", blob, conv, {"num_output": int(width), "pad": 1, "kernel_size": 3})
            add(f"relu{b}_{i}", "ReLU", conv, conv)
            blob = conv
        add(f"pool{b}", "Pooling", blob, f"pool{b}", {"pool": "MAX", "kernel_size": 2, "stride": 2})
        blob = f"pool{b}"
    for j, width in zip((6, 7), fc_widths):
        fc = f"fc{j}"
        add(fc, "InnerProduct", blob, fc, {"num_output": int(width)})
        add(f"relu{j}", "ReLU", fc, fc)
        add(f"drop{j}", "Dropout", fc, fc, {"dropout_ratio": 0.5})
        blob = fc
    add("fc8", "InnerProduct", blob, "fc8", {"num_output": int(n_classes)})
    add("prob", "Softmax", "fc8", "prob")
    h, w = (int(v) for v in input_hw)
    return NetSpec(name=name, input_name="data", input_shape=(1, 3, h, w), layers=layers,
                   skipped=[], source="<vggface_netspec>")
