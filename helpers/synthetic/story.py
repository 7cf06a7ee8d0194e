"""How strong is quick mode's story? Measured on the built world, with the converted weights.

Three measurements, each its own unit, each with the course's own recipe from
``helpers.embeddings`` (so notebook 00's numbers and notebook 03's curves come from the same code):

- ``probe_story``: the gender probe on ``pool1`` (globally average-pooled) and on ``fc7``
  (``embeddings.probe_scores``: ``GroupKFold`` by user);
- ``fewshot_story``: transfer with 1 and 5 labelled faces per class (``embeddings.transfer_fewshot``
  on ``fc7``), tested on fold ``TEST_FOLD``'s users, beside that fold's majority class;
- ``scratch_story``: Levi & Hassner's network trained from scratch (``embeddings.scratch_fewshot``)
  on 5 faces per class and on every training face.

``story_checks`` runs the three on the built world; ``story_margins`` states the claims notebook
00 checks; ``story_numbers`` caches the measurement per build. Numbers go to
``build/results.json`` as ``synthetic.*``.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..course import paths
from ..course.fileio import write_json_atomic
from .world import manifest_path

# Bump when what story_checks measures changes: a cached story of another version is measured again.
STORY_VERSION = 3
TEST_FOLD = 4  # as notebook 03: few-shot sets come from folds 0-3, the test faces are fold 4's users
SHOTS = (1, 5)
# The claims notebook 00 makes about quick mode, with the margin each must clear.
MARGINS = {"probe": 0.10, "fewshot5": 0.08, "scratch_all": 0.10}


def load_target(max_faces: int | None = None, seed: int = 0):
    """The binary-protocol target faces of the built world: (DataFrame, float32 images)."""
    from PIL import Image

    from ..data import apply_protocol, read_adience_folds

    root = paths.assets_for("quick").dataset_root
    df, _ = apply_protocol(read_adience_folds(root), "binary")
    if max_faces is not None and len(df) > max_faces:
        df = df.sample(n=max_faces, random_state=seed).sort_index()
    images = np.stack([np.asarray(Image.open(root / p).convert("RGB"), np.float32) for p in df["path"]])
    return df.reset_index(drop=True), images


def probe_story(pool1, fc7, labels, groups) -> dict:
    """The gender probe on globally average-pooled ``pool1`` (N, H, W, C) and on ``fc7`` (N, D)."""
    from ..embeddings import probe_scores

    pool1 = np.asarray(pool1)
    pool1 = pool1.mean(axis=(1, 2)) if pool1.ndim == 4 else pool1
    scores = probe_scores({"pool1": pool1, "fc7": fc7}, labels, groups).set_index("layer")["probe"]
    return {"probe_pool1": float(scores["pool1"]), "probe_fc7": float(scores["fc7"])}


def _test_split(folds):
    test = np.flatnonzero(np.asarray(folds) == TEST_FOLD)
    pool = np.flatnonzero(np.asarray(folds) != TEST_FOLD)
    return pool, test


def fewshot_story(fc7, labels, folds, *, shots=SHOTS, draws: int = 20, seed: int = 0) -> dict:
    """Transfer (L2-normalised ``fc7`` + logistic regression) with ``shots`` faces per class,
    mean over ``draws``, and the test fold's majority class."""
    from ..embeddings import summarize_fewshot, transfer_fewshot

    y = np.asarray(labels)
    pool, test = _test_split(folds)
    res = summarize_fewshot(transfer_fewshot(fc7[pool], y[pool], fc7[test], y[test], list(shots),
                                             n_draws=draws, seed=seed)).set_index("k")["mean"]
    out = {f"fewshot{k}_transfer": float(res[k]) for k in shots}
    out["majority"] = float(np.bincount(y[test]).max() / len(test))
    out["test_faces"] = int(len(test))
    return out


def scratch_story(images, labels, groups, folds, *, shots: int = 5, draws: int = 3, seed: int = 0,
                  progress: bool = False) -> dict:
    """Levi & Hassner's network from scratch: ``shots`` faces per class (mean over ``draws``) and
    every training face (one run), with ``embeddings``' budget, augmentation and early stopping."""
    from ..embeddings import ALL, scratch_fewshot

    y = np.asarray(labels)
    groups = np.asarray(groups)
    pool, test = _test_split(folds)
    few = scratch_fewshot(images[pool], y[pool], groups[pool], images[test], y[test], [shots], n_draws=draws,
                          seed=seed, progress=progress)
    everything = scratch_fewshot(images[pool], y[pool], groups[pool], images[test], y[test], [ALL], n_draws=1,
                                 seed=seed, progress=progress)
    row = everything.iloc[0]
    return {f"fewshot{shots}_scratch": float(few["accuracy"].mean()), "scratch_all": float(row["accuracy"]),
            "scratch_all_faces": int(row["n_train"]), "scratch_all_budget": int(row["steps_budget"]),
            "scratch_all_steps": int(row["steps_run"])}


def story_checks(*, shots=SHOTS, draws: int | None = None, scratch_draws: int | None = None,
                 max_faces: int | None = None, seed: int = 0, record: bool = True,
                 progress: bool = True) -> dict:
    """Measure the quick-mode story on the built world, with the CONVERTED miniature weights.

    Keys: ``probe_pool1``, ``probe_fc7``; ``fewshot<k>_transfer`` for each of ``shots``;
    ``fewshot<max shots>_scratch`` and ``scratch_all``; ``majority`` (of the few-shot test
    fold), ``identity_accuracy`` (the pretraining's, held-out images), ``faces``, ``users``,
    ``seconds``. Draws default to 20 (transfer) and 3 (scratch), 2 and 1 in a SMOKE run.
    """
    from ..caffe.convert import convert
    from ..vggface import feature_model

    smoke = paths.smoke()
    draws = draws or (2 if smoke else 20)
    scratch_draws = scratch_draws or (1 if smoke else 3)
    manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
    assets = paths.assets_for("quick")
    t0 = time.perf_counter()
    model = convert(assets.prototxt, assets.caffemodel, names=assets.names, progress=False)
    df, images = load_target(max_faces, seed)
    labels, groups, folds = df["label"].to_numpy(), df["user_id"].to_numpy(), df["fold"].to_numpy()
    pool1, fc7 = feature_model(model, ["pool1", "fc7"]).predict(images, batch_size=128, verbose=0)
    out = {"faces": len(df), "users": int(df["user_id"].nunique()), "shots": list(shots),
           "identity_accuracy": float(manifest["pretrain"]["identity_accuracy_heldout"])}
    seconds = {"features": time.perf_counter() - t0}

    t = time.perf_counter()
    out.update(probe_story(pool1, fc7, labels, groups))
    seconds["probes"] = time.perf_counter() - t
    if progress:
        print(f"gender probe (GroupKFold by user, {len(df)} faces): pool1 {out['probe_pool1']:.3f}, fc7 {out['probe_fc7']:.3f}")
    t = time.perf_counter()
    out.update(fewshot_story(fc7, labels, folds, shots=shots, draws=draws, seed=seed))
    seconds["transfer"] = time.perf_counter() - t
    t = time.perf_counter()
    out.update(scratch_story(images, labels, groups, folds, shots=max(shots), draws=scratch_draws, seed=seed))
    seconds["scratch"] = time.perf_counter() - t
    out["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    if progress:
        k = max(shots)
        print(f"{k} faces per class: transfer {out[f'fewshot{k}_transfer']:.3f}, from scratch {out[f'fewshot{k}_scratch']:.3f}; "
              f"1 face per class: transfer {out['fewshot1_transfer']:.3f}; all {out['scratch_all_faces']} faces from scratch "
              f"{out['scratch_all']:.3f}; majority class {out['majority']:.3f} (fold {TEST_FOLD}, {out['test_faces']} faces)")
    if record:
        record_story(out)
    return out


def story_margins(story: dict) -> list[dict]:
    """Notebook 00's claims about the world, each with its measured margin and whether it holds."""
    k = max(story.get("shots", SHOTS))
    claims = [
        ("a gender probe reads fc7 better than pool1", story["probe_fc7"], story["probe_pool1"], MARGINS["probe"]),
        (f"with {k} faces per class, transferred features beat training from scratch",
         story[f"fewshot{k}_transfer"], story[f"fewshot{k}_scratch"], MARGINS["fewshot5"]),
        ("with every training face, the network trained from scratch beats the majority class",
         story["scratch_all"], story["majority"], MARGINS["scratch_all"]),
    ]
    return [{"claim": claim, "value": value, "against": against, "margin": value - against, "needed": needed,
             "holds": bool(value - against >= needed)} for claim, value, against, needed in claims]


def record_story(story: dict) -> None:
    """Write story_checks() numbers to build/results.json under their ``synthetic.*`` keys."""
    from ..course import results

    results.record("synthetic.probe.pool1", story["probe_pool1"])
    results.record("synthetic.probe.fc7", story["probe_fc7"])
    for k in story.get("shots", SHOTS):
        results.record(f"synthetic.fewshot{k}.transfer", story[f"fewshot{k}_transfer"])
    k = max(story.get("shots", SHOTS))
    results.record(f"synthetic.fewshot{k}.scratch", story[f"fewshot{k}_scratch"])
    results.record("synthetic.scratch.all", story["scratch_all"])
    results.record("synthetic.majority", story["majority"])
    results.record("synthetic.pretrain.identity_accuracy", story["identity_accuracy"])


def story_path() -> Path:
    return manifest_path().with_name("story.json")


def story_numbers(record: bool = True, progress: bool = True) -> dict:
    """story_checks() of the built world, computed once per build and cached beside the manifest.

    The cache names the manifest's SHA-256 and ``STORY_VERSION``, so a rebuilt world (or a
    changed measurement) is measured again. With
    ``record`` the numbers also go to build/results.json (the course runner does this on
    every quick run, so results.json always says how strong the synthetic story is).
    """
    if not manifest_path().is_file():
        raise FileNotFoundError(f"no synthetic world at {manifest_path()}: run python -m helpers.synthetic first")
    build_id = hashlib.sha256(manifest_path().read_bytes()).hexdigest()
    cached = json.loads(story_path().read_text(encoding="utf-8")) if story_path().is_file() else {}
    if cached.get("manifest_sha256") == build_id and cached.get("story_version") == STORY_VERSION:
        story = cached["story"]
        if progress:
            print(f"story checks of this build (cached in {story_path()}):")
    else:
        if progress:
            print("measuring the story of this build once (probes, few-shot transfer, training from scratch) ...")
        story = story_checks(record=False, progress=False)
        write_json_atomic(story_path(), {"manifest_sha256": build_id, "story_version": STORY_VERSION, "story": story})
    if progress:
        for m in story_margins(story):
            print(f"  {'✓' if m['holds'] else '✗'} {m['claim']}: {m['value']:.3f} vs {m['against']:.3f} "
                  f"({m['margin']:+.3f}; the course expects at least {m['needed']:+.2f})")
        print(f"  1 face per class: transfer {story['fewshot1_transfer']:.3f}; "
              f"identity accuracy of the pretraining {story['identity_accuracy']:.3f}")
    if record:
        record_story(story)
    return story
