"""``google.colab.drive`` stand-in: ``mount`` links a local folder (``COLAB_STANDIN_DRIVE``) at the mount point."""
from __future__ import annotations

import os
from pathlib import Path

ENV_DRIVE = "COLAB_STANDIN_DRIVE"
_mounted: list[Path] = []  # mount points, for flush_and_unmount


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    source = os.environ.get(ENV_DRIVE)
    if not source:
        raise RuntimeError(f"the google.colab stand-in needs {ENV_DRIVE}: the local folder that plays Google Drive")
    source = Path(source)
    (source / "MyDrive").mkdir(parents=True, exist_ok=True)
    point = Path(os.path.expanduser(str(mountpoint)))
    if point.is_symlink() and (point / "MyDrive").is_dir():
        if not force_remount:
            print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
                  f"drive.mount(\"{mountpoint}\", force_remount=True).")
            return
        point.unlink()
    if point.exists():
        if point.is_dir() and not any(point.iterdir()):
            point.rmdir()
        else:
            raise ValueError("Mountpoint must not already contain files")
    point.parent.mkdir(parents=True, exist_ok=True)
    point.symlink_to(source.resolve(), target_is_directory=True)
    _mounted.append(point)
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000):
    while _mounted:
        point = _mounted.pop()
        if point.is_symlink():
            point.unlink()
