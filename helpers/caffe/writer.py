"""Writing Caffe files: a :class:`NetSpec` back to ``.prototxt`` text (V1 or V2 syntax) and
layers of blobs to a ``.caffemodel`` (protobuf wire format, V1 or V2, packed or unpacked).

The course publishes its miniature VGG-Face with these, in the release's own formats, and the
tests build their fixture networks with them. Every file is written atomically.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..course.fileio import atomic_path, write_text_atomic
from .caffemodel import FLOAT_RECORD, FLOAT_TAG, WIRE_LEN, WIRE_VARINT
from .spec import CaffeLayerBlobs, EnumValue, LayerSpec, NetSpec, V1_LAYER_TYPES, ENUM_FIELDS, PARAM_FIELD, V2_TO_V1_NAME, quote

# --------------------------------------------------------------------------- text: writer



def _format_scalar(key: str, value) -> str:
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return "true" if value else "false"
    if isinstance(value, EnumValue) or (isinstance(value, str) and key in ENUM_FIELDS):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"field {key!r}: {value!r} is not a valid enum name")
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    raise ValueError(f"field {key!r}: cannot write a {type(value).__name__} ({value!r}) to a prototxt")


def _format_fields(items: Iterable[tuple[str, object]], indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for key, value in items:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):
                out.append(f"{pad}{key} {{")
                _format_fields(v.items(), indent + 1, out)
                out.append(f"{pad}}}")
            else:
                out.append(f"{pad}{key}: {_format_scalar(key, v)}")


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _extra_for_syntax(layer: LayerSpec, syntax: str) -> list[tuple[str, object]]:
    """The layer's other fields, with learning-rate settings in the syntax's own form
    (V1 ``blobs_lr``/``weight_decay`` <-> V2 ``param { lr_mult decay_mult }``)."""
    items = [(k, v) for k, v in layer.extra.items()]
    keys = [k for k, _ in items]
    if syntax == "v2" and ("blobs_lr" in keys or "weight_decay" in keys):
        lrs = _as_list(layer.extra.get("blobs_lr", []))
        decays = _as_list(layer.extra.get("weight_decay", []))
        specs = []
        for i in range(max(len(lrs), len(decays))):
            spec = {}
            if i < len(lrs):
                spec["lr_mult"] = lrs[i]
            if i < len(decays):
                spec["decay_mult"] = decays[i]
            specs.append(spec)
        items = [(k, v) for k, v in items if k not in ("blobs_lr", "weight_decay")]
        items.insert(0, ("param", specs))
    elif syntax == "v1" and "param" in keys:
        specs = _as_list(layer.extra["param"])
        if all(isinstance(s, dict) and set(s) <= {"lr_mult", "decay_mult"} for s in specs):
            lrs = [s.get("lr_mult", 1.0) for s in specs]
            decays = [s.get("decay_mult", 1.0) for s in specs]
            items = [(k, v) for k, v in items if k != "param"]
            items[0:0] = [("blobs_lr", lrs), ("weight_decay", decays)]
        else:
            raise ValueError(f"layer {layer.name!r}: its 'param' settings {specs!r} have no V1 form")
    return items


def format_prototxt(net: NetSpec, syntax: str = "v1") -> str:
    """The prototxt text of ``net`` in the V1 (``layers { type: CONVOLUTION }``) or V2
    (``layer { type: "Convolution" }``) syntax. The input is written as ``input`` plus four
    ``input_dim`` lines, unless it comes from a layer: an ``Input`` layer in V2 (V1 has no
    Input layer type, so there it becomes ``input``/``input_dim`` lines) or a data layer."""
    syntax = syntax.lower()
    if syntax not in ("v1", "v2"):
        raise ValueError(f"syntax must be 'v1' or 'v2', got {syntax!r}")
    out: list[str] = []
    if net.name:
        out.append(f"name: {quote(net.name)}")
    source = next((l for l in net.layers if l.name == net.input_layer), None) if net.input_layer else None
    if source is None or (source.type == "Input" and syntax == "v1"):
        if net.input_shape is None:
            raise ValueError(f"net {net.name!r}: input {net.input_name!r} has no known shape to write")
        declared = {net.input_name: net.input_shape, **net.extra_inputs}
        out.extend(f"input: {quote(name)}" for name in declared)
        out.extend(f"input_dim: {int(d)}" for shape in declared.values() for d in shape)
    _format_fields(net.extra.items(), 0, out)
    for layer in net.layers:
        if layer.type == "Input" and syntax == "v1":
            continue
        out.append("layers {" if syntax == "v1" else "layer {")
        lines: list[tuple[str, object]] = [("bottom", b) for b in layer.bottoms]
        lines += [("top", t) for t in layer.tops]
        lines.append(("name", layer.name))
        if syntax == "v1":
            v1_name = V2_TO_V1_NAME.get(layer.type)
            if v1_name is None:
                raise ValueError(f"layer {layer.name!r}: type {layer.type!r} has no V1 form; "
                                 "write this net with syntax='v2'")
            lines.append(("type", EnumValue(v1_name)))
        else:
            lines.append(("type", layer.type))
        lines += _extra_for_syntax(layer, syntax)
        if layer.params:
            pfield = layer.param_field or PARAM_FIELD.get(layer.type)
            if not pfield:
                raise ValueError(f"layer {layer.name!r}: type {layer.type!r} has params but no known "
                                 "*_param field; set LayerSpec.param_field")
            lines.append((pfield, layer.params))
        _format_fields(lines, 1, out)
        out.append("}")
    return "\n".join(out) + "\n"


def write_prototxt(path: str | os.PathLike, net: NetSpec, syntax: str = "v1") -> Path:
    """Write ``format_prototxt(net, syntax)`` to ``path`` atomically."""
    return write_text_atomic(path, format_prototxt(net, syntax))


# --------------------------------------------------------------------------- binary: writer


def _varint_bytes(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives take 10 bytes, as protobuf writes them
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint_bytes((number << 3) | wire)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, WIRE_LEN) + _varint_bytes(len(payload)) + payload


_UNPACKED_CHUNK = 1 << 20  # floats per chunk when writing one tag per float


class _BlobPlan:
    """A blob's header bytes and payload size, known before any payload is written."""

    def __init__(self, array: np.ndarray, what: str, legacy_dims: bool, packed: bool):
        arr = np.asarray(array)
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{what}: blob dtype {arr.dtype} is not numeric")
        self.array = arr
        self.packed = packed
        head = bytearray()
        if legacy_dims:
            if arr.ndim > 4:
                raise ValueError(f"{what}: a {arr.ndim}-D blob {arr.shape} has no legacy 4D form; "
                                 "use legacy_dims=False")
            dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
            for number, d in zip((1, 2, 3, 4), dims):
                head += _key(number, WIRE_VARINT) + _varint_bytes(int(d))
        n = int(arr.size)
        if packed:
            head += _key(5, WIRE_LEN) + _varint_bytes(4 * n)
            self.payload = 4 * n
        else:
            self.payload = 5 * n
        tail = b""
        if not legacy_dims:
            dims_payload = b"".join(_varint_bytes(int(d)) for d in arr.shape)
            tail = _len_field(7, _len_field(1, dims_payload) if arr.ndim else b"")
        self.head = bytes(head)
        self.tail = tail
        self.size = len(self.head) + self.payload + len(self.tail)

    def write(self, fh) -> None:
        fh.write(self.head)
        flat = self.array.reshape(-1)
        if self.packed:
            # One converted copy at most (none for a contiguous little-endian float32 array).
            fh.write(memoryview(np.ascontiguousarray(flat, dtype="<f4")).cast("B"))
        else:
            for i in range(0, flat.size, _UNPACKED_CHUNK):
                part = flat[i:i + _UNPACKED_CHUNK]
                recs = np.empty(part.size, dtype=FLOAT_RECORD)
                recs["tag"] = FLOAT_TAG
                recs["value"] = part
                fh.write(recs.tobytes())
        fh.write(self.tail)


def write_caffemodel(path: str | os.PathLike, layers: list[CaffeLayerBlobs], format: str = "v1",
                     legacy_dims: bool = True, packed: bool = True, *, name: str = "") -> Path:
    """Write ``layers`` as a binary caffemodel that Caffe and OpenCV read, atomically.

    ``format="v1"`` writes NetParameter ``layers`` (V1LayerParameter, enum types; the
    format of the published VGG-Face weights), ``"v2"`` writes ``layer`` (LayerParameter,
    string types). ``legacy_dims`` writes ``num/channels/height/width`` (blobs padded to 4D
    on the left, as old Caffe did) instead of ``shape``; ``packed=False`` writes one tag per
    float. Blobs are streamed: memory use stays near one extra copy of the largest blob.
    """
    fmt = format.lower()
    if fmt not in ("v1", "v2"):
        raise ValueError(f"format must be 'v1' or 'v2', got {format!r}")
    v1 = fmt == "v1"
    seen: set[str] = set()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if name:
            fh.write(_len_field(1, name.encode("utf-8")))
        for layer in layers:
            if layer.name in seen:
                raise ValueError(f"layer name {layer.name!r} appears twice")
            seen.add(layer.name)
            head = bytearray()
            strings = [(2 if v1 else 3, b) for b in layer.bottoms] + [(3 if v1 else 4, t) for t in layer.tops]
            if v1:
                v1_name = V2_TO_V1_NAME.get(layer.type)
                if v1_name is None:
                    raise ValueError(f"layer {layer.name!r}: type {layer.type!r} has no V1 enum; "
                                     "write with format='v2'")
                for number, s in strings:
                    head += _len_field(number, s.encode("utf-8"))
                head += _len_field(4, layer.name.encode("utf-8"))
                head += _key(5, WIRE_VARINT) + _varint_bytes(V1_LAYER_TYPES[v1_name])
            else:
                head += _len_field(1, layer.name.encode("utf-8"))
                head += _len_field(2, layer.type.encode("utf-8"))
                for number, s in strings:
                    head += _len_field(number, s.encode("utf-8"))
            plans = [_BlobPlan(b, f"layer {layer.name!r} blob {i}", legacy_dims, packed)
                     for i, b in enumerate(layer.blobs)]
            blob_field = 6 if v1 else 7
            blob_heads = [_key(blob_field, WIRE_LEN) + _varint_bytes(p.size) for p in plans]
            layer_size = len(head) + sum(len(h) + p.size for h, p in zip(blob_heads, plans))
            fh.write(_key(2 if v1 else 100, WIRE_LEN) + _varint_bytes(layer_size))
            fh.write(head)
            for h, p in zip(blob_heads, plans):
                fh.write(h)
                p.write(fh)
    return Path(path)


def write_blobproto(path: str | os.PathLike, array, legacy_dims: bool = True) -> Path:
    """Write one array as a binary ``BlobProto`` file (Caffe's ``mean.binaryproto``), atomically.

    A (C, H, W) mean is written as (1, C, H, W), as Caffe's ``compute_image_mean`` does.
    """
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    plan = _BlobPlan(arr, f"{Path(path).name}", legacy_dims, packed=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        plan.write(fh)
    return Path(path)
