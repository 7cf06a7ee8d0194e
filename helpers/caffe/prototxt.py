"""The ``.prototxt`` parser: protobuf *text* format, V1 (``layers { type: CONVOLUTION }``) and
V2 (``layer { type: "Convolution" }``) syntax, into a :class:`~helpers.caffe.spec.NetSpec`.

A tokenizer and a recursive-descent parser of the text format (``#`` comments, strings with
escapes, numbers, enums, nested messages). Syntax errors raise
:class:`~helpers.caffe.spec.CaffeFormatError` naming file, line and column.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path


from .spec import CaffeFormatError, EnumValue, LayerSpec, NetSpec, V1_TO_V2_TYPE, PARAM_FIELD, SHARED_PARAM_FIELDS, show_value

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
                f"{source}:{type_at}: V1 layer {lname!r} has type {show_value(raw_type)}; expected an unquoted "
                f"V1 enum name such as CONVOLUTION (one of {', '.join(sorted(V1_TO_V2_TYPE))})")
        ltype = V1_TO_V2_TYPE[str(raw_type)]
    else:
        if not isinstance(raw_type, str) or isinstance(raw_type, EnumValue) or not raw_type:
            raise CaffeFormatError(
                f"{source}:{type_at}: V2 layer {lname!r} has type {show_value(raw_type)}; expected a quoted "
                "type string such as \"Convolution\"")
        ltype = raw_type
    for key in ("bottom", "top"):
        for fname, v, at in f:
            if fname == key and (not isinstance(v, str) or isinstance(v, EnumValue)):
                raise CaffeFormatError(f"{source}:{at}: layer {lname!r}: {key} must be a quoted string, got {v!r}")
    param_field = PARAM_FIELD.get(ltype, "")
    if not param_field:
        own = [n for n, _, _ in f if n.endswith("_param") and n not in SHARED_PARAM_FIELDS]
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


