"""What a Caffe release describes, as plain Python objects: layers, nets, blobs.

The parser (``prototxt``), the reader (``caffemodel``) and the writer (``writer``) all
speak these types. V1 layer type names are normalised to V2 names the way Caffe's
``upgrade_proto.cpp`` does (tables from Caffe's ``src/caffe/proto/caffe.proto``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class CaffeFormatError(ValueError):
    """A Caffe file that does not follow the format; the message names file and position."""


class EnumValue(str):
    """A protobuf enum value read from text (``pool: MAX``): compares equal to ``"MAX"``,
    and :func:`format_prototxt` writes it back without quotes."""

    __slots__ = ()


def quote(s: str) -> str:
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


def show_value(value) -> str:
    """A text-format value as the file spelled it: enums bare, strings in double quotes."""
    if isinstance(value, EnumValue):
        return str(value)
    if isinstance(value, str):
        return quote(value)
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
V2_TO_V1_NAME = {v2: v1 for v1, v2 in V1_TO_V2_TYPE.items() if v2}
V1_NUMBER_TO_NAME = {n: name for name, n in V1_LAYER_TYPES.items()}

# The type-specific parameter message of each layer type (LayerParameter field names).
PARAM_FIELD = {
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
SHARED_PARAM_FIELDS = {"transform_param", "loss_param"}
# Enum-typed fields in Caffe messages: plain strings in these are written unquoted.
ENUM_FIELDS = {
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
    """A parsed prototxt: the input, the layers in file order (those that Caffe's phase, stage
    and level rules leave out are removed and named in ``skipped``) and where it came from."""

    name: str
    input_name: str
    # (N, C, H, W); None when the input comes from a data layer whose file does not say its
    # shape (an LMDB ``Data`` layer, ``HDF5Data``): converting then needs an input shape.
    input_shape: tuple[int, int, int, int] | None
    layers: list[LayerSpec]
    skipped: list[str]
    source: str  # file path or "<text>"
    # Other top-level fields (force_backward, state, ...), kept for format_prototxt.
    extra: dict = field(default_factory=dict)
    # The layer whose first top is the input ("" when the file declares it with ``input:``).
    input_layer: str = ""
    # Further ``input:`` declarations beyond the first (name -> shape), e.g. a second image.
    extra_inputs: dict = field(default_factory=dict)
    # The state the layers were filtered with: {"phase": "TEST", "stages": [...], "level": 0}.
    state: dict = field(default_factory=lambda: {"phase": "TEST", "stages": [], "level": 0})

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


# --------------------------------------------------------------------------- reading layer parameters

# Layers that read data from outside the net (a file, memory, a generator); in a deploy
# conversion their first top is the network's input.
DATA_TYPES = ("Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "DummyData", "AnnotatedData")
# Layers that only declare or provide the input; its shape is already in NetSpec.input_shape.
INPUT_TYPES = ("Input",) + DATA_TYPES
WEIGHTED_TYPES = ("Convolution", "InnerProduct")


def keras_layer_name(caffe_name: str) -> str:
    """The Keras name of a Caffe layer: Caffe's own, with '/' (which Keras refuses) as '.'.

    GoogLeNet's ``inception_3a/1x1`` becomes ``inception_3a.1x1``; every other name is kept.
    """
    return caffe_name.replace("/", ".")


class ConversionError(ValueError):
    """The Caffe files cannot be turned into the Keras model (the message says where and why)."""


def first_value(value, default=None):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def param_pair(params: dict, key: str, key_h: str, key_w: str, default: int) -> tuple[int, int]:
    """Caffe's (h, w) from ``key`` (scalar or repeated) or ``key_h``/``key_w``."""
    if key_h in params or key_w in params:
        return int(params.get(key_h, default)), int(params.get(key_w, default))
    value = params.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return default, default
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)


def where(net, layer) -> str:
    return f"{net.source}, line {layer.line}, layer {layer.name!r} ({layer.type})"


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooling output size: rounded UP, minus a last window that would start in the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def keras_pool_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1
