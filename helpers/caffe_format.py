"""Caffe's file formats, read and written with nothing but Python and numpy.

Two formats make a Caffe release:

* the network description, a ``.prototxt`` in protobuf *text* format, in either the legacy
  V1 syntax (``layers { type: CONVOLUTION }``) or the V2 syntax (``layer { type:
  "Convolution" }``). :func:`parse_prototxt` turns it into a :class:`NetSpec` whose layer
  types are always V2 names; :func:`format_prototxt` / :func:`write_prototxt` write either
  syntax back.
* the weights, a ``.caffemodel`` in protobuf *binary* (wire) format. :func:`read_caffemodel`
  memory-maps the file and takes every float payload with ``numpy.frombuffer`` (no copy, no
  Python float objects); :func:`write_caffemodel` streams blobs to disk without holding more
  than one extra copy of a blob.

Field numbers come from Caffe's ``src/caffe/proto/caffe.proto``; V1 layer type names are
normalised to V2 names the way Caffe's ``upgrade_proto.cpp`` does. Damaged input raises
:class:`CaffeFormatError` (a ``ValueError``) naming the file and the byte offset (binary) or
the line and column (text).

Arrays returned by :func:`read_caffemodel` are, by default, **read-only views into a memory
map** of the file (they keep the map alive; the file may be renamed or replaced meanwhile on
POSIX). Pass ``copy=True`` for owned, writable, aligned arrays. Two cases always give owned
arrays: float data split into several packed runs or stored unpacked (one tag per float), and
``double_data`` (converted to float32).
"""
from __future__ import annotations

import math
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .fileio import atomic_path, write_text_atomic

__all__ = [
    "CaffeFormatError",
    "EnumValue",
    "LayerSpec",
    "NetSpec",
    "CaffeLayerBlobs",
    "V1_LAYER_TYPES",
    "V1_TO_V2_TYPE",
    "parse_prototxt",
    "format_prototxt",
    "write_prototxt",
    "read_caffemodel",
    "write_caffemodel",
]


class CaffeFormatError(ValueError):
    """A Caffe file that does not follow the format; the message names file and position."""


class EnumValue(str):
    """A protobuf enum value read from text (``pool: MAX``): compares equal to ``"MAX"``,
    and :func:`format_prototxt` writes it back without quotes."""

    __slots__ = ()


def _show(value) -> str:
    """A text-format value as the file spelled it: enums bare, strings in double quotes."""
    if isinstance(value, EnumValue):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    return repr(value)


# V1LayerParameter.LayerType, from caffe.proto.
V1_LAYER_TYPES: dict[str, int] = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6,
    "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8,
    "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18,
    "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}

# Caffe's UpgradeV1LayerType: V1 enum name -> V2 type string.
V1_TO_V2_TYPE: dict[str, str] = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
_V2_TO_V1_NAME = {v2: v1 for v1, v2 in V1_TO_V2_TYPE.items() if v2}
_V1_NUMBER_TO_NAME = {n: name for name, n in V1_LAYER_TYPES.items()}

# The type-specific parameter message of each layer type (LayerParameter field names).
_PARAM_FIELD = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param",
    "Pooling": "pooling_param", "InnerProduct": "inner_product_param",
    "Dropout": "dropout_param", "ReLU": "relu_param", "Softmax": "softmax_param",
    "SoftmaxWithLoss": "softmax_param", "Flatten": "flatten_param", "Input": "input_param",
    "Data": "data_param", "Accuracy": "accuracy_param", "LRN": "lrn_param",
    "Concat": "concat_param", "Eltwise": "eltwise_param", "ArgMax": "argmax_param",
    "BatchNorm": "batch_norm_param", "Scale": "scale_param", "Bias": "bias_param",
    "PReLU": "prelu_param", "ELU": "elu_param", "Sigmoid": "sigmoid_param", "TanH": "tanh_param",
    "Power": "power_param", "Exp": "exp_param", "Log": "log_param", "Slice": "slice_param",
    "Reshape": "reshape_param", "Threshold": "threshold_param", "MVN": "mvn_param",
    "DummyData": "dummy_data_param", "ImageData": "image_data_param",
    "MemoryData": "memory_data_param", "WindowData": "window_data_param",
    "HDF5Data": "hdf5_data_param", "HDF5Output": "hdf5_output_param",
    "Crop": "crop_param", "Embed": "embed_param", "Tile": "tile_param",
    "Reduction": "reduction_param", "SPP": "spp_param", "Python": "python_param",
    "InfogainLoss": "infogain_loss_param", "HingeLoss": "hinge_loss_param",
    "ContrastiveLoss": "contrastive_loss_param",
}
# Fields that are *_param messages but never the layer's own parameters.
_SHARED_PARAM_FIELDS = {"transform_param", "loss_param"}
# Enum-typed fields in Caffe messages: plain strings in these are written unquoted.
_ENUM_FIELDS = {
    "pool", "phase", "engine", "variance_norm", "operation", "norm_region", "backend",
    "normalization", "share_mode", "round_mode", "snapshot_format", "solver_mode",
}


# --------------------------------------------------------------------------- data classes


@dataclass
class LayerSpec:
    """One layer of a prototxt. ``params`` is the layer's own ``*_param`` message as a dict:
    a field given once is a scalar, a field given several times is a list; enums are
    :class:`EnumValue` strings (``params["pool"] == "MAX"``)."""

    name: str
    type: str  # V2 name ("Convolution", "ReLU", ...), also when the file is V1
    bottoms: list[str]
    tops: list[str]
    params: dict
    line: int  # 1-based line of the ``layer``/``layers`` keyword; 0 when built in code
    # Every other field of the layer (other *_param messages, ``param``, ``blobs_lr``,
    # ``include``, ...) in file order, so that nothing the file said is lost.
    extra: dict = field(default_factory=dict)
    # The field name that held ``params`` (e.g. "convolution_param"); "" = derive from type.
    param_field: str = ""


@dataclass
class NetSpec:
    """A parsed prototxt: the input, the layers in file order (TRAIN-only ones removed and
    named in ``skipped``) and where it came from."""

    name: str
    input_name: str
    input_shape: tuple[int, int, int, int]  # (N, C, H, W)
    layers: list[LayerSpec]
    skipped: list[str]
    source: str  # file path or "<text>"
    # Other top-level fields (force_backward, state, ...), kept for format_prototxt.
    extra: dict = field(default_factory=dict)

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.source}: no layer named {name!r}; layers are "
                       f"{', '.join(l.name for l in self.layers)}")


@dataclass
class CaffeLayerBlobs:
    """The learned blobs of one layer of a caffemodel (weights first, then bias)."""

    name: str
    type: str  # V2 name
    blobs: list[np.ndarray]  # float32
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- text: tokenizer

_TOKEN_RE = re.compile(
    r"""
    (?P<newline>\n)
  | (?P<space>[ \t\r\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?)(?![A-Za-z0-9_.])
               |-(?:inf|infinity|nan)\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}:<>\[\],;])
    """,
    re.VERBOSE | re.IGNORECASE,
)
_UNTERMINATED_RE = re.compile(r"""["'][^\n]*""")
_SIMPLE_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f",
                   "v": b"\v", "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}


@dataclass
class _Token:
    kind: str  # string, number, ident, punct, eof
    text: str
    line: int
    col: int


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos, line, line_start = 0, 1, 0
    n = len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            if text[pos] in "\"'":
                raise CaffeFormatError(f"{source}:{line}:{col}: unterminated string "
                                       f"(expected a closing {text[pos]} on the same line)")
            raise CaffeFormatError(f"{source}:{line}:{col}: unexpected character {text[pos]!r} "
                                   "(expected a field name, value, '{', '}' or ':')")
        kind = m.lastgroup
        if kind == "newline":
            line += 1
            line_start = m.end()
        elif kind not in ("space", "comment"):
            tokens.append(_Token(kind, m.group(), line, col))
        pos = m.end()
    tokens.append(_Token("eof", "", line, pos - line_start + 1))
    return tokens


def _unescape(literal: str, where: str) -> str:
    body = literal[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        i += 1
        e = body[i]
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e]
            i += 1
        elif e in "01234567":
            j = i
            while j < len(body) and j < i + 3 and body[j] in "01234567":
                j += 1
            out.append(int(body[i:j], 8) & 0xFF)
            i = j
        elif e in "xX":
            j = i + 1
            while j < len(body) and j < i + 3 and body[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i + 1:
                raise CaffeFormatError(f"{where}: '\\x' escape without hex digits in {literal}")
            out.append(int(body[i + 1:j], 16))
            i = j
        elif e in "uU":
            width = 4 if e == "u" else 8
            digits = body[i + 1:i + 1 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise CaffeFormatError(f"{where}: '\\{e}' escape needs {width} hex digits in {literal}")
            out += chr(int(digits, 16)).encode("utf-8")
            i += 1 + width
        else:
            raise CaffeFormatError(f"{where}: unknown escape '\\{e}' in {literal}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaffeFormatError(f"{where}: string {literal} is not valid UTF-8 ({exc})") from None


# --------------------------------------------------------------------------- text: parser


class _At(tuple):
    """Where a field starts in the text; prints as ``line:col``."""

    __slots__ = ()

    def __new__(cls, line: int, col: int):
        return super().__new__(cls, (line, col))

    @property
    def line(self) -> int:
        return self[0]

    def __str__(self) -> str:
        return f"{self[0]}:{self[1]}"


class _Fields(list):
    """A parsed text message: ``[(name, value, at), ...]`` in file order."""

    def to_dict(self) -> dict:
        out: dict = {}
        counts: dict[str, int] = {}
        for name, value, _line in self:
            value = value.to_dict() if isinstance(value, _Fields) else value
            if name not in counts:
                out[name] = value
                counts[name] = 1
            else:
                if counts[name] == 1:
                    out[name] = [out[name]]
                out[name].append(value)
                counts[name] += 1
        return out

    def all(self, name: str) -> list:
        return [v for n, v, _ in self if n == name]

    def at(self, name: str, default: _At) -> _At:
        return next((a for n, _, a in self if n == name), default)


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.tokens = _tokenize(text, source)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def where(self, tok: _Token) -> str:
        return f"{self.source}:{tok.line}:{tok.col}"

    def fail(self, tok: _Token, expected: str) -> CaffeFormatError:
        found = "end of file" if tok.kind == "eof" else repr(tok.text)
        return CaffeFormatError(f"{self.where(tok)}: expected {expected}, found {found}")

    def parse_message(self, close: str | None) -> _Fields:
        fields = _Fields()
        while True:
            tok = self.peek()
            if close is None and tok.kind == "eof":
                return fields
            if close is not None and tok.kind == "punct" and tok.text == close:
                self.take()
                return fields
            if tok.kind != "ident":
                what = "a field name" + (f" or '{close}'" if close else "")
                if close is not None and tok.kind == "eof":
                    what = f"'{close}' to close the message"
                raise self.fail(tok, what)
            self.take()
            name = tok.text
            colon = self.peek().kind == "punct" and self.peek().text == ":"
            if colon:
                self.take()
            nxt = self.peek()
            if nxt.kind == "punct" and nxt.text in "{<":
                self.take()
                value = self.parse_message("}" if nxt.text == "{" else ">")
                fields.append((name, value, _At(tok.line, tok.col)))
            elif nxt.kind == "punct" and nxt.text == "[" and colon:
                self.take()
                for v in self.parse_list():
                    fields.append((name, v, _At(tok.line, tok.col)))
            elif colon:
                fields.append((name, self.parse_scalar(), _At(tok.line, tok.col)))
            else:
                raise self.fail(nxt, f"':' or '{{' after field name {name!r}")
            sep = self.peek()
            if sep.kind == "punct" and sep.text in ",;":
                self.take()

    def parse_list(self) -> list:
        values: list = []
        if self.peek().kind == "punct" and self.peek().text == "]":
            self.take()
            return values
        while True:
            tok = self.peek()
            if tok.kind == "punct" and tok.text in "{<":
                self.take()
                values.append(self.parse_message("}" if tok.text == "{" else ">"))
            else:
                values.append(self.parse_scalar())
            tok = self.take()
            if tok.kind == "punct" and tok.text == "]":
                return values
            if not (tok.kind == "punct" and tok.text == ","):
                raise self.fail(tok, "',' or ']' in a list value")

    def parse_scalar(self):
        tok = self.take()
        if tok.kind == "string":
            parts = [_unescape(tok.text, self.where(tok))]
            while self.peek().kind == "string":  # "a" "b" is one string, as in C
                t = self.take()
                parts.append(_unescape(t.text, self.where(t)))
            return "".join(parts)
        if tok.kind == "number":
            return _number(tok.text)
        if tok.kind == "ident":
            low = tok.text.lower()
            if tok.text in ("true", "True", "t"):
                return True
            if tok.text in ("false", "False", "f"):
                return False
            if low in ("inf", "infinity"):
                return math.inf
            if low == "nan":
                return math.nan
            return EnumValue(tok.text)
        raise self.fail(tok, "a value (string, number, true/false or enum name)")


def _number(text: str):
    t = text.lower()
    if t.lstrip("-") in ("inf", "infinity"):
        return -math.inf if t.startswith("-") else math.inf
    if t.lstrip("-") == "nan":
        return math.nan
    if "x" in t:
        return int(t, 16)
    if t.endswith("f") and not t.startswith(("0x", "-0x")):
        return float(t[:-1])
    if any(c in t for c in ".e"):
        return float(t)
    return int(t, 10)


def _names_a_file(value) -> bool:
    """Whether a ``str`` given to parse_prototxt is a path rather than prototxt text."""
    if not isinstance(value, str) or "\n" in value or "{" in value:
        return False
    try:
        return Path(value).is_file() or value.endswith((".prototxt", ".pbtxt"))
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


def parse_prototxt(path_or_text: str | os.PathLike) -> NetSpec:
    """Parse a deploy prototxt (V1 or V2 syntax) given as a path or as the text itself.

    A ``str`` that names an existing file, or any ``os.PathLike``, is read as a file;
    any other ``str`` is the prototxt text. TRAIN-only layers (``include { phase: TRAIN }``
    or ``exclude { phase: TEST }``) are left out and their names listed in ``skipped``.
    Raises :class:`CaffeFormatError` naming file, line and column on bad input.
    """
    if isinstance(path_or_text, os.PathLike) or _names_a_file(path_or_text):
        path = Path(path_or_text)
        if not path.is_file():
            raise FileNotFoundError(f"prototxt not found: {path}")
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
        except UnicodeDecodeError as exc:
            raise CaffeFormatError(f"{source}: not a UTF-8 text prototxt ({exc}); "
                                   "a binary .caffemodel is read with read_caffemodel") from None
    elif isinstance(path_or_text, str):
        source, text = "<text>", path_or_text
    else:
        raise TypeError(f"parse_prototxt expects a path or prototxt text, got {type(path_or_text).__name__}")
    top = _Parser(text, source).parse_message(close=None)
    return _net_from_fields(top, source)


def _net_from_fields(top: _Fields, source: str) -> NetSpec:
    v1_lines = [line for n, _, line in top if n == "layers"]
    v2_lines = [line for n, _, line in top if n == "layer"]
    if v1_lines and v2_lines:
        raise CaffeFormatError(
            f"{source}:{v2_lines[0]}: mixes V1 'layers' (first at line {v1_lines[0].line}) and V2 "
            "'layer' entries; a net uses one syntax")
    name = ""
    inputs: list[tuple[str, int]] = []
    input_dims: list[tuple[int, int]] = []
    input_shapes: list[tuple[_Fields, int]] = []
    layers: list[LayerSpec] = []
    skipped: list[str] = []
    extra = _Fields()
    seen: dict[str, int] = {}
    for key, value, line in top:
        if key in ("layer", "layers"):
            if not isinstance(value, _Fields):
                raise CaffeFormatError(f"{source}:{line}: '{key}' must be a message {{ ... }}")
            layer = _layer_from_fields(value, line, v1=(key == "layers"), source=source)
            if layer.name in seen:
                raise CaffeFormatError(f"{source}:{line}: layer name {layer.name!r} is used again "
                                       f"(first at line {seen[layer.name].line})")
            seen[layer.name] = line
            if _train_only(value):
                skipped.append(layer.name)
            else:
                layers.append(layer)
        elif key == "name":
            name = str(value)
        elif key == "input":
            inputs.append((str(value), line))
        elif key == "input_dim":
            if isinstance(value, bool) or not isinstance(value, int):
                raise CaffeFormatError(f"{source}:{line}: input_dim must be an integer, got {value!r}")
            input_dims.append((value, line))
        elif key == "input_shape":
            input_shapes.append((value, line))
        else:
            extra.append((key, value, line))
    input_name, input_shape = _net_input(source, inputs, input_dims, input_shapes, layers)
    return NetSpec(name=name, input_name=input_name, input_shape=input_shape, layers=layers,
                   skipped=skipped, source=source, extra=extra.to_dict())


def _net_input(source, inputs, input_dims, input_shapes, layers):
    input_layers = [l for l in layers if l.type == "Input"]
    declared = len(inputs) + len(input_layers)
    if declared == 0:
        raise CaffeFormatError(
            f"{source}: no network input: expected 'input: \"data\"' with four 'input_dim' "
            "lines or an 'input_shape { dim: ... }', or a layer of type \"Input\"")
    if declared > 1:
        names = [n for n, _ in inputs] + [l.tops[0] if l.tops else l.name for l in input_layers]
        raise CaffeFormatError(f"{source}: {declared} network inputs ({', '.join(names)}); "
                               "only single-input networks are supported")
    if inputs:
        name, line = inputs[0]
        if input_shapes:
            if input_dims:
                raise CaffeFormatError(f"{source}:{line}: both input_dim and input_shape given for {name!r}")
            shape_fields, sline = input_shapes[0]
            dims = _dims(shape_fields, source, sline)
        elif input_dims:
            dims = [d for d, _ in input_dims]
        else:
            raise CaffeFormatError(f"{source}:{line}: input {name!r} has no shape: expected four "
                                   "'input_dim' lines or 'input_shape { dim: ... }'")
        return name, _four(dims, source, line, name)
    layer = input_layers[0]
    shape = layer.params.get("shape")
    if shape is None:
        raise CaffeFormatError(f"{source}:{layer.line}: Input layer {layer.name!r} has no "
                               "input_param { shape { dim: ... } }")
    if isinstance(shape, list):
        shape = shape[0]
    dims = shape.get("dim", []) if isinstance(shape, dict) else []
    dims = dims if isinstance(dims, list) else [dims]
    if not layer.tops:
        raise CaffeFormatError(f"{source}:{layer.line}: Input layer {layer.name!r} has no top")
    return layer.tops[0], _four(dims, source, layer.line, layer.tops[0])


def _dims(shape_fields, source, line) -> list:
    if not isinstance(shape_fields, _Fields):
        raise CaffeFormatError(f"{source}:{line}: input_shape must be a message {{ dim: ... }}")
    return shape_fields.all("dim")


def _four(dims, source, line, name) -> tuple[int, int, int, int]:
    if len(dims) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise CaffeFormatError(f"{source}:{line}: input {name!r} has shape {list(dims)}; "
                               "expected four positive integers (N, C, H, W)")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _layer_from_fields(f: _Fields, line: _At, v1: bool, source: str) -> LayerSpec:
    names = f.all("name")
    if len(names) != 1 or not isinstance(names[0], str) or isinstance(names[0], EnumValue):
        raise CaffeFormatError(f"{source}:{f.at('name', line)}: layer needs exactly one quoted name, "
                               f"got {names!r}")
    lname = names[0]
    types = f.all("type")
    if len(types) != 1:
        raise CaffeFormatError(f"{source}:{f.at('type', line)}: layer {lname!r} needs exactly one "
                               f"type, got {types!r}")
    raw_type = types[0]
    type_at = f.at("type", line)
    if v1:
        if not isinstance(raw_type, EnumValue) or str(raw_type) not in V1_TO_V2_TYPE:
            raise CaffeFormatError(
                f"{source}:{type_at}: V1 layer {lname!r} has type {_show(raw_type)}; expected an unquoted "
                f"V1 enum name such as CONVOLUTION (one of {', '.join(sorted(V1_TO_V2_TYPE))})")
        ltype = V1_TO_V2_TYPE[str(raw_type)]
    else:
        if not isinstance(raw_type, str) or isinstance(raw_type, EnumValue) or not raw_type:
            raise CaffeFormatError(
                f"{source}:{type_at}: V2 layer {lname!r} has type {_show(raw_type)}; expected a quoted "
                "type string such as \"Convolution\"")
        ltype = raw_type
    for key in ("bottom", "top"):
        for fname, v, at in f:
            if fname == key and (not isinstance(v, str) or isinstance(v, EnumValue)):
                raise CaffeFormatError(f"{source}:{at}: layer {lname!r}: {key} must be a quoted string, got {v!r}")
    param_field = _PARAM_FIELD.get(ltype, "")
    if not param_field:
        own = [n for n, _, _ in f if n.endswith("_param") and n not in _SHARED_PARAM_FIELDS]
        if len(set(own)) == 1:
            param_field = own[0]
    params: dict = {}
    rest = _Fields()
    for key, value, fline in f:
        if key in ("name", "type", "bottom", "top"):
            continue
        if key == param_field and isinstance(value, _Fields):
            if params:
                raise CaffeFormatError(f"{source}:{fline}: layer {lname!r} gives {key} twice")
            params = value.to_dict()
        else:
            rest.append((key, value, fline))
    return LayerSpec(name=lname, type=ltype, bottoms=list(f.all("bottom")), tops=list(f.all("top")),
                     params=params, line=line.line, extra=rest.to_dict(), param_field=param_field)


def _train_only(f: _Fields) -> bool:
    """Whether Caffe would leave this layer out of a TEST-phase (deploy) net."""
    includes = [r for r in f.all("include") if isinstance(r, _Fields)]
    excludes = [r for r in f.all("exclude") if isinstance(r, _Fields)]
    if includes and all(r.all("phase") == ["TRAIN"] for r in includes):
        return True
    return any(r.all("phase") == ["TEST"] for r in excludes)


# --------------------------------------------------------------------------- text: writer


def _quote(s: str) -> str:
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _format_scalar(key: str, value) -> str:
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return "true" if value else "false"
    if isinstance(value, EnumValue) or (isinstance(value, str) and key in _ENUM_FIELDS):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"field {key!r}: {value!r} is not a valid enum name")
        return str(value)
    if isinstance(value, str):
        return _quote(value)
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
    ``input_dim`` lines, unless the net has an ``Input`` layer and the syntax is V2 (V1 has
    no Input layer type, so there it becomes ``input``/``input_dim`` lines)."""
    syntax = syntax.lower()
    if syntax not in ("v1", "v2"):
        raise ValueError(f"syntax must be 'v1' or 'v2', got {syntax!r}")
    out: list[str] = []
    if net.name:
        out.append(f"name: {_quote(net.name)}")
    has_input_layer = any(l.type == "Input" for l in net.layers)
    if not has_input_layer or syntax == "v1":
        out.append(f"input: {_quote(net.input_name)}")
        out.extend(f"input_dim: {int(d)}" for d in net.input_shape)
    _format_fields(net.extra.items(), 0, out)
    for layer in net.layers:
        if layer.type == "Input" and syntax == "v1":
            continue
        out.append("layers {" if syntax == "v1" else "layer {")
        lines: list[tuple[str, object]] = [("bottom", b) for b in layer.bottoms]
        lines += [("top", t) for t in layer.tops]
        lines.append(("name", layer.name))
        if syntax == "v1":
            v1_name = _V2_TO_V1_NAME.get(layer.type)
            if v1_name is None:
                raise ValueError(f"layer {layer.name!r}: type {layer.type!r} has no V1 form; "
                                 "write this net with syntax='v2'")
            lines.append(("type", EnumValue(v1_name)))
        else:
            lines.append(("type", layer.type))
        lines += _extra_for_syntax(layer, syntax)
        if layer.params:
            pfield = layer.param_field or _PARAM_FIELD.get(layer.type)
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


# --------------------------------------------------------------------------- binary: wire format

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FLOAT_TAG = (5 << 3) | _I32  # BlobProto.data, unpacked: one tag byte per float
_FLOAT_RECORD = np.dtype([("tag", "u1"), ("value", "<f4")])
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
        if wire == _VARINT:
            value, nxt = self.varint(pos, end, f"{what}: field {number}")
            return number, wire, value, nxt, tag_pos, nxt
        if wire == _I64 or wire == _I32:
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise self.error(tag_pos, f"{what}: field {number} needs {size} bytes but the "
                                          f"message ends at byte {end}")
            return number, wire, pos, pos + size, tag_pos, pos + size
        if wire == _LEN:
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
            _expect(wire, wtype, _LEN, tag_pos, f"NetParameter field {number} (layer)")
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
            _expect(wire, wtype, _LEN, tag_pos, f"{what} name")
            name = wire.string(a, b, f"{what} name")
        elif number == f_type:
            if v1:
                _expect(wire, wtype, _VARINT, tag_pos, f"{what} type")
                enum = _V1_NUMBER_TO_NAME.get(a)
                ltype = V1_TO_V2_TYPE[enum] if enum is not None else f"V1LayerType{a}"
            else:
                _expect(wire, wtype, _LEN, tag_pos, f"{what} type")
                ltype = wire.string(a, b, f"{what} type")
        elif number in (f_bottom, f_top):
            _expect(wire, wtype, _LEN, tag_pos, f"{what} bottom/top")
            (bottoms if number == f_bottom else tops).append(wire.string(a, b, f"{what} bottom/top"))
        elif number == f_blobs:
            _expect(wire, wtype, _LEN, tag_pos, f"{what} blobs")
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
            _expect(wire, wtype, _VARINT, tag_pos, f"{what} legacy dim {number}")
            if a >= 1 << 63:
                raise wire.error(tag_pos, f"{what}: negative legacy dimension")
            legacy[number] = a
        elif number == 5:  # data
            if wtype == _LEN:
                if (b - a) % 4:
                    raise wire.error(tag_pos, f"{what}: packed float data of {b - a} bytes is not a "
                                              "multiple of 4")
                float_parts.append(np.frombuffer(buf, dtype="<f4", count=(b - a) // 4, offset=a))
                n_float += (b - a) // 4
            elif wtype == _I32:
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
            if wtype == _LEN:
                if (b - a) % 8:
                    raise wire.error(tag_pos, f"{what}: packed double data of {b - a} bytes is not a "
                                              "multiple of 8")
                double_parts.append(np.frombuffer(buf, dtype="<f8", count=(b - a) // 8, offset=a))
                n_double += (b - a) // 8
            elif wtype == _I64:
                double_parts.append(np.frombuffer(buf, dtype="<f8", count=1, offset=a))
                n_double += 1
            else:
                raise wire.error(tag_pos, f"{what}: double_data has wire type {wtype}, expected 2 or 1")
        elif number == 7:  # shape
            _expect(wire, wtype, _LEN, tag_pos, f"{what} shape")
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
        recs = np.frombuffer(buf, dtype=_FLOAT_RECORD, count=count, offset=pos + 5 * filled)
        bad = np.flatnonzero(recs["tag"] != _FLOAT_TAG)
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
        if wtype == _VARINT:
            add(a, tag_pos)
        elif wtype == _LEN:
            pos = a
            while pos < b:
                value, nxt = wire.varint(pos, b, f"{what} shape dim")
                add(value, pos)
                pos = nxt
        else:
            raise wire.error(tag_pos, f"{what}: shape dim has wire type {wtype}, expected 0 or 2")
    return dims


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
    return _key(number, _LEN) + _varint_bytes(len(payload)) + payload


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
                head += _key(number, _VARINT) + _varint_bytes(int(d))
        n = int(arr.size)
        if packed:
            head += _key(5, _LEN) + _varint_bytes(4 * n)
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
                recs = np.empty(part.size, dtype=_FLOAT_RECORD)
                recs["tag"] = _FLOAT_TAG
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
                v1_name = _V2_TO_V1_NAME.get(layer.type)
                if v1_name is None:
                    raise ValueError(f"layer {layer.name!r}: type {layer.type!r} has no V1 enum; "
                                     "write with format='v2'")
                for number, s in strings:
                    head += _len_field(number, s.encode("utf-8"))
                head += _len_field(4, layer.name.encode("utf-8"))
                head += _key(5, _VARINT) + _varint_bytes(V1_LAYER_TYPES[v1_name])
            else:
                head += _len_field(1, layer.name.encode("utf-8"))
                head += _len_field(2, layer.type.encode("utf-8"))
                for number, s in strings:
                    head += _len_field(number, s.encode("utf-8"))
            plans = [_BlobPlan(b, f"layer {layer.name!r} blob {i}", legacy_dims, packed)
                     for i, b in enumerate(layer.blobs)]
            blob_field = 6 if v1 else 7
            blob_heads = [_key(blob_field, _LEN) + _varint_bytes(p.size) for p in plans]
            layer_size = len(head) + sum(len(h) + p.size for h, p in zip(blob_heads, plans))
            fh.write(_key(2 if v1 else 100, _LEN) + _varint_bytes(layer_size))
            fh.write(head)
            for h, p in zip(blob_heads, plans):
                fh.write(h)
                p.write(fh)
    return Path(path)
