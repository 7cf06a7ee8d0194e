"""``google.colab.files`` stand-in: ``upload`` reads a local folder (``COLAB_STANDIN_UPLOADS``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def upload(target_dir=None):
    folder = os.environ.get("COLAB_STANDIN_UPLOADS")
    if not folder:
        return {}  # like a learner who closes the file picker without choosing
    got = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file():
            got[p.name] = p.read_bytes()
            if target_dir is not None:
                shutil.copyfile(p, Path(target_dir) / p.name)
    return got


def download(filename):
    folder = os.environ.get("COLAB_STANDIN_DOWNLOADS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(filename, Path(folder) / Path(filename).name)
