"""Where each trait is in each synthetic face: masks for judging explanations (notebook 07).

The renderer knows what it drew where. ``trait_masks(paths)`` re-renders the target faces at
those Adience-relative paths from their own random streams, with the trait map on, and
returns one boolean mask per trait, aligned pixel for pixel with the JPEG on disk (the image
re-rendered here is the one that was written, before JPEG compression; the function checks
that it matches the file).

- ``GENDERED_TRAITS``: beard, moustache, hair beyond the head's outline, lips, brows (what the
  renderer's gender latent moves, and what a gender explanation should point at);
- ``NEUTRAL_TRAITS``: glasses and background clutter (they carry no gender);
- the dictionary also holds ``hair``, ``eyeliner``, ``earrings``, ``eyes``, ``nose``, ``face``
  (the head's visible skin) and ``occluder`` (the object in front of the face, if any).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .faces import GENDERED_TRAITS, MASK_TRAITS, NEUTRAL_TRAITS, render_face_and_masks
from .world import SyntheticConfig, target_people, target_stream, world_dir

# Mean absolute difference (0-255) between a re-rendered face and its JPEG above which the
# file cannot be this face. Measured: at most 8 for the right face (JPEG smooths away most of
# the sensor noise, whose sd reaches 7), at least 26 for any other face of the world.
JPEG_TOLERANCE = 15.0

__all__ = ["GENDERED_TRAITS", "NEUTRAL_TRAITS", "MASK_TRAITS", "trait_masks"]


def trait_masks(paths: Iterable[str], root: str | os.PathLike | None = None, *,
                min_coverage: float = 0.25, check_jpeg: bool = True) -> dict[str, np.ndarray]:
    """``{trait: bool array (N, H, W)}`` for the target faces at ``paths`` (in that order).

    ``paths`` are the ``path`` column of ``helpers.data.read_adience_folds`` (e.g.
    ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>``); ``root`` is the synthetic
    dataset root (default: quick mode's, ``paths.assets_for("quick").dataset_root``); its world's
    parameters come from the manifest beside it (``<root>/../manifest.json``). A pixel belongs
    to a trait when the trait shows on at least ``min_coverage`` of it (see
    ``faces.render_face_and_masks``). Raises ``FileNotFoundError`` when no synthetic world is
    at ``root`` and ``ValueError`` naming the paths that are not faces of that world, or a
    face whose JPEG does not match its re-rendering (another generator version or seed).
    """
    root = Path(root) if root is not None else world_dir() / "adience"
    manifest_file = root.parent / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no synthetic world at {root}: {manifest_file} is missing "
                                "(trait masks exist only for quick mode's synthetic faces)") from None
    config = SyntheticConfig.from_json(manifest["config"])
    paths = [str(p) for p in paths]
    people, faces = target_people(config)
    by_path = {face.path: face for face in faces}
    unknown = [p for p in paths if p not in by_path]
    if unknown:
        raise ValueError(f"{len(unknown)} of {len(paths)} path(s) are not faces of the synthetic world at {root}, "
                         f"e.g. {unknown[:3]}: expected the 'path' column of data.read_adience_folds({str(root)!r})")
    size = config.image_size
    out = {name: np.zeros((len(paths), size, size), bool) for name in MASK_TRAITS}
    for i, path in enumerate(paths):
        face = by_path[path]
        rng, nuisance = target_stream(config, face)
        image, masks = render_face_and_masks(people[face.person_index], rng, size, nuisance=nuisance,
                                             min_coverage=min_coverage)
        if check_jpeg:
            _check_against_jpeg(root / path, image)
        for name in MASK_TRAITS:
            out[name][i] = masks[name]
    return out


def _check_against_jpeg(file: Path, image: np.ndarray) -> None:
    from PIL import Image

    try:
        with Image.open(file) as im:
            on_disk = np.asarray(im.convert("RGB"), dtype=np.float32)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: listed in the folds but missing on disk") from None
    if on_disk.shape != image.shape:
        raise ValueError(f"{file}: image of shape {on_disk.shape}, but this world renders {image.shape}")
    gap = float(np.abs(on_disk - image).mean())
    if gap > JPEG_TOLERANCE:
        raise ValueError(f"{file}: differs from its re-rendering by {gap:.1f} grey levels on average "
                         f"(more than {JPEG_TOLERANCE}): the faces on disk were not drawn with this "
                         "renderer and this world's parameters; rebuild it (python -m helpers.synthetic --force)")
