"""What the features of each layer know, pictured and measured (notebook 03, after DeCAF).

- ``tsne_panels`` / ``plot_tsne_panels``: t-SNE maps (PCA to 50 dimensions first, the same
  seed for every panel) of several layers side by side, coloured by a label;
  ``stratified_sample`` keeps a large dataset's classes in proportion when it is subsampled.
- ``probe_scores``: per layer, a linear probe (logistic regression) and a k-nearest-neighbour
  classifier, scored with subject-exclusive cross-validation (``GroupKFold`` by user).
- ``fewshot_indices``, ``transfer_fewshot``, ``scratch_fewshot``: accuracy against the number
  of labelled faces per class, for a linear classifier on transferred features and for the
  same network trained from scratch on those faces; ``summarize_fewshot`` and
  ``plot_fewshot`` give mean and spread over random draws.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

ALL = "all"
_MISSING = "unknown"


# --- sampling ----------------------------------------------------------------------------------

def stratified_sample(labels: Sequence, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``n`` items keeping each label's share (at least one each).

    Returns every position when there are ``n`` items or fewer.
    """
    labels = np.asarray(pd.Series(list(labels)).fillna(_MISSING).astype(str))
    if n < 1:
        raise ValueError(f"stratified_sample needs n >= 1, got {n}")
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n
    quota = np.floor(exact).astype(int)
    # Largest remainders get the seats rounding left over; then every label gets at least one.
    for i in np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]:
        quota[i] += 1
    for i in np.flatnonzero(quota == 0):
        quota[i] = 1
        quota[np.argmax(quota)] -= 1
    picked = [rng.choice(np.flatnonzero(labels == v), size=q, replace=False) for v, q in zip(values, quota)]
    return np.sort(np.concatenate(picked))


# --- t-SNE -------------------------------------------------------------------------------------

def tsne_embed(features: np.ndarray, *, pca_dim: int = 50, seed: int = 0,
               perplexity: float = 30.0, standardize: bool = True, max_iter: int = 1000,
               threads: int | None = 1) -> np.ndarray:
    """A 2-D t-SNE map (N, 2) of ``features`` (N, D): standardise, PCA to ``pca_dim``, t-SNE.

    The perplexity is capped below N/3 so that small samples still work. ``threads`` caps
    OpenMP inside t-SNE (None: no cap): on a busy 2-core machine OpenMP's spin-waiting made
    a 50-point map take 24 s instead of 0.7 s, and a few hundred points gain little from more.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(x)}")
    if standardize:
        x = StandardScaler().fit_transform(x)
    dim = min(pca_dim, x.shape[1], len(x))
    if dim < x.shape[1]:
        with threadpool_limits(limits=threads):
            x = PCA(n_components=dim, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto", max_iter=max_iter)
    with threadpool_limits(limits=threads):
        return tsne.fit_transform(x).astype(np.float32)


def tsne_panels(features: dict[str, np.ndarray], *, seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
    """``tsne_embed`` of every layer with the SAME seed (so panels differ only by the layer)."""
    return {layer: tsne_embed(x, seed=seed, **kwargs) for layer, x in features.items()}


def plot_tsne_panels(embeddings: dict[str, np.ndarray], labels: Sequence, *, title: str = "",
                     order: Sequence[str] | None = None, axes=None, palette: str = "tab10",
                     colors: dict | None = None, point_size: float = 8.0):
    """One scatter panel per layer, points coloured by ``labels`` (missing -> "unknown", grey).

    ``colors`` fixes some labels' colours (e.g. ``helpers.plots.PALETTE`` for m/f/u); the
    others come from ``palette``.
    """
    import matplotlib.pyplot as plt

    labels = np.asarray(pd.Series(list(labels)).fillna(_MISSING).astype(str))
    lengths = {k: len(v) for k, v in embeddings.items()}
    if any(n != len(labels) for n in lengths.values()):
        raise ValueError(f"plot_tsne_panels: {len(labels)} labels but embeddings of sizes {lengths}")
    classes = list(order) if order is not None else sorted(set(labels) - {_MISSING})
    classes += [c for c in sorted(set(labels)) if c not in classes]
    cmap = plt.get_cmap(palette)
    colors = {c: (colors or {}).get(c, "#bbbbbb" if c == _MISSING else cmap(i % cmap.N))
              for i, c in enumerate(classes)}
    if axes is None:
        _, axes = plt.subplots(1, len(embeddings), figsize=(3.6 * len(embeddings), 3.8), squeeze=False)
        axes = axes[0]
    for ax, (layer, xy) in zip(axes, embeddings.items()):
        for c in classes:
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=point_size, color=colors[c], label=c, alpha=0.8, linewidths=0)
        ax.set_title(layer)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=2)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


# --- probes ------------------------------------------------------------------------------------

def probe_scores(features: dict[str, np.ndarray], labels: Sequence[int], groups: Sequence, *,
                 n_splits: int = 5, n_neighbors: int = 5, C: float = 1.0,
                 max_iter: int = 2000) -> pd.DataFrame:
    """Per layer: linear-probe and k-NN accuracy, mean and std over subject-exclusive folds.

    ``groups`` (e.g. ``user_id``) keeps every person in one fold only (``GroupKFold``), so a
    score never comes from recognising the same person. Features are standardised inside each
    training fold. Columns: ``layer``, ``dim``, ``probe``, ``probe_std``, ``knn``, ``knn_std``.
    """
    from sklearn.model_selection import GroupKFold

    y = np.asarray(labels)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"probe_scores: {n_groups} distinct groups (people) cannot fill {n_splits} folds")
    splits = list(GroupKFold(n_splits=n_splits).split(np.zeros(len(y)), y, groups))
    rows = []
    with _one_thread():
        for layer, x in features.items():
            x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
            if len(x) != len(y):
                raise ValueError(f"probe_scores: layer {layer!r} has {len(x)} rows but there are {len(y)} labels")
            probe, knn = [], []
            for train, test in splits:
                probe.append(_fit_score(_linear(C, max_iter), x, y, train, test))
                knn.append(_fit_score(_knn(n_neighbors), x, y, train, test))
            rows.append({"layer": layer, "dim": x.shape[1], "probe": float(np.mean(probe)),
                         "probe_std": float(np.std(probe)), "knn": float(np.mean(knn)),
                         "knn_std": float(np.std(knn))})
    return pd.DataFrame(rows)


def _one_thread():
    """BLAS and OpenMP on one thread for the small scikit-learn fits here.

    On a busy 2-core machine, thread pools spin-waiting on each other made these fits several
    times slower than on one thread; problems of a few thousand rows do not gain from more.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _linear(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def fewshot_classifier(C: float = 10.0):
    """The few-shot recipe: L2-normalise each feature vector, then logistic regression.

    A handful of faces cannot estimate per-feature means and scales (a StandardScaler fitted on
    two faces divides by noise); normalising each vector needs no statistics at all.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(Normalizer(), LogisticRegression(C=C, max_iter=2000))


def _knn(n_neighbors: int):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=n_neighbors))


def _fit_score(estimator, x, y, train, test) -> float:
    estimator.fit(x[train], y[train])
    return float((estimator.predict(x[test]) == y[test]).mean())


def plot_probe_curve(scores: pd.DataFrame, ax=None, chance: float | None = None):
    """Accuracy against depth: linear probe and k-NN per layer, with fold spread."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(scores))
    ax.errorbar(x, scores["probe"], yerr=scores["probe_std"], marker="o", capsize=3, label="linear probe")
    ax.errorbar(x, scores["knn"], yerr=scores["knn_std"], marker="s", capsize=3, label="k-nearest neighbours")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="majority class")
    ax.set_xticks(x, scores["layer"])
    ax.set_xlabel("layer (deeper →)")
    ax.set_ylabel("accuracy (subject-exclusive CV)")
    ax.legend()
    return ax


# --- few-shot ----------------------------------------------------------------------------------

def fewshot_indices(labels: Sequence[int], k, n_draws: int, seed: int = 0) -> list[np.ndarray]:
    """``n_draws`` random training sets of ``k`` items per class (positions into ``labels``).

    ``k == "all"`` gives every position (once per draw, in a per-draw random order). Draw ``d``
    of a given seed is the same whatever the other ``k`` values are.
    """
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"few-shot sampling needs at least 2 classes, got {classes.tolist()}")
    draws = []
    for d in range(n_draws):
        rng = np.random.default_rng([int(seed), d, _k_code(k)])
        if k == ALL:
            draws.append(rng.permutation(len(y)))
            continue
        k = int(k)
        short = {c.item(): int(n) for c, n in zip(classes, counts) if n < k}
        if k < 1 or short:
            raise ValueError(f"cannot draw {k} faces per class: classes with fewer faces: {short}")
        draws.append(np.concatenate([rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in classes]))
    return draws


def _k_code(k) -> int:
    return 0 if k == ALL else int(k)  # k >= 1 otherwise, so 0 is free for "all"


def transfer_fewshot(train_features, train_labels, test_features, test_labels, ks: Iterable,
                     n_draws: int = 5, seed: int = 0, C: float = 10.0) -> pd.DataFrame:
    """``fewshot_classifier`` on transferred features, trained on each few-shot draw.

    Rows: ``method`` ("transfer"), ``k``, ``draw``, ``n_train``, ``accuracy`` on the test set.
    """
    x_train = np.asarray(train_features, dtype=np.float32).reshape(len(train_features), -1)
    x_test = np.asarray(test_features, dtype=np.float32).reshape(len(test_features), -1)
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    rows = []
    with _one_thread():
        for k in ks:
            for d, idx in enumerate(fewshot_indices(y_train, k, n_draws, seed)):
                model = fewshot_classifier(C).fit(x_train[idx], y_train[idx])
                acc = float((model.predict(x_test) == y_test).mean())
                rows.append({"method": "transfer", "k": k, "draw": d, "n_train": len(idx), "accuracy": acc})
    return pd.DataFrame(rows)


def scratch_fewshot(build_model: Callable[[int], object], train_images, train_labels, test_images,
                    test_labels, ks: Iterable, n_draws: int = 3, seed: int = 0, *, steps: int = 60,
                    batch_size: int = 32, learning_rate: float = 1e-3, flip: bool = True,
                    progress: bool = True) -> pd.DataFrame:
    """The network trained from scratch on each few-shot draw (same draws as ``transfer_fewshot``).

    ``build_model(seed)`` returns a fresh, randomly initialised Keras classifier (softmax over
    the classes; see ``scratch_builder``). Every draw gets the same number of gradient
    ``steps`` (Adam, random horizontal flips), so small and large training sets get the same
    compute. Rows as in ``transfer_fewshot`` with ``method`` "scratch" and ``steps``.
    """
    import keras
    import tensorflow as tf

    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    plan = [(k, d, idx) for k in ks for d, idx in enumerate(fewshot_indices(y_train, k, n_draws, seed))]
    # One compiled network, re-initialised per draw: compiling and tracing a fresh model per
    # draw cost seconds each, more than the training itself on small data.
    model = None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan), desc="from scratch", disable=not progress)
    rows = []
    try:
        for k, d, idx in plan:
            run_seed = int(seed) * 1000 + d * 97 + _k_code(k) % 1000
            keras.utils.set_random_seed(run_seed)
            fresh = build_model(run_seed)
            if model is None:
                model = fresh
                # No XLA: compiling the training step took longer than training itself here.
                model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                              loss="sparse_categorical_crossentropy", jit_compile=False)
            else:
                model.set_weights(fresh.get_weights())
                _reset_optimizer(model.optimizer)
            idx = np.sort(idx)
            ds = tf.data.Dataset.from_tensor_slices(
                (np.asarray(train_images[idx], dtype=np.float32), y_train[idx].astype(np.int32)))
            ds = ds.shuffle(len(idx), seed=run_seed).repeat()
            if flip:
                ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x, seed=run_seed), y))
            ds = ds.batch(min(batch_size, len(idx)), drop_remainder=True)
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            pred = _predict_classes(model, test_images)
            rows.append({"method": "scratch", "k": k, "draw": d, "n_train": len(idx),
                         "accuracy": float((pred == y_test).mean()), "steps": steps})
            bar.update(1)
    finally:
        bar.close()
    return pd.DataFrame(rows)


def _predict_classes(model, images, batch_size: int = 256) -> np.ndarray:
    """Class ids by direct calls: predict() re-traced its graph for every draw's fresh weights."""
    import keras

    out = [np.argmax(keras.ops.convert_to_numpy(model(np.asarray(images[i:i + batch_size], dtype=np.float32), training=False)), axis=-1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def _reset_optimizer(optimizer) -> None:
    """Back to a freshly built optimizer: step counter and moment estimates to zero."""
    for v in optimizer.variables:
        if not v.path.endswith("learning_rate"):
            v.assign(np.zeros(v.shape, dtype=v.dtype))


def scratch_builder(model, class_names: Sequence[str] = ("m", "f")) -> Callable[[int], object]:
    """``build_model(seed)`` for ``scratch_fewshot``: ``model``'s architecture, fresh weights.

    Convolution and dense kernels get He initialisation (what one would choose to train a
    ReLU network from scratch), biases zero; the head is replaced for ``class_names``.
    """
    import keras

    from . import vggface

    def build(seed: int):
        counter = iter(range(10**6))

        def fresh(layer):
            config = layer.get_config()
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                config["kernel_initializer"] = keras.initializers.HeNormal(seed=seed + next(counter))
                config["bias_initializer"] = "zeros"
            return layer.__class__.from_config(config)

        clone = keras.models.clone_model(model, clone_function=fresh)
        return vggface.replace_head(clone, class_names=class_names, seed=seed)

    return build


def summarize_fewshot(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max accuracy per (method, k), k in the order it was run."""
    order = {k: i for i, k in enumerate(dict.fromkeys(results["k"]))}
    out = (results.groupby(["method", "k"], sort=False)["accuracy"]
           .agg(["mean", "std", "min", "max", "count"]).reset_index())
    out["std"] = out["std"].fillna(0.0)
    out["_o"] = out["k"].map(order)
    return out.sort_values(["method", "_o"]).drop(columns="_o").reset_index(drop=True)


def plot_fewshot(summary: pd.DataFrame, ax=None, chance: float | None = None):
    """Accuracy against labelled faces per class (log axis; "all" at the right end), mean ± std."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    numeric = [k for k in dict.fromkeys(summary["k"]) if k != ALL]
    top = max(int(k) for k in numeric) if numeric else 1
    x_all = 10 ** (math.log10(top) + 0.5)
    for method, part in summary.groupby("method", sort=False):
        x = [x_all if k == ALL else int(k) for k in part["k"]]
        ax.errorbar(x, part["mean"], yerr=part["std"], marker="o", capsize=3, label=method)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="majority class")
    ticks = sorted({int(k) for k in numeric}) + ([x_all] if (summary["k"] == ALL).any() else [])
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(int(t)) if t != x_all else ALL for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled faces per class")
    ax.set_ylabel("test accuracy")
    ax.legend()
    return ax

