"""Caffe files, read and written with nothing but Python and numpy, and converted to Keras.

A Caffe release is a ``.prototxt`` (the network, protobuf *text* format) and a
``.caffemodel`` (the weights, protobuf *binary* format). One module per step:

- ``spec``: the plain objects every step speaks (``NetSpec``, ``LayerSpec``, ``CaffeLayerBlobs``);
- ``prototxt``: the text parser (``parse_prototxt``);
- ``caffemodel``: the binary reader (``read_caffemodel``, memory-mapped, ``numpy.frombuffer``),
  and mean files (``read_mean_file`` for a ``mean.binaryproto``);
- ``preprocessing``: each net's input recipe (``Preprocessing``: channel order, mean, scale, crop);
- ``writer``: both formats written back (``write_prototxt``, ``write_caffemodel``);
- ``keras_model``: Caffe layers -> a functional Keras model (``build_keras_model``);
- ``layers``: the Keras layers Caffe has and Keras lacks (preprocessing, LRN, -inf padding);
- ``weights``: Caffe blobs <-> Keras weights (the layout traps);
- ``convert``: end to end (``convert``, ``load_or_convert``) and ``python -m helpers.convert``;
- ``verify``: the independent check (OpenCV's importer, or a numpy forward pass) and the traps.

Importing this package does not load Keras; building or loading a model does.
"""
from .caffemodel import read_blobproto, read_caffemodel, read_mean_file
from .convert import load_or_convert  # the function convert() lives in helpers.caffe.convert
from .keras_model import build_keras_model, keras_layer_for_blob, set_class_names, unsupported_layers
from .preprocessing import VGGFACE_MEAN_BGR, Preprocessing
from .prototxt import parse_prototxt
from .spec import V1_LAYER_TYPES, V1_TO_V2_TYPE, CaffeFormatError, CaffeLayerBlobs, ConversionError, EnumValue, LayerSpec, NetSpec, keras_layer_name
from .weights import keras_to_caffe_blobs, load_caffe_weights
from .writer import format_prototxt, write_blobproto, write_caffemodel, write_prototxt

__all__ = [
    "V1_LAYER_TYPES", "V1_TO_V2_TYPE", "CaffeFormatError", "CaffeLayerBlobs", "ConversionError", "EnumValue", "LayerSpec",
    "NetSpec", "Preprocessing", "VGGFACE_MEAN_BGR", "build_keras_model", "keras_layer_for_blob", "keras_layer_name",
    "format_prototxt", "keras_to_caffe_blobs", "load_caffe_weights", "load_or_convert",
    "parse_prototxt", "read_blobproto", "read_caffemodel", "read_mean_file", "set_class_names", "unsupported_layers",
    "write_blobproto", "write_caffemodel", "write_prototxt",
]
