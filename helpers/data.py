"""Faces on disk -> one table: readers, label protocols, subject-exclusive splits, validation.

Every reader returns the same shape of ``pandas.DataFrame``, one row per face:

===================  ==========================================================================
``fold``             0-4 for Adience (from ``fold_<k>_data.txt``), ``None`` for other sources
``user_id``          the subject (Flickr album for Adience); splits never put one in two sets
``face_id``          Adience's face id (int), or a running number
``original_image``   the image's name as the source wrote it
``gender``           ``"m"``, ``"f"`` or ``"u"`` (unknown / other; an empty field becomes ``"u"``)
``age_group``        one of :data:`AGE_GROUPS` (Adience's eight groups) or ``None``
``age_raw``          the age field exactly as written (``"(25, 32)"``, ``"35"``, ``"None"``, ...)
``path``             the image's path relative to the dataset root
``source_file``      the file the row came from and ``line`` its 1-based line (for messages)
===================  ==========================================================================

Integer labels exist only after :func:`apply_protocol`, with the class names beside them.
Nothing is dropped silently: readers count what they could not map (``df.attrs``) and say
so; bad rows raise an error naming file and line unless the caller asks to skip them.
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd

from .course.fileio import write_json_atomic

# Adience's eight age groups, written as the fold files write them.
AGE_GROUPS = ("(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)")
_AGE_BOUNDS = [(0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100)]

GENDERS = ("m", "f", "u")
PROTOCOLS = {"binary": ("m", "f"), "three_class": ("m", "f", "u")}

COLUMNS = ["fold", "user_id", "face_id", "original_image", "gender", "age_group", "age_raw",
           "path", "source_file", "line"]
_FOLD_COLUMNS = ("user_id", "original_image", "face_id", "age", "gender")
_FOLD_FILE = re.compile(r"^fold_(\d+)_data\.txt$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# What tf.io.decode_image reads; Pillow opens more (TIFF, ...), which would then fail mid-epoch.
DECODABLE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")


class DataFormatError(ValueError):
    """A data file that does not have the expected format; the message names file and line."""


# --------------------------------------------------------------------------------------- ages
def age_to_group(raw) -> tuple[str | None, str]:
    """Map an age field to an Adience group when that is unambiguous.

    Returns ``(group or None, kind)`` where kind is ``"group"`` (already one of the eight),
    ``"single_mapped"``/``"range_mapped"`` (a single age inside one group's bounds, a range
    contained in one group), ``"single_unmapped"``/``"range_unmapped"`` (falls between or
    across groups, or is reversed like ``(25, 23)``), ``"missing"`` (``None`` or empty) or
    ``"unparsed"`` (anything else).
    """
    text = "" if raw is None else str(raw).strip()
    if text in ("", "None", "none", "nan", "NaN"):
        return None, "missing"
    if text in AGE_GROUPS:
        return text, "group"
    m = re.fullmatch(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo <= hi:
            for name, (glo, ghi) in zip(AGE_GROUPS, _AGE_BOUNDS):
                if glo <= lo and hi <= ghi:
                    return name, "range_mapped"
        # Reversed ranges such as "(25, 23)" are typos whose intended group is unknown.
        return None, "range_unmapped"
    if re.fullmatch(r"\d+(\.\d+)?", text):
        age = float(text)
        for name, (glo, ghi) in zip(AGE_GROUPS, _AGE_BOUNDS):
            if glo <= age <= ghi:
                return name, "single_mapped"
        return None, "single_unmapped"
    return None, "unparsed"


def _age_report(raw_values: Iterable) -> dict:
    kinds: Counter = Counter()
    unmapped: Counter = Counter()
    mapped: Counter = Counter()
    for raw in raw_values:
        group, kind = age_to_group(raw)
        kinds[kind] += 1
        if kind in ("single_mapped", "range_mapped"):
            mapped[f"{raw} -> {group}"] += 1
        elif kind != "group":
            unmapped[str(raw)] += 1
    return {"kinds": dict(kinds), "mapped": dict(mapped.most_common()),
            "left_missing": dict(unmapped.most_common())}


def format_age_report(report: dict) -> str:
    """One paragraph a learner can read: how many ages were mapped and how many left missing."""
    k = report.get("kinds", {})
    n_mapped = k.get("single_mapped", 0) + k.get("range_mapped", 0)
    n_missing = sum(report.get("left_missing", {}).values())
    lines = [f"age field: {k.get('group', 0)} rows already in one of the 8 groups; "
             f"{n_mapped} mapped unambiguously; {n_missing} left missing"]
    if report.get("mapped"):
        lines.append("  mapped: " + ", ".join(f"{k_} ({v})" for k_, v in report["mapped"].items()))
    if report.get("left_missing"):
        lines.append("  left missing: " + ", ".join(f"{k_!r} ({v})" for k_, v in report["left_missing"].items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ Adience
def adience_image_path(user_id: str, face_id, original_image: str) -> str:
    return f"aligned/{user_id}/landmark_aligned_face.{face_id}.{original_image}"


def read_adience_folds(folds_dir, *, strict: bool = False, skip_malformed: bool = False,
                       verbose: bool = False, subset: float | None = None, seed: int = 0,
                       check_images: bool | None = None) -> pd.DataFrame:
    """Read ``fold_<k>_data.txt`` files into one DataFrame (see the module docstring).

    ``subset``: keep that share of the users of every fold (:func:`take_users`: whole users, every
    fold kept, the same users for the same ``seed``); ``None`` means the run's ``SUBSET``
    (``COURSE_SUBSET``, set by ``environment.start``), so every notebook of a run reads the same
    faces. ``check_images`` (default: when ``folds_dir`` holds ``aligned/``) leaves out, and
    reports, the rows whose image is missing, empty or truncated (:func:`check_image_files`:
    cheap, no decoding), so no notebook stops on them mid-epoch.

    ``strict=True`` additionally requires the five folds 0-4 and raises on any age field that
    is not missing yet cannot be mapped to a group. Malformed rows (wrong number of fields,
    a gender other than m/f/u/empty, a non-integer face id, an empty user id) raise a
    :class:`DataFormatError` naming file and line; with ``skip_malformed=True`` they are
    excluded and listed in ``df.attrs["skipped_rows"]`` instead.

    ``df.attrs`` holds ``age_report`` (see :func:`format_age_report`), ``skipped_rows`` and
    ``files``; ``verbose=True`` prints the age summary.
    """
    folds_dir = Path(folds_dir)
    if not folds_dir.is_dir():
        raise FileNotFoundError(f"no folder {folds_dir}: expected fold_0_data.txt ... fold_4_data.txt there")
    files = sorted((p for p in folds_dir.iterdir() if _FOLD_FILE.match(p.name)),
                   key=lambda p: int(_FOLD_FILE.match(p.name).group(1)))
    if not files:
        raise FileNotFoundError(f"no fold_<k>_data.txt file in {folds_dir}")
    folds = [int(_FOLD_FILE.match(p.name).group(1)) for p in files]
    if strict and sorted(folds) != [0, 1, 2, 3, 4]:
        raise DataFormatError(f"{folds_dir}: expected folds 0-4, found {folds}")

    rows: list[dict] = []
    skipped: list[dict] = []
    for path, fold in zip(files, folds):
        _read_fold_file(path, fold, rows, skipped, skip_malformed)

    df = pd.DataFrame(rows, columns=COLUMNS)
    df = _finish_frame(df)
    report = _age_report(df["age_raw"])
    if strict:
        bad = {k: v for k, v in report["left_missing"].items() if k not in ("None", "")}
        if bad:
            raise DataFormatError(f"{folds_dir}: age fields that map to no Adience group: {bad}")
    df.attrs["age_report"] = report
    df.attrs["skipped_rows"] = skipped
    df.attrs["files"] = [str(p) for p in files]
    if verbose:
        print(f"read {len(df)} faces, {df['user_id'].nunique()} users, folds {folds} from {folds_dir}")
        print(format_age_report(report))
        if skipped:
            print(f"skipped {len(skipped)} malformed row(s), e.g. {skipped[0]}")
    if subset is None:
        from .course import paths

        subset = paths.subset()
    if subset < 1:
        df = take_users(df, subset, seed=seed)
    if check_images is None:
        check_images = (folds_dir / "aligned").is_dir()
    if check_images:
        files_report = check_image_files(df, folds_dir)
        df = drop_invalid(df, files_report, verbose=verbose or not files_report.ok)
        df = df.reset_index(drop=True)
        df.attrs["skipped_images"] = files_report.bad.drop(columns="index").to_dict("records")
    return df


def take_users(df: pd.DataFrame, share: float, seed: int = 0, *, verbose: bool = True) -> pd.DataFrame:
    """The faces of a ``share`` of the users of every fold: whole users (nobody split), every fold
    kept, at least two users per fold where it has two (a validation set is carved by user).

    Users are taken in a seeded random order, so a smaller share is part of a larger one and
    the same ``seed`` gives the same faces in every notebook. ``df.attrs["subset"]`` says what
    was kept.
    """
    share = float(share)
    if not 0 < share <= 1:
        raise ValueError(f"subset must be a share of the users in (0, 1], got {share}")
    fold = df["fold"].astype(object).where(df["fold"].notna(), "none")
    keep: list = []
    for position, k in enumerate(sorted(fold.unique(), key=str)):
        users = np.array(sorted(pd.unique(df.loc[fold == k, "user_id"])), dtype=object)
        rng = np.random.default_rng([int(seed), position])
        order = users[rng.permutation(len(users))]
        n = min(len(users), max(math.ceil(share * len(users)), 2))
        keep.extend(order[:n])
    out = df.loc[df["user_id"].isin(set(keep))].copy().reset_index(drop=True)
    out.attrs = dict(df.attrs)
    out.attrs["subset"] = {"share": share, "seed": int(seed), "users": int(out["user_id"].nunique()),
                           "of_users": int(df["user_id"].nunique()), "faces": len(out), "of_faces": len(df)}
    if verbose:
        a = out.attrs["subset"]
        print(f"SUBSET {share:g}: {a['users']} of {a['of_users']} users ({a['faces']:,} of {a['of_faces']:,} faces), "
              "whole users, every fold kept")
    return out


def _read_fold_file(path: Path, fold: int, rows: list, skipped: list, skip_malformed: bool) -> None:
    with open(path, encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines()
    if not lines:
        raise DataFormatError(f"{path}: empty file (expected a header line)")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in _FOLD_COLUMNS if c not in header]
    if missing:
        raise DataFormatError(f"{path}, line 1: header lacks column(s) {missing}; expected a tab-separated "
                              f"header with {', '.join(_FOLD_COLUMNS)}, got {header}")
    col = {name: header.index(name) for name in _FOLD_COLUMNS}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (a trailing newline) carry no face
        fields = line.split("\t")
        problem = None
        if len(fields) != len(header):
            problem = f"{len(fields)} tab-separated fields, expected {len(header)}"
        else:
            gender = fields[col["gender"]].strip().lower()
            face_id = fields[col["face_id"]].strip()
            user_id = fields[col["user_id"]].strip()
            if gender not in ("m", "f", "u", ""):
                problem = f"gender {fields[col['gender']]!r}, expected m, f, u or empty"
            elif not face_id.lstrip("-").isdigit():
                problem = f"face_id {face_id!r} is not an integer"
            elif not user_id or not fields[col["original_image"]].strip():
                problem = "empty user_id or original_image"
        if problem:
            if skip_malformed:
                skipped.append({"source_file": str(path), "line": lineno, "problem": problem})
                continue
            raise DataFormatError(f"{path}, line {lineno}: {problem} (pass skip_malformed=True to "
                                  f"exclude such rows and count them)")
        original = fields[col["original_image"]].strip()
        age_raw = fields[col["age"]].strip()
        rows.append({
            "fold": fold, "user_id": user_id, "face_id": int(face_id), "original_image": original,
            "gender": gender or "u", "age_group": age_to_group(age_raw)[0], "age_raw": age_raw,
            "path": adience_image_path(user_id, face_id, original),
            "source_file": path.name, "line": lineno,
        })


def _finish_frame(df: pd.DataFrame) -> pd.DataFrame:
    # object dtype keeps None as None for age_group and fold (pandas 3 would make them NaN).
    for c in ("user_id", "original_image", "gender", "age_raw", "path", "source_file"):
        df[c] = df[c].astype(object)
    df["age_group"] = df["age_group"].astype(object).where(df["age_group"].notna(), None)
    if df["fold"].notna().all() and len(df):
        df["fold"] = df["fold"].astype(int)
    else:
        df["fold"] = df["fold"].astype(object).where(df["fold"].notna(), None)
    df["face_id"] = df["face_id"].astype(int)
    df["line"] = df["line"].astype(int)
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------- protocols
def apply_protocol(df: pd.DataFrame, protocol: str) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Choose the labels: ``"binary"`` (m/f, u dropped: the literature's protocol) or
    ``"three_class"`` (m/f/u, u as "other": the case study's). Adds an int ``label`` column
    indexing the returned class names; ``df.attrs["protocol_dropped"]`` counts dropped rows."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    names = PROTOCOLS[protocol]
    unknown = sorted(set(df["gender"]) - set(GENDERS))
    if unknown:
        raise ValueError(f"gender values {unknown} are not m/f/u; read the data with a helpers.data reader")
    keep = df["gender"].isin(names)
    out = df.loc[keep].copy().reset_index(drop=True)
    out["label"] = out["gender"].map({n: i for i, n in enumerate(names)}).astype(np.int32)
    out.attrs = dict(df.attrs)
    out.attrs["protocol"] = protocol
    out.attrs["protocol_dropped"] = dict(Counter(df.loc[~keep, "gender"]))
    return out, names


# ------------------------------------------------------------------------------------- splits
class Split(NamedTuple):
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def carve_validation(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0,
                     key: str = "user_id") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (train, val) BY SUBJECT: whole users go to validation, in a seeded
    random order, until they hold at least ``val_fraction`` of the images. At least one user
    stays in training; ``val_fraction=0`` gives an empty validation set."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    users = np.array(sorted(df[key].unique()))
    if val_fraction == 0 or len(users) < 2:
        if val_fraction > 0:
            raise ValueError(f"cannot carve a validation set by {key}: only {len(users)} subject(s)")
        return df.copy(), df.iloc[0:0].copy()
    rng = np.random.default_rng(seed)
    rng.shuffle(users)
    counts = df[key].value_counts()
    target = val_fraction * len(df)
    chosen, total = [], 0
    for u in users[:-1]:  # never take the last user: training keeps at least one
        if total >= target:
            break
        chosen.append(u)
        total += counts[u]
    in_val = df[key].isin(chosen)
    return df.loc[~in_val].copy(), df.loc[in_val].copy()


def assign_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 0, key: str = "user_id") -> pd.DataFrame:
    """Give a table without folds (a learner's own faces) subject-exclusive folds 0..n_folds-1:
    subjects in a seeded random order, each to the fold with the fewest images so far."""
    users = np.array(sorted(df[key].unique()))
    if len(users) < n_folds:
        raise ValueError(f"{len(users)} subject(s) cannot fill {n_folds} subject-exclusive folds")
    np.random.default_rng(seed).shuffle(users)
    counts = df[key].value_counts()
    sizes = np.zeros(n_folds, int)
    fold_of = {}
    for u in users:
        k = int(np.argmin(sizes))
        fold_of[u] = k
        sizes[k] += counts[u]
    out = df.copy()
    out["fold"] = out[key].map(fold_of).astype(int)
    return out


def fold_split(df: pd.DataFrame, test_fold: int, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """Test on fold ``test_fold``, train on the others, validation carved by user from training."""
    folds = sorted(int(f) for f in df["fold"].dropna().unique())
    if not folds:
        raise ValueError("the data has no folds (readers of folders, CSV and UTKFace leave fold None): "
                         "call assign_folds(df) first, or carve_validation(df) for a train/val split")
    if test_fold not in folds:
        raise ValueError(f"test_fold {test_fold} not in the data's folds {folds}")
    test = df.loc[df["fold"] == test_fold].copy()
    train, val = carve_validation(df.loc[df["fold"] != test_fold], val_fraction, seed)
    split = Split(train, val, test)
    check_subject_exclusive(*split)
    return split


def case_study_split(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """The case study's split: train on fold 0, test on fold 1, validation carved by user from fold 0."""
    for k in (0, 1):
        if not (df["fold"] == k).any():
            raise ValueError(f"case_study_split needs folds 0 and 1; fold {k} has no rows")
    train, val = carve_validation(df.loc[df["fold"] == 0], val_fraction, seed)
    split = Split(train, val, df.loc[df["fold"] == 1].copy())
    check_subject_exclusive(*split)
    return split


class SubjectLeakError(ValueError):
    """A person's faces are on both sides of a split (the protocol is subject-exclusive)."""


def check_subject_exclusive(*frames: pd.DataFrame, key: str = "user_id", context: str = "") -> None:
    """Raise :class:`SubjectLeakError` naming the subjects that appear in more than one frame.

    The split functions of this module call it on what they return; call it yourself on a
    split you made by hand.
    """
    seen: dict = {}
    shared: dict = {}
    for i, frame in enumerate(frames):
        for u in pd.unique(frame[key]):
            if u in seen and seen[u] != i:
                shared.setdefault(u, {seen[u]}).add(i)
            seen.setdefault(u, i)
    if shared:
        where = f" in {context}" if context else ""
        examples = ", ".join(f"{u!r} in sets {sorted(s)}" for u, s in list(shared.items())[:10])
        raise SubjectLeakError(f"{len(shared)} {key}(s) appear in more than one set{where}: {examples}"
                               f"{' ...' if len(shared) > 10 else ''}. The protocol is subject-exclusive: "
                               "fix the fold assignment.")


# ------------------------------------------------------------------------------------ summary
def summarize(df: pd.DataFrame, root=None) -> pd.DataFrame:
    """Per fold (and a ``total`` row): rows, users, faces per gender, age groups known /
    missing, and missing image files when ``root`` is given."""
    fold = df["fold"].astype(object).where(df["fold"].notna(), "none")
    records = []
    groups = [(k, df.loc[fold == k]) for k in sorted(fold.unique(), key=str)] + [("total", df)]
    root = Path(root) if root is not None else None
    for name, part in groups:
        rec = {"fold": name, "rows": len(part), "users": part["user_id"].nunique()}
        for g in GENDERS:
            rec[g] = int((part["gender"] == g).sum())
        if "label" in part:
            for lab, n in part["label"].value_counts().sort_index().items():
                rec[f"label_{lab}"] = int(n)
        rec["age_known"] = int(part["age_group"].notna().sum())
        rec["age_missing"] = int(part["age_group"].isna().sum())
        if root is not None:
            rec["missing_images"] = int(sum(not (root / p).is_file() for p in part["path"]))
        records.append(rec)
    return pd.DataFrame(records).set_index("fold").fillna(0).astype(int)


def plot_summary(df: pd.DataFrame, ax=None):
    """Stacked bars: faces per gender in each fold."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    table = summarize(df).drop(index="total")
    bottom = np.zeros(len(table))
    colors = {"m": "#4C72B0", "f": "#DD8452", "u": "#8C8C8C"}
    labels = {"m": "male", "f": "female", "u": "unknown / other"}
    for g in GENDERS:
        ax.bar([str(i) for i in table.index], table[g], bottom=bottom, color=colors[g], label=labels[g])
        bottom += table[g].to_numpy()
    ax.set_xlabel("fold")
    ax.set_ylabel("faces")
    ax.set_title(f"{len(df)} faces, {df['user_id'].nunique()} subjects")
    ax.legend(frameon=False, fontsize=8)
    return ax


# ------------------------------------------------------------------------- the dataset folder
@dataclass
class DatasetRootReport:
    root: Path
    fold_files_present: list[str] = field(default_factory=list)
    fold_files_missing: list[str] = field(default_factory=list)
    aligned_present: bool = False
    user_folders: int = 0
    image_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.fold_files_missing and self.aligned_present and self.image_files > 0

    def __str__(self) -> str:
        lines = [f"Adience dataset root: {self.root}"]
        lines.append(f"  fold files present: {', '.join(self.fold_files_present) or 'none'}")
        if self.fold_files_missing:
            lines.append(f"  fold files MISSING: {', '.join(self.fold_files_missing)}")
        if self.aligned_present:
            lines.append(f"  aligned/: {self.user_folders} user folders, {self.image_files} images")
        else:
            lines.append("  aligned/: MISSING")
        if self.ok:
            lines.append("  ready.")
        else:
            from .course import paths
            lines.append(
                "  To use the real Adience benchmark: register at "
                "https://talhassner.github.io/home/projects/Adience/Adience-data.html, download "
                "aligned.tar.gz and fold_0_data.txt ... fold_4_data.txt, and put them so that "
                f"{self.root}/aligned/<user_id>/... and {self.root}/fold_0_data.txt exist. "
                f"Set {paths.ENV_HOME} to keep data elsewhere (data/adience inside it); on Colab, "
                f"a Drive folder {paths.DRIVE_HOME}/data/adience is used when Drive is mounted.")
        return "\n".join(lines)


def check_dataset_root(root) -> DatasetRootReport:
    """What an Adience root holds (fold files, aligned folder, counts) and what is missing."""
    root = Path(root)
    rep = DatasetRootReport(root=root)
    for k in range(5):
        name = f"fold_{k}_data.txt"
        (rep.fold_files_present if (root / name).is_file() else rep.fold_files_missing).append(name)
    aligned = root / "aligned"
    rep.aligned_present = aligned.is_dir()
    if rep.aligned_present:
        for user in aligned.iterdir():
            if user.is_dir():
                rep.user_folders += 1
                rep.image_files += sum(1 for f in user.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return rep


# ------------------------------------------------------------------------------ other sources
_FOLDER_GENDER = {"male": "m", "man": "m", "men": "m", "m": "m",
                  "female": "f", "woman": "f", "women": "f", "f": "f"}


def _frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(records, columns=COLUMNS)
    return _finish_frame(df)


def read_class_folders(root, *, verbose: bool = True) -> pd.DataFrame:
    """``root/<class>/*.jpg``: folder names male/man/m -> m, female/woman/f -> f, else u.

    Each image is its own subject (``user_id`` = class/file stem) because folders say nothing
    about who is who; ``df.attrs["folder_mapping"]`` and ``df.attrs["skipped_files"]`` report
    the mapping and the non-image files left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}: expected {root}/male/*.jpg, {root}/female/*.jpg, ...")
    records, mapping, skipped = [], {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        gender = _FOLDER_GENDER.get(folder.name.strip().lower(), "u")
        mapping[folder.name] = gender
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(root).as_posix()
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(rel)
                continue
            records.append({"fold": None, "user_id": f"{folder.name}/{f.stem}", "face_id": len(records),
                            "original_image": f.name, "gender": gender, "age_group": None, "age_raw": "",
                            "path": rel, "source_file": folder.name, "line": 0})
    if not records:
        raise DataFormatError(f"{root}: no image files in class folders (expected e.g. {root}/male/a.jpg)")
    df = _frame(records)
    df.attrs.update(folder_mapping=mapping, skipped_files=skipped)
    if verbose:
        print("class folders -> gender: " + ", ".join(f"{k!r} -> {v}" for k, v in mapping.items()))
        if skipped:
            print(f"left out {len(skipped)} non-image file(s), e.g. {skipped[:3]}")
    return df


def read_csv_labels(csv_path, root=None) -> pd.DataFrame:
    """A CSV with a header ``path,label[,group]``: label m/f/u (or male/female/...), group is
    the subject (defaults to one subject per image). Paths are relative to ``root`` (defaults
    to the CSV's folder). A bad label raises naming file and line."""
    csv_path = Path(csv_path)
    root = Path(root) if root is not None else csv_path.parent
    records = []
    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise DataFormatError(f"{csv_path}, line 1: header must have columns path,label[,group]; got {fields}")
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            raw = row["label"].lower()
            gender = _FOLDER_GENDER.get(raw, "u" if raw in ("u", "unknown", "other", "") else None)
            if gender is None:
                raise DataFormatError(f"{csv_path}, line {lineno}: label {row['label']!r}; expected m/f/u "
                                      "(or male/female/man/woman/unknown/other)")
            if not row["path"]:
                raise DataFormatError(f"{csv_path}, line {lineno}: empty path")
            group = row.get("group") or f"image:{row['path']}"
            records.append({"fold": None, "user_id": group, "face_id": len(records),
                            "original_image": Path(row["path"]).name, "gender": gender, "age_group": None,
                            "age_raw": "", "path": row["path"], "source_file": csv_path.name, "line": lineno})
    df = _frame(records)
    df.attrs["root"] = str(root)
    return df


_UTK_NAME = re.compile(r"^(\d+)_([01])_(\d+)_(\d+)")


def read_utkface(root, *, verbose: bool = True) -> pd.DataFrame:
    """UTKFace's ``<age>_<gender>_<race>_<date>.jpg`` names (gender 0 male, 1 female).

    Ages map to an Adience group when unambiguous. Names that do not parse are left out and
    listed in ``df.attrs["malformed_names"]`` (and printed)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    records, malformed = [], []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        m = _UTK_NAME.match(f.name)
        if not m:
            malformed.append(f.relative_to(root).as_posix())
            continue
        age = m.group(1)
        records.append({"fold": None, "user_id": f"utk:{f.stem}", "face_id": len(records),
                        "original_image": f.name, "gender": "m" if m.group(2) == "0" else "f",
                        "age_group": age_to_group(age)[0], "age_raw": age,
                        "path": f.relative_to(root).as_posix(), "source_file": "", "line": 0})
    df = _frame(records)
    df.attrs["malformed_names"] = malformed
    df.attrs["age_report"] = _age_report(df["age_raw"])
    if verbose:
        print(f"UTKFace: {len(df)} faces read; {len(malformed)} name(s) not age_gender_race_date "
              f"left out{', e.g. ' + repr(malformed[:3]) if malformed else ''}")
    return df


# -------------------------------------------------------------------------- image validation
@dataclass
class ValidationReport:
    """What :func:`validate_images` found. ``bad`` has one row per bad image (index of ``df``,
    path, kind, detail); ``counts`` maps kind (missing, empty, not_image, unsupported_format,
    corrupt) to a count."""

    checked: int
    bad: pd.DataFrame
    from_cache: int = 0

    @property
    def counts(self) -> dict:
        return dict(Counter(self.bad["kind"])) if len(self.bad) else {}

    @property
    def ok(self) -> bool:
        return len(self.bad) == 0

    def examples(self, per_kind: int = 3) -> dict:
        return {k: list(g["path"][:per_kind]) for k, g in self.bad.groupby("kind")} if len(self.bad) else {}

    def __str__(self) -> str:
        if self.ok:
            return f"{self.checked} images checked: all readable ({self.from_cache} from the cache)"
        lines = [f"{self.checked} images checked ({self.from_cache} from the cache): {len(self.bad)} bad"]
        for kind, paths_ in self.examples().items():
            lines.append(f"  {kind}: {self.counts[kind]}, e.g. {paths_}")
        return "\n".join(lines)


def _check_image(path: Path) -> tuple[str | None, str]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "missing", "no such file"
    if path.stat().st_size == 0:
        return "empty", "0 bytes"
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()  # structure and checksums
        if fmt not in DECODABLE_FORMATS:
            return "unsupported_format", f"{fmt} (the pipeline decodes {', '.join(DECODABLE_FORMATS)})"
        with Image.open(path) as im:
            im.load()  # a real decode: verify() does not catch truncated pixel data
            if im.size[0] < 1 or im.size[1] < 1:
                return "corrupt", f"size {im.size}"
    except UnidentifiedImageError as e:
        return "not_image", str(e)
    except Exception as e:  # truncated or damaged data: PIL raises OSError, SyntaxError, ...
        return "corrupt", f"{type(e).__name__}: {e}"
    return None, ""


def _file_problem(path: Path) -> tuple[str | None, str]:
    """Missing, empty or cut short (a JPEG without its end marker, a PNG without IEND): what a
    partial download or copy leaves behind, found without decoding (one small read per file)."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing", "no such file"
    if size == 0:
        return "empty", "0 bytes"
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return None, ""
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 64))
        tail = fh.read()
    # JPEG's end-of-image marker FF D9 cannot occur inside the entropy-coded data (0xFF is
    # stuffed there), so its absence from the last bytes means the file was cut short.
    if suffix in (".jpg", ".jpeg") and b"\xff\xd9" not in tail:
        return "truncated", f"no JPEG end marker in its last bytes ({size} bytes)"
    if suffix == ".png" and b"IEND" not in tail:
        return "truncated", f"no PNG IEND chunk at its end ({size} bytes)"
    return None, ""


def check_image_files(df: pd.DataFrame, root) -> ValidationReport:
    """The cheap check of every image of ``df`` (missing, empty, truncated; nothing is decoded):
    about a second for Adience's 19,487 faces. :func:`validate_images` decodes every image."""
    root = Path(root)
    bad = []
    for idx, rel in zip(df.index, df["path"]):
        kind, detail = _file_problem(root / rel)
        if kind:
            bad.append({"index": idx, "path": rel, "kind": kind, "detail": detail})
    return ValidationReport(checked=len(df), bad=pd.DataFrame(bad, columns=["index", "path", "kind", "detail"]))


def validate_images(df: pd.DataFrame, root, cache_path=None) -> ValidationReport:
    """Open and decode every image of ``df`` with Pillow; report missing, empty, non-image and
    corrupt files. With ``cache_path`` the verdicts are kept in a JSON keyed by
    path + size + mtime, so a second pass only re-checks files that changed."""
    root = Path(root)
    cache: dict = {}
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cache = json.loads(Path(cache_path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            cache = {}  # a damaged cache only costs a re-check
    new_cache: dict = {}
    bad, from_cache = [], 0
    for idx, rel in zip(df.index, df["path"]):
        p = root / rel
        try:
            st = p.stat()
            key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            key = None
        if key is not None and key in cache:
            kind, detail = cache[key]
            from_cache += 1
        else:
            kind, detail = _check_image(p)
        if key is not None:
            new_cache[key] = [kind, detail]
        if kind:
            bad.append({"index": idx, "path": rel, "kind": kind, "detail": detail})
    if cache_path is not None:
        write_json_atomic(cache_path, {**cache, **new_cache}, indent=None)
    bad_df = pd.DataFrame(bad, columns=["index", "path", "kind", "detail"])
    return ValidationReport(checked=len(df), bad=bad_df, from_cache=from_cache)


def drop_invalid(df: pd.DataFrame, report: ValidationReport, *, verbose: bool = True) -> pd.DataFrame:
    """The rows of ``df`` whose images passed :func:`validate_images`; prints what it dropped."""
    drop = set(report.bad["index"])
    out = df.loc[~df.index.isin(drop)].copy()
    out.attrs = dict(df.attrs)
    out.attrs["dropped_invalid"] = report.counts
    if verbose:
        if drop:
            print(f"dropped {len(df) - len(out)} of {len(df)} rows with unreadable images: {report.counts}; "
                  f"e.g. {list(report.bad['path'][:3])}")
        else:
            print(f"all {len(df)} images readable; nothing dropped")
    return out


def main(argv=None) -> int:
    """``python -m helpers.data FOLDS_DIR [--root ROOT]``: read, summarise and check a dataset."""
    import argparse

    parser = argparse.ArgumentParser(description="Read Adience fold files and print what they hold.")
    parser.add_argument("folds_dir")
    parser.add_argument("--root", default=None, help="dataset root, to count missing images")
    args = parser.parse_args(argv)
    df = read_adience_folds(args.folds_dir, verbose=True)
    check_subject_exclusive(*[df.loc[df["fold"] == k] for k in sorted(df["fold"].unique())])
    print("no user appears in two folds")
    for protocol in PROTOCOLS:
        labelled, names = apply_protocol(df, protocol)
        counts = labelled["gender"].value_counts().reindex(list(names)).to_dict()
        print(f"protocol {protocol}: {len(labelled)} faces {counts}")
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(summarize(df, root=args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
