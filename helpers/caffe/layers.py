"""Keras layers that Caffe has and Keras lacks, registered for ``keras.saving.load_model``.

Importing this module registers them (``helpers.vggface`` imports it, so a converted model
loads after ``import helpers.vggface``).
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="helpers")
class ConstantPad2D(keras.layers.Layer):
    """Pads H and W with a constant; -inf before a max pooling reproduces Caffe's ceil-mode windows.

    ``pads`` is ``((top, bottom), (left, right))``. Keras' ``ZeroPadding2D`` would let a zero win
    a max over negative values, which Caffe never does.
    """

    def __init__(self, pads=((0, 0), (0, 0)), value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.pads = tuple(tuple(int(v) for v in pair) for pair in pads)
        self.value = float(value)

    def call(self, inputs):
        (t, b), (l, r) = self.pads
        return ops.pad(inputs, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=self.value)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        (t, b), (l, r) = self.pads
        return (n, None if h is None else h + t + b, None if w is None else w + l + r, c)

    def get_config(self):
        return {**super().get_config(), "pads": [list(p) for p in self.pads], "value": self.value}

