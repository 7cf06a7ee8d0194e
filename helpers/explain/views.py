"""Figures of explanation maps, and the viewer widget of notebook 07.

Every figure function returns its figure (the notebook shows it, a widget redraws it).
Non-negative maps (Grad-CAM) are drawn in "inferno" from 0 up; signed maps (occlusion,
integrated gradients) in red (supports the class) and blue (speaks against it), symmetric around
zero. Each map is scaled to its 99th percentile of absolute values, not its maximum: a per-pixel
map such as integrated gradients has a few extreme pixels that would otherwise wash out the rest.
A cross marks each map's highest pixel, the pointing game's answer (the middle of a plateau when
several pixels tie, as an upsampled Grad-CAM cell does); in quick mode a green line outlines the
face's gendered traits.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .methods import METHODS, SIGNED

SHORT_LABELS = {"grad_cam": "Grad-CAM", "occlusion": "occlusion", "integrated_gradients": "int. grad."}


def method_label(method: str) -> str:
    return METHODS.get(method, method)


def display_scale(heat) -> np.ndarray:
    """``heat`` divided by its 99th percentile of absolute values and clipped to [-1, 1]."""
    h = np.asarray(heat, dtype="float64")
    finite = np.abs(h[np.isfinite(h)])
    scale = np.percentile(finite, 99) if finite.size else 0.0
    scale = scale if scale > 0 else (finite.max() if finite.size and finite.max() > 0 else 1.0)
    return np.clip(h / scale, -1.0, 1.0)


def show_map(ax, image, heat, *, signed: bool, outline=None, title: str = "", alpha: float = 0.6) -> None:
    """``image`` (RGB 0-255) under ``heat`` (H, W), the peak marked, ``outline`` (bool mask) drawn."""
    ax.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if heat is not None:
        v = display_scale(heat)
        if signed:
            ax.imshow(v, cmap="RdBu_r", vmin=-1, vmax=1, alpha=alpha)
        else:
            ax.imshow(v, cmap="inferno", vmin=0, vmax=1, alpha=alpha)
        heat = np.asarray(heat)
        peak = heat == heat.max()
        if not peak.all():  # a constant map has no peak to mark
            ys, xs = np.nonzero(peak)
            ax.plot([xs.mean()], [ys.mean()], marker="+", color="cyan", markersize=9, markeredgewidth=1.5)
    if outline is not None and np.any(outline) and not np.all(outline):
        ax.contour(np.asarray(outline, float), levels=[0.5], colors="lime", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def maps_grid(images, columns: Mapping[str, tuple[np.ndarray, bool]], captions: Sequence[str] | None = None,
              outlines=None, title: str = "", size: float = 1.7):
    """Rows: faces; columns: the face, then one map per entry of ``columns`` ({label: (maps, signed)})."""
    n = len(images)
    fig, axes = plt.subplots(max(n, 1), 1 + len(columns), figsize=(size * (1 + len(columns)), size * max(n, 1) + 0.5),
                             squeeze=False)
    for i in range(n):
        show_map(axes[i, 0], images[i], None, signed=False, outline=None if outlines is None else outlines[i],
                 title=captions[i] if captions is not None else "")
        for j, (label, (maps, signed)) in enumerate(columns.items(), start=1):
            show_map(axes[i, j], images[i], maps[i], signed=signed, outline=None if outlines is None else outlines[i],
                     title=label if i == 0 else "")
    if n == 0:
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, f"{title}: no faces", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_scores(table: pd.DataFrame, score: str = "pointing_game", ax=None, title: str = ""):
    """One bar per (model, method) with its interval, the random baseline's interval as a band.

    ``table``: rows indexed by (model, method) with ``compare_to_baseline``'s columns for ``score``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
    fig = ax.figure
    labels = [f"{SHORT_LABELS.get(method, method)}\n{model}" for model, method in table.index]
    x = np.arange(len(table))
    est = table["estimate"].to_numpy(float)
    err = np.vstack([est - table["low"].to_numpy(float), table["high"].to_numpy(float) - est])
    ax.bar(x, est, color=["#9ecae1" if m == table.index[0][0] else "#3182bd" for m, _ in table.index])
    ax.errorbar(x, est, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3)
    for i, (lo, mid, hi) in enumerate(table[["baseline_low", "baseline", "baseline_high"]].to_numpy(float)):
        ax.fill_between([i - 0.45, i + 0.45], lo, hi, color="grey", alpha=0.3, lw=0)
        ax.plot([i - 0.45, i + 0.45], [mid, mid], color="grey", lw=1.5, label="random map" if i == 0 else None)
    ax.set_xticks(x, labels, fontsize=8)
    top = float(np.nanmax(np.r_[table["high"].to_numpy(float), table["baseline_high"].to_numpy(float), 0.05]))
    ax.set(ylim=(0, min(1.0, 1.3 * top)), ylabel=score.replace("_", " "), title=title or score.replace("_", " "))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_randomisation(correlations: pd.DataFrame, ax=None, title: str = "cascading randomisation"):
    """Mean rank correlation with the trained model's maps (rows: layers randomised down to, in
    order; columns: methods)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
    fig = ax.figure
    x = np.arange(len(correlations))
    for method in correlations.columns:
        ax.plot(x, correlations[method].to_numpy(float), "o-", label=method_label(method))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [f"→{name}" for name in correlations.index], rotation=60, fontsize=8)
    ax.set(ylim=(-0.5, 1.05), ylabel="rank correlation with trained maps",
           xlabel="weights randomised from fc8 down to", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_mean_maps(means: Mapping[str, Mapping[str, tuple[np.ndarray, int]]], title: str = "mean map per predicted class"):
    """Rows: methods; columns: classes; ``means[method][class] = (mean map, number of faces)``."""
    methods = list(means)
    classes = list(next(iter(means.values()))) if methods else []
    fig, axes = plt.subplots(max(len(methods), 1), max(len(classes), 1),
                             figsize=(2.2 * max(len(classes), 1), 2.2 * max(len(methods), 1) + 0.4), squeeze=False)
    for i, method in enumerate(methods):
        signed = SIGNED.get(method, True)
        for j, name in enumerate(classes):
            heat, n = means[method][name]
            ax = axes[i, j]
            ax.imshow(display_scale(heat), cmap="RdBu_r" if signed else "inferno", vmin=-1 if signed else 0, vmax=1)
            ax.set_title(f"{method_label(method)}\npredicted {name} (n={n})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_cascade_maps(image, result, face: int = 0, layers: Sequence[str] | None = None, size: float = 1.35):
    """One face's maps (rows: methods) for the trained model and after each randomisation step
    of a ``sanity.RandomisationResult`` kept with its maps (columns)."""
    steps = ["trained", *[layer for layer in (layers or list(result.maps)) if layer != "trained" and layer in result.maps]]
    methods = list(result.maps["trained"])
    fig, axes = plt.subplots(len(methods), len(steps), figsize=(size * len(steps), size * len(methods) + 0.5), squeeze=False)
    for i, method in enumerate(methods):
        for j, step in enumerate(steps):
            show_map(axes[i, j], image, result.maps[step][method][face], signed=SIGNED.get(method, True),
                     title=(step if step == "trained" else f"→{step}") if i == 0 else "")
        axes[i, 0].set_ylabel(method_label(method), fontsize=8)
    fig.suptitle("one face's maps as the weights are randomised from fc8 down", fontsize=10)
    fig.tight_layout()
    return fig


def examples_grid(images, maps: Mapping[str, np.ndarray], examples: pd.DataFrame, captions: Sequence[str],
                  outlines=None, size: float = 1.3, title: str = ""):
    """Rows: groups (``summaries.examples_per_group``); columns: the most confident correct face
    and its maps, then the most confident mistake and its maps (blank where a group has none)."""
    methods = list(maps)
    per = 1 + len(methods)
    fig, axes = plt.subplots(max(len(examples), 1), 2 * per, figsize=(size * 2 * per, size * max(len(examples), 1) + 0.6),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in enumerate(examples.itertuples(index=False)):
        for k, (kind, index) in enumerate((("correct", row.correct), ("mistaken", row.mistaken))):
            if index < 0:
                axes[r, k * per].text(0.5, 0.5, f"no {kind}\nanswer", ha="center", va="center", fontsize=8)
                continue
            outline = None if outlines is None else outlines[index]
            show_map(axes[r, k * per], images[index], None, signed=False, outline=outline,
                     title=f"{row.group} {kind}\n{captions[index]}")
            for j, method in enumerate(methods, start=1):
                show_map(axes[r, k * per + j], images[index], maps[method][index], signed=SIGNED.get(method, True),
                         outline=outline, title=method_label(method) if r == 0 else "")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class ExplanationViewer:
    """Pick a model, a method and a face (or only the model's mistakes); the figure redraws.

    A plain object over precomputed maps: ``maps[model][method]`` (N, H, W) for the same N faces,
    ``y_pred[model]`` and ``confidence[model]`` (N,) per model. The controls are ipywidgets
    (``model``, ``method``, ``mistakes_only``, ``face``) whose ``.value`` may be set from code,
    as a test does; ``figure()`` draws the current choice without any front end, which is how
    the notebook draws its default figure outside the widget. Works with ipywidgets 7 and 8.
    """

    def __init__(self, images, maps: Mapping[str, Mapping[str, np.ndarray]], *, y_true, y_pred: Mapping[str, np.ndarray],
                 confidence: Mapping[str, np.ndarray], class_names: Sequence[str], outlines=None, details=None,
                 model: str | None = None, method: str | None = None, mistakes_only: bool = False):
        import ipywidgets as w

        self.images = np.asarray(images)
        self.maps = {m: dict(by_method) for m, by_method in maps.items()}
        self.y_true = np.asarray(y_true)
        self.y_pred = {m: np.asarray(v) for m, v in y_pred.items()}
        self.confidence = {m: np.asarray(v) for m, v in confidence.items()}
        self.class_names = [str(c) for c in class_names]
        self.outlines = outlines
        self.details = list(details) if details is not None else [""] * len(self.images)
        models = list(self.maps)
        if not models or set(self.y_pred) != set(models) or set(self.confidence) != set(models):
            raise ValueError(f"maps, y_pred and confidence must name the same models: {models}, "
                             f"{list(self.y_pred)}, {list(self.confidence)}")
        for m in models:
            for method, arr in self.maps[m].items():
                if len(arr) != len(self.images):
                    raise ValueError(f"maps[{m!r}][{method!r}] has {len(arr)} maps for {len(self.images)} faces")
        methods = list(self.maps[models[0]])
        if model is not None and model not in models:
            raise ValueError(f"model {model!r} is not among {models}")
        if method is not None and method not in methods:
            raise ValueError(f"method {method!r} is not among {methods}")
        self.redraws = 0
        self.model = w.Dropdown(options=models, value=model or models[0], description="model")
        self.method = w.ToggleButtons(options=[(method_label(m), m) for m in methods], value=method or methods[0],
                                      description="method")
        self.mistakes_only = w.Checkbox(value=bool(mistakes_only), description="mistakes only", indent=False)
        self.face = w.Dropdown(options=self._face_options(), description="face")
        self.output = w.Output()
        self.model.observe(self._on_filter, names="value")
        self.mistakes_only.observe(self._on_filter, names="value")
        self.method.observe(self._on_change, names="value")
        self.face.observe(self._on_change, names="value")
        self.widget = w.VBox([w.HBox([self.model, self.mistakes_only]), self.method, self.face, self.output])

    # -------------------------------------------------------------- state
    def faces(self) -> np.ndarray:
        """Row positions of the faces the face picker offers (the model's mistakes, or all)."""
        model = self.model.value
        if self.mistakes_only.value:
            return np.flatnonzero(self.y_pred[model] != self.y_true)
        return np.arange(len(self.images))

    def _face_label(self, i: int) -> str:
        model = self.model.value
        truth, pred = self.class_names[self.y_true[i]], self.class_names[self.y_pred[model][i]]
        mark = "" if truth == pred else "  ✗"
        extra = f", {self.details[i]}" if self.details[i] else ""
        return f"#{i}: {truth} → {pred} ({self.confidence[model][i]:.2f}){extra}{mark}"

    def _face_options(self):
        options = [(self._face_label(int(i)), int(i)) for i in self.faces()]
        return options or [("(no face: this model makes no mistake here)", -1)]

    @property
    def current(self) -> int:
        """The row position of the face shown (-1: none)."""
        return int(self.face.value)

    # -------------------------------------------------------------- events
    def _on_filter(self, change=None) -> None:
        before = self.face.value
        options = self._face_options()
        values = [v for _, v in options]
        self.face.unobserve(self._on_change, names="value")
        try:  # ipywidgets 7 and 8 differ in what value a Dropdown keeps when its options change: set it
            self.face.options = options
            self.face.value = before if before in values else values[0]
        finally:
            self.face.observe(self._on_change, names="value")
        self.redraw()

    def _on_change(self, change=None) -> None:
        self.redraw()

    def redraw(self) -> None:
        from IPython.display import display

        self.redraws += 1
        with self.output:
            self.output.clear_output(wait=True)
            fig = self.figure()
            display(fig)
            plt.close(fig)

    # -------------------------------------------------------------- drawing
    def figure(self):
        """The current face, the chosen method's map (larger) and the other methods' maps."""
        i, model, method = self.current, self.model.value, self.method.value
        others = [m for m in self.maps[model] if m != method]
        if i < 0:
            fig, ax = plt.subplots(figsize=(6, 1.5))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{model}: no mistake among these faces", ha="center", va="center")
            return fig
        fig, axes = plt.subplots(1, 2 + len(others), figsize=(2.3 * (2 + len(others)) + 1.2, 3.4),
                                 gridspec_kw={"width_ratios": [1, 1.6, *[1] * len(others)]})
        outline = None if self.outlines is None else self.outlines[i]
        show_map(axes[0], self.images[i], None, signed=False, outline=outline, title=self._face_label(i))
        show_map(axes[1], self.images[i], self.maps[model][method][i], signed=SIGNED.get(method, True),
                 outline=outline, title=f"{model}: {method_label(method)}")
        for ax, other in zip(axes[2:], others):
            show_map(ax, self.images[i], self.maps[model][other][i], signed=SIGNED.get(other, True),
                     outline=outline, title=method_label(other))
        fig.tight_layout()
        return fig

    def show(self) -> None:
        """Display the controls (where a front end exists); the figure appears on the first change."""
        from IPython.display import display

        display(self.widget)
