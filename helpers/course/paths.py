"""Where things live, and which mode (quick or full) the course runs in.

Everything the course reads or writes resolves through this module, so a learner can move
the 580 MB of weights and the dataset somewhere else (a bigger disk, a Google Drive folder)
by setting one variable.

The folder that holds ``weights/`` and ``data/`` is ``COURSE_HOME`` when it is set, else the
repository itself. Executed notebooks, results and caches go to ``build/`` (``COURSE_BUILD_DIR``
overrides it). On Colab, ``environment.start(use_drive=True)`` mounts Google Drive and sets both
to ``MyDrive/vggface-gender-course`` (``weights/``, ``data/``, ``build/``), so that what one
notebook makes outlives its runtime; processes started from a cell inherit the variables.

Colab itself: ``in_colab()`` is true in Colab's kernel (``google.colab`` is imported) and in any
process started from it (Colab sets ``COLAB_RELEASE_TAG``). The runtime's folder is ``/content``
(``COURSE_COLAB_CONTENT`` moves it: the Colab simulation of ``python -m helpers.course --colab``
gives every notebook its own), Drive is mounted at ``<content>/drive``, and many small files (the
Adience faces) are read from the runtime's own disk, ``fast_data_dir()``, not through Drive.
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
ENV_FAST_DATA = "COURSE_FAST_DATA_DIR"  # where extracted datasets are read from (the runtime's disk on Colab)
ENV_COLAB_CONTENT = "COURSE_COLAB_CONTENT"  # Colab's /content (moved by the Colab simulation)
ENV_COLAB_TAG = "COLAB_RELEASE_TAG"  # set by Colab in its runtime's environment
MODES = ("quick", "full")
DRIVE_FOLDER = "vggface-gender-course"  # the course's folder in the learner's My Drive
DRIVE_HOME = Path("/content/drive/MyDrive") / DRIVE_FOLDER  # where that is on a real Colab runtime

# The identity the VGG-Face authors' own demo image `ak.png` shows.
FULL_SAMPLE_IDENTITY = "Aamir_Khan"


def in_colab() -> bool:
    """Running on Colab: in its kernel (``google.colab`` imported) or a process a cell started."""
    return "google.colab" in sys.modules or bool(os.environ.get(ENV_COLAB_TAG))


def colab_content() -> Path:
    """Colab's runtime folder, ``/content``: the course is cloned into it, Drive mounted below it."""
    return Path(os.environ.get(ENV_COLAB_CONTENT) or "/content")


def drive_mountpoint() -> Path:
    return colab_content() / "drive"


def drive_home() -> Path:
    """The course's folder on the mounted Google Drive: ``weights/``, ``data/`` and ``build/``."""
    return drive_mountpoint() / "MyDrive" / DRIVE_FOLDER


def drive_mounted() -> bool:
    return (drive_mountpoint() / "MyDrive").is_dir()


def using_drive() -> bool:
    """Do weights/, data/ and build/ live on Google Drive (set up by ``environment.start``)?"""
    home = os.environ.get(ENV_HOME)
    return bool(home) and Path(home) == drive_home()


def assets_home() -> Path:
    """The folder that holds ``weights/`` and ``data/``."""
    override = os.environ.get(ENV_HOME)
    if override:
        return Path(override).expanduser().resolve()
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


def fast_data_dir() -> Path:
    """Where unpacked datasets are read from: ``data_dir()``, unless that is on Google Drive.

    Reading 19,000 small JPEGs through Drive's file system is slow, so on Colab with Drive the
    learner's ``aligned.tar.gz`` (on Drive, uploaded once) is unpacked into the runtime's own
    disk (``COURSE_FAST_DATA_DIR``, set by ``environment.start``) at the start of each runtime.
    """
    override = os.environ.get(ENV_FAST_DATA)
    return Path(override).expanduser().resolve() if override else data_dir()


def adience_upload_dir() -> Path:
    """Where the learner puts Adience: ``aligned.tar.gz`` (or ``aligned/``) and the five fold files."""
    return data_dir() / "adience"


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
        dataset_root = fast_data_dir() / "adience"
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
        "download aligned.tar.gz and fold_0_data.txt ... fold_4_data.txt, and put them in {path} "
        "(aligned.tar.gz as it is: the course unpacks it; or its aligned/ folder)"
    ),
}
ADIENCE_ARCHIVE = "aligned.tar.gz"


def adience_sources() -> tuple[list[Path], Path | None]:
    """(fold files, the aligned faces: a folder or the archive) where the course finds Adience.

    The unpacked copy in ``fast_data_dir()`` wins; else the learner's upload folder, whose
    ``aligned/`` folder or ``aligned.tar.gz`` (unpacked by ``environment.start``) both count.
    The fold files are taken from the folder that has all five; missing ones are listed there.
    """
    unpacked = assets_for("full").dataset_root
    upload = adience_upload_dir()
    for folder in dict.fromkeys([unpacked, upload]):  # the same folder when Drive is off
        folds = [folder / f"fold_{k}_data.txt" for k in range(5)]
        faces = folder / "aligned"
        if all(f.is_file() for f in folds) and faces.is_dir():
            return folds, faces
    folds = [upload / f"fold_{k}_data.txt" for k in range(5)]
    for candidate in (upload / "aligned", upload / ADIENCE_ARCHIVE):
        if candidate.exists():
            return folds, candidate
    return folds, None


def missing_full_assets() -> list[tuple[str, Path, str]]:
    """(what, where it should be, how to get it) for each full-mode asset that is absent."""
    a = assets_for("full")
    missing = []
    caffe = [a.prototxt, a.caffemodel, a.names, a.sample_image]
    for p in caffe:
        if not p.is_file():
            missing.append(("VGG-Face Caffe release", p, _HOW_TO_GET["VGG-Face Caffe release"]))
    folds, faces = adience_sources()
    how = _HOW_TO_GET["Adience faces and folds"].format(path=adience_upload_dir())
    for p in folds:
        if not p.is_file():
            missing.append(("Adience faces and folds", p, how))
    if faces is None:
        missing.append(("Adience faces and folds", adience_upload_dir() / ADIENCE_ARCHIVE, how))
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
