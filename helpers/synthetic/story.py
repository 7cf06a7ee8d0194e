"""How strong is quick mode's story? Measured on the built world, with the converted weights.

Linear probes for gender on early and late layers, and few-shot transfer against a network
trained from scratch: the numbers notebook 00 shows and results.json records as ``synthetic.*``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..course import paths
from ..course.fileio import write_json_atomic
from .pretrain import build_training_model
from .world import SyntheticConfig, manifest_path

def _load_target(max_faces: int | None, seed: int):
    from PIL import Image

    from ..data import apply_protocol, read_adience_folds

    root = paths.assets_for("quick").dataset_root
    df, _ = apply_protocol(read_adience_folds(root), "binary")
    if max_faces is not None and len(df) > max_faces:
        df = df.sample(n=max_faces, random_state=seed).sort_index()
    images = np.stack([np.asarray(Image.open(root / p).convert("RGB"), np.float32) for p in df["path"]])
    return df.reset_index(drop=True), images


def _probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_splits: int = 5) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    correct = 0
    for train, test in GroupKFold(n_splits=n_splits).split(features, labels, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(features[train], labels[train])
        correct += int(np.sum(clf.predict(features[test]) == labels[test]))
    return correct / len(labels)


def story_checks(*, shots: int = 5, draws: int = 5, max_faces: int | None = None, scratch_epochs: int = 40,
                 seed: int = 0, record: bool = True, progress: bool = True) -> dict:
    """Measure the quick-mode story on the built world, with the CONVERTED miniature weights.

    - ``probe_pool1`` / ``probe_fc7``: subject-exclusive (GroupKFold by user) logistic-regression
      probes for gender on globally average-pooled ``pool1`` features and on ``fc7`` features;
    - ``fewshot_transfer`` / ``fewshot_scratch``: with ``shots`` labelled faces per class (from
      the training folds), logistic regression on L2-normalised transferred ``fc7`` features against the same
      network trained from scratch on those faces; test on the other users; mean over ``draws``;
    - ``identity_accuracy``: the pretraining's held-out identity accuracy (from the manifest).

    Records ``synthetic.probe.pool1``, ``synthetic.probe.fc7``, ``synthetic.fewshot<shots>.transfer``,
    ``synthetic.fewshot<shots>.scratch`` and ``synthetic.pretrain.identity_accuracy``.
    """
    import keras
    from ..caffe.convert import convert
    from ..embeddings import fewshot_classifier
    from ..vggface import feature_model

    manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
    config = SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()})
    assets = paths.assets_for("quick")
    model = convert(assets.prototxt, assets.caffemodel, names=assets.names, progress=False)
    df, images = _load_target(max_faces, seed)
    labels = df["label"].to_numpy()
    groups = df["user_id"].to_numpy()
    pool1, fc7 = feature_model(model, ["pool1", "fc7"]).predict(images, batch_size=128, verbose=0)
    pool1 = pool1.mean(axis=(1, 2))
    out = {"faces": len(df), "users": int(df["user_id"].nunique())}
    out["probe_pool1"] = _probe_accuracy(pool1, labels, groups)
    out["probe_fc7"] = _probe_accuracy(fc7, labels, groups)
    if progress:
        print(f"gender probes (GroupKFold by user, {len(df)} faces): pool1 {out['probe_pool1']:.3f}, fc7 {out['probe_fc7']:.3f}")

    rng = np.random.default_rng(seed)
    test_mask = df["fold"].to_numpy() == 0  # test on fold 0's users; labelled shots come from the others
    transfer, scratch = [], []
    # One scratch network, compiled once (tracing dominates at this size); every draw restarts
    # it from its own fresh random initialisation and a zeroed optimizer state.
    keras.utils.set_random_seed(seed)
    net = build_training_model(2, config)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    for draw in range(draws):
        pick = []
        for c in (0, 1):
            pool = np.flatnonzero(~test_mask & (labels == c))
            pick.extend(rng.choice(pool, size=min(shots, len(pool)), replace=False))
        pick = np.array(pick)
        clf = fewshot_classifier().fit(fc7[pick], labels[pick])  # notebook 03's recipe
        transfer.append(float(np.mean(clf.predict(fc7[test_mask]) == labels[test_mask])))
        keras.utils.set_random_seed(seed * 1000 + draw)
        net.set_weights(build_training_model(2, config).get_weights())
        for variable in net.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        x = np.concatenate([images[pick], images[pick][:, :, ::-1]])  # + mirrored copies
        y = np.concatenate([labels[pick], labels[pick]])
        net.fit(x, y, epochs=scratch_epochs, batch_size=len(x), verbose=0)
        pred = np.argmax(net.predict(images[test_mask], batch_size=256, verbose=0), -1)
        scratch.append(float(np.mean(pred == labels[test_mask])))
    out[f"fewshot{shots}_transfer"] = float(np.mean(transfer))
    out[f"fewshot{shots}_scratch"] = float(np.mean(scratch))
    out["identity_accuracy"] = float(manifest["pretrain"]["identity_accuracy_heldout"])
    if progress:
        print(f"{shots} faces per class ({draws} draws): transfer (L2-normalised fc7 + logistic regression) "
              f"{out[f'fewshot{shots}_transfer']:.3f}, from scratch {out[f'fewshot{shots}_scratch']:.3f}")
    out["shots"] = shots
    if record:
        record_story(out)
    return out


def record_story(story: dict) -> None:
    """Write story_checks() numbers to build/results.json under their ``synthetic.*`` keys."""
    from ..course import results

    shots = story.get("shots", 5)
    results.record("synthetic.probe.pool1", story["probe_pool1"])
    results.record("synthetic.probe.fc7", story["probe_fc7"])
    results.record(f"synthetic.fewshot{shots}.transfer", story[f"fewshot{shots}_transfer"])
    results.record(f"synthetic.fewshot{shots}.scratch", story[f"fewshot{shots}_scratch"])
    results.record("synthetic.pretrain.identity_accuracy", story["identity_accuracy"])


def story_path() -> Path:
    return manifest_path().with_name("story.json")


def story_numbers(record: bool = True, progress: bool = True) -> dict:
    """story_checks() of the built world, computed once per build and cached beside the manifest.

    The cache names the manifest's SHA-256, so a rebuilt world is measured again. With
    ``record`` the numbers also go to build/results.json (the course runner does this on
    every quick run, so results.json always says how strong the synthetic story is).
    """
    if not manifest_path().is_file():
        raise FileNotFoundError(f"no synthetic world at {manifest_path()}: run python -m helpers.synthetic first")
    build_id = hashlib.sha256(manifest_path().read_bytes()).hexdigest()
    cached = json.loads(story_path().read_text(encoding="utf-8")) if story_path().is_file() else {}
    if cached.get("manifest_sha256") == build_id:
        story = cached["story"]
        if progress:
            print(f"story checks of this build (cached in {story_path()}):")
    else:
        if progress:
            print("measuring the story of this build once (linear probes, 5-shot transfer vs scratch) ...")
        story = story_checks(record=False, progress=progress)
        write_json_atomic(story_path(), {"manifest_sha256": build_id, "story": story})
    if progress:
        shots = story.get("shots", 5)
        print(f"  gender probe on pool1 {story['probe_pool1']:.3f}, on fc7 {story['probe_fc7']:.3f}; "
              f"{shots} faces per class: transfer {story[f'fewshot{shots}_transfer']:.3f}, "
              f"from scratch {story[f'fewshot{shots}_scratch']:.3f}; "
              f"identity accuracy of the pretraining {story['identity_accuracy']:.3f}")
    if record:
        record_story(story)
    return story


