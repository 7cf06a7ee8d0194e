"""What the features of each layer know, pictured and measured (notebook 03, after DeCAF).

- ``tsne_panels`` / ``plot_tsne_panels``: t-SNE maps (PCA to 50 dimensions first, the same
  seed for every panel) of several layers side by side, coloured by a label;
  ``neighbour_agreement`` measures how much a map gathers a label (against
  ``neighbour_agreement_chance``); ``stratified_sample`` keeps a large dataset's classes in
  proportion when it is subsampled.
- ``probe_scores``: per layer, the gender probe (``probe_classifier``: logistic regression on
  standardised features) and a k-nearest-neighbour classifier, scored with subject-exclusive
  cross-validation (``cross_val_score`` with ``GroupKFold`` by user).
- Few-shot transfer against training from scratch (DeCAF's comparison): ``fewshot_indices``
  draws k labelled faces per class; ``transfer_fewshot`` fits ``fewshot_classifier`` on their
  transferred features; ``scratch_fewshot`` trains ``scratch_network`` (Levi & Hassner's
  gender CNN, the network the literature trained from scratch on Adience) on their images,
  with a budget in steps that grows with the training set (``scratch_budget``), augmentation
  and early stopping on a validation split carved by user; ``summarize_fewshot`` and
  ``plot_fewshot`` give mean and spread over random draws. Notebook 03 and quick mode's story
  checks (``helpers.synthetic.story``) use exactly these functions.
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
    """Sorted positions of ``n`` items drawn with each label's share kept (scikit-learn's
    ``train_test_split(stratify=...)``); missing labels count as one more label, "unknown".

    Returns every position when there are ``n`` items or fewer.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(pd.Series(list(labels)).fillna(_MISSING).astype(str))
    if n < 1:
        raise ValueError(f"stratified_sample needs n >= 1, got {n}")
    if len(labels) <= n:
        return np.arange(len(labels))
    picked, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(picked)


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
    others come from ``palette`` (``palette_colors``: one distinct colour per label).
    """
    import matplotlib.pyplot as plt

    labels = np.asarray(pd.Series(list(labels)).fillna(_MISSING).astype(str))
    lengths = {k: len(v) for k, v in embeddings.items()}
    if any(n != len(labels) for n in lengths.values()):
        raise ValueError(f"plot_tsne_panels: {len(labels)} labels but embeddings of sizes {lengths}")
    classes = list(order) if order is not None else sorted(set(labels) - {_MISSING})
    classes += [c for c in sorted(set(labels)) if c not in classes]
    colors = {c: (colors or {}).get(c, "#bbbbbb" if c == _MISSING else col)
              for c, col in zip(classes, palette_colors(palette, len(classes)))}
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


def palette_colors(palette: str, n: int) -> list:
    """``n`` distinct colours from a Matplotlib colormap.

    A qualitative palette (a short list of colours, such as "tab10") is used in order; a
    continuous one (256 entries, such as "viridis") is sampled evenly from end to end. Taking
    entries 0..n-1 of a continuous map gives n shades of one colour, which is how notebook 03
    once drew all eight age groups alike.
    """
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap(palette)
    if cmap.N <= 32:
        return [cmap(i % cmap.N) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def neighbour_agreement(points: np.ndarray, labels: Sequence, k: int = 10, groups: Sequence | None = None) -> float:
    """Share of each point's ``k`` nearest neighbours (Euclidean, the point itself excluded) that
    carry its label, averaged over the points: how much a map (or a feature space) gathers a label.

    With ``groups`` (e.g. ``user_id``), neighbours of the point's own group are skipped: a
    person's photos sit together on a map of identity features, so without this, any label a
    person carries (their fold, say) looks gathered. Compare the result with
    ``neighbour_agreement_chance(labels)``, what a map that ignored the label gives.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    labels = np.asarray(pd.Series(list(labels)).fillna(_MISSING).astype(str))
    if len(x) != len(labels):
        raise ValueError(f"neighbour_agreement: {len(x)} points but {len(labels)} labels")
    group = np.asarray(groups) if groups is not None else np.arange(len(x))
    largest = int(np.unique(group, return_counts=True)[1].max())
    if len(x) - largest < k:
        raise ValueError(f"neighbour_agreement needs more than k={k} points outside each group, got {len(x)} points")
    _, idx = NearestNeighbors(n_neighbors=min(len(x), k + largest)).fit(x).kneighbors(x)
    shares = []
    for i, row in enumerate(idx):
        others = row[group[row] != group[i]][:k]  # the point itself (and its group) left out
        shares.append(np.mean(labels[others] == labels[i]))
    return float(np.mean(shares))


def neighbour_agreement_chance(labels: Sequence) -> float:
    """``neighbour_agreement`` of a map whose neighbours ignore the labels: the chance that
    another point, drawn at random, has a point's label."""
    labels = np.asarray(pd.Series(list(labels)).fillna(_MISSING).astype(str))
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1].astype(np.float64)
    return float(np.sum(counts * (counts - 1)) / (n * (n - 1)))


# --- probes ------------------------------------------------------------------------------------

# The gender probe's regularisation: one value for every layer, notebook and story check.
PROBE_C = 1.0


def probe_scores(features: dict[str, np.ndarray], labels: Sequence[int], groups: Sequence, *,
                 n_splits: int = 5, n_neighbors: int = 5, C: float = PROBE_C,
                 max_iter: int = 2000) -> pd.DataFrame:
    """Per layer: linear-probe and k-NN accuracy, mean and std over subject-exclusive folds.

    ``groups`` (e.g. ``user_id``) keeps every person in one fold only (``GroupKFold``), so a
    score never comes from recognising the same person. Features are standardised inside each
    training fold. Columns: ``layer``, ``dim``, ``probe``, ``probe_std``, ``knn``, ``knn_std``.
    """
    from sklearn.model_selection import GroupKFold, cross_val_score

    y = np.asarray(labels)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"probe_scores: {n_groups} distinct groups (people) cannot fill {n_splits} folds")
    rows = []
    with _one_thread():
        for layer, x in features.items():
            x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
            if len(x) != len(y):
                raise ValueError(f"probe_scores: layer {layer!r} has {len(x)} rows but there are {len(y)} labels")
            cv = GroupKFold(n_splits=n_splits)
            probe = cross_val_score(probe_classifier(C, max_iter), x, y, groups=groups, cv=cv)
            knn = cross_val_score(_knn(n_neighbors), x, y, groups=groups, cv=cv)
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


def probe_classifier(C: float = PROBE_C, max_iter: int = 2000):
    """The gender probe: standardise each feature (inside the training folds), then logistic regression."""
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


# --- training from scratch -----------------------------------------------------------------
# The fair baseline: what a learner would do to train a network without pretrained weights.
SCRATCH_EPOCHS = 12       # the budget: this many passes over the training faces ...
SCRATCH_MIN_STEPS = 60    # ... and never fewer steps than this, however few the faces
SCRATCH_VAL_SHARE = 0.2   # share of the users carved out for early stopping ...
SCRATCH_MIN_VAL_PER_CLASS = 20  # ... when the draw has at least this many faces of each class
SCRATCH_PATIENCE = 3      # evaluations without a better validation loss before stopping ...
SCRATCH_EVALUATIONS = 10  # ... out of at most this many in a budget (a pass over 32 faces is one step:
                          # evaluating after each would stop a training after a few steps)


def scratch_network(image_size=(64, 64), n_classes: int = 2, *, seed: int = 0, widths=None,
                    dense: int = 512, dropout: float = 0.5):
    """Levi & Hassner's gender CNN (CVPR Workshops 2015), in plain Keras, fresh weights.

    The network the literature trained from scratch on Adience (86.8% on the 5-fold protocol):
    three convolutions (96 filters 7×7 stride 4, 256 5×5, 384 3×3), each followed by a 3×3
    max pooling with stride 2, then two fully connected layers of 512 with dropout 0.5.

    Two changes, both for training without pretrained weights: **batch normalisation** after
    each convolution and fully connected layer, in place of the paper's local response
    normalisation. It rescales every layer's inputs as training goes, so that the default (He)
    initialisation and one Adam learning rate train from the first step without a warm-up to
    tune; its momentum is 0.9 (Keras' default 0.99 needs hundreds of steps before the
    running statistics used at test time forget their initial values, more than a few-shot
    budget has). And **the size**: below 128 px (quick mode's 64 px faces) the first
    convolution has stride 2 instead of 4 (64 px faces are 3.5 times smaller than the paper's
    227 px crops, so the maps keep the same share of the face) and the widths are a quarter
    of the paper's (24, 64, 96), like the miniature VGG-Face's reduced widths. Augmentation
    (random horizontal flips and shifts up to 8% of the image, the paper's crops and flips)
    is part of the model, active only in training. Input: RGB 0-255.
    """
    import keras

    h, w = image_size
    small = max(h, w) < 128
    widths = tuple(widths) if widths is not None else ((24, 64, 96) if small else (96, 256, 384))
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((h, w, 3), name="image")
    x = keras.layers.RandomFlip("horizontal", name="flip")(inputs)
    x = keras.layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", name="shift")(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(x)
    for i, (width, kernel) in enumerate(zip(widths, (7, 5, 3)), start=1):
        stride = (2 if small else 4) if i == 1 else 1
        x = keras.layers.Conv2D(width, kernel, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"norm{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j in (6, 7):
        x = keras.layers.Dense(dense, use_bias=False, name=f"fc{j}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"norm{j}")(x)
        x = keras.layers.ReLU(name=f"relu{j}")(x)
        x = keras.layers.Dropout(dropout, name=f"drop{j}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="fc8")(x)
    return keras.Model(inputs, outputs, name="levi_hassner_scratch")


def scratch_budget(n_faces: int, batch_size: int = 32, *, epochs: int = SCRATCH_EPOCHS,
                   min_steps: int = SCRATCH_MIN_STEPS) -> int:
    """Gradient steps a from-scratch training of ``n_faces`` gets: ``epochs`` passes over them
    (batches of ``min(batch_size, n_faces)``), and at least ``min_steps``.

    It grows with the training set: a fixed number of steps would starve large sets (the
    baseline never got to learn) and a fixed number of epochs would give two faces ten steps.
    """
    if n_faces < 1:
        raise ValueError(f"scratch_budget needs at least one face, got {n_faces}")
    batch = min(batch_size, n_faces)
    return max(int(min_steps), int(epochs) * math.ceil(n_faces / batch))


class ScratchTrainer:
    """Trains fresh copies of one from-scratch network, again and again, compiled once.

    ``build(seed)`` returns a freshly initialised Keras classifier (default
    ``scratch_network``). Compiling and tracing a training step cost more than a few-shot
    training itself on a CPU, so the first network is compiled and every later ``fit`` copies
    a fresh build's variables into it (weights, normalisation statistics and the augmentation's
    random state) and resets the optimizer's moments and step counter (not its learning rate).

    ``fit`` trains for ``scratch_budget(len(images))`` steps with Adam; when the faces hold at
    least ``min_val_per_class`` of each class, a share ``val_share`` of the *users* (``groups``)
    is carved out first, the budget is spent in evaluations of about one pass each, training
    stops after ``patience`` evaluations without a lower validation loss (at most
    ``SCRATCH_EVALUATIONS`` evaluations per budget, at least one pass over the faces apart), and
    the best weights are kept. Fewer faces than that cannot spare a validation set: the whole budget is used.
    """

    def __init__(self, build: Callable[[int], object], *, batch_size: int = 32, learning_rate: float = 1e-3,
                 epochs: int = SCRATCH_EPOCHS, min_steps: int = SCRATCH_MIN_STEPS,
                 val_share: float = SCRATCH_VAL_SHARE, min_val_per_class: int = SCRATCH_MIN_VAL_PER_CLASS,
                 patience: int = SCRATCH_PATIENCE):
        self.build, self.batch_size, self.learning_rate = build, int(batch_size), float(learning_rate)
        self.epochs, self.min_steps, self.val_share = int(epochs), int(min_steps), float(val_share)
        self.min_val_per_class, self.patience = int(min_val_per_class), int(patience)
        self.model = None

    def budget(self, n_faces: int) -> int:
        return scratch_budget(n_faces, self.batch_size, epochs=self.epochs, min_steps=self.min_steps)

    def _fresh(self, seed: int):
        import keras

        fresh = self.build(seed)
        if self.model is None:
            self.model = fresh
            # No XLA: compiling the training step took longer than the training itself here.
            self.model.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                               loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
            return self.model
        if len(fresh.variables) != len(self.model.variables):
            raise ValueError("build(seed) must return the same architecture every time")
        for target, source in zip(self.model.variables, fresh.variables):
            target.assign(source)
        _reset_optimizer(self.model.optimizer)
        return self.model

    def fit(self, images, labels, groups=None, seed: int = 0) -> dict:
        """Train a fresh network on ``images`` (N, H, W, 3, RGB 0-255) and ``labels``.

        Returns ``steps_budget``, ``steps_run``, ``n_train``, ``n_val``, ``val_index`` (the
        positions carved out for validation) and ``history`` (a
        DataFrame: ``loss``, ``accuracy`` on the augmented training batches, and ``val_loss`` /
        ``val_accuracy`` when a validation split was carved), for each evaluation.
        """
        import keras
        import tensorflow as tf

        x = np.asarray(images)
        if x.dtype != np.uint8:  # uint8 stays uint8 (a quarter of the memory); the network casts each batch
            x = x.astype(np.float32, copy=False)
        y = np.asarray(labels).astype(np.int32)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"ScratchTrainer.fit: {len(x)} images and {len(y)} labels")
        keras.utils.set_random_seed(seed)
        model = self._fresh(seed)
        train, val = np.arange(len(y)), np.zeros(0, dtype=int)
        counts = np.bincount(y)
        if groups is not None and len(counts) > 1 and counts[counts > 0].min() >= self.min_val_per_class:
            from sklearn.model_selection import GroupShuffleSplit

            splitter = GroupShuffleSplit(n_splits=1, test_size=self.val_share, random_state=seed)
            train, val = next(splitter.split(x, y, groups=np.asarray(groups)))
        batch = min(self.batch_size, len(train))
        data = tf.data.Dataset.from_tensor_slices((x[train], y[train])).shuffle(len(train), seed=seed).repeat()
        data = data.batch(batch, drop_remainder=True)
        budget = self.budget(len(train))
        if len(val):  # an evaluation per pass over the faces, and at most SCRATCH_EVALUATIONS of them
            per_eval = max(math.ceil(len(train) / batch), math.ceil(budget / SCRATCH_EVALUATIONS))
            evaluations = math.ceil(budget / per_eval)
            callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                       restore_best_weights=True)]
            history = model.fit(data, steps_per_epoch=per_eval, epochs=evaluations,
                                validation_data=(x[val], y[val]), validation_batch_size=256,
                                callbacks=callbacks, shuffle=False, verbose=0)
        else:
            per_eval, evaluations = budget, 1
            history = model.fit(data, steps_per_epoch=budget, epochs=1, shuffle=False, verbose=0)
        hist = pd.DataFrame(history.history)
        return {"steps_budget": int(per_eval * evaluations), "steps_run": int(len(hist) * per_eval),
                "n_train": int(len(train)), "n_val": int(len(val)), "val_index": val, "history": hist}

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Class ids for ``images`` from the network trained last."""
        if self.model is None:
            raise RuntimeError("ScratchTrainer.predict before any fit")
        return _predict_classes(self.model, images, batch_size)


def scratch_fewshot(train_images, train_labels, train_groups, test_images, test_labels, ks: Iterable,
                    n_draws: int = 2, seed: int = 0, *, build: Callable[[int], object] | None = None,
                    trainer: ScratchTrainer | None = None, progress: bool = True) -> pd.DataFrame:
    """The network trained from scratch on each few-shot draw (the same draws as ``transfer_fewshot``).

    ``build(seed)`` (default ``scratch_network`` for these images and classes) or a ready
    ``trainer`` (a ``ScratchTrainer``: reuse one across calls to compile once) sets the network
    and the recipe. Rows as in ``transfer_fewshot`` with ``method`` "scratch", plus
    ``steps_budget``, ``steps_run`` and ``n_val`` (faces carved out for early stopping).
    """
    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    groups = np.asarray(train_groups)
    if len(groups) != len(y_train):
        raise ValueError(f"scratch_fewshot: {len(groups)} groups for {len(y_train)} training faces")
    if trainer is None:
        n_classes = int(max(y_train.max(), y_test.max())) + 1
        size = tuple(np.asarray(train_images[:1]).shape[1:3])
        trainer = ScratchTrainer(build or (lambda s: scratch_network(size, n_classes, seed=s)))
    plan = [(k, d, idx) for k in ks for d, idx in enumerate(fewshot_indices(y_train, k, n_draws, seed))]
    from tqdm.auto import tqdm

    rows = []
    for k, d, idx in tqdm(plan, desc="from scratch", disable=not progress):
        run_seed = int(seed) * 1000 + d * 97 + _k_code(k) % 1000
        idx = np.sort(idx)
        run = trainer.fit(np.asarray(train_images[idx]), y_train[idx], groups[idx], seed=run_seed)
        pred = trainer.predict(test_images)
        rows.append({"method": "scratch", "k": k, "draw": d, "n_train": len(idx),
                     "accuracy": float((pred == y_test).mean()), "steps_budget": run["steps_budget"],
                     "steps_run": run["steps_run"], "n_val": run["n_val"]})
    return pd.DataFrame(rows)


def _predict_classes(model, images, batch_size: int = 256) -> np.ndarray:
    """Class ids by direct calls: predict() re-traced its graph for every draw's fresh weights."""
    import keras

    out = [np.argmax(keras.ops.convert_to_numpy(model(np.asarray(images[i:i + batch_size], dtype=np.float32), training=False)), axis=-1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def _reset_optimizer(optimizer) -> None:
    """Back to a freshly built optimizer: step counter and moment estimates to zero.

    The learning rate is an optimizer variable too in Keras 3: zeroing it with the rest (as an
    earlier version of the story checks did) leaves a network that never trains.
    """
    for v in optimizer.variables:
        if not v.path.endswith("learning_rate"):
            v.assign(np.zeros(v.shape, dtype=v.dtype))


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

