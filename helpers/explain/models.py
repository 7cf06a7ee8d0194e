"""The trained gender models notebook 07 explains, taken from notebooks 04 and 05 when they fit.

On a fresh runtime (Colab) those files may be missing; the notebook then trains what it needs
quickly and says so. ``load_if_fits`` says why a file was not used, so nothing is skipped silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def load_if_fits(path, class_names: Sequence[str], image_size) -> tuple[object | None, str]:
    """``(model, path)`` when ``path`` holds a gender model for these classes and input size,
    else ``(None, why not)``."""
    import keras

    from .. import vggface  # noqa: F401  (registers the custom layers for loading)

    path = Path(path)
    if not path.is_file():
        return None, f"no {path.name} in {path.parent}"
    model = keras.saving.load_model(path)
    names = vggface.class_names(model)
    hw = tuple(model.input_shape[1:3])
    if names is not None and tuple(names) != tuple(class_names):
        return None, f"{path.name} predicts {tuple(names)}, not {tuple(class_names)}"
    if model.output_shape[-1] != len(class_names):
        return None, f"{path.name} has {model.output_shape[-1]} outputs, not {len(class_names)}"
    if hw != tuple(image_size):
        return None, f"{path.name} takes {hw} images, not {tuple(image_size)}"
    return model, str(path)
