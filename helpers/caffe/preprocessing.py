"""How an image becomes a Caffe net's input blob, per network, carried by the converted model.

Caffe nets never saw RGB 0-255 images: each release expects its own channel order, mean
(per channel, or a whole mean image from a ``mean.binaryproto``), scale, crop and input size.
A :class:`Preprocessing` says which; ``build_keras_model`` turns it into the model's first
layer (``preprocess``), so that the converted model takes plain RGB (or grey) images 0-255 and
nothing outside it ever subtracts means or swaps channels. ``to_blob`` is the same recipe in
numpy, written the Caffe way (channels first), for the independent check in ``verify``.

VGG-Face's (BGR minus a per-channel mean, no scale, no crop) is the default.

Imports numpy only: no Keras.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .spec import ConversionError, first_value

# The mean face colour of the VGG-Face training set, in Caffe's channel order (B, G, R).
VGGFACE_MEAN_BGR = (93.5940, 104.7624, 129.1863)
CHANNEL_ORDERS = ("BGR", "RGB", "GRAY")


@dataclass(frozen=True)
class Preprocessing:
    """One network's input recipe, applied in Caffe's order: channel order, minus the mean,
    times ``scale``, then a centre crop (Caffe's TEST-phase crop, offset ``(size - crop) // 2``).

    - ``channel_order``: the order of the net's input channels: ``"BGR"`` (Caffe's usual, images
      loaded by OpenCV), ``"RGB"``, or ``"GRAY"`` for a 1-channel net. Images given to the model
      are always RGB (or grey for ``"GRAY"``).
    - ``mean``: one value per channel, in the net's channel order, or None.
    - ``mean_image``: a (C, H, W) mean in the net's channel order (a ``mean.binaryproto``), or
      None; subtracted at the model's input size, before the crop (as Caffe's data layer does).
    - ``scale``: multiplies after the mean (Caffe's ``transform_param { scale }``, e.g. 1/256).
    - ``crop``: (h, w) the net sees, cut from the centre of the model's input, or None.
    - ``input_hw``: the image size the model takes; default the mean image's size, else the
      net's input size (which must then be the crop when there is one).
    """

    channel_order: str = "BGR"
    mean: tuple[float, ...] | None = VGGFACE_MEAN_BGR
    mean_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    scale: float = 1.0
    crop: tuple[int, int] | None = None
    input_hw: tuple[int, int] | None = None
    source: str = "VGG-Face's"  # where the values came from, for messages and notebook output

    def __post_init__(self):
        order = str(self.channel_order).upper()
        if order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        object.__setattr__(self, "channel_order", order)
        if self.mean is not None:
            mean = tuple(float(m) for m in np.atleast_1d(self.mean))
            if len(mean) == 1 and self.channels > 1:  # Caffe: one mean_value serves every channel
                mean = mean * self.channels
            if len(mean) != self.channels:
                raise ValueError(f"mean has {len(mean)} values but channel order {order} has "
                                 f"{self.channels} channel(s)")
            object.__setattr__(self, "mean", mean)
        if self.mean_image is not None:
            image = np.asarray(self.mean_image, dtype=np.float32)
            if image.ndim != 3 or image.shape[0] != self.channels:
                raise ValueError(f"mean_image must be ({self.channels}, H, W) for channel order {order}, "
                                 f"got shape {image.shape}")
            object.__setattr__(self, "mean_image", image)
        for name in ("crop", "input_hw"):
            value = getattr(self, name)
            if value is not None:
                pair = tuple(int(v) for v in (value if np.ndim(value) else (value, value)))
                if len(pair) != 2 or min(pair) <= 0:
                    raise ValueError(f"{name} must be (h, w) with positive sizes, got {value!r}")
                object.__setattr__(self, name, pair)
        object.__setattr__(self, "scale", float(self.scale))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def vggface(cls) -> "Preprocessing":
        """VGG-Face's: BGR minus the VGG-Face mean colour (the default)."""
        return cls()

    @classmethod
    def identity(cls, channels: int = 3) -> "Preprocessing":
        """No preprocessing: the model's input is the Caffe input blob itself (channels first
        order aside): grey for 1 channel, RGB taken as the net's order for 3."""
        return cls(channel_order="GRAY" if channels == 1 else "RGB", mean=None, source="none")

    @classmethod
    def from_mean_file(cls, path: str | os.PathLike, *, crop=None, channel_order: str = "BGR",
                       scale: float = 1.0) -> "Preprocessing":
        """The mean image of a ``mean.binaryproto`` (read with :func:`caffemodel.read_mean_file`)."""
        from .caffemodel import read_mean_file

        image = read_mean_file(path)
        return cls(channel_order=channel_order, mean=None, mean_image=image, scale=scale, crop=crop,
                   input_hw=image.shape[1:], source=f"mean image {Path(path).name}")

    @classmethod
    def from_transform_param(cls, net, *, mean_file_dir=None) -> "Preprocessing | None":
        """The recipe a train_val net's data layer states in ``transform_param`` (``mean_value``,
        ``mean_file``, ``scale``, ``crop_size``), or None when the input layer has none.

        A ``mean_file`` is read relative to ``mean_file_dir`` (default: the prototxt's folder);
        a missing one is an error naming the layer (the mean cannot be guessed).
        """
        layer = next((l for l in net.layers if l.name == net.input_layer), None)
        if layer is None or "transform_param" not in layer.extra:
            return None
        t = layer.extra["transform_param"]
        t = t[0] if isinstance(t, list) else t
        channels = net.input_shape[1] if net.input_shape else None
        order = "GRAY" if channels == 1 else "BGR"
        crop = first_value(t.get("crop_size"))
        kwargs = dict(channel_order=order, mean=None, scale=float(first_value(t.get("scale"), 1.0)),
                      crop=(int(crop), int(crop)) if crop else None,
                      source=f"transform_param of layer {layer.name!r}")
        if "mean_value" in t:
            kwargs["mean"] = tuple(np.atleast_1d(t["mean_value"]).astype(float))
        if "mean_file" in t:
            folder = Path(mean_file_dir) if mean_file_dir else (
                Path(net.source).parent if net.source not in ("<text>", "") else Path.cwd())
            path = folder / str(t["mean_file"])
            if not path.is_file():
                raise ConversionError(f"{net.source}, line {layer.line}, layer {layer.name!r}: its mean_file "
                                      f"{t['mean_file']!r} is not at {path}; pass mean_file_dir or a Preprocessing")
            base = cls.from_mean_file(path, crop=kwargs["crop"], channel_order=order, scale=kwargs["scale"])
            return replace(base, source=f"{kwargs['source']} ({path.name})")
        return cls(**kwargs)

    # ------------------------------------------------------------------ properties

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    @property
    def is_vggface(self) -> bool:
        return self == Preprocessing.vggface() and self.mean_image is None

    def model_input_hw(self, net_hw) -> tuple[int, int]:
        """The image size the model takes for a net whose input is ``net_hw``."""
        if self.input_hw is not None:
            return self.input_hw
        if self.mean_image is not None:
            return tuple(self.mean_image.shape[1:])
        return tuple(int(v) for v in net_hw)

    def describe(self) -> str:
        """One line a learner can read: what the model's ``preprocess`` layer does."""
        steps = ["RGB -> BGR" if self.channel_order == "BGR" else
                 ("grey" if self.channel_order == "GRAY" else "RGB kept")]
        if self.mean is not None:
            steps.append("minus (" + ", ".join(f"{m:.4g}" for m in self.mean) + ")")
        if self.mean_image is not None:
            c, h, w = self.mean_image.shape
            steps.append(f"minus a {h}x{w} mean image")
        if self.scale != 1.0:
            steps.append(f"times {self.scale:.6g}")
        if self.crop is not None:
            steps.append(f"centre crop {self.crop[0]}x{self.crop[1]}")
        return f"{', '.join(steps)} ({self.source})"

    # ------------------------------------------------------------------ the Caffe way, in numpy

    def to_blob(self, images) -> np.ndarray:
        """Images as the model takes them ((N, H, W, C) 0-255, RGB or grey) -> the Caffe input blob
        (N, C, h, w) float32, computed channels first the way Caffe's data layer does it."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3 and self.channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"images must be (N, H, W, {self.channels}) for channel order "
                             f"{self.channel_order}, got shape {x.shape}")
        chw = x.transpose(0, 3, 1, 2)
        if self.channel_order == "BGR":
            chw = chw[:, ::-1]
        if self.mean is not None:
            chw = chw - np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        if self.mean_image is not None:
            if self.mean_image.shape[1:] != chw.shape[2:]:
                raise ValueError(f"images are {chw.shape[2]}x{chw.shape[3]} but the mean image is "
                                 f"{self.mean_image.shape[1]}x{self.mean_image.shape[2]}")
            chw = chw - self.mean_image[None]
        if self.scale != 1.0:
            chw = chw * np.float32(self.scale)
        if self.crop is not None:
            (h, w), (ch, cw) = chw.shape[2:], self.crop
            top, left = (h - ch) // 2, (w - cw) // 2
            chw = chw[:, :, top:top + ch, left:left + cw]
        return np.ascontiguousarray(chw, dtype=np.float32)

    # ------------------------------------------------------------------ the Keras layer's settings

    def layer_config(self) -> dict:
        """The keyword arguments of ``layers.CaffePreprocess`` (the mean image goes in as a weight)."""
        return {"channel_order": self.channel_order, "mean": None if self.mean is None else list(self.mean),
                "scale": self.scale, "crop": None if self.crop is None else list(self.crop),
                "mean_image_shape": None if self.mean_image is None else list(self.mean_image.shape)}
