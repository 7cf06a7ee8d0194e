"""The course's figure style and the evaluation figures of notebook 06.

Each function draws on axes it is given (or makes its own) and returns the figure, so that a
widget can redraw into the same axes and a notebook can draw the default figure without one.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PALETTE = {"m": "#1f77b4", "f": "#d62728", "u": "#7f7f7f"}


def use_style() -> None:
    """One look for every notebook: light grid, readable sizes."""
    plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 10, "axes.titlesize": 11})


def _axes(ax, ncols=1, size=(4.5, 3.6)):
    if ax is not None:
        return (ax.figure if not isinstance(ax, (list, tuple, np.ndarray)) else np.ravel(ax)[0].figure), ax
    fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]))
    return fig, axes


def plot_confusion(report, axes=None, title: str = ""):
    """Counts and row-normalised confusion matrices side by side (seaborn heatmaps)."""
    import seaborn as sns

    fig, axes = _axes(axes, ncols=2, size=(4.2, 3.6))
    sns.heatmap(report.counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0])
    sns.heatmap(100 * report.normalized, annot=True, fmt=".1f", cmap="Blues", vmin=0, vmax=100, cbar=False, ax=axes[1])
    axes[0].set_title(f"{title} counts".strip())
    axes[1].set_title(f"{title} % of each true class".strip())
    for ax in axes:
        ax.grid(False)
    fig.tight_layout()
    return fig


def plot_roc_pr(curves: dict, point: dict | None = None, axes=None, label: str = "model"):
    """ROC and precision-recall curves, with an operating point marked when given."""
    fig, axes = _axes(axes, ncols=2, size=(4.2, 3.8))
    axes[0].plot(curves["fpr"], curves["tpr"], label=f"{label} (AUC {curves['roc_auc']:.3f})")
    axes[0].plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes[1].plot(curves["recall"], curves["precision"], label=f"{label} (AP {curves['average_precision']:.3f})")
    axes[1].set(xlabel="recall", ylabel="precision", title="precision-recall")
    if point is not None:
        axes[0].plot(point["fpr"], point["tpr"], "o", color="black", label=f"chosen rule (t={point['threshold']:.2f})")
        axes[1].plot(point["recall"], point["precision"], "o", color="black", label="chosen rule")
    for ax in axes:
        ax.legend(loc="lower right" if ax is axes[0] else "lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(tables: dict[str, pd.DataFrame], ax=None):
    """Reliability diagram: accuracy against confidence per bin, one line per named table, and
    below it how many faces fall in each bin (a point that stands for three faces says little).

    With ``ax`` given (one axes) the counts are written beside the points instead.
    """
    if ax is None:
        fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.8, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    else:
        fig, ax_n = ax.figure, None
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    lo = min(float(t.loc[t["count"] > 0, "bin_lo"].min()) for t in tables.values())
    width = (1.0 - lo) / max(len(next(iter(tables.values()))), 1) / (len(tables) + 1)
    for i, (name, t) in enumerate(tables.items()):
        filled = t[t["count"] > 0]
        line, = ax.plot(filled["confidence"], filled["accuracy"], "o-", label=name)
        if ax_n is None:
            for _, row in filled.iterrows():
                ax.annotate(f"n={int(row['count'])}", (row["confidence"], row["accuracy"]), fontsize=7,
                            xytext=(3, -9 - 8 * i), textcoords="offset points", color=line.get_color())
        else:
            centres = (t["bin_lo"] + t["bin_hi"]) / 2
            ax_n.bar(centres + (i - (len(tables) - 1) / 2) * width, t["count"], width=width,
                     color=line.get_color(), label=name)
    ax.set(xlim=(lo, 1.0), ylim=(lo, 1.0), ylabel="accuracy", title="reliability diagram")
    ax.legend(fontsize=8)
    if ax_n is not None:
        ax_n.set(xlabel="confidence (top class)", ylabel="faces per bin")
    else:
        ax.set_xlabel("confidence (top class)")
    fig.tight_layout()
    return fig


def plot_group_accuracy(table: pd.DataFrame, ax=None, title: str = "", overall: float | None = None):
    """Accuracy per group with its interval (columns group, accuracy, low, high, n_faces)."""
    fig, ax = _axes(ax, size=(6.5, 3.4))
    x = np.arange(len(table))
    acc = 100 * table["accuracy"].to_numpy()
    err = np.vstack([acc - 100 * table["low"].to_numpy(), 100 * table["high"].to_numpy() - acc])
    ax.bar(x, acc, color="#9ecae1")
    ax.errorbar(x, acc, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3)
    if overall is not None:
        ax.axhline(100 * overall, ls="--", color="grey", label=f"overall {100 * overall:.1f}%")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(table["group"], table["n_faces"])], fontsize=8)
    ax.set(ylabel="accuracy (%)", title=title, ylim=(max(0.0, float(np.nanmin(acc - err[0])) - 10), 100))
    fig.tight_layout()
    return fig


def face_gallery(images: np.ndarray, captions: Sequence[str], title: str = "", ncols: int = 8,
                 colors: Sequence[str] | None = None):
    """A row (or rows) of faces, RGB 0–255, each with a caption (in ``colors``, default black)."""
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
        return fig
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.9 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    colors = ["black"] * n if colors is None else colors
    for ax, img, cap, color in zip(axes.ravel(), images, captions, colors):
        ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
        ax.set_title(cap, fontsize=8, color=color)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def top_activating_grid(images: np.ndarray, top: pd.DataFrame, title: str = ""):
    """One row per channel of ``architecture.top_activating``: its strongest faces, left to right,
    each captioned with its activation (one shared scale per row: the values are comparable)."""
    channels = list(dict.fromkeys(top["channel"]))
    k = int(top["rank"].max()) + 1 if len(top) else 0
    if not channels or k == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: no channel", ha="center", va="center")
        return fig
    fig, axes = plt.subplots(len(channels), k, figsize=(1.3 * k + 0.8, 1.45 * len(channels)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(False)
    for r, c in enumerate(channels):
        rows = top[top["channel"] == c].sort_values("rank")
        for ax, (_, row) in zip(axes[r], rows.iterrows()):
            ax.imshow(np.clip(images[int(row["image"])], 0, 255).astype(np.uint8))
            ax.set_title(f"{row['activation']:.3g}", fontsize=7, pad=2)
        axes[r, 0].set_ylabel(f"channel {c}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def photo_prediction(image: np.ndarray, box, face: np.ndarray, probs: dict, calibrated: dict,
                     detections: Sequence = (), title: str = ""):
    """The photo with the square used (and any detected faces), the crop as the model sees it,
    and the class probabilities as trained and after temperature scaling."""
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.3, 1, 1.2]})
    axes[0].imshow(image)
    for l, t, r, b in detections:
        axes[0].add_patch(Rectangle((l, t), r - l, b - t, fill=False, ec="yellow", lw=1, ls="--"))
    left, top, side = box
    axes[0].add_patch(Rectangle((left, top), side, side, fill=False, ec="red", lw=2))
    axes[0].set_title(title or "the photo (red: the crop; dashed: detected faces)", fontsize=9)
    axes[1].imshow(np.clip(face, 0, 255).astype(np.uint8))
    axes[1].set_title(f"what the model sees ({face.shape[1]}×{face.shape[0]})", fontsize=9)
    for ax in axes[:2]:
        ax.axis("off")
    names = list(probs)
    y = np.arange(len(names))
    axes[2].barh(y - 0.2, [probs[n] for n in names], height=0.4, color="#bdbdbd", label="as trained")
    axes[2].barh(y + 0.2, [calibrated[n] for n in names], height=0.4,
                 color=[PALETTE.get(n, "#3182bd") for n in names], label="calibrated (temperature)")
    for yi, n in zip(y, names):
        axes[2].text(min(calibrated[n] + 0.02, 0.85), yi + 0.2, f"{calibrated[n]:.0%}", va="center", fontsize=8)
    axes[2].set_yticks(y, names)
    axes[2].set(xlim=(0, 1), xlabel="probability", title="the model's answer")
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_cv_vs_literature(table: pd.DataFrame, ax=None):
    """Mean accuracy (± std where known) of published results and of this course's runs."""
    fig, ax = _axes(ax, size=(7.0, 3.2))
    y = np.arange(len(table))
    colors = ["#bdbdbd" if d == "Adience" and not str(m).startswith("this course") else "#3182bd"
              for d, m in zip(table["data"], table["method"])]
    ax.barh(y, table["accuracy (%)"], xerr=table["± std"].fillna(0).to_numpy(dtype=float), color=colors, capsize=3)
    ax.set_yticks(y, [f"{m}\n[{d}]" for m, d in zip(table["method"], table["data"])], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="accuracy (%)", xlim=(50, 100), title="five-fold subject-exclusive protocol")
    fig.tight_layout()
    return fig
