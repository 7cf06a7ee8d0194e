"""Maps measured against the truth: the pointing game and the share of positive relevance on
gendered and non-gendered regions, each beside a random map's score, with user-level intervals.

Quick mode knows where every trait of every face is (``helpers.synthetic.trait_masks``: one
boolean mask per trait and face). ``regions`` turns those into two disjoint regions per face:

- **gendered**: the traits the world's gender moves (beard, moustache, hair beyond the head
  outline, lips, brows);
- **neutral**: the traits it does not (glasses, background clutter), minus any pixel that is
  also gendered (a pixel is counted once, gendered first).

Per face (``score_maps``):

- ``pointing_game``: 1 if the map's highest pixel lies on the gendered region, 0 if not (with
  several pixels tied for the maximum, the share of them that does: a constant map then scores
  exactly like a random one);
- ``gendered_share`` / ``neutral_share``: the share of the map's positive relevance that falls
  on each region (undefined for a map without positive relevance: such faces are counted in
  ``no_positive_relevance`` and left out of these two means, never silently);
- the **random-map baseline** of each: a map of independent random values peaks on a uniformly
  random pixel and spreads its relevance evenly in expectation, so its expected score is the
  region's share of the image, face by face (``baseline_*``). The tests check this against
  simulated random maps.

``compare_to_baseline`` resamples users (the unit of independence: one person's photos share
everything the model keys on) and gives each score, its baseline and their paired difference
with percentile intervals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

SCORES = ("pointing_game", "gendered_share", "neutral_share")
BASELINES = {"pointing_game": "baseline_pointing", "gendered_share": "baseline_gendered",
             "neutral_share": "baseline_neutral"}


@dataclass
class Regions:
    """Disjoint per-face regions, boolean (N, H, W)."""

    gendered: np.ndarray
    neutral: np.ndarray

    def __len__(self) -> int:
        return len(self.gendered)

    def subset(self, index) -> "Regions":
        return Regions(self.gendered[index], self.neutral[index])


def regions(masks: Mapping[str, np.ndarray], gendered: Sequence[str], neutral: Sequence[str]) -> Regions:
    """The gendered and neutral regions from per-trait masks ``{trait: bool (N, H, W)}``."""
    missing = [t for t in (*gendered, *neutral) if t not in masks]
    if missing:
        raise KeyError(f"no mask for trait(s) {missing}; the masks have {sorted(masks)}")
    both = set(gendered) & set(neutral)
    if both:
        raise ValueError(f"trait(s) {sorted(both)} cannot be both gendered and neutral")
    shapes = {t: np.shape(masks[t]) for t in (*gendered, *neutral)}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
        raise ValueError(f"every mask must have the same (N, H, W) shape, got {shapes}")
    g = np.zeros(next(iter(shapes.values())), bool)
    for t in gendered:
        g |= np.asarray(masks[t], bool)
    n = np.zeros_like(g)
    for t in neutral:
        n |= np.asarray(masks[t], bool)
    return Regions(gendered=g, neutral=n & ~g)


def dilate(region: np.ndarray, pixels: int) -> np.ndarray:
    """Each mask grown by ``pixels`` (a disc): the pointing game's tolerance (Zhang et al. allow
    15 px at 224 px). ``pixels=0`` returns the masks unchanged."""
    if pixels <= 0:
        return np.asarray(region, bool)
    from scipy import ndimage

    r = int(pixels)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (yy ** 2 + xx ** 2) <= r * r
    return np.stack([ndimage.binary_dilation(m, structure=disc) for m in np.asarray(region, bool)])


def _check(maps, region) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps, dtype="float64")
    r = np.asarray(region, bool)
    if m.shape != r.shape or m.ndim != 3:
        raise ValueError(f"maps {m.shape} and masks {r.shape} must both be (N, H, W) and agree; "
                         "resize the maps to the masks' resolution first (methods.resize_maps)")
    if not np.isfinite(m).all():
        raise ValueError(f"{int((~np.isfinite(m)).sum())} map values are not finite")
    return m, r


def pointing_game(maps, region) -> np.ndarray:
    """Per face: the share of the map's maximal pixels that lie on ``region`` (1/0 for one peak)."""
    m, r = _check(maps, region)
    peak = m == m.reshape(len(m), -1).max(axis=1)[:, None, None]
    return (peak & r).reshape(len(m), -1).sum(axis=1) / peak.reshape(len(m), -1).sum(axis=1)


def positive_share(maps, region) -> np.ndarray:
    """Per face: the share of the map's positive relevance on ``region`` (NaN: no positive relevance)."""
    m, r = _check(maps, region)
    pos = np.maximum(m, 0.0).reshape(len(m), -1)
    total = pos.sum(axis=1)
    on = (pos * r.reshape(len(m), -1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on / np.where(total > 0, total, 1.0), np.nan)


def area_share(region) -> np.ndarray:
    """Per face: the region's share of the image, the expected score of a random map."""
    r = np.asarray(region, bool)
    return r.reshape(len(r), -1).mean(axis=1)


def score_maps(maps, regions: Regions, *, tolerance: int = 0) -> pd.DataFrame:
    """One row per face: the three scores and their random-map baselines (see the module)."""
    target = dilate(regions.gendered, tolerance)
    scores = pd.DataFrame({
        "pointing_game": pointing_game(maps, target),
        "gendered_share": positive_share(maps, regions.gendered),
        "neutral_share": positive_share(maps, regions.neutral),
        "baseline_pointing": area_share(target),
        "baseline_gendered": area_share(regions.gendered),
        "baseline_neutral": area_share(regions.neutral),
    })
    scores.attrs["no_positive_relevance"] = int(scores["gendered_share"].isna().sum())
    return scores


# ----------------------------------------------------------------------------- intervals over users

def user_bootstrap_means(values: pd.DataFrame, users, *, n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0) -> pd.DataFrame:
    """The mean of every column over faces, with a percentile interval from resampling users.

    Each replicate draws as many users as there are, with replacement, and takes all faces of
    each drawn user (as ``helpers.evaluation.user_bootstrap`` does for accuracy); every column
    is resampled with the same draws, so differences of columns are paired. NaN values (a
    score undefined for a face) are left out of that column's mean and counted in ``n_faces``.
    """
    v = pd.DataFrame(values).astype("float64")
    users = np.asarray(users)
    if len(users) != len(v):
        raise ValueError(f"{len(users)} user ids for {len(v)} faces")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    codes, uniq = pd.factorize(pd.Series(users), sort=True)
    if (codes < 0).any():
        raise ValueError("user ids must not be missing: a face without a user cannot be resampled by user")
    finite = np.isfinite(v.to_numpy())
    num = np.zeros((len(uniq), v.shape[1]))
    den = np.zeros((len(uniq), v.shape[1]))
    np.add.at(num, codes, np.where(finite, v.to_numpy(), 0.0))
    np.add.at(den, codes, finite.astype("float64"))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=int(n_boot)).astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (weights @ num) / (weights @ den)
        estimate = num.sum(axis=0) / den.sum(axis=0)
    alpha = (1.0 - level) / 2.0
    low, high = np.full(v.shape[1], np.nan), np.full(v.shape[1], np.nan)
    for j in range(v.shape[1]):
        ok = reps[:, j][np.isfinite(reps[:, j])]
        if ok.size:
            low[j], high[j] = np.quantile(ok, [alpha, 1 - alpha])
    return pd.DataFrame({"estimate": estimate, "low": low, "high": high,
                         "n_faces": den.sum(axis=0).astype(int), "n_users": (den > 0).sum(axis=0)},
                        index=pd.Index(v.columns, name="score"))


def compare_to_baseline(scores: pd.DataFrame, users, *, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """Per score: its mean, the random-map baseline's and their paired difference (score minus
    baseline, face by face), each with a user-bootstrap interval; ``beats_baseline`` is True
    when the difference's interval lies above zero, ``below_baseline`` when below."""
    columns = {}
    for score, base in BASELINES.items():
        columns[score] = scores[score]
        columns[base] = scores[base].where(scores[score].notna())  # the same faces on both sides
        columns[f"{score}_minus_baseline"] = scores[score] - scores[base]
    boot = user_bootstrap_means(pd.DataFrame(columns), users, n_boot=n_boot, level=level, seed=seed)
    rows = []
    for score, base in BASELINES.items():
        s, b, d = boot.loc[score], boot.loc[base], boot.loc[f"{score}_minus_baseline"]
        rows.append({"score": score, "estimate": s.estimate, "low": s.low, "high": s.high,
                     "baseline": b.estimate, "baseline_low": b.low, "baseline_high": b.high,
                     "difference": d.estimate, "difference_low": d.low, "difference_high": d.high,
                     "beats_baseline": bool(d.low > 0), "below_baseline": bool(d.high < 0),
                     "n_faces": int(s.n_faces), "n_users": int(s.n_users)})
    return pd.DataFrame(rows).set_index("score")


def trait_shares(maps, masks: Mapping[str, np.ndarray], traits: Sequence[str]) -> pd.DataFrame:
    """Per trait: the mean share of positive relevance on it, the mean share of the image it
    covers, and their ratio (above 1: the maps favour the trait beyond its size). Faces on which
    the trait is absent count with a share of 0 on both sides; faces whose map has no positive
    relevance are left out (counted in ``n_faces``)."""
    rows = []
    for trait in traits:
        if trait not in masks:
            raise KeyError(f"no mask for trait {trait!r}; the masks have {sorted(masks)}")
        share = positive_share(maps, masks[trait])
        ok = np.isfinite(share)
        area = area_share(masks[trait])[ok]
        rows.append({"trait": trait, "relevance_share": float(share[ok].mean()) if ok.any() else np.nan,
                     "area_share": float(area.mean()) if ok.any() else np.nan,
                     "faces_with_trait": int(np.asarray(masks[trait]).reshape(len(share), -1).any(axis=1).sum()),
                     "n_faces": int(ok.sum())})
    out = pd.DataFrame(rows).set_index("trait")
    with np.errstate(invalid="ignore", divide="ignore"):
        out["ratio"] = out["relevance_share"] / out["area_share"]
    return out


def random_baseline(regions: Regions, users, *, tolerance: int = 0, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The random map's expected scores (area shares), averaged over faces, with user intervals:
    rows ``pointing_game`` (target grown by ``tolerance``), ``pointing_game_exact``,
    ``gendered_share``, ``neutral_share``."""
    return user_bootstrap_means(pd.DataFrame({
        "pointing_game": area_share(dilate(regions.gendered, tolerance)),
        "pointing_game_exact": area_share(regions.gendered),
        "gendered_share": area_share(regions.gendered),
        "neutral_share": area_share(regions.neutral),
    }), users, n_boot=n_boot, seed=seed)


def score_table(maps: Mapping[str, Mapping[str, np.ndarray]], regions: Regions, users, *, tolerance: int = 0,
                n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``compare_to_baseline`` for every model and method of ``maps[model][method]`` (maps at the
    masks' resolution), plus the exact-pixel pointing game (``pointing_game_exact``) when
    ``tolerance`` > 0. Returns the table, indexed by (model, method, score), and the per-face
    scores ``{(model, method): score_maps(...)}`` (for paired comparisons between models)."""
    tables, per_face = {}, {}
    for model, by_method in maps.items():
        for method, m in by_method.items():
            per_face[model, method] = score_maps(m, regions, tolerance=tolerance)
            table = compare_to_baseline(per_face[model, method], users, n_boot=n_boot, seed=seed)
            exact = per_face[model, method] if tolerance == 0 else score_maps(m, regions)
            table.loc["pointing_game_exact"] = compare_to_baseline(exact, users, n_boot=n_boot, seed=seed).loc["pointing_game"]
            tables[model, method] = table
    return pd.concat(tables, names=["model", "method"]), per_face
