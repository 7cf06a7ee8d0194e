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



@keras.saving.register_keras_serializable(package="helpers")
class CaffePreprocess(keras.layers.Layer):
    """A Caffe net's input recipe as the model's first layer (``helpers.caffe.preprocessing``).

    RGB (or grey) float 0-255 (N, H, W, C) in; out what the Caffe net expects: channels in the
    net's order, minus the mean (per channel, or a mean image kept as a non-trainable weight
    ``mean_image`` so that it is saved with the model), times ``scale``, centre-cropped to
    ``crop`` with Caffe's offsets ``(size - crop) // 2``.
    """

    def __init__(self, channel_order="BGR", mean=None, scale=1.0, crop=None, mean_image_shape=None, **kwargs):
        super().__init__(**kwargs)
        self.channel_order = str(channel_order).upper()
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.scale = float(scale)
        self.crop = None if crop is None else tuple(int(v) for v in crop)
        self.mean_image_shape = None if mean_image_shape is None else tuple(int(v) for v in mean_image_shape)

    def build(self, input_shape):
        if self.mean_image_shape is not None:
            c, h, w = self.mean_image_shape
            if tuple(input_shape[1:]) != (h, w, c):
                raise ValueError(f"layer {self.name!r}: a {h}x{w}x{c} mean image needs inputs of that size, "
                                 f"got {tuple(input_shape[1:])}")
            # NHWC, as the inputs; filled from the mean file after the model is built
            self.mean_image = self.add_weight(name="mean_image", shape=(h, w, c), initializer="zeros",
                                              trainable=False)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.channel_order == "BGR":
            x = ops.flip(x, axis=-1)
        if self.mean is not None:
            x = x - ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        if self.mean_image_shape is not None:
            x = x - ops.cast(self.mean_image, self.compute_dtype)
        if self.scale != 1.0:
            x = x * self.scale
        if self.crop is not None:
            (h, w), (ch, cw) = inputs.shape[1:3], self.crop
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, top:top + ch, left:left + cw, :]
        return x

    def compute_output_shape(self, input_shape):
        if self.crop is None:
            return tuple(input_shape)
        return (input_shape[0], *self.crop, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "channel_order": self.channel_order,
                "mean": None if self.mean is None else list(self.mean), "scale": self.scale,
                "crop": None if self.crop is None else list(self.crop),
                "mean_image_shape": None if self.mean_image_shape is None else list(self.mean_image_shape)}


@keras.saving.register_keras_serializable(package="helpers")
class LRN(keras.layers.Layer):
    """Caffe's local response normalisation, exactly (``lrn_layer.cpp``), on NHWC tensors.

    ``ACROSS_CHANNELS``: ``y = x / (k + alpha/n * sum of x^2 over n neighbouring channels)^beta``,
    the window centred on the channel and zero-padded at the ends. ``WITHIN_CHANNEL``:
    ``y = x / (1 + alpha/n^2 * sum of x^2 over an n x n zero-padded window)^beta``: Caffe builds
    it from an average pooling and a Power layer with shift 1, so ``k`` is not used there.
    """

    def __init__(self, local_size=5, alpha=1.0, beta=0.75, k=1.0, norm_region="ACROSS_CHANNELS", **kwargs):
        super().__init__(**kwargs)
        self.local_size = int(local_size)
        if self.local_size % 2 != 1:
            raise ValueError(f"LRN local_size must be odd (Caffe requires it), got {local_size}")
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        self.norm_region = str(norm_region).upper()
        if self.norm_region not in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
            raise ValueError(f"LRN norm_region must be ACROSS_CHANNELS or WITHIN_CHANNEL, got {norm_region!r}")

    def call(self, inputs):
        n, pad = self.local_size, (self.local_size - 1) // 2
        square = ops.square(inputs)
        if self.norm_region == "ACROSS_CHANNELS":
            padded = ops.pad(square, [[0, 0], [0, 0], [0, 0], [pad, pad]])
            channels = inputs.shape[-1]
            total = padded[..., 0:channels]
            for i in range(1, n):
                total = total + padded[..., i:i + channels]
            scale = self.k + (self.alpha / n) * total
        else:
            padded = ops.pad(square, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            mean = ops.average_pool(padded, pool_size=n, strides=1, padding="valid")  # divides by n * n
            scale = 1.0 + self.alpha * mean
        return inputs * ops.power(scale, -self.beta)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "local_size": self.local_size, "alpha": self.alpha, "beta": self.beta,
                "k": self.k, "norm_region": self.norm_region}
