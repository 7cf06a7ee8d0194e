"""Atomic file and folder writes: nothing the course writes is ever half-written.

A reader either sees the previous complete file or the new complete file, never a
truncated one, because we write to a temporary name in the same folder and rename.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` defaults to the target's suffix, so libraries that dispatch on the
    extension (Keras' ``.keras``, ``.weights.h5``) still accept the temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it onto ``path`` on success.

    An existing ``path`` is replaced only once the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model(model, path: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None) -> None:
    """Write a Keras model to ``path`` (``.keras``) and/or its weights to ``weights_path``
    (``.weights.h5``), atomically: both files or neither appear, never a half-written one.

    No Keras import here: the model saves itself; only the temporary names are ours.
    """
    for p, suffix in ((path, ".keras"), (weights_path, ".weights.h5")):
        if p is not None and not str(p).endswith(suffix):
            raise ValueError(f"{p}: a Keras file name must end with {suffix}")
    with contextlib.ExitStack() as stack:
        if weights_path is not None:
            model.save_weights(stack.enter_context(atomic_path(weights_path)))
        if path is not None:
            model.save(stack.enter_context(atomic_path(path)))


HASH_CHUNK = 8 << 20


def hash_file(path: str | os.PathLike, *algorithms: str) -> dict[str, str]:
    """``{algorithm: hex digest}`` of a file (default SHA-256), all in one pass of 8 MiB reads."""
    hashers = {name: hashlib.new(name) for name in (algorithms or ("sha256",))}
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj, **dump_kwargs) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(obj, **dump_kwargs) + "\n")
