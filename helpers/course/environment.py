"""The checks a learner runs first (notebook 00), and the start of every notebook.

``report()`` answers the questions that decide whether the course will run here: are the
packages new enough, which Keras backend is active, is there a GPU (and how to get one), is
there enough disk and memory for full mode, which assets are present, and which mode the
course will run in. Each answer is a :class:`Check` with advice when something is off.

``start(MODE, seed)`` is the one call at the top of each notebook: on Colab it mounts Google
Drive (``USE_DRIVE``) so that weights/, data/ and build/ outlive the runtime, it resolves the
mode, seeds every random generator and makes sure the mode's assets are there (quick mode: the
synthetic world, built if missing; full mode: Adience unpacked to the runtime's disk, checked
against its fold files).

On Colab the course installs only what Colab lacks, and never a package of the running kernel
(``NEVER_INSTALL_ON_COLAB``): replacing Colab's TensorFlow, NumPy or Jupyter packages under a
live kernel breaks it.
"""
from __future__ import annotations

import fnmatch
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import paths

# What full mode needs: the tarball (~0.5 GB) + the caffemodel (0.58 GB) + the converted
# .keras (0.55 GB) + Adience's aligned faces (~1.2 GB unpacked) + feature caches and models.
FULL_MODE_DISK_GB = 6.0
FULL_MODE_MEMORY_GB = 8.0

GPU_ADVICE = {
    "colab": "Colab: Runtime > Change runtime type > Hardware accelerator: T4 GPU, then run the notebook again.",
    "local": (
        "No GPU found: quick mode runs fine on a CPU; full mode fine-tuning needs a GPU "
        "(Colab's free T4, or a local NVIDIA GPU with `pip install tensorflow[and-cuda]`)."
    ),
}

# The Python versions the course supports and CI tests (3.11 with the newest releases, 3.13 with
# Colab's); README and environment.yml say the same.
SUPPORTED_PYTHON = ((3, 11), (3, 13))

# Packages of Colab's running kernel: pip-installing over them breaks the kernel (or silently
# mixes versions until a restart), so the course never does it on Colab, even when one is old.
NEVER_INSTALL_ON_COLAB = ("ipykernel", "ipython", "ipywidgets", "jupyter*", "notebook",
                          "widgetsnbextension", "tensorflow", "keras", "numpy")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    found: str
    needed: str = ""
    advice: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def requirement_floors(requirements: str | os.PathLike | None = None) -> dict[str, str]:
    """``{distribution: minimum version}`` read from requirements.txt (the one source of floors)."""
    path = Path(requirements) if requirements else paths.REPO_ROOT / "requirements.txt"
    floors = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(?:(>=|~=|==)\s*([0-9][^,;\s]*))?.*", line)
        if not m:
            raise ValueError(f"{path}:{lineno}: cannot read requirement {raw!r} (expected 'name>=version')")
        floors[m.group(1).lower()] = m.group(3) or "0"
    return floors


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.16.1' -> (2, 16, 1); pre-release and local tags ('2.17.0rc1', '2.4.1+cu121') are cut."""
    parts = []
    for piece in re.split(r"[.+]", version):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != piece:
            break
    return tuple(parts)


# Requirements that another distribution of the same module satisfies: Colab ships dlib itself
# (built from source, module ``dlib``); elsewhere the prebuilt wheel ``dlib-bin`` installs it.
SATISFIED_BY = {"dlib-bin": ("dlib",)}


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def check_python(version: tuple[int, ...] | None = None) -> Check:
    """The supported range: older fails (the code or a package needs newer), newer warns (untested)."""
    found = tuple(version or sys.version_info[:3])
    low, high = SUPPORTED_PYTHON
    needed = f"{low[0]}.{low[1]}–{high[0]}.{high[1]}"
    text = ".".join(map(str, found))
    if found[:2] < low:
        return Check("python", "fail", text, needed, f"Install Python {high[0]}.{high[1]} (see environment.yml), or use Colab.")
    if found[:2] > high:
        return Check("python", "warn", text, needed,
                     f"Python {found[0]}.{found[1]} is newer than the course has been tested on; if a package fails to "
                     f"install, use Python {high[0]}.{high[1]}.")
    return Check("python", "ok", text, needed)


def protected_on_colab(dist: str) -> bool:
    return any(fnmatch.fnmatch(dist.lower(), pattern) for pattern in NEVER_INSTALL_ON_COLAB)


def check_versions(floors: dict[str, str] | None = None, colab: bool | None = None) -> list[Check]:
    """The Python version, then one check per requirement floor.

    On Colab a package of the running kernel that is older than its floor is a warning, not a
    failure: the course runs with Colab's version rather than replace it under the kernel.
    """
    floors = requirement_floors() if floors is None else floors
    colab = paths.in_colab() if colab is None else colab
    checks = [check_python()]
    for dist, floor in floors.items():
        try:
            found = next(metadata.version(d) for d in (dist, *SATISFIED_BY.get(dist, ())) if _installed(d))
        except StopIteration:
            checks.append(Check(dist, "fail", "missing", f">={floor}", f"pip install '{dist}>={floor}'"))
            continue
        if version_tuple(found) >= version_tuple(floor):
            checks.append(Check(dist, "ok", found, f">={floor}"))
        elif colab and protected_on_colab(dist):
            checks.append(Check(dist, "warn", found, f">={floor}",
                                f"Colab's own {dist} is older than the course was tested with; the course uses it as it is "
                                "(upgrading it under Colab's kernel would break the kernel). Please report this."))
        else:
            checks.append(Check(dist, "fail", found, f">={floor}", f"pip install --upgrade '{dist}>={floor}'"))
    return checks


def missing_requirements(floors: dict[str, str] | None = None, colab: bool | None = None) -> list[str]:
    """Requirement strings for packages that are missing or older than their floor.

    On Colab the kernel's own packages (``NEVER_INSTALL_ON_COLAB``) are never listed.
    """
    colab = paths.in_colab() if colab is None else colab
    return [f"{c.name}{c.needed}" for c in check_versions(floors, colab)[1:]
            if not c.ok and not (colab and protected_on_colab(c.name))]


def install_missing(floors: dict[str, str] | None = None, run=subprocess.run, colab: bool | None = None) -> list[str]:
    """pip-install only what is missing or too old; on Colab never a package of the running kernel."""
    colab = paths.in_colab() if colab is None else colab
    todo = missing_requirements(floors, colab)
    if todo:
        print("Installing:", " ".join(todo))
        run([sys.executable, "-m", "pip", "install", "-q", *todo], check=True)
    else:
        print("All required packages are present" + (" (Colab's own versions, none installed)." if colab else "."))
    return todo


def check_backend() -> Check:
    backend = os.environ.get("KERAS_BACKEND")
    try:
        import keras

        backend = keras.backend.backend()
    except Exception as exc:  # keras missing or broken: the version check says which
        return Check("keras backend", "fail", f"keras not importable ({exc.__class__.__name__})", "tensorflow")
    ok = backend == "tensorflow"
    advice = "" if ok else "The course's input pipeline is tf.data: set KERAS_BACKEND=tensorflow before importing keras."
    return Check("keras backend", "ok" if ok else "fail", backend, "tensorflow", advice)


def gpu_names() -> list[str]:
    try:
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:
        return []


def check_gpu(names: list[str] | None = None, colab: bool | None = None) -> Check:
    names = gpu_names() if names is None else names
    colab = paths.in_colab() if colab is None else colab
    if names:
        return Check("GPU", "ok", ", ".join(names), "a GPU for full mode")
    return Check("GPU", "warn", "none", "a GPU for full mode", GPU_ADVICE["colab" if colab else "local"])


def check_disk(path: str | os.PathLike | None = None, need_gb: float = FULL_MODE_DISK_GB) -> Check:
    path = Path(path) if path else paths.assets_home()
    while not path.exists():
        path = path.parent
    free_gb = shutil.disk_usage(path).free / 1e9
    ok = free_gb >= need_gb
    advice = "" if ok else f"Full mode needs about {need_gb:.0f} GB under {path}: free space or set COURSE_HOME to a bigger disk."
    return Check("free disk", "ok" if ok else "warn", f"{free_gb:.1f} GB", f">={need_gb:.0f} GB for full mode", advice)


def total_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return float("nan")


def check_memory(need_gb: float = FULL_MODE_MEMORY_GB, total_gb: float | None = None) -> Check:
    total = total_memory_gb() if total_gb is None else total_gb
    ok = total >= need_gb
    advice = "" if ok else "Full mode may run out of memory: lower BATCH_SIZE in the parameters cell, or use Colab."
    return Check("memory", "ok" if ok else "warn", f"{total:.1f} GB", f">={need_gb:.0f} GB for full mode", advice)


def check_assets() -> list[Check]:
    checks = []
    missing = paths.missing_full_assets()
    by_what: dict[str, list] = {}
    for what, where, how in missing:
        by_what.setdefault(what, []).append((where, how))
    for what in ("VGG-Face Caffe release", "Adience faces and folds"):
        if what in by_what:
            where, how = by_what[what][0]
            found = f"missing ({len(by_what[what])} file(s), e.g. {where})"
            checks.append(Check(what, "warn", found, "for full mode", how))
        else:
            checks.append(Check(what, "ok", "present", "for full mode"))
    quick = paths.assets_for("quick")
    built = quick.caffemodel.is_file() and all(f.is_file() for f in quick.fold_files)
    checks.append(
        Check(
            "synthetic world",
            "ok" if built else "warn",
            "built" if built else "not built yet",
            "for quick mode",
            "" if built else "Built on first use (about 3 minutes), or now: python -m helpers.synthetic",
        )
    )
    return checks


def report() -> list[Check]:
    mode, why = paths.resolve_mode()
    return [
        *check_versions(),
        check_backend(),
        check_gpu(),
        check_disk(),
        check_memory(),
        *check_assets(),
        Check("course mode", "ok", mode, "", why),
    ]


def format_report(checks: list[Check]) -> str:
    marks = {"ok": "✓", "warn": "!", "fail": "✗"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        line = f"{marks[c.status]} {c.name:<{width}}  {c.found}"
        if c.needed:
            line += f"  (needed: {c.needed})"
        lines.append(line)
        if c.advice and not c.ok:
            lines.append(f"  {'':<{width}}  → {c.advice}")
    return "\n".join(lines)


def versions_line() -> str:
    """One line for the top of a notebook: versions, backend, GPU, with advice when needed."""
    checks = check_versions()
    picked = {c.name: c for c in checks if c.name in ("python", "tensorflow", "keras")}
    parts = [f"{name} {c.found}" for name, c in picked.items()]
    gpu = check_gpu()
    parts.append(f"backend {check_backend().found}")
    parts.append(f"GPU: {gpu.found}")
    line = " · ".join(parts)
    problems = [c for c in checks if not c.ok]
    for c in problems:
        line += f"\n✗ {c.name} {c.found} (needed {c.needed}) → {c.advice}"
    if not gpu.ok:
        line += f"\n! {gpu.advice}"
    return line


def set_seeds(seed: int = 42) -> None:
    """Seed Python's ``random``, NumPy and the backend: runs on a CPU repeat exactly.

    ``keras.utils.set_random_seed`` seeds all three. (Setting ``PYTHONHASHSEED`` inside a
    running process changes nothing: the hash seed is fixed when Python starts.)
    """
    try:
        import keras
    except ImportError:  # the version check says so; seed what is there
        import numpy as np

        random.seed(seed)
        np.random.seed(seed)
        return
    keras.utils.set_random_seed(int(seed))


def start(mode: str | None = "auto", seed: int = 42, *, smoke: bool = False, subset: float = 1.0,
          use_drive: bool | None = None, build_quick_world: bool = True):
    """The first call of every notebook: where the course's folders live, the mode, the seeds,
    and the mode's assets.

    ``use_drive`` (``None``: yes on Colab) mounts Google Drive on Colab and puts weights/, data/
    and build/ in ``MyDrive/vggface-gender-course``, for this kernel and every process it starts.
    ``smoke`` (every size at its minimum) and ``subset`` (the share of Adience's users full
    mode uses) are exported as ``COURSE_SMOKE`` / ``COURSE_SUBSET`` with the mode
    (``COURSE_MODE``), so that every helper (results, caches) agrees with the notebook. In full
    mode, Adience's ``aligned.tar.gz`` is unpacked to the runtime's own disk when needed and its
    faces are counted against the fold files. Returns ``(mode, assets)``.
    """
    subset = float(subset)
    if not 0 < subset <= 1:
        raise ValueError(f"SUBSET must be a share of the users in (0, 1], got {subset}")
    print(use_folders(use_drive))
    mode, why = paths.resolve_mode(mode)
    os.environ[paths.ENV_MODE] = mode
    os.environ[paths.ENV_SMOKE] = "1" if smoke else "0"
    os.environ[paths.ENV_SUBSET] = repr(subset)
    print(why + (" · SMOKE run: every size at its minimum, the numbers mean nothing" if smoke else "")
          + (f" · SUBSET {subset:g} of the users" if subset < 1 else ""))
    set_seeds(seed)
    assets = paths.assets_for(mode)
    if mode == "quick" and build_quick_world:
        from .. import synthetic  # only quick mode needs the renderer and the pretraining

        synthetic.ensure_built()
    elif mode == "full":
        from . import adience

        folds, faces = paths.adience_sources()
        if faces is not None and all(f.is_file() for f in folds):
            print(adience.prepare().summary())
        missing = paths.missing_full_assets()
        if missing:
            lines = "\n".join(f"  - {what}: {where}\n    {how}" for what, where, how in missing)
            raise FileNotFoundError(f"full mode needs assets that are missing:\n{lines}")
        from .standins import banner  # stand-in assets say so in every run that uses them

        if banner(assets):
            print(banner(assets))
    return mode, assets


def use_folders(use_drive: bool | None = None, colab: bool | None = None) -> str:
    """Point weights/, data/ and build/ at Google Drive (on Colab, unless declined); say where they are.

    ``COURSE_HOME`` / ``COURSE_BUILD_DIR`` are set (and inherited by every process a cell starts);
    the runtime's own disk keeps the unpacked datasets (``COURSE_FAST_DATA_DIR``). Returns one line
    for the learner.
    """
    colab = paths.in_colab() if colab is None else colab
    use_drive = colab if use_drive is None else bool(use_drive)
    if use_drive and colab:
        home = mount_drive()
        os.environ[paths.ENV_HOME] = str(home)
        os.environ[paths.ENV_BUILD] = str(home / "build")
        os.environ[paths.ENV_FAST_DATA] = str(paths.colab_content() / "course-data")
        return (f"Google Drive: weights/, data/ and build/ in {home} (kept across runtimes); "
                f"unpacked datasets on this runtime's disk, {paths.fast_data_dir()}")
    if paths.using_drive():  # Drive declined after an earlier start() in this kernel used it
        for name in (paths.ENV_HOME, paths.ENV_BUILD, paths.ENV_FAST_DATA):
            os.environ.pop(name, None)
    where = f"weights/ and data/ in {paths.assets_home()}, build/ in {paths.build_dir()}"
    if colab:
        return (f"Drive off: {where}, on this runtime's disk only (gone when the runtime ends); "
                "what another notebook made is recomputed here")
    if use_drive:
        return f"USE_DRIVE: Google Drive is mounted only on Colab; here {where}"
    return where[0].upper() + where[1:]


def mount_drive(mountpoint: str | os.PathLike | None = None) -> Path:
    """Mount Google Drive (Colab asks the learner once per runtime) and create the course's folder on it."""
    from google.colab import drive  # only on Colab (the tests put a stand-in on the path)

    mountpoint = Path(mountpoint) if mountpoint else paths.drive_mountpoint()
    if not (mountpoint / "MyDrive").is_dir():
        drive.mount(str(mountpoint))
    if not (mountpoint / "MyDrive").is_dir():
        raise RuntimeError(f"Google Drive did not mount at {mountpoint} (no MyDrive folder there): run the cell again, "
                           "or set USE_DRIVE = False to work on this runtime's disk only")
    home = mountpoint / "MyDrive" / paths.DRIVE_FOLDER
    home.mkdir(parents=True, exist_ok=True)
    return home


def main() -> int:
    checks = report()
    print(format_report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
