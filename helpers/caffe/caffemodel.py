"""The ``.caffemodel`` reader: protobuf *binary* (wire) format, walked by offsets over a memory map.

:func:`read_caffemodel` takes every float payload with ``numpy.frombuffer`` (no copy, no
Python float objects). Damaged input raises :class:`~helpers.caffe.spec.CaffeFormatError`
naming the file and the byte offset.

Arrays returned are, by default, **read-only views into a memory map** of the file (they keep
the map alive; the file may be renamed or replaced meanwhile on POSIX). Pass ``copy=True`` for
owned, writable, aligned arrays. Two cases always give owned arrays: float data split into
several packed runs or stored unpacked (one tag per float), and ``double_data`` (converted to
float32).
"""
from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np

from .spec import CaffeFormatError, CaffeLayerBlobs, V1_TO_V2_TYPE, V1_NUMBER_TO_NAME

# --------------------------------------------------------------------------- binary: wire format

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
FLOAT_TAG = (5 << 3) | WIRE_I32  # BlobProto.data, unpacked: one tag byte per float
FLOAT_RECORD = np.dtype([("tag", "u1"), ("value", "<f4")])
_MAX_DIMS = 32


class _Wire:
    """Walks protobuf messages inside one buffer by offsets (no slicing of the payload)."""

    def __init__(self, buf, source: str):
        self.buf = buf
        self.source = source

    def error(self, pos: int, what: str) -> CaffeFormatError:
        return CaffeFormatError(f"{self.source}: byte {pos}: {what}")

    def varint(self, pos: int, end: int, what: str) -> tuple[int, int]:
        buf = self.buf
        result = shift = 0
        start = pos
        while True:
            if pos >= end:
                raise self.error(start, f"{what}: varint runs past the end of its message (byte {end})")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.error(start, f"{what}: varint longer than 10 bytes")

    def field_at(self, pos: int, end: int, what: str):
        """The field at ``pos``: ``(number, wire_type, value_or_start, value_end, tag_pos, next)``.

        For varints ``value_or_start`` is the integer; for other wire types it is the
        payload's start offset and ``value_end`` its end (checked to lie inside the message).
        """
        tag_pos = pos
        key, pos = self.varint(pos, end, f"{what}: field tag")
        number, wire = key >> 3, key & 7
        if number == 0:
            raise self.error(tag_pos, f"{what}: field number 0 is invalid (corrupted data?)")
        if wire == WIRE_VARINT:
            value, nxt = self.varint(pos, end, f"{what}: field {number}")
            return number, wire, value, nxt, tag_pos, nxt
        if wire == WIRE_I64 or wire == WIRE_I32:
            size = 8 if wire == WIRE_I64 else 4
            if pos + size > end:
                raise self.error(tag_pos, f"{what}: field {number} needs {size} bytes but the "
                                          f"message ends at byte {end}")
            return number, wire, pos, pos + size, tag_pos, pos + size
        if wire == WIRE_LEN:
            length, pos = self.varint(pos, end, f"{what}: length of field {number}")
            if length > end - pos:
                raise self.error(tag_pos, f"{what}: field {number} claims {length} bytes but only "
                                          f"{end - pos} remain before byte {end} (truncated file?)")
            return number, wire, pos, pos + length, tag_pos, pos + length
        raise self.error(tag_pos, f"{what}: field {number} has wire type {wire}, which Caffe "
                                  "files never use (corrupted data, or not a caffemodel)")

    def fields(self, pos: int, end: int, what: str):
        """Yield ``(number, wire_type, value_or_start, value_end, tag_pos)`` for each field."""
        while pos < end:
            number, wire, a, b, tag_pos, pos = self.field_at(pos, end, what)
            yield number, wire, a, b, tag_pos

    def string(self, start: int, end: int, what: str) -> str:
        try:
            return bytes(self.buf[start:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(start, f"{what} is not valid UTF-8") from None


def _expect(wire: _Wire, got: int, want: int, tag_pos: int, what: str) -> None:
    if got != want:
        raise wire.error(tag_pos, f"{what} has wire type {got}, expected {want}")


def read_caffemodel(path: str | os.PathLike, *, copy: bool = False) -> dict[str, CaffeLayerBlobs]:
    """The layers of a binary ``.caffemodel`` (V1 ``layers`` or V2 ``layer``), in file order.

    Each blob is a float32 array shaped by the blob's ``shape`` or, in legacy files, by its
    ``num/channels/height/width`` (always 4D, e.g. an fc weight ``(1, 1, out, in)``). Layers
    without blobs are kept with ``blobs=[]``. By default arrays are read-only views into a
    memory map of the file; ``copy=True`` gives owned writable arrays and closes the map.
    Raises :class:`CaffeFormatError` naming the file and byte offset on damaged input.
    """
    path = Path(path)
    source = str(path)
    size = path.stat().st_size
    if size == 0:
        raise CaffeFormatError(f"{source}: byte 0: the file is empty")
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        layers = _read_net(_Wire(mm, source), size, copy)
    except CaffeFormatError as exc:
        if _looks_like_text(mm):
            raise CaffeFormatError(f"{exc} -- this file looks like a text prototxt, not a binary "
                                   "caffemodel (use parse_prototxt)") from None
        raise
    finally:
        if copy:
            try:
                mm.close()
            except BufferError:  # a view escaped; the map closes when it is collected
                pass
    return layers


def _looks_like_text(buf) -> bool:
    head = bytes(buf[:256])
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _read_net(wire: _Wire, size: int, copy: bool) -> dict[str, CaffeLayerBlobs]:
    layers: dict[str, CaffeLayerBlobs] = {}
    for number, wtype, start, end, tag_pos in wire.fields(0, size, "NetParameter"):
        if number in (2, 100):
            _expect(wire, wtype, WIRE_LEN, tag_pos, f"NetParameter field {number} (layer)")
            layer = _read_layer(wire, start, end, v1=(number == 2), copy=copy, index=len(layers))
            if layer.name in layers:
                raise wire.error(tag_pos, f"layer name {layer.name!r} appears twice")
            layers[layer.name] = layer
    if not layers:
        raise wire.error(0, "no layers found (NetParameter fields 2 'layers' / 100 'layer' absent)")
    return layers


def _read_layer(wire: _Wire, start: int, end: int, v1: bool, copy: bool, index: int) -> CaffeLayerBlobs:
    # V1LayerParameter: bottom=2 top=3 name=4 type=5 (enum) blobs=6 layer=1 (V0, unsupported)
    # LayerParameter:   name=1 type=2 (string) bottom=3 top=4 blobs=7
    f_name, f_type, f_bottom, f_top, f_blobs = (4, 5, 2, 3, 6) if v1 else (1, 2, 3, 4, 7)
    kind = "V1LayerParameter" if v1 else "LayerParameter"
    what = f"{kind} #{index} (bytes {start}-{end})"
    name, ltype = None, ""
    bottoms, tops, blob_spans = [], [], []
    for number, wtype, a, b, tag_pos in wire.fields(start, end, what):
        if number == f_name:
            _expect(wire, wtype, WIRE_LEN, tag_pos, f"{what} name")
            name = wire.string(a, b, f"{what} name")
        elif number == f_type:
            if v1:
                _expect(wire, wtype, WIRE_VARINT, tag_pos, f"{what} type")
                enum = V1_NUMBER_TO_NAME.get(a)
                ltype = V1_TO_V2_TYPE[enum] if enum is not None else f"V1LayerType{a}"
            else:
                _expect(wire, wtype, WIRE_LEN, tag_pos, f"{what} type")
                ltype = wire.string(a, b, f"{what} type")
        elif number in (f_bottom, f_top):
            _expect(wire, wtype, WIRE_LEN, tag_pos, f"{what} bottom/top")
            (bottoms if number == f_bottom else tops).append(wire.string(a, b, f"{what} bottom/top"))
        elif number == f_blobs:
            _expect(wire, wtype, WIRE_LEN, tag_pos, f"{what} blobs")
            blob_spans.append((a, b))
        elif v1 and number == 1:
            raise wire.error(tag_pos, f"{what} holds a V0 layer (pre-2014 Caffe format); upgrade it "
                                      "with Caffe's upgrade_net_proto_binary first")
    if name is None:
        raise wire.error(start, f"{what} has no name")
    label = f"layer {name!r} ({kind} at bytes {start}-{end})"
    blobs = [_read_blob(wire, a, b, f"{label} blob {i}", copy) for i, (a, b) in enumerate(blob_spans)]
    return CaffeLayerBlobs(name=name, type=ltype, blobs=blobs, bottoms=bottoms, tops=tops)


def _read_blob(wire: _Wire, start: int, end: int, what: str, copy: bool) -> np.ndarray:
    legacy: dict[int, int] = {}
    shape: list[int] | None = None
    float_parts: list[np.ndarray] = []
    double_parts: list[np.ndarray] = []
    n_float = n_double = 0
    buf = wire.buf
    pos = start
    while pos < end:
        number, wtype, a, b, tag_pos, pos = wire.field_at(pos, end, what)
        if number in (1, 2, 3, 4):
            _expect(wire, wtype, WIRE_VARINT, tag_pos, f"{what} legacy dim {number}")
            if a >= 1 << 63:
                raise wire.error(tag_pos, f"{what}: negative legacy dimension")
            legacy[number] = a
        elif number == 5:  # data
            if wtype == WIRE_LEN:
                if (b - a) % 4:
                    raise wire.error(tag_pos, f"{what}: packed float data of {b - a} bytes is not a "
                                              "multiple of 4")
                float_parts.append(np.frombuffer(buf, dtype="<f4", count=(b - a) // 4, offset=a))
                n_float += (b - a) // 4
            elif wtype == WIRE_I32:
                if a == tag_pos + 1:
                    # Unpacked: (tag, float) records; take the whole run of them at once.
                    run = _unpacked_run(buf, tag_pos, end)
                    pos = tag_pos + 5 * len(run)
                else:  # a tag written as a longer varint than needed: one float
                    run = np.frombuffer(buf, dtype="<f4", count=1, offset=a).astype(np.float32)
                float_parts.append(run)
                n_float += len(run)
            else:
                raise wire.error(tag_pos, f"{what}: data has wire type {wtype}, expected 2 or 5")
        elif number == 8:  # double_data
            if wtype == WIRE_LEN:
                if (b - a) % 8:
                    raise wire.error(tag_pos, f"{what}: packed double data of {b - a} bytes is not a "
                                              "multiple of 8")
                double_parts.append(np.frombuffer(buf, dtype="<f8", count=(b - a) // 8, offset=a))
                n_double += (b - a) // 8
            elif wtype == WIRE_I64:
                double_parts.append(np.frombuffer(buf, dtype="<f8", count=1, offset=a))
                n_double += 1
            else:
                raise wire.error(tag_pos, f"{what}: double_data has wire type {wtype}, expected 2 or 1")
        elif number == 7:  # shape
            _expect(wire, wtype, WIRE_LEN, tag_pos, f"{what} shape")
            shape = _read_shape(wire, a, b, what)
        # diff (6), double_diff (9) and unknown fields: skipped by field_at.
    if shape is None:
        if legacy:
            # Caffe defaults an absent legacy dim to 0 (an empty blob); 1 keeps a blob whose
            # writer left out a leading 1 readable, and the count check below still holds.
            shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)]
        else:  # no shape information at all: a flat vector
            shape = [n_float or n_double]
    count = math.prod(shape)
    if n_float and n_double:
        raise wire.error(start, f"{what} has both float data and double_data")
    n = n_float or n_double
    if n != count:
        raise wire.error(start, f"{what} has {n} values but its shape {tuple(shape)} needs {count}")
    if n_double:
        data = np.concatenate(double_parts).astype(np.float32)
    elif len(float_parts) == 1:
        data = float_parts[0]
        if copy:
            data = data.copy()
    elif float_parts:
        data = np.concatenate(float_parts).astype(np.float32, copy=False)
    else:
        data = np.zeros(0, dtype=np.float32)
    if data.dtype != np.float32:  # '<f4' on a big-endian machine
        data = data.astype(np.float32)
    return data.reshape(shape)


def _unpacked_run(buf, pos: int, end: int) -> np.ndarray:
    """The floats of consecutive ``data`` records (tag byte 0x2D + 4 bytes) from ``pos``.

    The output is allocated once at the most records the message can hold (normally the
    run fills the blob message, so this is exact), then filled chunk by chunk.
    """
    out = np.empty((end - pos) // 5, dtype=np.float32)
    filled = 0
    chunk = 1 << 16
    while filled < out.size:
        count = min(chunk, out.size - filled)
        recs = np.frombuffer(buf, dtype=FLOAT_RECORD, count=count, offset=pos + 5 * filled)
        bad = np.flatnonzero(recs["tag"] != FLOAT_TAG)
        take = int(bad[0]) if bad.size else count
        out[filled:filled + take] = recs["value"][:take]
        filled += take
        if take < count:
            break
        chunk = min(chunk * 4, 1 << 24)
    return out if filled == out.size else out[:filled].copy()


def _read_shape(wire: _Wire, start: int, end: int, what: str) -> list[int]:
    dims: list[int] = []

    def add(value: int, pos: int) -> None:
        if value >= 1 << 63:
            raise wire.error(pos, f"{what}: negative dimension in shape")
        if len(dims) >= _MAX_DIMS:
            raise wire.error(pos, f"{what}: shape has more than {_MAX_DIMS} dimensions")
        dims.append(value)

    for number, wtype, a, b, tag_pos in wire.fields(start, end, f"{what} shape"):
        if number != 1:
            continue
        if wtype == WIRE_VARINT:
            add(a, tag_pos)
        elif wtype == WIRE_LEN:
            pos = a
            while pos < b:
                value, nxt = wire.varint(pos, b, f"{what} shape dim")
                add(value, pos)
                pos = nxt
        else:
            raise wire.error(tag_pos, f"{what}: shape dim has wire type {wtype}, expected 0 or 2")
    return dims




# --------------------------------------------------------------------------- mean files


def read_blobproto(path: str | os.PathLike) -> np.ndarray:
    """A binary ``BlobProto`` file (Caffe's ``mean.binaryproto``) as an owned float32 array.

    The file is one ``BlobProto`` message (the same message as a caffemodel's blobs): legacy
    ``num/channels/height/width`` or a ``shape``, and ``data``. A mean image comes back as
    (1, C, H, W), the layout Caffe's ``compute_image_mean`` writes. Raises
    :class:`CaffeFormatError` naming the file and byte offset on damaged input.
    """
    path = Path(path)
    source = str(path)
    data = path.read_bytes()
    if not data:
        raise CaffeFormatError(f"{source}: byte 0: the file is empty")
    wire = _Wire(data, source)
    try:
        blob = _read_blob(wire, 0, len(data), "BlobProto", copy=True)
    except CaffeFormatError as exc:
        if _looks_like_text(data):
            raise CaffeFormatError(f"{exc} -- this file looks like text, not a binary BlobProto") from None
        raise
    if blob.size == 0:
        raise CaffeFormatError(f"{source}: byte 0: the BlobProto holds no values (is it a mean file?)")
    return np.array(blob, dtype=np.float32)


def read_mean_file(path: str | os.PathLike) -> np.ndarray:
    """A ``mean.binaryproto`` as the (C, H, W) mean image Caffe subtracts (leading 1s dropped)."""
    mean = read_blobproto(path)
    while mean.ndim > 3 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise CaffeFormatError(f"{path}: a mean image must have shape (1, C, H, W) or (C, H, W), "
                               f"found {mean.shape}")
    return mean
