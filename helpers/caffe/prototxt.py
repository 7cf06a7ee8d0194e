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


from .spec import INPUT_TYPES, CaffeFormatError, EnumValue, LayerSpec, NetSpec, V1_TO_V2_TYPE, PARAM_FIELD, SHARED_PARAM_FIELDS, show_value

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


def parse_prototxt(path_or_text: str | os.PathLike, *, phase: str = "TEST", stages=(), level: int = 0,
                   input_shape=None) -> NetSpec:
    """Parse a prototxt (V1 or V2 syntax) given as a path or as the text itself.

    A ``str`` that names an existing file, or any ``os.PathLike``, is read as a file;
    any other ``str`` is the prototxt text. A solver file with the net inside it
    (``net_param { ... }``) gives that net.

    Layers are filtered as Caffe filters them before anything else (``Net::FilterNet``): in the
    given ``phase`` (TEST, as for a deployed net, unless told otherwise), with ``stages`` added
    to the file's own ``state { stage: ... }`` and at ``level``, a layer with ``include`` rules
    is kept when one rule is met, a layer with ``exclude`` rules is left out when one is met.
    A rule is met when its ``phase`` matches, ``min_level <= level <= max_level``, every one of
    its ``stage`` values is among the stages and none of its ``not_stage`` values is. The layers
    left out are named in ``NetSpec.skipped``.

    The network input is the ``input:`` declaration, an ``Input`` layer, or the first top of a
    data layer (``Data``, ``ImageData``, ``MemoryData``, ...), with its shape when the file gives
    one (``DummyData``/``MemoryData`` dimensions, a ``crop_size`` or ``new_height``/``new_width``
    with a known channel count); ``input_shape`` ((N, C, H, W) or (C, H, W)) gives or
    overrides it. An unknown shape is ``None`` (converting then asks for it).
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
    phase = str(phase).upper()
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
    stages, level = [str(s) for s in stages], int(level)
    nets = [v for n, v, _ in top if n == "net_param" and isinstance(v, _Fields)]
    if nets and not any(n in ("layer", "layers") for n, _, _ in top):
        # A solver that holds its net (Caffe's "consolidated" solver files). Like Caffe's first
        # test net, the TEST phase uses the solver's first test_state unless stages are given.
        test_states = [v for n, v, _ in top if n == "test_state" and isinstance(v, _Fields)]
        if phase == "TEST" and test_states and not stages:
            stages = [str(s) for s in test_states[0].all("stage")]
            level = int(_first(test_states[0].all("level"), level))
        top = nets[0]
    state = {"phase": phase, "stages": _file_stages(top) + stages, "level": level}
    return _net_from_fields(top, source, state, input_shape)


def _file_stages(top: _Fields) -> list[str]:
    """The stages of the net's own ``state { stage: ... }`` (Caffe adds the caller's to them)."""
    return [str(s) for st in top.all("state") if isinstance(st, _Fields) for s in st.all("stage")]


def _net_from_fields(top: _Fields, source: str, state: dict, input_shape=None) -> NetSpec:
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
    for key, value, line in top:
        if key in ("layer", "layers"):
            if not isinstance(value, _Fields):
                raise CaffeFormatError(f"{source}:{line}: '{key}' must be a message {{ ... }}")
            layer = _layer_from_fields(value, line, v1=(key == "layers"), source=source)
            if not _kept(value, state, source, line, layer.name):
                skipped.append(layer.name)
                continue
            # Caffe accepts a name used twice (BVLC's mnist_autoencoder has two "loss" layers);
            # so does the parser. Converting refuses it (weights are found by layer name).
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
    declared = _declared_inputs(source, inputs, input_dims, input_shapes)
    input_name, shape, input_layer = _net_input(source, declared, layers, skipped, state, _rule_stages(top))
    if input_shape is not None:
        shape = _given_shape(input_shape, shape, source, input_name)
    return NetSpec(name=name, input_name=input_name, input_shape=shape, layers=layers,
                   skipped=skipped, source=source, extra=extra.to_dict(), input_layer=input_layer,
                   extra_inputs=dict(declared[1:]), state=state)


def _declared_inputs(source, inputs, input_dims, input_shapes) -> list[tuple[str, tuple]]:
    """``input:`` declarations with their shapes: four ``input_dim`` per input, or one
    ``input_shape`` per input, in order (Caffe's two legacy forms)."""
    if not inputs:
        return []
    if input_shapes and input_dims:
        raise CaffeFormatError(f"{source}:{inputs[0][1]}: both input_dim and input_shape given for "
                               f"{inputs[0][0]!r}")
    out = []
    for i, (name, line) in enumerate(inputs):
        if input_shapes:
            if i >= len(input_shapes):
                raise CaffeFormatError(f"{source}:{line}: input {name!r} has no input_shape "
                                       f"({len(inputs)} inputs, {len(input_shapes)} input_shape messages)")
            shape_fields, sline = input_shapes[i]
            dims = _dims(shape_fields, source, sline)
        elif input_dims:
            dims = [d for d, _ in input_dims[4 * i:4 * i + 4]]
            if len(inputs) > 1 and len(input_dims) != 4 * len(inputs):
                raise CaffeFormatError(f"{source}:{line}: {len(inputs)} inputs need {4 * len(inputs)} "
                                       f"input_dim lines, found {len(input_dims)}")
            if len(inputs) == 1:
                dims = [d for d, _ in input_dims]
        else:
            raise CaffeFormatError(f"{source}:{line}: input {name!r} has no shape: expected four "
                                   "'input_dim' lines or 'input_shape { dim: ... }'")
        out.append((name, _four(dims, source, line, name)))
    return out


def _rule_stages(top: _Fields) -> list[str]:
    """Every stage that some layer's include/exclude rule names, in file order."""
    found: list[str] = []
    for key, layer, _ in top:
        if key in ("layer", "layers") and isinstance(layer, _Fields):
            for rule in layer.all("include") + layer.all("exclude"):
                if isinstance(rule, _Fields):
                    found += [str(s) for s in rule.all("stage") + rule.all("not_stage") if str(s) not in found]
    return found


def _net_input(source, declared, layers, skipped, state, rule_stages=()):
    """(input blob, its shape or None, the layer providing it or "")."""
    if declared:
        producers = [l for l in layers if l.type in INPUT_TYPES]
        if producers:
            l = producers[0]
            raise CaffeFormatError(f"{source}:{l.line}: the net declares its input with 'input:' and also "
                                   f"has the {l.type} layer {l.name!r}; a net has one or the other")
        name, shape = declared[0]
        return name, shape, ""
    producers = [l for l in layers if l.type in INPUT_TYPES]
    if not producers:
        where_skipped = f"; the rules left out {', '.join(skipped)}" if skipped else ""
        if rule_stages:
            where_skipped += f" (the file's rules name the stages {', '.join(map(repr, rule_stages))}: pass stages=[...])"
        raise CaffeFormatError(
            f"{source}: no network input in the {state['phase']} phase (stages {state['stages'] or 'none'}, "
            f"level {state['level']}): expected 'input: \"data\"' with four 'input_dim' lines or an "
            f"'input_shape {{ dim: ... }}', an \"Input\" layer or a data layer{where_skipped}")
    layer = producers[0]
    if not layer.tops:
        raise CaffeFormatError(f"{source}:{layer.line}: {layer.type} layer {layer.name!r} has no top")
    return layer.tops[0], _layer_input_shape(layer, source), layer.name


def _layer_input_shape(layer, source):
    """The (N, C, H, W) of a layer's first top as far as the file says it, else None."""
    p = layer.params
    if layer.type in ("Input", "DummyData"):
        shape = p.get("shape")
        if shape is None:
            if layer.type == "Input":
                raise CaffeFormatError(f"{source}:{layer.line}: Input layer {layer.name!r} has no "
                                       "input_param { shape { dim: ... } }")
            legacy = [p.get(k) for k in ("num", "channels", "height", "width")]
            if all(v is not None for v in legacy):
                return _four([_first(v) for v in legacy], source, layer.line, layer.tops[0])
            return None
        if isinstance(shape, list):
            shape = shape[0]
        dims = shape.get("dim", []) if isinstance(shape, dict) else []
        dims = dims if isinstance(dims, list) else [dims]
        if layer.type == "DummyData" and len(dims) != 4:
            return None  # a non-image blob (DummyData often feeds vectors): no (N, C, H, W)
        return _four(dims, source, layer.line, layer.tops[0])
    if layer.type == "MemoryData":
        dims = [p.get(k) for k in ("batch_size", "channels", "height", "width")]
        return _four([_first(d) for d in dims], source, layer.line, layer.tops[0]) if None not in dims else None
    transform = layer.extra.get("transform_param", {})
    transform = transform[0] if isinstance(transform, list) else transform
    crop = _first(transform.get("crop_size")) if isinstance(transform, dict) else None
    means = transform.get("mean_value") if isinstance(transform, dict) else None
    channels = len(means) if isinstance(means, list) else None
    if layer.type == "WindowData":
        channels = 3  # WindowData always reads colour images
    if layer.type == "ImageData":
        channels = 3 if _first(p.get("is_color"), True) else 1
        h, w = _first(p.get("new_height")), _first(p.get("new_width"))
        if not crop and h and w:
            return _four([_first(p.get("batch_size"), 1), channels, h, w], source, layer.line, layer.tops[0])
    batch = _first(p.get("batch_size"), 1)
    if crop and channels:
        return _four([batch, channels, crop, crop], source, layer.line, layer.tops[0])
    return None


def _first(value, default=None):
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def _given_shape(given, found, source, name) -> tuple[int, int, int, int]:
    """The caller's (N, C, H, W) or (C, H, W) for the input (N from the file, else 1)."""
    dims = [int(d) for d in given]
    if len(dims) == 3:
        dims = [found[0] if found else 1] + dims
    if len(dims) != 4 or min(dims) <= 0:
        raise ValueError(f"{source}: input_shape for {name!r} must be (N, C, H, W) or (C, H, W) with "
                         f"positive sizes, got {tuple(given)}")
    return tuple(dims)  # type: ignore[return-value]


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


def _kept(f: _Fields, state: dict, source: str, line, name: str) -> bool:
    """Whether Caffe keeps this layer in a net of ``state`` (``Net::FilterNet``)."""
    includes = [r for r in f.all("include") if isinstance(r, _Fields)]
    excludes = [r for r in f.all("exclude") if isinstance(r, _Fields)]
    if includes and excludes:
        raise CaffeFormatError(f"{source}:{line}: layer {name!r} gives both include and exclude rules; "
                               "Caffe accepts one or the other")
    if includes:
        return any(_meets(r, state) for r in includes)
    return not any(_meets(r, state) for r in excludes)


def _meets(rule: _Fields, state: dict) -> bool:
    """Caffe's ``Net::StateMeetsRule``."""
    phases = rule.all("phase")
    if phases and str(phases[-1]) != state["phase"]:
        return False
    min_level, max_level = rule.all("min_level"), rule.all("max_level")
    if min_level and state["level"] < int(min_level[-1]):
        return False
    if max_level and state["level"] > int(max_level[-1]):
        return False
    stages = set(state["stages"])
    if any(str(s) not in stages for s in rule.all("stage")):
        return False
    return not any(str(s) in stages for s in rule.all("not_stage"))
