"""Which faces to explain, and what the maps of many faces say together (no ground truth needed,
so these run in full mode on Adience as in quick mode).

- ``faces_per_person``: at most k photos of each person, every user kept (explaining is costly;
  the user-level intervals need users, not more photos of the same person);
- ``mean_maps``: the mean normalised map of the faces assigned each class (Adience's faces are
  aligned, so a mean map says where the network looks for "m" and for "f" on average);
- ``method_agreement`` / ``most_disagreeing``: rank correlation between the methods' maps,
  face by face, and the faces on which they disagree most;
- ``examples_per_group``: per age group, the most confident correct answer and the most
  confident mistake.
"""
from __future__ import annotations

from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .methods import normalise
from .sanity import rank_correlation


def faces_per_person(frame: pd.DataFrame, k: int | None, *, person: Sequence[str] = ("user_id", "face_id"),
                     max_faces: int | None = None, seed: int = 0) -> pd.DataFrame:
    """At most ``k`` rows per person (``None``: all), drawn with ``seed``, in the frame's order;
    then, if ``max_faces`` is given and still exceeded, whole users are dropped (drawn with ``seed``)
    until it holds, so every kept user keeps all its chosen faces."""
    missing = [c for c in person if c not in frame.columns]
    if missing:
        raise KeyError(f"the faces table has no column(s) {missing} to tell people apart")
    chosen = frame
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be at least 1 (or None for every face), got {k}")
        rng = np.random.default_rng(seed)
        keys = frame.groupby(list(person), sort=False).ngroup().to_numpy()
        order = rng.permutation(len(frame))
        rank = pd.Series(keys[order]).groupby(keys[order]).cumcount().to_numpy()
        keep = np.zeros(len(frame), bool)
        keep[order[rank < k]] = True
        chosen = frame[keep]
    if max_faces is not None and len(chosen) > max_faces:
        users = chosen[person[0]].drop_duplicates().to_numpy()
        rng = np.random.default_rng(seed + 1)
        sizes = chosen.groupby(person[0]).size()
        kept, total = [], 0
        for user in rng.permutation(users):
            if total + sizes[user] <= max_faces:
                kept.append(user)
                total += sizes[user]
        chosen = chosen[chosen[person[0]].isin(kept)]
    return chosen


def mean_maps(maps, predicted, class_names: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
    """``{class name: (mean normalised map (H, W), number of faces)}`` over the faces assigned
    each class; a class no face was assigned gets a map of NaN and 0."""
    m = normalise(maps)
    predicted = np.asarray(predicted)
    if len(predicted) != len(m):
        raise ValueError(f"{len(predicted)} predictions for {len(m)} maps")
    out = {}
    for k, name in enumerate(class_names):
        sel = predicted == k
        out[str(name)] = (m[sel].mean(axis=0) if sel.any() else np.full(m.shape[1:], np.nan), int(sel.sum()))
    return out


def method_agreement(maps_by_method: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per face: Spearman's rank correlation of every pair of methods, and their mean."""
    names = list(maps_by_method)
    if len(names) < 2:
        raise ValueError(f"agreement needs at least two methods, got {names}")
    out = pd.DataFrame({f"{a} vs {b}": rank_correlation(maps_by_method[a], maps_by_method[b])
                        for a, b in combinations(names, 2)})
    out["mean"] = out.mean(axis=1)
    return out


def most_disagreeing(agreement: pd.DataFrame, k: int = 6) -> np.ndarray:
    """Row positions of the ``k`` faces whose methods agree least (lowest mean correlation)."""
    mean = agreement["mean"].to_numpy()
    order = np.argsort(np.where(np.isnan(mean), np.inf, mean), kind="stable")
    return order[:min(int(k), int(np.isfinite(mean).sum()))]


def examples_per_group(groups, correct, confidence, *, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group: the row position of the most confident correct answer and of the most
    confident mistake (-1 where the group has none), with the group's size and error count."""
    from ..evaluation import age_group_order, normalize_groups

    g = normalize_groups(groups)
    correct = np.asarray(correct, bool)
    conf = np.asarray(confidence, "float64")
    if not (len(g) == len(correct) == len(conf)):
        raise ValueError("groups, correct and confidence must have the same length")
    rows = []
    for key in (list(order) if order is not None else age_group_order(g)):
        sel = np.flatnonzero(g == key)
        if not len(sel):
            continue
        right, wrong = sel[correct[sel]], sel[~correct[sel]]
        rows.append({"group": key, "n_faces": len(sel), "n_mistakes": len(wrong),
                     "correct": int(right[np.argmax(conf[right])]) if len(right) else -1,
                     "mistaken": int(wrong[np.argmax(conf[wrong])]) if len(wrong) else -1})
    return pd.DataFrame(rows, columns=["group", "n_faces", "n_mistakes", "correct", "mistaken"])
