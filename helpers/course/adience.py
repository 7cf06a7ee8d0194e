"""Adience on a runtime: unpack the learner's ``aligned.tar.gz`` to fast local disk, and count.

The learner puts ``aligned.tar.gz`` and ``fold_0_data.txt`` … ``fold_4_data.txt`` in
``data/adience/`` once (on Colab: in the Drive folder, where they persist). Reading the 19,000
small JPEGs through Google Drive's file system would cost a network round trip per file, so
``prepare()`` unpacks the archive, a single large sequential read, onto the runtime's own disk
(``paths.fast_data_dir()``) and copies the fold files beside it. It then checks the faces
against the fold files: how many rows the folds list, how many of their images are there, which
are missing, and how many images no fold lists. Nothing is dropped silently: the report says it.

Locally, with everything in one folder, an archive is unpacked in place and an ``aligned/``
folder that is already there is only counted.
"""
from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .assets import extract, extraction_complete

FOLD_COLUMNS = ("user_id", "original_image", "face_id")


def face_path(user_id: str, face_id: str, original_image: str) -> str:
    """Where a fold row's aligned face lives, relative to the dataset root (Adience's layout)."""
    return f"aligned/{user_id}/landmark_aligned_face.{face_id}.{original_image}"


def listed_faces(fold_files: list[Path]) -> tuple[dict[str, int], list[str]]:
    """``({relative image path: fold}, problems)`` from the fold files; unreadable rows are named."""
    faces: dict[str, int] = {}
    problems = []
    for k, fold in enumerate(fold_files):
        with open(fold, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = [h.strip() for h in next(reader, [])]
            absent = [c for c in FOLD_COLUMNS if c not in header]
            if absent:
                raise ValueError(f"{fold}:1: the header lacks the column(s) {', '.join(absent)} "
                                 f"(expected Adience's tab-separated header, found {header[:4]}...)")
            at = {c: header.index(c) for c in FOLD_COLUMNS}
            for lineno, row in enumerate(reader, 2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(at.values()):
                    problems.append(f"{fold.name}:{lineno}: {len(row)} fields, expected at least {max(at.values()) + 1}")
                    continue
                user, image, face = (row[at[c]].strip() for c in FOLD_COLUMNS)
                faces[face_path(user, face, image)] = k
    return faces, problems


def images_under(root: Path) -> set[str]:
    """Every file below ``root/aligned``, as paths relative to ``root`` (one walk, no per-file stat)."""
    found = set()
    base = root / "aligned"
    for dirpath, _, filenames in os.walk(base):
        rel = Path(dirpath).relative_to(root).as_posix()
        found.update(f"{rel}/{name}" for name in filenames)
    return found


@dataclass
class AdienceCheck:
    """What ``prepare()`` found: where the faces are, how they got there, and what is missing."""

    root: Path
    how: str                      # "unpacked <archive> in N s" or "already unpacked" or "read in place"
    listed: int                   # distinct images the fold files list
    found: int                    # of those, present on disk
    missing: list[str] = field(default_factory=list)   # listed but absent (relative paths)
    unlisted: int = 0             # images on disk that no fold lists
    problems: list[str] = field(default_factory=list)  # unreadable fold rows

    def summary(self, examples: int = 3) -> str:
        line = (f"Adience: {self.found:,} of the {self.listed:,} faces the fold files list are in {self.root} "
                f"({self.how})")
        if self.missing:
            line += (f"\n  missing: {len(self.missing):,} image(s) the folds list, e.g. "
                     + ", ".join(self.missing[:examples]) + " (the data reader skips and counts them)")
        if self.unlisted:
            line += f"\n  {self.unlisted:,} image(s) under aligned/ are in no fold file (not used)"
        if self.problems:
            line += f"\n  {len(self.problems)} unreadable fold row(s), e.g. " + "; ".join(self.problems[:examples])
        return line


def prepare(upload_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
            *, progress: bool = True) -> AdienceCheck:
    """Make Adience readable at ``root`` (default: full mode's dataset root) and check it.

    ``upload_dir`` (default ``paths.adience_upload_dir()``) holds the fold files and either
    ``aligned.tar.gz`` or ``aligned/``. The fold files are copied to ``root`` when it is another
    folder; the archive is unpacked there unless a completed earlier unpacking is found.
    """
    upload = Path(upload_dir) if upload_dir else paths.adience_upload_dir()
    root = Path(root) if root else paths.assets_for("full").dataset_root
    folds_here = [root / f"fold_{k}_data.txt" for k in range(5)]
    folds_up = [upload / f"fold_{k}_data.txt" for k in range(5)]
    archive = upload / paths.ADIENCE_ARCHIVE
    if not all(f.is_file() for f in folds_here):
        absent = [str(f) for f in folds_up if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"Adience's fold files are missing: {', '.join(absent)}")
        root.mkdir(parents=True, exist_ok=True)
        for src, dst in zip(folds_up, folds_here):
            if src != dst:
                shutil.copyfile(src, dst)
    if (root / "aligned").is_dir() and extraction_complete(archive.name, root):
        how = "already unpacked"
    elif (root / "aligned").is_dir() and (root == upload or not archive.is_file()):
        how = "read in place"
    elif archive.is_file():
        if progress:
            size = archive.stat().st_size / 1e9
            print(f"Unpacking {archive} ({size:.1f} GB) to {root} ...", flush=True)
        t0 = time.perf_counter()
        extract(archive, root)
        how = f"unpacked {archive.name} in {time.perf_counter() - t0:.0f} s"
        if not (root / "aligned").is_dir():
            tops = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
            raise ValueError(f"{archive} was unpacked into {root}, but {root / 'aligned'} is not there: the archive "
                             f"holds {tops}; expected Adience's aligned/<user_id>/landmark_aligned_face.… layout")
    elif (upload / "aligned").is_dir():
        # An unpacked aligned/ in the upload folder: copied once per runtime (a read of every file
        # through Drive, which the archive avoids), so that every later read is local.
        t0 = time.perf_counter()
        from .fileio import atomic_dir

        with atomic_dir(root / "aligned") as tmp:
            shutil.copytree(upload / "aligned", tmp, dirs_exist_ok=True)
        how = (f"copied {upload / 'aligned'} in {time.perf_counter() - t0:.0f} s; "
               f"{paths.ADIENCE_ARCHIVE} unpacks faster than a folder of small files copies")
    else:
        raise FileNotFoundError(f"Adience's faces are missing: put {paths.ADIENCE_ARCHIVE} (or its aligned/ folder) "
                                f"in {upload}")
    faces, problems = listed_faces(folds_here)
    on_disk = images_under(root)
    missing = sorted(p for p in faces if p not in on_disk)
    unlisted = sum(1 for p in on_disk if p not in faces)
    return AdienceCheck(root=root, how=how, listed=len(faces), found=len(faces) - len(missing),
                        missing=missing, unlisted=unlisted, problems=problems)
