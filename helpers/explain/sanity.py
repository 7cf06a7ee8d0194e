"""Sanity checks for saliency maps (Adebayo et al. 2018): does the map depend on the model?

**Cascading randomisation**: redraw the weights of the top layer (``fc8``), then also of the
layer below, and so on down to ``conv1_1``, and after each step compare the maps with the
trained model's by Spearman rank correlation, face by face. A method whose maps barely change
while the network that produced them is destroyed is showing the image, not the model.

Weights are redrawn from a normal distribution with the trained array's own standard deviation
(kernels and biases alike), so that activations keep their scale. The explained class stays the
trained model's prediction throughout, so that every map answers the same question.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
import pandas as pd
from scipy import stats


def cascade_layers(model: keras.Model) -> list[str]:
    """The layers with weights, from the output down (``fc8``, ``fc7``, ..., ``conv1_1``)."""
    return [layer.name for layer in reversed(model.layers) if layer.weights]


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy (its own weights) of a functional model."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def randomise_layer(layer, rng: np.random.Generator) -> None:
    """Redraw every weight array of ``layer`` from N(0, its trained standard deviation)."""
    layer.set_weights([rng.normal(0.0, float(np.std(w)), size=w.shape).astype(w.dtype)
                       for w in layer.get_weights()])


def rank_correlation(a, b) -> np.ndarray:
    """Spearman's rank correlation of two maps, face by face (N,); NaN where a map is constant."""
    a = np.asarray(a, "float64").reshape(len(a), -1)
    b = np.asarray(b, "float64").reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have the same shape, got {a.shape} and {b.shape}")
    ra, rb = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


@dataclass
class RandomisationResult:
    """``table``: one row per (layer randomised down to, method) with the mean rank correlation
    (signed maps and absolute values) and how many faces had a constant map (correlation undefined);
    ``maps``: ``{"trained" or layer: {method: maps}}``."""

    table: pd.DataFrame
    maps: dict = field(default_factory=dict)

    def correlations(self, column: str = "spearman") -> pd.DataFrame:
        """Layers (in cascade order) x methods."""
        wide = self.table.pivot(index="layer", columns="method", values=column)
        order = list(dict.fromkeys(self.table["layer"]))
        return wide.loc[order, list(dict.fromkeys(self.table["method"]))]


def cascading_randomisation(model: keras.Model, images, classes, methods: Mapping[str, Callable],
                            *, layers: Sequence[str] | None = None, measure_at: Sequence[str] | None = None,
                            seed: int = 0, keep_maps: bool = True) -> RandomisationResult:
    """Randomise ``layers`` (default ``cascade_layers(model)``) cumulatively from the top, and
    after each of ``measure_at`` (default: every one) compare every method's maps with the
    trained model's. Measuring at fewer layers saves time; the layers in between are still
    randomised, in order.

    ``methods``: ``{name: fn(model, images, classes) -> maps (N, H, W)}``. ``model`` itself is
    not changed (a copy is randomised).
    """
    layers = list(cascade_layers(model) if layers is None else layers)
    known = cascade_layers(model)
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(f"cannot randomise {unknown}: the layers with weights are {known}")
    measure_at = set(layers if measure_at is None else measure_at)
    if measure_at - set(layers):
        raise ValueError(f"cannot measure after {sorted(measure_at - set(layers))}: not among the layers "
                         f"randomised ({layers})")
    classes = np.asarray(classes)
    trained = {name: np.asarray(fn(model, images, classes)) for name, fn in methods.items()}
    saved = {"trained": trained} if keep_maps else {}
    copy = copy_model(model)
    rng = np.random.default_rng(seed)
    rows = []
    for layer in layers:
        randomise_layer(copy.get_layer(layer), rng)
        if layer not in measure_at:
            continue
        step = {}
        for name, fn in methods.items():
            maps = np.asarray(fn(copy, images, classes))
            rho = rank_correlation(trained[name], maps)
            rho_abs = rank_correlation(np.abs(trained[name]), np.abs(maps))
            rows.append({"layer": layer, "method": name, "spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan,
                         "spearman_abs": float(np.nanmean(rho_abs)) if np.isfinite(rho_abs).any() else np.nan,
                         "undefined": int(np.isnan(rho).sum()), "n_faces": len(rho)})
            step[name] = maps
        if keep_maps:
            saved[layer] = step
    return RandomisationResult(pd.DataFrame(rows), saved)
