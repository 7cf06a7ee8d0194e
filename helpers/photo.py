"""Your own photo through the gender model (notebook 06, "Try it on your own photo").

Reading the file (any format Pillow reads, EXIF rotation applied), finding the face, a square
crop around it, the crop as the model sees it, and both class probabilities with the calibrated
temperature. Every step says what went wrong in words a learner understands: a file that is not
an image, no face, several faces.

The face detector is dlib's frontal face detector (a HOG + linear SVM detector whose model is
compiled into the package: nothing is downloaded at run time). Colab ships dlib itself; locally
and in CI the prebuilt wheel ``dlib-bin`` installs in seconds (the ``dlib`` source package
compiles for minutes). OpenCV is no alternative on Colab: OpenCV 5 has no ``CascadeClassifier``
and no bundled cascades, and its ``FaceDetectorYN`` needs a model file. Without dlib, or when no
face is found, the learner places the square by hand (``helpers.widgets.CropPanel``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

# The detector's box is tight around brows, eyes, nose and mouth; Adience's aligned faces (and
# the synthetic ones) show the whole head with a margin: the crop is this many times the box.
CROP_SCALE = 2.0
# Faces smaller than this (pixels, the detector's box) are not found reliably: upsample first.
MIN_FACE = 80


class NotAnImageError(ValueError):
    """The file could not be read as an image."""


def read_image(source, name: str | None = None) -> np.ndarray:
    """An image file (a path, or its bytes) as RGB uint8 (H, W, 3), upright (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(source) if isinstance(source, (str, Path)) else "the uploaded file")
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    except OSError as exc:
        raise NotAnImageError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc
    if not data:
        raise NotAnImageError(f"{label}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow's own words for an unknown format name a BytesIO object: say nothing more than that
        detail = "" if isinstance(exc, UnidentifiedImageError) else f" ({exc})"
        raise NotAnImageError(f"{label}: this is not an image that Pillow can read "
                              f"(JPEG, PNG, WebP, ...){detail}") from exc
    if min(rgb.shape[:2]) < 16:
        raise NotAnImageError(f"{label}: the image is {rgb.shape[1]}×{rgb.shape[0]} pixels; a face needs more than that")
    return rgb


def face_detector():
    """dlib's frontal face detector, or ``(None, why)`` when dlib is not installed."""
    try:
        import dlib
    except ImportError:
        return None, ("dlib is not installed (pip install dlib-bin; Colab has dlib): "
                      "place the square on the face with the sliders")
    return dlib.get_frontal_face_detector(), f"dlib {getattr(dlib, '__version__', '')} frontal face detector (HOG)".replace("  ", " ")


@dataclass
class FaceSearch:
    """What the detector found: ``boxes`` as squares (left, top, side) around each face, largest first."""

    boxes: list[tuple[int, int, int]]
    detector: str
    message: str
    detections: list[tuple[int, int, int, int]] = field(default_factory=list)  # the detector's (left, top, right, bottom)

    @property
    def status(self) -> str:
        if self.detector.startswith("none"):
            return "no detector"
        return {0: "no face", 1: "one face"}.get(len(self.boxes), "several faces")


def square_around(rect: Sequence[int], image_hw: tuple[int, int], scale: float = CROP_SCALE) -> tuple[int, int, int]:
    """A square (left, top, side) ``scale`` times the box ``rect`` = (left, top, right, bottom),
    centred on it, shrunk and moved as needed to stay inside the image."""
    h, w = image_hw
    l, t, r, b = (float(v) for v in rect)
    side = int(round(min(max(r - l, b - t) * scale, h, w)))
    cx, cy = (l + r) / 2, (t + b) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return left, top, side


def find_faces(image: np.ndarray, detector=None) -> FaceSearch:
    """Run the detector (upsampling small images so that faces of ~40 px are found)."""
    if detector is None:
        detector, name = face_detector()
        if detector is None:
            return FaceSearch([], "none", name)
    else:
        name = "the given detector"
    h, w = image.shape[:2]
    upsample = 1 if min(h, w) < 4 * MIN_FACE else 0
    rects = [(r.left(), r.top(), r.right(), r.bottom()) for r in detector(np.ascontiguousarray(image), upsample)]
    rects.sort(key=lambda r: -(r[2] - r[0]) * (r[3] - r[1]))
    boxes = [square_around(r, (h, w)) for r in rects]
    if not boxes:
        message = ("No face found (the detector looks for frontal, upright faces). "
                   "Place the square on the face with the sliders, or try another photo.")
    elif len(boxes) == 1:
        message = f"One face found ({rects[0][2] - rects[0][0]} px wide)."
    else:
        message = (f"{len(boxes)} faces found: the largest is used. A photo of one person says "
                   "more; move the square with the sliders to choose another face.")
    return FaceSearch(boxes, name, message, rects)


def crop(image: np.ndarray, box: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The square ``box`` of ``image`` resized to the model's input ``size`` (H, W), float32 RGB
    0–255: what the model sees (it does its own VGG-Face preprocessing)."""
    from PIL import Image

    left, top, side = (int(v) for v in box)
    h, w = image.shape[:2]
    if side < 1 or left < 0 or top < 0 or left + side > w or top + side > h:
        raise ValueError(f"crop box {box} (left, top, side) does not lie inside the {w}×{h} image")
    patch = Image.fromarray(np.asarray(image[top:top + side, left:left + side], dtype=np.uint8))
    return np.asarray(patch.resize((int(size[1]), int(size[0])), Image.BILINEAR), dtype=np.float32)


def predict(model, face: np.ndarray, class_names: Sequence[str], temperature: float = 1.0) -> dict[str, float]:
    """Class probabilities of one cropped face, calibrated by ``temperature`` (notebook 06's T)."""
    import keras

    from . import evaluation

    x = np.asarray(face, dtype=np.float32)[None]
    probs = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)
    calibrated = evaluation.apply_temperature(evaluation.logits_from_probs(probs), temperature)[0]
    return {str(c): float(p) for c, p in zip(class_names, calibrated)}
