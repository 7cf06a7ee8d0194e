"""Evaluation of a gender classifier: what its errors are, what they cost, how sure it is, whom it fails.

Notebook 06 calls these functions; each takes plain numpy arrays (``probs`` of shape
``(N, K)`` with rows summing to one, integer labels ``y`` indexing ``class_names``) so that
they are tested on hand-checked examples without a network:

- confusion analysis: :func:`confusion_report` (counts, row-normalised, precision / recall / F1)
  and :func:`confusion_sentences` ("16.0% of women were classified as men");
- costs of errors: :func:`expected_cost`, :func:`bayes_decisions` and
  :func:`choose_decision_rule`, which picks the rule that minimises the mean cost on
  validation data (a threshold for two classes; the Bayes rule on the probabilities otherwise);
  :func:`operating_point` for the ROC and precision-recall curves;
- calibration: :func:`reliability_table`, :func:`expected_calibration_error`,
  :func:`fit_temperature` and :func:`apply_temperature`;
- uncertainty: :func:`user_bootstrap`, which resamples *users*, not images (a user's faces are
  not independent draws, so resampling images gives intervals that are too narrow);
- where it fails: :func:`group_accuracy` (per age group, per fold) and :func:`gallery_indices`;
- cross-validation: :func:`cross_validate` runs any ``train_and_predict`` on the
  subject-exclusive folds and refuses a fold in which a user is in both training and test;
  :func:`literature_table` places the result beside published numbers.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .data import AGE_GROUPS

# How a sentence names the people of a class ("x% of women were classified as men").
CLASS_NOUNS = {"m": "men", "f": "women", "u": "faces labelled other"}

# Adience's eight age groups, youngest first; anything else is reported as "unknown".
UNKNOWN_GROUP = "unknown"

# Published accuracies on Adience's five-fold subject-exclusive gender protocol (binary m/f).
PUBLISHED_RESULTS = (
    {"method": "Levi & Hassner 2015 (CNN from scratch)", "mean": 86.8, "std": 1.4,
     "source": "Levi & Hassner, CVPR Workshops 2015"},
    {"method": "Lapuschkin et al. 2017 (VGG16 fine-tuned)", "mean": 92.7, "std": None,
     "source": "Lapuschkin et al., ICCV Workshops 2017 (about 92.7)"},
)


# ----------------------------------------------------------------------------- checks
def _check_probs(probs, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, K) with K >= 2 classes, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{name} must hold finite non-negative probabilities that sum to 1 per row "
                         "(softmax outputs); pass probabilities, not logits")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if bad.size:
        raise ValueError(
            f"{name} rows must sum to 1 (softmax outputs); row {bad[0]} sums to {sums[bad[0]]:.4f} "
            f"({bad.size} such rows). Pass probabilities, not logits."
        )
    return p


def _check_labels(y, n_classes: int, n: int | None = None, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {y.shape}")
    if n is not None and len(y) != n:
        raise ValueError(f"{name} has {len(y)} entries but the predictions have {n}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} must hold integer class indices in 0..{n_classes - 1}, got {np.unique(y)[:10]}")
    return y.astype(np.int64)


def _check_cost(cost, n_classes: int) -> np.ndarray:
    c = np.asarray(cost, dtype=np.float64)
    if c.shape != (n_classes, n_classes):
        raise ValueError(f"cost matrix must be {n_classes}x{n_classes} (rows: true class, columns: decision), got {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("costs must be finite and non-negative")
    return c


# ----------------------------------------------------------------------------- confusion
@dataclass
class ConfusionReport:
    """A confusion matrix (rows: true class, columns: prediction) and the metrics read from it."""

    class_names: tuple[str, ...]
    counts: pd.DataFrame
    normalized: pd.DataFrame  # each row divided by its total: row i is the recall picture of class i
    per_class: pd.DataFrame  # precision, recall, f1, support per class
    accuracy: float


def confusion_report(y_true, y_pred, class_names: Sequence[str]) -> ConfusionReport:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    names = tuple(class_names)
    k = len(names)
    y_true = _check_labels(y_true, k, name="y_true")
    y_pred = _check_labels(y_pred, k, n=len(y_true), name="y_pred")
    labels = list(range(k))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, cm / np.maximum(totals, 1), np.nan)
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    idx = pd.Index(names, name="true")
    cols = pd.Index(names, name="predicted")
    per_class = pd.DataFrame({"precision": prec, "recall": rec, "f1": f1, "support": support}, index=pd.Index(names, name="class"))
    acc = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    return ConfusionReport(names, pd.DataFrame(cm, idx, cols), pd.DataFrame(norm, idx, cols), per_class, acc)


def confusion_sentences(counts, class_names: Sequence[str], nouns: Mapping[str, str] | None = None) -> list[str]:
    """One sentence per cell of a confusion matrix, generated from its numbers."""
    names = list(class_names)
    cm = np.asarray(counts)
    nouns = {**CLASS_NOUNS, **(nouns or {})}
    noun = lambda c: nouns.get(c, f"faces of class {c!r}")  # noqa: E731
    out = []
    for i, true in enumerate(names):
        total = int(cm[i].sum())
        if total == 0:
            out.append(f"There were no {noun(true)} in this set.")
            continue
        for j, pred in enumerate(names):
            n = int(cm[i, j])
            share = 100.0 * n / total
            what = "correctly" if i == j else f"as {noun(pred)}"
            out.append(f"{share:.1f}% of {noun(true)} ({n} of {total}) were classified {what}.")
    return out


# ----------------------------------------------------------------------------- costs
def cost_matrix(class_names: Sequence[str], errors: Mapping[tuple[str, str], float] | None = None) -> np.ndarray:
    """Cost matrix C[true, decision]: 0 on the diagonal, 1 for every error unless ``errors`` says
    otherwise, e.g. ``{("f", "m"): 2.0}`` makes taking a woman for a man cost twice as much."""
    names = list(class_names)
    c = 1.0 - np.eye(len(names))
    for (true, pred), value in (errors or {}).items():
        if true not in names or pred not in names:
            raise ValueError(f"cost for ({true!r}, {pred!r}): both must be among the classes {names}")
        c[names.index(true), names.index(pred)] = float(value)
    return _check_cost(c, len(names))


def expected_cost(y_true, y_pred, cost) -> float:
    """Mean cost per face of the decisions ``y_pred``: mean of C[y_true, y_pred]."""
    c = np.asarray(cost, dtype=np.float64)
    y_true = _check_labels(y_true, c.shape[0], name="y_true")
    y_pred = _check_labels(y_pred, c.shape[1], n=len(y_true), name="y_pred")
    return float(c[y_true, y_pred].mean()) if len(y_true) else float("nan")


def expected_cost_from_confusion(counts, cost) -> float:
    cm = np.asarray(counts, dtype=np.float64)
    c = _check_cost(cost, cm.shape[0])
    return float((cm * c).sum() / cm.sum())


def bayes_decisions(probs, cost) -> np.ndarray:
    """The decision of least expected cost for each face, if ``probs`` were the true posteriors:
    argmin_j sum_i p_i C[i, j]."""
    p = _check_probs(probs)
    c = _check_cost(cost, p.shape[1])
    return np.argmin(p @ c, axis=1)


def bayes_threshold(cost, positive: int = 1) -> float:
    """For two classes: decide ``positive`` when its probability exceeds this value.

    Deciding positive costs p_neg * C[neg, pos]; deciding negative costs p_pos * C[pos, neg].
    """
    c = _check_cost(cost, 2)
    neg = 1 - positive
    false_pos, false_neg = c[neg, positive] - c[neg, neg], c[positive, neg] - c[positive, positive]
    if false_pos + false_neg <= 0:
        return 0.5
    return float(false_pos / (false_pos + false_neg))


@dataclass
class DecisionRule:
    """How probabilities become decisions. ``kind`` is "threshold" (two classes: decide
    ``positive`` when its probability is at least ``threshold``) or "bayes" (least expected cost)."""

    kind: str
    cost: np.ndarray
    class_names: tuple[str, ...]
    threshold: float | None = None
    positive: int = 1
    validation_cost: float | None = None

    def predict(self, probs) -> np.ndarray:
        p = _check_probs(probs)
        if p.shape[1] != len(self.class_names):
            raise ValueError(f"probs have {p.shape[1]} classes, the rule was chosen for {len(self.class_names)}")
        if self.kind == "threshold":
            return np.where(p[:, self.positive] >= self.threshold, self.positive, 1 - self.positive)
        return bayes_decisions(p, self.cost)

    def describe(self) -> str:
        if self.kind == "threshold":
            return (f"decide {self.class_names[self.positive]!r} when P({self.class_names[self.positive]}) "
                    f">= {self.threshold:.3f}, otherwise {self.class_names[1 - self.positive]!r}")
        return "decide the class of least expected cost under the predicted probabilities (Bayes rule)"


def choose_decision_rule(probs_val, y_val, cost, class_names: Sequence[str], positive: int = 1) -> DecisionRule:
    """The rule that minimises the mean cost on validation data.

    Two classes: every threshold on P(positive) is tried (the validation scores themselves and
    the ends), so the rule does not rely on the probabilities being calibrated; among equally
    good thresholds the one closest to the Bayes threshold wins. More classes: the Bayes rule.
    """
    names = tuple(class_names)
    p = _check_probs(probs_val, "probs_val")
    if p.shape[1] != len(names):
        raise ValueError(f"probs_val has {p.shape[1]} columns but there are {len(names)} class names")
    y = _check_labels(y_val, len(names), n=len(p), name="y_val")
    c = _check_cost(cost, len(names))
    if len(names) != 2:
        rule = DecisionRule("bayes", c, names)
        rule.validation_cost = expected_cost(y, rule.predict(p), c)
        return rule
    neg = 1 - positive
    scores = p[:, positive]
    # Thresholds between consecutive distinct scores give every distinct decision set.
    uniq = np.unique(scores)
    candidates = np.concatenate([[0.0], (uniq[:-1] + uniq[1:]) / 2.0, [np.nextafter(uniq[-1], np.inf)], uniq])
    candidates = np.unique(np.clip(candidates, 0.0, 1.0 + 1e-12))
    decide_pos = scores[None, :] >= candidates[:, None]  # (T, N)
    cost_if_pos = c[y, positive][None, :]
    cost_if_neg = c[y, neg][None, :]
    mean_costs = np.where(decide_pos, cost_if_pos, cost_if_neg).mean(axis=1)
    best = mean_costs.min()
    tied = np.flatnonzero(np.isclose(mean_costs, best, rtol=0, atol=1e-12))
    target = bayes_threshold(c, positive)
    pick = tied[np.argmin(np.abs(candidates[tied] - target))]
    return DecisionRule("threshold", c, names, threshold=float(candidates[pick]), positive=positive,
                        validation_cost=float(mean_costs[pick]))


@dataclass
class CostAnalysis:
    """A decision rule chosen on validation faces for given error costs, and what it does on test faces."""

    cost: np.ndarray
    rule: DecisionRule
    report: ConfusionReport  # the test faces under the chosen rule
    test_cost: float  # mean cost per test face under the rule
    argmax_cost: float  # ... under the plain argmax, for comparison


def cost_analysis(probs_val, y_val, probs_test, y_test, class_names: Sequence[str],
                  errors: Mapping[tuple[str, str], float] | None = None, positive: int = 1) -> CostAnalysis:
    """Choose the rule of least mean cost on the validation faces (:func:`choose_decision_rule`)
    and apply it to the test faces: notebook 06's "what errors cost" in one call.

    ``errors`` maps (true, decided) class names to the cost of that error (1 where not given).
    """
    names = tuple(class_names)
    cost = cost_matrix(names, errors)
    p_test = _check_probs(probs_test, "probs_test")
    y_test = _check_labels(y_test, len(names), n=len(p_test), name="y_test")
    rule = choose_decision_rule(probs_val, y_val, cost, names, positive=positive)
    decided = rule.predict(p_test)
    return CostAnalysis(cost, rule, confusion_report(y_test, decided, names), expected_cost(y_test, decided, cost),
                        expected_cost(y_test, p_test.argmax(axis=1), cost))


def operating_point(y_true, scores, threshold: float, positive: int = 1) -> dict:
    """Where a threshold sits on the ROC and precision-recall curves."""
    y = np.asarray(y_true) == positive
    s = np.asarray(scores, dtype=np.float64)
    decide = s >= threshold
    tp, fp = int(np.sum(decide & y)), int(np.sum(decide & ~y))
    fn, tn = int(np.sum(~decide & y)), int(np.sum(~decide & ~y))
    nan = float("nan")
    return {
        "threshold": float(threshold),
        "tpr": tp / (tp + fn) if tp + fn else nan,
        "fpr": fp / (fp + tn) if fp + tn else nan,
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
    }


def roc_pr_curves(y_true, scores, positive: int = 1) -> dict:
    """ROC and precision-recall curves with their areas (scikit-learn)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y = (np.asarray(y_true) == positive).astype(int)
    fpr, tpr, _ = roc_curve(y, scores)
    precision, recall, _ = precision_recall_curve(y, scores)
    return {"fpr": fpr, "tpr": tpr, "roc_auc": float(auc(fpr, tpr)),
            "precision": precision, "recall": recall, "average_precision": float(average_precision_score(y, scores))}


# ----------------------------------------------------------------------------- calibration
def reliability_table(probs, y_true, n_bins: int = 10) -> pd.DataFrame:
    """Top-label confidence in equal-width bins: per bin the count, mean confidence and accuracy.

    Bins are (lo, hi] except the first, which also holds its lower edge.
    """
    p = _check_probs(probs)
    y = _check_labels(y_true, p.shape[1], n=len(p), name="y_true")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        m = which == b
        n = int(m.sum())
        rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "count": n,
                     "confidence": float(conf[m].mean()) if n else np.nan,
                     "accuracy": float(correct[m].mean()) if n else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(probs, y_true, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap |accuracy - confidence| over the reliability bins."""
    table = reliability_table(probs, y_true, n_bins)
    filled = table[table["count"] > 0]
    if filled.empty:
        return float("nan")
    w = filled["count"] / filled["count"].sum()
    return float((w * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def logits_from_probs(probs) -> np.ndarray:
    """Log-probabilities: softmax of these gives ``probs`` back (logits up to a constant per row)."""
    return np.log(np.clip(_check_probs(probs), 1e-12, 1.0))


def apply_temperature(logits, temperature: float) -> np.ndarray:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs, y_true) -> float:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(logits_val, y_val, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T that minimises the validation negative log-likelihood of softmax(z / T).

    T > 1 softens over-confident predictions; accuracy is unchanged (the argmax is the same).
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits_val, dtype=np.float64)
    y = _check_labels(y_val, z.shape[1], n=len(z), name="y_val")
    lo, hi = bounds
    res = minimize_scalar(lambda log_t: negative_log_likelihood(apply_temperature(z, math.exp(log_t)), y),
                          bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))


@dataclass
class ChoiceSpread:
    """How much a choice made on validation data moves when other people are drawn: the
    estimate on the faces at hand and its user-bootstrap standard error and interval."""

    estimate: float
    se: float
    low: float
    high: float
    n_faces: int
    n_users: int
    samples: np.ndarray

    def __str__(self) -> str:
        return f"{self.estimate:.3f} ± {self.se:.3f} (user-bootstrap SE, {self.n_faces} faces of {self.n_users} users)"


def choice_spread(choose: Callable[[np.ndarray], float], users, *, n_boot: int = 200, level: float = 0.95,
                  seed: int = 0) -> ChoiceSpread:
    """Bootstrap a choice made on validation data by resampling its users.

    ``choose(rows)`` makes the choice (a threshold, a temperature) from the validation rows
    ``rows`` (integer positions, repeated as drawn); it is called once on all rows and
    ``n_boot`` times on resampled users (all faces of each drawn user).
    """
    codes, uniq = pd.factorize(pd.Series(list(users)), sort=True)
    if (codes < 0).any():
        raise ValueError("user ids must not be missing: a face without a user cannot be resampled by user")
    rows_of = [np.flatnonzero(codes == u) for u in range(len(uniq))]
    rng = np.random.default_rng(seed)
    estimate = float(choose(np.arange(len(codes))))
    samples = np.array([float(choose(np.concatenate([rows_of[u] for u in rng.integers(0, len(uniq), len(uniq))])))
                        for _ in range(int(n_boot))])
    alpha = (1 - level) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha]) if len(samples) else (np.nan, np.nan)
    return ChoiceSpread(estimate, float(samples.std(ddof=1)) if len(samples) > 1 else float("nan"),
                        float(low), float(high), len(codes), len(uniq), samples)


def threshold_spread(probs_val, y_val, users, cost, class_names: Sequence[str], positive: int = 1, **boot) -> ChoiceSpread:
    """The cost-optimal threshold on P(positive) and how noisy it is (two classes)."""
    p = _check_probs(probs_val, "probs_val")
    y = _check_labels(y_val, p.shape[1], n=len(p), name="y_val")
    if p.shape[1] != 2:
        raise ValueError("a threshold exists for two classes only; with more, the Bayes rule has nothing to fit")
    return choice_spread(lambda r: choose_decision_rule(p[r], y[r], cost, class_names, positive).threshold, users, **boot)


def temperature_spread(logits_val, y_val, users, **boot) -> ChoiceSpread:
    """The fitted temperature (:func:`fit_temperature`) and how noisy it is."""
    z = np.asarray(logits_val, dtype=np.float64)
    y = _check_labels(y_val, z.shape[1], n=len(z), name="y_val")
    return choice_spread(lambda r: fit_temperature(z[r], y[r]), users, **boot)


def temperature_sentence(spread: ChoiceSpread) -> str:
    """What a fitted temperature says about the model, only as far as its uncertainty allows:
    over- (or under-) confident only when T = 1 lies outside the bootstrap interval."""
    t, lo, hi = spread.estimate, spread.low, spread.high
    head = (f"The fitted temperature is T = {t:.2f} (user-bootstrap standard error {spread.se:.2f}, "
            f"95% interval {lo:.2f}–{hi:.2f}, from {spread.n_faces} validation faces of {spread.n_users} users)")
    if lo > 1.0:
        return head + ": the model is over-confident as trained (T > 1 softens its probabilities)."
    if hi < 1.0:
        return head + ": the model is under-confident as trained (T < 1 sharpens its probabilities)."
    return (head + ": T = 1 is inside the interval, so these faces cannot tell whether the model is over- "
            "or under-confident; temperature scaling changes little.")


# ----------------------------------------------------------------------------- bootstrap
@dataclass
class BootstrapResult:
    """Point estimates and percentile intervals; ``samples`` has one row per bootstrap replicate."""

    table: pd.DataFrame  # index: metric; columns: estimate, low, high, n_faces, n_users
    samples: pd.DataFrame
    level: float


def _user_statistics(y_true, y_pred, users, n_classes):
    """Per user: correct and total faces overall and per true class (sufficient for accuracy and recall)."""
    codes, uniq = pd.factorize(pd.Series(users), sort=True)
    if (codes < 0).any():
        raise ValueError("user ids must not be missing: a face without a user cannot be resampled by user")
    n_users = len(uniq)
    correct = (y_true == y_pred).astype(np.float64)
    num = np.zeros((n_users, 1 + n_classes))
    den = np.zeros((n_users, 1 + n_classes))
    np.add.at(num[:, 0], codes, correct)
    np.add.at(den[:, 0], codes, 1.0)
    for k in range(n_classes):
        m = y_true == k
        np.add.at(num[:, 1 + k], codes[m], correct[m])
        np.add.at(den[:, 1 + k], codes[m], 1.0)
    return num, den, n_users


def user_bootstrap(y_true, y_pred, users, class_names: Sequence[str], *, n_boot: int = 1000,
                   level: float = 0.95, seed: int = 0) -> BootstrapResult:
    """Accuracy and per-class recall with intervals from resampling users with replacement.

    Each replicate draws as many users as there are, with replacement, and takes all faces of
    each drawn user (as many times as the user was drawn): the unit of independence is the person.
    """
    names = list(class_names)
    y_true = _check_labels(y_true, len(names), name="y_true")
    y_pred = _check_labels(y_pred, len(names), n=len(y_true), name="y_pred")
    if len(users) != len(y_true):
        raise ValueError(f"users has {len(users)} entries but there are {len(y_true)} faces")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    num, den, n_users = _user_statistics(y_true, y_pred, users, len(names))
    metrics = ["accuracy", *[f"recall_{c}" for c in names]]
    rng = np.random.default_rng(seed)
    # How often each user is drawn in each replicate: the whole bootstrap is two matrix products.
    weights = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_boot).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (weights @ num) / (weights @ den)  # NaN where a replicate has no face of a class
        estimate = num.sum(axis=0) / den.sum(axis=0)
    alpha = (1.0 - level) / 2.0
    low, high = np.full(len(metrics), np.nan), np.full(len(metrics), np.nan)
    for j in range(len(metrics)):  # a class absent from the data has no recall and no interval
        finite = reps[:, j][np.isfinite(reps[:, j])]
        if finite.size:
            low[j], high[j] = np.quantile(finite, [alpha, 1 - alpha])
    users_per_metric = [(den[:, j] > 0).sum() for j in range(len(metrics))]
    table = pd.DataFrame({"estimate": estimate, "low": low, "high": high,
                          "n_faces": den.sum(axis=0).astype(int), "n_users": users_per_metric},
                         index=pd.Index(metrics, name="metric"))
    return BootstrapResult(table, pd.DataFrame(reps, columns=metrics), level)


# ----------------------------------------------------------------------------- per group
def age_group_order(values: Iterable) -> list[str]:
    present = {str(v) for v in values}
    order = [g for g in AGE_GROUPS if g in present]
    return order + sorted(present - set(order) - {UNKNOWN_GROUP}) + ([UNKNOWN_GROUP] if UNKNOWN_GROUP in present else [])


def normalize_groups(groups) -> np.ndarray:
    """Group labels as strings; missing values (None, NaN, '') become ``"unknown"`` so they are counted, not dropped."""
    s = pd.Series(list(groups), dtype=object)
    missing = s.isna() | (s.astype(str).str.strip().isin(["", "None", "nan"]))
    return np.where(missing, UNKNOWN_GROUP, s.astype(str)).astype(object)


def group_accuracy(y_true, y_pred, groups, users, *, order: Sequence | None = None, n_boot: int = 1000,
                   level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Accuracy per group (age group, fold, ...) with a user-bootstrap interval inside each group."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    g = normalize_groups(groups)
    users = np.asarray(users)
    if not (len(y_true) == len(y_pred) == len(g) == len(users)):
        raise ValueError("y_true, y_pred, groups and users must have the same length")
    n_classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    names = [str(k) for k in range(n_classes)]
    keys = [str(o) for o in order] if order is not None else age_group_order(g)
    rows = []
    for i, key in enumerate(keys):
        m = g == key
        if not m.any():
            continue
        boot = user_bootstrap(y_true[m], y_pred[m], users[m], names, n_boot=n_boot, level=level, seed=seed + i)
        acc = boot.table.loc["accuracy"]
        rows.append({"group": key, "n_faces": int(m.sum()), "n_users": int(acc["n_users"]),
                     "accuracy": float(acc["estimate"]), "low": float(acc["low"]), "high": float(acc["high"])})
    return pd.DataFrame(rows, columns=["group", "n_faces", "n_users", "accuracy", "low", "high"])


def gallery_indices(probs, y_true, k: int = 8) -> dict[str, np.ndarray]:
    """Indices of the ``k`` most confident mistakes and the ``k`` least confident correct answers."""
    p = _check_probs(probs)
    y = _check_labels(y_true, p.shape[1], n=len(p), name="y_true")
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    return {
        "confident_mistakes": wrong[np.argsort(-conf[wrong], kind="stable")][:k],
        "unsure_correct": right[np.argsort(conf[right], kind="stable")][:k],
    }


def photo_caveats(report: ConfusionReport, per_age: pd.DataFrame, temperature: "ChoiceSpread", ece_scaled: float,
                  nouns: Mapping[str, str] | None = None, *, quick: bool) -> list[str]:
    """What one prediction on a learner's photo can and cannot say, with this run's own numbers:
    per-class recall on the test faces, the weakest and strongest age groups (``group_accuracy``
    over the cross-validation), and how calibrated the probabilities are."""
    nouns = {**CLASS_NOUNS, **(nouns or {})}
    rec = report.per_class["recall"]
    known = per_age[per_age["group"] != UNKNOWN_GROUP] if len(per_age) else per_age
    lines = ["What this answer can say: which label the annotators of photos like the training faces would "
             "most likely have given, and how often this model is right when it answers like this. On this "
             "notebook's test faces it recognised " + ", ".join(f"{rec[c]:.0%} of {nouns.get(c, c)}" for c in rec.index)
             + f" ({report.accuracy:.0%} overall)."]
    if len(known):
        worst, best = known.loc[known["accuracy"].idxmin()], known.loc[known["accuracy"].idxmax()]
        lines.append(f"Its accuracy depends on who is in the photo: {worst['accuracy']:.0%} for age group {worst['group']} "
                     f"({worst['n_faces']} faces), {best['accuracy']:.0%} for {best['group']} ({best['n_faces']} faces), "
                     "over all five folds.")
    lines.append(f"The probability is calibrated with T = {temperature.estimate:.2f} (± {temperature.se:.2f}); on the test "
                 f"faces the calibrated confidence is off by {ece_scaled:.1%} on average (ECE): read 80% as "
                 "\"right about four times in five on faces like these\", not as a fact about this person.")
    lines.append("What it cannot say: anything about this person's gender identity (the labels are annotators' "
                 "perceptions of photos, and the binary protocol has no answer for people who are neither); "
                 "anything reliable for a photo unlike the training faces (another pose, lighting, age, or a crop placed by hand).")
    if quick:
        lines.append("And in quick mode, nothing about real faces at all: this model was trained on synthetic faces.")
    return lines


# ----------------------------------------------------------------------------- cross-validation


@dataclass
class CVResult:
    """Per-fold accuracies and out-of-fold predictions of one configuration."""

    name: str
    fold_accuracy: dict[int, float]
    predictions: pd.DataFrame  # the test rows of every fold with fold, label, pred, and p_<class>
    fold_seconds: dict[int, float] = field(default_factory=dict)
    remaining: list[int] = field(default_factory=list)  # folds not run (a time budget ran out)

    @property
    def complete(self) -> bool:
        return not self.remaining

    @property
    def accuracies(self) -> np.ndarray:
        return np.array(list(self.fold_accuracy.values()), dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        """Sample standard deviation over folds (ddof=1), as fold-to-fold spread is usually reported."""
        a = self.accuracies
        return float(a.std(ddof=1)) if len(a) > 1 else 0.0

    def summary(self) -> str:
        return f"{self.name}: {100 * self.mean:.1f} ± {100 * self.std:.1f}% over {len(self.accuracies)} folds"


def cross_validate(df: pd.DataFrame, train_and_predict: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], np.ndarray],
                   *, folds: Iterable[int] = range(5), class_names: Sequence[str] | None = None,
                   val_fraction: float = 0.1, seed: int = 0, name: str = "model",
                   store=None, settings: Mapping | None = None, max_seconds: float | None = None,
                   fold_seconds_guess: float | None = None, log: Callable[[str], None] | None = print) -> CVResult:
    """Subject-exclusive k-fold protocol: for each fold k, test on fold k, train on the others.

    ``df`` needs ``fold``, ``user_id`` and an integer ``label`` column (``helpers.data.apply_protocol``).
    The split of each fold is ``helpers.data.fold_split`` (the one notebooks 04 and 05 use).
    ``train_and_predict(train_df, val_df, test_df)`` returns class probabilities for ``test_df``
    (shape ``(len(test_df), K)``). Validation users are carved from the training folds. A fold in
    which any user is in both training and test raises :class:`helpers.data.SubjectLeakError` before training.

    ``store`` (a folder) makes the run resumable fold by fold: each finished fold's predictions
    are written there (``fold_<k>.csv`` and ``fold_<k>.json``, atomically) and read back by a
    later call with the same faces, split, classes and ``settings`` (a JSON-able description of
    what is trained: plan, epochs, image size, weights...) instead of training again; a fold
    stored for other faces or settings is trained again, and the log says why. Between folds, whatever the last
    fold's training left behind is released (:func:`release_memory`), so only one fold's model
    is alive at a time.

    ``max_seconds`` (with ``store``) keeps one call within a time limit (a notebook runner's
    cell limit): a fold is not started when the time spent plus one fold's time (the mean of the
    folds trained so far, else ``fold_seconds_guess``) would pass it. The result then lists the
    folds left in ``remaining``; the same call again (the next cell) reads back the finished
    folds and trains the others.
    """
    from . import data

    for col in ("fold", "user_id", "label"):
        if col not in df.columns:
            raise ValueError(f"cross_validate needs a {col!r} column; the frame has {list(df.columns)}")
    folds = list(folds)
    present = set(df["fold"].dropna().astype(int))
    missing = [f for f in folds if f not in present]
    if missing:
        raise ValueError(f"fold(s) {missing} have no faces; the frame has folds {sorted(present)}")
    k = len(class_names) if class_names is not None else int(df["label"].max()) + 1
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(k))
    # Check every fold before the first (possibly long) training run.
    for f in folds:
        data.check_subject_exclusive(df[df["fold"] != f], df[df["fold"] == f], context=f"fold {f}")
    if max_seconds is not None and store is None:
        raise ValueError("max_seconds needs a store: the folds left for later must find the finished ones")
    accs, secs, parts, trained, remaining = {}, {}, [], [], []
    started = time.perf_counter()
    for i, f in enumerate(folds):
        train, val, test = data.fold_split(df, f, val_fraction=val_fraction, seed=seed + f)
        key = split_fingerprint(train, val, test, names) + _settings_fingerprint(settings)
        stored = _read_fold(store, f, key, test, names, log=log) if store is not None else None
        guess = float(np.mean(trained)) if trained else fold_seconds_guess
        if stored is None and max_seconds is not None and guess is not None \
                and time.perf_counter() - started + guess > max_seconds:
            remaining.append(f)
            continue
        if stored is not None:
            probs, secs[f] = stored
            how = "read back from an earlier run"
        else:
            t0 = time.perf_counter()
            registered = _custom_gradients()
            probs = _check_probs(train_and_predict(train, val, test), f"probabilities returned for fold {f}")
            secs[f] = time.perf_counter() - t0
            trained.append(secs[f])
            how = f"in {secs[f]:.1f} s"
            if probs.shape != (len(test), k):
                raise ValueError(f"train_and_predict returned shape {probs.shape} for fold {f}; expected {(len(test), k)}")
        pred = probs.argmax(axis=1)
        accs[f] = float(np.mean(pred == test["label"].to_numpy()))
        if store is not None and stored is None:
            _write_fold(store, f, key, probs, names, accs[f], secs[f], name)
        out = test.copy()
        out["pred"] = pred
        for j, c in enumerate(names):
            out[f"p_{c}"] = probs[:, j]
        parts.append(out)
        del probs
        if stored is None:
            release_memory(registered)  # the fold's model, optimizer and compiled functions, before the next fold
        if log:
            log(f"[{name}] fold {f} ({i + 1}/{len(folds)}): train {len(train)} faces / "
                f"{train['user_id'].nunique()} users, val {len(val)}, test {len(test)}: "
                f"accuracy {100 * accs[f]:.1f}% {how}")
    if remaining and log:
        log(f"[{name}] stopped before fold(s) {remaining} to stay within {max_seconds:.0f} s: "
            "run the same call again (the next cell) to finish them; the finished folds are kept")
    predictions = pd.concat(parts) if parts else df.iloc[:0].assign(pred=pd.Series(dtype=int))
    return CVResult(name, accs, predictions, secs, remaining)


def release_memory(keep_custom_gradients: frozenset | None = None) -> None:
    """Free what finished training left behind before the next model is built.

    A Keras model, its optimizer, its callbacks and its compiled functions refer to each other
    (reference cycles), so dropping the last reference does not free them: Python's cycle
    collector does, when it next runs, and with few but huge objects (a 580 MB VGG-Face, twice
    that in Adam's moments) it may not run for several folds. ``keras.backend.clear_session``
    also resets Keras' global state (layer names, TensorFlow's graph and kernel caches); models
    still referenced elsewhere keep working.

    With ``keep_custom_gradients`` (``_custom_gradients()`` taken before the training), the
    gradient functions TensorFlow registered during that training are forgotten too: see
    :func:`_forget_custom_gradients`, without which every fold's network stays in memory.
    """
    import gc
    import sys

    if keep_custom_gradients is not None:
        _forget_custom_gradients(keep_custom_gradients)
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=True)
    else:
        gc.collect()


@contextmanager
def training_released():
    """``with training_released(): ...train a model...``: on leaving, release what the training
    left behind (its model once nothing else refers to it, and TensorFlow's hold on its traced
    graphs), as :func:`cross_validate` does between folds. For several configurations trained
    one after the other in one kernel (notebook 05)."""
    keep = _custom_gradients()
    try:
        yield
    finally:
        release_memory(keep)


def _custom_gradients() -> frozenset:
    """Names in TensorFlow's gradient registry made by ``tf.custom_gradient`` (empty without TensorFlow)."""
    import sys

    if "tensorflow" not in sys.modules:
        return frozenset()
    from tensorflow.python.framework import ops  # private: see _forget_custom_gradients

    return frozenset(n for n in ops.gradient_registry._registry if n.startswith("CustomGradient-"))


def _forget_custom_gradients(keep: frozenset) -> int:
    """Drop the ``tf.custom_gradient`` entries of TensorFlow's gradient registry not in ``keep``.

    Why (issue 18): tracing Keras' training step (the optimizer's ``ReplicaContext.all_reduce``)
    runs a ``tf.custom_gradient`` in graph mode, which registers a gradient function under a new
    name in TensorFlow's global gradient registry and never removes it. That function's closure
    holds the traced training graph, and the graph holds the model's variables: without this, each
    fold kept its whole network (measured: +1.4 GB per fold at full size), whatever Python freed.
    No public API removes registry entries, hence the private ``ops.gradient_registry``, here only.
    An entry is read while a graph's gradient is being built, which is over once the fold's
    training step has been traced, so dropping the fold's own entries after the fold is safe.
    Returns how many entries were dropped.
    """
    import sys

    if "tensorflow" not in sys.modules:
        return 0
    from tensorflow.python.framework import ops

    registry = ops.gradient_registry._registry
    gone = [n for n in registry if n.startswith("CustomGradient-") and n not in keep]
    for name in gone:
        del registry[name]
    return len(gone)


def split_fingerprint(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, class_names: Sequence[str]) -> str:
    """A short hash of who is in each part of a split (user, face, image, label) and the classes:
    equal fingerprints mean the same training problem, so stored results may be reused."""
    import hashlib

    h = hashlib.sha256(json.dumps(list(class_names)).encode())
    for part in (train, val, test):
        cols = [c for c in ("user_id", "face_id", "path", "label") if c in part.columns]
        rows = part[cols].astype(str).agg("|".join, axis=1) if cols else pd.Series([], dtype=str)
        h.update(("\n".join(sorted(rows)) + "\x00").encode())
    return h.hexdigest()[:16]


def _settings_fingerprint(settings: Mapping | None) -> str:
    if not settings:
        return ""
    import hashlib

    return "-" + hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fold_paths(store, fold: int):
    from pathlib import Path

    return Path(store) / f"fold_{fold}.csv", Path(store) / f"fold_{fold}.json"


def _read_fold(store, fold: int, key: str, test: pd.DataFrame, names, log=None):
    csv_path, meta_path = _fold_paths(store, fold)
    if not (csv_path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("split") != key or list(meta.get("class_names", [])) != list(names):
        if log:
            log(f"fold {fold}: the stored predictions in {csv_path.parent} are for other faces, classes or "
                "settings: training again")
        return None
    stored = pd.read_csv(csv_path)
    probs = stored[[f"p_{c}" for c in names]].to_numpy(dtype=np.float64)
    if len(probs) != len(test):
        return None
    return _check_probs(probs, f"stored probabilities of fold {fold}"), float(meta.get("seconds", float("nan")))


def _write_fold(store, fold: int, key: str, probs, names, accuracy: float, seconds: float, name: str) -> None:
    from .course.fileio import atomic_path, write_json_atomic

    csv_path, meta_path = _fold_paths(store, fold)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(probs, columns=[f"p_{c}" for c in names]).to_csv(tmp, index=False)
    # the metadata last: a fold counts as finished only once both files are complete
    write_json_atomic(meta_path, {"fold": int(fold), "split": key, "class_names": list(names), "name": name,
                                  "accuracy": float(accuracy), "seconds": float(seconds)})


def literature_table(results: Mapping[str, CVResult], *, on_adience: bool, note: str = "quick-mode synthetic") -> pd.DataFrame:
    """This course's cross-validation beside published results on the same protocol (accuracy in %)."""
    rows = [{"method": r["method"], "accuracy (%)": r["mean"], "± std": r["std"], "data": "Adience", "source": r["source"]}
            for r in PUBLISHED_RESULTS]
    for name, res in results.items():
        rows.append({"method": f"this course: {name}", "accuracy (%)": round(100 * res.mean, 1),
                     "± std": round(100 * res.std, 1), "data": "Adience" if on_adience else note,
                     "source": f"{len(res.accuracies)}-fold subject-exclusive CV, this notebook"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- configurations to cross-validate
def head_on_features_trainer(df: pd.DataFrame, features, class_names: Sequence[str], *, epochs: int = 10,
                             batch_size: int = 32, learning_rate: float | None = None, seed: int = 0):
    """``train_and_predict`` for :func:`cross_validate`: a new ``fc8`` trained on cached ``fc7``
    features (``helpers.finetune.train_head_on_features``); ``features[i]`` belongs to ``df.iloc[i]``."""
    import keras

    from . import finetune

    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or len(feats) != len(df):
        raise ValueError(f"features must be (len(df), D) = ({len(df)}, D), one row per face of df; got {feats.shape}")
    if not df.index.is_unique:
        raise ValueError("df needs a unique index to match faces to feature rows (call df.reset_index(drop=True))")
    row_of = pd.Series(np.arange(len(df)), index=df.index)
    lr = finetune.DEFAULT_HEAD_LR if learning_rate is None else learning_rate

    def train_and_predict(train, val, test):
        run = finetune.train_head_on_features(
            feats[row_of[train.index].to_numpy()], train["label"].to_numpy(), class_names=class_names,
            epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed)
        train_and_predict.heads[fold_key(test)] = run.head
        # a direct call, not predict(): a new head per fold would retrace predict's function each time
        return keras.ops.convert_to_numpy(run.head(feats[row_of[test.index].to_numpy()], training=False))

    train_and_predict.heads = {}  # the trained head of each fold: fine-tuning can start from it
    return train_and_predict


def fold_key(test: pd.DataFrame) -> tuple:
    """The test fold(s) of a split, as a key for what was trained on it."""
    return tuple(sorted(int(f) for f in set(test["fold"])))


def finetune_trainer(load_base: Callable[[], object], root, class_names: Sequence[str], *,
                     make_plan: Callable[[object], object], image_size, run_root, batch_size: int = 32,
                     seed: int = 0, resize: str = "direct", patience: int = 3,
                     initial_heads: Mapping[tuple, object] | None = None, keep_checkpoints: bool = False):
    """``train_and_predict`` for :func:`cross_validate`: the two-stage fine-tuning of
    ``helpers.finetune`` from a freshly loaded base network in every fold.

    ``load_base()`` returns the converted network (a new copy each call, so folds never share
    trained weights); ``make_plan(model)`` returns the ``FreezePlan`` for the model with its gender
    head. ``initial_heads`` (``head_on_features_trainer(...).heads``) gives a fold's head trained
    on cached features: the fold then starts from it and skips the head stage, as notebook 05
    starts from notebook 04's head.

    Memory: one fold's model at a time. Before loading, the previous fold's model, optimizer and
    compiled functions are released (:func:`release_memory`); nothing returned or kept here
    refers to a fold's model (the test probabilities are a numpy array).

    Resuming: each fold trains in ``run_root/fold_<k>-<hash>``, the hash naming its faces, plan,
    image size and seed (``finetune.run_directory``): an interrupted fold resumes after its last
    finished epoch when the same cell runs again, and an earlier run on another split is never
    resumed into this one. The test faces are predicted with the best epoch's weights
    (``finetune.BEST_WEIGHTS``, chosen on the validation faces). Once predicted, the fold's checkpoints are
    deleted unless ``keep_checkpoints`` (at full size they are 1-2 GB per fold); the training log stays.
    """
    from pathlib import Path

    from . import finetune, pipeline, vggface

    def train_and_predict(train, val, test):
        if len(val) == 0:
            raise ValueError("fine-tuning needs validation faces (checkpoint and early stopping): use val_fraction > 0")
        release_memory()  # whatever an earlier fold (or cell) left behind, before 580 MB more
        key = fold_key(test)
        finetune.set_seeds(seed)
        model = vggface.replace_head(load_base(), class_names=list(class_names), seed=seed)
        plan = make_plan(model)
        head = (initial_heads or {}).get(key)
        if head is not None:
            finetune.copy_head_weights(head, model)
            plan = plan.replace(head_epochs=0)
        run_dir = finetune.run_directory(
            run_root, f"fold_{'_'.join(str(f) for f in key)}",
            split=split_fingerprint(train, val, test, class_names), plan=plan.to_dict(),
            image_size=list(image_size), resize=resize, batch_size=batch_size, seed=seed,
            initial_head=head is not None)
        opts = dict(image_size=image_size, resize=resize, batch_size=batch_size)
        train_ds = pipeline.make_dataset(train, root, training=True, shuffle_seed=seed, **opts)
        val_ds = pipeline.make_dataset(val, root, training=False, **opts)
        run = finetune.train_two_stage(model, train_ds, val_ds, plan, run_dir=run_dir, patience=patience,
                                       tensorboard=False, verbose=0)
        if run.best_path.is_file():
            model.load_weights(run.best_path)  # into the same model: no second copy of the network
        probs = model.predict(pipeline.make_dataset(test, root, training=False, labels=False, **opts), verbose=0)
        if not keep_checkpoints:
            prune_run(run_dir)
        return probs

    return train_and_predict


def prune_run(run_dir) -> list:
    """Delete a finished run's checkpoints (``*.keras``, ``*.weights.h5``, ``backup/``), keeping
    its ``training_log.csv``; ``stages.json`` goes too, since it points at deleted weights.
    Returns what was deleted."""
    import shutil
    from pathlib import Path

    run_dir = Path(run_dir)
    gone = []
    for path in [*run_dir.glob("*.keras"), *run_dir.glob("*.weights.h5"), run_dir / "stages.json", run_dir / "backup"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
        else:
            continue
        gone.append(path)
    return gone


# ----------------------------------------------------------------------------- what notebooks 04 and 05 left behind
MODEL_FILES = (("fine-tuned model of notebook 05", "finetuned_best.keras"),
               ("head-only model of notebook 04", "head_only.keras"))


def split_from_summary(df: pd.DataFrame, summary: Mapping | None, seed: int = 0):
    """The (train, val, test) split notebooks 04/05 trained on, as ``finetune_summary.json``
    (``helpers.finetune.read_summary``) names it; without a summary (a fresh runtime), the split
    notebook 05 would make: ``finetune.make_split(df, "case_study", seed=seed)``.
    Returns ``(split, description)``."""
    from . import finetune

    if summary:
        split, spec = finetune.split_from_summary(df, summary), dict(summary["split"])
    else:
        split, spec = finetune.make_split(df, "case_study", seed=seed)
    if spec["kind"] == "fold":
        return split, f"test fold {spec['test_fold']}, train on the others"
    return split, "the case study's (train fold 0, test fold 1, validation users from folds 2-4)"


def load_trained_model(models_dir, class_names: Sequence[str], image_size) -> tuple[object | None, str]:
    """The best gender model notebooks 04/05 saved that fits these classes and image size.

    Returns ``(model, description)``, or ``(None, why)`` when none fits; a file that exists but
    does not fit (other classes, other input size) is named in the reason, not silently skipped.
    """
    from pathlib import Path

    import keras

    from . import vggface  # noqa: F401  (registers the custom layers for loading)

    reasons = []
    for what, filename in MODEL_FILES:
        path = Path(models_dir) / filename
        if not path.is_file():
            reasons.append(f"no {path.name}")
            continue
        model = keras.saving.load_model(path)
        names = vggface.class_names(model)
        hw = tuple(model.input_shape[1:3])
        if names is not None and tuple(names) != tuple(class_names):
            reasons.append(f"{path.name} predicts {tuple(names)}, not {tuple(class_names)}")
        elif model.output_shape[-1] != len(class_names):
            reasons.append(f"{path.name} has {model.output_shape[-1]} outputs, not {len(class_names)}")
        elif hw != tuple(image_size):
            reasons.append(f"{path.name} takes {hw} images, not {tuple(image_size)}")
        else:
            return model, f"the {what} ({path})"
    return None, "; ".join(reasons)


def best_finetune_config(summary: Mapping | None, default: str | int = "block5") -> dict:
    """The fine-tuning configuration to cross-validate: ``{"name", "from_block"}``.

    Notebook 05's best configuration (chosen on validation accuracy) when it trains more than
    the head; when head-only won, the best of the others; without a summary, ``default``.
    """
    configs = dict(summary["configs"]) if summary else {}
    ranked = sorted(configs, key=lambda n: (n != summary["best"], -float(configs[n]["val_accuracy"] or 0.0)))
    for name in ranked:
        if configs[name]["from_block"] != "head":
            return {"name": name, "from_block": configs[name]["from_block"]}
    return {"name": f"from_{default}" if isinstance(default, str) else f"from_block{default}", "from_block": default}


def plan_for_config(model, config: Mapping, **stages):
    """The ``FreezePlan`` of a configuration: ``from_block`` is a group (``"block5"``, ``1``) or,
    for a hand-picked choice in notebook 05's panel, the list of layers that train."""
    from . import finetune

    block = config["from_block"]
    if isinstance(block, (list, tuple)):
        return finetune.FreezePlan(trainable=frozenset(block) | {finetune.HEAD_LAYER}, **stages)
    return finetune.FreezePlan.from_block(model, block, **stages)
