"""Where things live, and which mode (quick or full) the course runs in.

Everything the course reads or writes resolves through this module, so a learner can move
the 580 MB of weights and the dataset somewhere else (a bigger disk, a Google Drive folder)
by setting one variable.

Resolution order for the folder that holds ``weights/`` and ``data/``:

1. the environment variable ``COURSE_HOME`` (any folder; ``weights/`` and ``data/`` inside),
2. on Colab, the Drive folder ``/content/drive/MyDrive/vggface-gender-course`` when Drive is
   mounted and that folder exists (downloads then survive the end of a Colab session),
3. the repository itself.

Executed notebooks, results and caches go to ``build/`` (``COURSE_BUILD_DIR`` overrides it).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

ENV_HOME = "COURSE_HOME"
ENV_BUILD = "COURSE_BUILD_DIR"
ENV_MODE = "COURSE_MODE"
ENV_SMOKE = "COURSE_SMOKE"    # "1": every size at its minimum (python -m helpers.course --smoke)
ENV_SUBSET = "COURSE_SUBSET"  # the share of Adience's users full mode uses (--subset)
MODES = ("quick", "full")
DRIVE_HOME = Path("/content/drive/MyDrive/vggface-gender-course")

# The identity the VGG-Face authors' own demo image `ak.png` shows.
FULL_SAMPLE_IDENTITY = "Aamir_Khan"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def assets_home() -> Path:
    """The folder that holds ``weights/`` and ``data/``."""
    override = os.environ.get(ENV_HOME)
    if override:
        return Path(override).expanduser().resolve()
    if in_colab() and DRIVE_HOME.is_dir():
        return DRIVE_HOME
    return REPO_ROOT


def smoke() -> bool:
    """Is this a smoke run (``COURSE_SMOKE=1``): every size at its minimum, numbers meaningless?"""
    return os.environ.get(ENV_SMOKE, "0").strip().lower() in ("1", "true", "yes")


def subset() -> float:
    """The share of Adience's users this run uses (``COURSE_SUBSET``, default 1.0)."""
    return float(os.environ.get(ENV_SUBSET, "1") or 1)


def weights_dir() -> Path:
    return assets_home() / "weights"


def data_dir() -> Path:
    return assets_home() / "data"


def build_dir() -> Path:
    override = os.environ.get(ENV_BUILD)
    return Path(override).expanduser().resolve() if override else REPO_ROOT / "build"


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"


@dataclass(frozen=True)
class Assets:
    """The files one mode works on. Quick mode mirrors the real tarball's file names."""

    mode: str
    caffe_dir: Path  # the folder of the Caffe release (tarball layout)
    prototxt: Path
    caffemodel: Path
    names: Path  # one identity name per line, in fc8's order
    sample_image: Path  # a face whose identity the pretrained network knows
    keras_model: Path  # where notebook 01 writes the converted model
    dataset_root: Path  # the Adience layout: aligned/<user_id>/..., fold_<k>_data.txt

    @property
    def folds_dir(self) -> Path:
        return self.dataset_root

    @property
    def fold_files(self) -> list[Path]:
        return [self.dataset_root / f"fold_{k}_data.txt" for k in range(5)]

    @property
    def sample_identity(self) -> str:
        if self.mode == "full":
            return FULL_SAMPLE_IDENTITY
        return (self.caffe_dir / "sample_identity.txt").read_text(encoding="utf-8").strip()


def assets_for(mode: str) -> Assets:
    mode = _check_mode(mode)
    suffix = "_smoke" if mode == "quick" and smoke() else ""  # a SMOKE run builds and uses a tiny world of its own
    if mode == "full":
        caffe_dir = weights_dir() / "vgg_face_caffe"
        dataset_root = data_dir() / "adience"
        sample = caffe_dir / "ak.png"
    else:
        caffe_dir = weights_dir() / f"mini_vggface{suffix}"
        dataset_root = data_dir() / f"synthetic{suffix}" / "adience"
        sample = caffe_dir / "sample.png"
    return Assets(
        mode=mode,
        caffe_dir=caffe_dir,
        prototxt=caffe_dir / "VGG_FACE_deploy.prototxt",
        caffemodel=caffe_dir / "VGG_FACE.caffemodel",
        names=caffe_dir / "names.txt",
        sample_image=sample,
        keras_model=weights_dir() / "converted" / f"vggface_{mode}{suffix}.keras",
        dataset_root=dataset_root,
    )


# What full mode needs, and how a learner gets each piece.
_HOW_TO_GET = {
    "VGG-Face Caffe release": (
        "python -m helpers.assets fetch vgg_face_caffe   "
        "(the official tarball from the Oxford VGG site, 0.5 GB compressed, about 1 GB unpacked)"
    ),
    "Adience faces and folds": (
        "register at https://talhassner.github.io/home/projects/Adience/Adience-data.html, "
        "download aligned.tar.gz and fold_0_data.txt ... fold_4_data.txt, and put them in {path}"
    ),
}


def missing_full_assets() -> list[tuple[str, Path, str]]:
    """(what, where it should be, how to get it) for each full-mode asset that is absent."""
    a = assets_for("full")
    missing = []
    caffe = [a.prototxt, a.caffemodel, a.names, a.sample_image]
    for p in caffe:
        if not p.is_file():
            missing.append(("VGG-Face Caffe release", p, _HOW_TO_GET["VGG-Face Caffe release"]))
    data = [*a.fold_files, a.dataset_root / "aligned"]
    for p in data:
        if not p.exists():
            how = _HOW_TO_GET["Adience faces and folds"].format(path=a.dataset_root)
            missing.append(("Adience faces and folds", p, how))
    return missing


def resolve_mode(requested: str | None = None) -> tuple[str, str]:
    """Decide the mode: an explicit request, else ``COURSE_MODE``, else auto.

    Auto means full when every real asset is present and quick otherwise. Returns
    ``(mode, reason)`` so that notebooks and the runner can say why.
    """
    for source, value in (("requested", requested), (ENV_MODE, os.environ.get(ENV_MODE))):
        if value and value.lower() != "auto":
            mode = _check_mode(value)
            return mode, f"{mode} mode ({source}: {value!r})"
    missing = missing_full_assets()
    if not missing:
        return "full", "full mode (auto: the VGG-Face weights and Adience are present)"
    first = missing[0][1]
    return "quick", (
        f"quick mode (auto: {len(missing)} full-mode asset(s) missing, e.g. {first}); "
        "the synthetic face world and the miniature VGG-Face stand in for them"
    )


def _check_mode(mode: str) -> str:
    m = str(mode).strip().lower()
    if m not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)} (or 'auto')")
    return m
