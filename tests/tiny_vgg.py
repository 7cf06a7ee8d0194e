"""Test support: tiny VGG-Face-shaped networks, as Caffe files or as Keras models, seeded.

The topology and layer names are VGG-Face's exactly (``conv1_1`` ... ``conv5_3`` with their
ReLUs applied in place, ``pool1`` ... ``pool5`` MAX 2x2 stride 2, ``fc6``/``relu6``/``drop6``,
``fc7``/``relu7``/``drop7``, ``fc8``, ``prob``); only the widths and the input size shrink so
that tests run in milliseconds. Test modules import these (``tests/conftest.py`` also offers
them as fixtures)::

    from tests.tiny_vgg import keras_tiny_vggface, write_tiny_vgg
    proto, caffemodel = write_tiny_vgg(tmp_path, seed=0)
    model = keras_tiny_vggface(seed=0)          # a converted-looking Keras model, 4..8 channels

Blobs come in Caffe's natural layouts: conv weights ``(out, in, kh, kw)``, fc weights
``(out, in)`` (``in`` flattened from ``(C, H, W)`` in Caffe's C-major order), biases ``(out,)``.
A file written with ``legacy_dims=True`` reads back 4D: fc ``(1, 1, out, in)``, bias
``(1, 1, 1, out)``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from helpers.caffe import (
    CaffeLayerBlobs,
    NetSpec,
    write_caffemodel,
    write_prototxt,
)
from helpers.vggface import vggface_netspec

FULL_WIDTHS = (64, 128, 256, 512, 512)
FULL_FC = (4096, 4096)
FULL_CLASSES = 2622


def tiny_vgg_netspec(widths=(4, 8, 8, 16, 16), fc=(32, 32), classes=10, hw=(32, 32),
                     channels=3, batch=1, name="VGG_FACE_16_layers") -> NetSpec:
    """A VGG-Face-shaped :class:`NetSpec`; ``hw`` must be divisible by 32 (five 2x2 pools)."""
    if len(widths) != 5 or len(fc) != 2:
        raise ValueError(f"expected 5 block widths and 2 fc sizes, got {widths} and {fc}")
    h, w = hw
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ValueError(f"hw={hw}: both sides must be positive multiples of 32 (five 2x2 pools)")
    # The course's own VGG-Face topology, narrowed: the fixtures test the formats and the
    # converter on exactly the network the course converts.
    net = vggface_netspec(widths, fc, classes, hw, name=name)
    return dataclasses.replace(net, input_shape=(batch, channels, h, w), source="<tiny_vgg_netspec>")


def blob_shapes(net: NetSpec) -> dict[str, list[tuple[int, ...]]]:
    """Natural Caffe blob shapes of every layer of a plain conv/pool/fc chain (``[]`` when
    the layer has no parameters)."""
    _, c, h, w = net.input_shape
    shapes: dict[str, list[tuple[int, ...]]] = {}
    flat = None
    for layer in net.layers:
        p = layer.params
        if layer.type == "Convolution":
            k, pad, out = int(p["kernel_size"]), int(p.get("pad", 0)), int(p["num_output"])
            stride = int(p.get("stride", 1))
            shapes[layer.name] = [(out, c, k, k), (out,)]
            c, h, w = out, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        elif layer.type == "Pooling":
            k, s = int(p["kernel_size"]), int(p.get("stride", 1))
            shapes[layer.name] = []
            h, w = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1  # Caffe pools with ceil
        elif layer.type == "InnerProduct":
            fan_in = flat if flat is not None else c * h * w
            out = int(p["num_output"])
            shapes[layer.name] = [(out, fan_in), (out,)]
            flat = out
        else:
            shapes[layer.name] = []
    return shapes


def random_blobs(net: NetSpec, seed: int = 0, shapes: dict | None = None) -> list[CaffeLayerBlobs]:
    """Seeded He-scaled weights and small non-zero biases for every layer of ``net`` (layers
    without parameters get ``blobs=[]``, as in a real caffemodel). ``shapes``: each layer's blob
    shapes (default ``blob_shapes(net)``, the plain conv/pool/fc chain)."""
    rng = np.random.default_rng(seed)
    shapes = blob_shapes(net) if shapes is None else shapes
    out = []
    for layer in net.layers:
        blobs = []
        for shape in shapes.get(layer.name, []):
            if len(shape) == 1:
                blobs.append((0.1 * rng.standard_normal(shape)).astype(np.float32))
            else:
                fan_in = int(np.prod(shape[1:]))
                blobs.append((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        out.append(CaffeLayerBlobs(name=layer.name, type=layer.type, blobs=blobs,
                                   bottoms=list(layer.bottoms), tops=list(layer.tops)))
    return out


def write_tiny_vgg(tmp_dir, *, widths=(4, 8, 8, 16, 16), fc=(32, 32), classes=10, hw=(32, 32),
                   seed=0, syntax="v1", format="v1", legacy_dims=True, packed=True,
                   stem="VGG_FACE") -> tuple[Path, Path]:
    """Write ``<stem>_deploy.prototxt`` and ``<stem>.caffemodel`` into ``tmp_dir``; the
    weights are ``random_blobs(tiny_vgg_netspec(...), seed)``."""
    tmp_dir = Path(tmp_dir)
    net = tiny_vgg_netspec(widths=widths, fc=fc, classes=classes, hw=hw)
    proto = write_prototxt(tmp_dir / f"{stem}_deploy.prototxt", net, syntax=syntax)
    model = write_caffemodel(tmp_dir / f"{stem}.caffemodel", random_blobs(net, seed), format=format,
                             legacy_dims=legacy_dims, packed=packed, name=net.name)
    return proto, model


# The Keras model most unit tests train and measure: VGG-Face's layers and names, 4..8 channels.
KERAS_WIDTHS = (4, 4, 8, 8, 8)
KERAS_FC = (16, 16)


def keras_tiny_vggface(*, widths=KERAS_WIDTHS, fc=KERAS_FC, classes: int = 5, hw=(32, 32), seed: int = 0,
                       class_names=None):
    """A randomly initialised Keras VGG-Face (as ``helpers.caffe.build_keras_model`` builds the
    converted one: preprocessing inside, Caffe's layer names), seeded."""
    import keras

    from helpers.caffe import build_keras_model

    keras.utils.set_random_seed(seed)
    net = vggface_netspec(conv_widths=widths, fc_widths=fc, n_classes=classes, input_hw=hw)
    return build_keras_model(net, class_names=class_names)


# ----------------------------------------------------------------------------- any Caffe net

def _pair(params, key, default):
    """Caffe's (h, w) of ``kernel_size``/``stride``/``pad``/``dilation``: repeated, or ``kernel_h``..."""
    v = params.get(key, default)
    v = v if isinstance(v, list) else [v]
    base = "kernel" if key == "kernel_size" else key
    h = params.get(f"{base}_h", v[0] if v else default)
    w = params.get(f"{base}_w", v[1] if len(v) > 1 else (v[0] if v else default))
    return int(h), int(w)


def caffe_blob_shapes(net: NetSpec) -> dict[str, list[tuple[int, ...]]]:
    """Natural Caffe blob shapes of every layer of ``net``, walked in Caffe's own terms (NCHW,
    grouped convolutions, ceil-mode pooling, Concat, LRN, implicit flattening); ``[]`` for a
    layer without parameters. Independent of the converter, so fixtures do not test it with itself."""
    import math

    blob = {net.input_name: tuple(net.input_shape[1:])}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for layer in net.layers:
        p = layer.params
        if layer.type in ("Input",) or not layer.bottoms:
            continue
        x = blob[layer.bottoms[0]]
        shapes[layer.name] = []
        if layer.type == "Convolution":
            (kh, kw), (sh, sw) = _pair(p, "kernel_size", 0), _pair(p, "stride", 1)
            (ph, pw), (dh, dw) = _pair(p, "pad", 0), _pair(p, "dilation", 1)
            out, group = int(p["num_output"]), int(p.get("group", 1))
            c, h, w = x
            shapes[layer.name] = [(out, c // group, kh, kw)] + ([(out,)] if p.get("bias_term", True) else [])
            y = (out, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        elif layer.type == "Pooling":
            c, h, w = x
            if p.get("global_pooling"):
                y = (c, 1, 1)
            else:
                (kh, kw), (sh, sw), (ph, pw) = _pair(p, "kernel_size", 0), _pair(p, "stride", 1), _pair(p, "pad", 0)

                def size(n, k, s, pad):
                    o = int(math.ceil((n + 2 * pad - k) / s)) + 1
                    return o - 1 if pad and (o - 1) * s >= n + pad else o
                y = (c, size(h, kh, sh, ph), size(w, kw, sw, pw))
        elif layer.type == "InnerProduct":
            out = int(p["num_output"])
            shapes[layer.name] = [(out, int(np.prod(x)))] + ([(out,)] if p.get("bias_term", True) else [])
            y = (out,)
        elif layer.type == "Concat":
            parts = [blob[b] for b in layer.bottoms]
            axis = int(p.get("axis", 1)) - 1
            y = tuple(sum(s[axis] for s in parts) if i == axis else d for i, d in enumerate(parts[0]))
        elif layer.type == "Flatten":
            y = (int(np.prod(x)),)
        else:  # ReLU, LRN, Dropout, Softmax, ...: the shape is kept
            y = x
        for top in layer.tops:
            blob[top] = y
    return shapes


def write_caffe_files(folder, net: NetSpec, *, seed: int = 0, syntax: str = "v2", format: str | None = None,
                      stem: str = "net") -> tuple[Path, Path]:
    """Write ``net`` as ``<stem>.prototxt`` and a ``<stem>.caffemodel`` of seeded He-scaled weights
    (small non-zero biases), in Caffe's natural blob layouts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = random_blobs(net, seed, shapes=caffe_blob_shapes(net))
    proto = write_prototxt(folder / f"{stem}.prototxt", net, syntax=syntax)
    model = write_caffemodel(folder / f"{stem}.caffemodel", layers, format=format or syntax, name=net.name)
    return proto, model
