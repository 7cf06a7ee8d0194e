"""Tests for helpers.photo: reading a learner's photo, finding the face, the crop, the prediction."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import photo
from helpers.synthetic.faces import render_face, sample_person


def rendered_face(seed: int, size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_face(sample_person(rng, "f" if seed % 2 else "m", 4), rng, size=size)


def detected_seeds(n=2):
    """Seeds whose rendered face dlib finds (it finds about a quarter of the synthetic faces)."""
    found = [s for s in range(40) if photo.find_faces(rendered_face(s)).status == "one face"]
    assert len(found) >= n, f"dlib found a face in only {found} of 40 rendered faces"
    return found[:n]


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_read_image_gives_rgb_and_names_what_is_wrong(tmp_path):
    face = rendered_face(1, size=64)
    assert (photo.read_image(png_bytes(face)) == face).all()
    grey = tmp_path / "grey.png"
    Image.fromarray(face[..., 0]).save(grey)
    assert photo.read_image(grey).shape == (64, 64, 3)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(photo.NotAnImageError, match="notes.txt: this is not an image"):
        photo.read_image(notes)
    with pytest.raises(photo.NotAnImageError, match="empty"):
        photo.read_image(b"")
    with pytest.raises(photo.NotAnImageError, match="cannot read"):
        photo.read_image(tmp_path / "missing.jpg")
    truncated = png_bytes(face)[:200]
    with pytest.raises(photo.NotAnImageError, match="uploaded file"):
        photo.read_image(truncated)


def test_read_image_applies_the_exif_rotation():
    img = np.zeros((40, 80, 3), np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(img).save(buf, format="JPEG", exif=exif)
    assert photo.read_image(buf.getvalue()).shape == (80, 40, 3)


def test_a_rendered_face_is_found_and_cropped_around_it():
    (seed,) = detected_seeds(1)
    img = rendered_face(seed)
    search = photo.find_faces(img)
    assert search.status == "one face" and "dlib" in search.detector
    (l, t, r, b), (left, top, side) = search.detections[0], search.boxes[0]
    assert left <= l and top <= t and left + side >= r and top + side >= b  # the face is inside the crop
    assert left >= 0 and top >= 0 and left + side <= 256 and top + side <= 256
    face = photo.crop(img, search.boxes[0], (64, 64))
    assert face.shape == (64, 64, 3) and face.dtype == np.float32 and 0 <= face.min() and face.max() <= 255


def test_no_face_and_several_faces_are_said():
    flat = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (300, 1, 3))
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    for img in (flat, noise):
        search = photo.find_faces(img)
        assert search.status == "no face" and "sliders" in search.message
    a, b = detected_seeds(2)
    two = np.concatenate([rendered_face(a), rendered_face(b)], axis=1)
    search = photo.find_faces(two)
    assert search.status == "several faces" and "largest" in search.message
    assert search.boxes[0][2] >= search.boxes[1][2]


def test_square_around_scales_centres_and_stays_inside():
    assert photo.square_around((40, 40, 60, 60), (200, 200), scale=2.0) == (30, 30, 40)
    assert photo.square_around((0, 0, 30, 20), (100, 200), scale=2.0) == (0, 0, 60)  # pushed inside
    assert photo.square_around((0, 0, 100, 100), (80, 120), scale=2.0) == (10, 0, 80)  # shrunk to fit
    with pytest.raises(ValueError, match="inside the 50×40 image"):
        photo.crop(np.zeros((40, 50, 3), np.uint8), (20, 0, 40), (8, 8))


def test_prediction_uses_the_temperature(tiny_vggface):
    import keras

    from helpers import evaluation as ev
    from helpers import vggface

    model = vggface.replace_head(tiny_vggface(), ("m", "f"), seed=0)
    face = photo.crop(rendered_face(3), (0, 0, 256), (32, 32))
    raw = keras.ops.convert_to_numpy(model(face[None], training=False))[0].astype(float)
    p1 = photo.predict(model, face, ("m", "f"), temperature=1.0)
    assert [p1["m"], p1["f"]] == pytest.approx(raw, abs=1e-6)
    p3 = photo.predict(model, face, ("m", "f"), temperature=3.0)
    expected = np.exp(np.log(raw) / 3) / np.exp(np.log(raw) / 3).sum()
    assert [p3["m"], p3["f"]] == pytest.approx(expected, abs=1e-6)
    assert abs(p3["m"] - 0.5) <= abs(p1["m"] - 0.5)  # a higher temperature is less sure
    assert sum(p3.values()) == pytest.approx(1.0)
    assert ev.apply_temperature(np.log(raw)[None], 3.0)[0] == pytest.approx(expected)


def test_colabs_own_dlib_satisfies_the_dlib_bin_requirement(monkeypatch):
    from importlib import metadata

    from helpers.course import environment

    real = metadata.version

    def colab_versions(dist):  # Colab: dlib 19.24.6 built from source, no dlib-bin
        if dist == "dlib-bin":
            raise metadata.PackageNotFoundError(dist)
        return "19.24.6" if dist == "dlib" else real(dist)

    monkeypatch.setattr(environment.metadata, "version", colab_versions)
    (check,) = environment.check_versions({"dlib-bin": "19.24"})[1:]
    assert check.ok and check.found == "19.24.6"
    assert environment.missing_requirements({"dlib-bin": "19.24"}) == []
    monkeypatch.setattr(environment.metadata, "version",
                        lambda d: (_ for _ in ()).throw(metadata.PackageNotFoundError(d)))
    assert environment.missing_requirements({"dlib-bin": "19.24"}) == ["dlib-bin>=19.24"]
