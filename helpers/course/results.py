"""Every number the course reports, in one JSON file that runs can be compared by.

``record("probe.fc7", 0.91)`` merges one key into ``build/results.json`` (``COURSE_RESULTS``
overrides the path) together with the run's mode, the time and the package versions. Keys
are flat dotted names (``cv.head_only.mean``) so that two files diff line by line.

When ``COURSE_NOTEBOOK`` names the notebook being run (``python -m helpers.course`` sets it for
each kernel), the key also goes to that notebook's own file, ``build/results/<notebook>.json``:
what each notebook measured, apart from what the others did (the notebook tests check it).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

from . import paths
from .fileio import write_json_atomic

ENV_RESULTS = "COURSE_RESULTS"
ENV_NOTEBOOK = "COURSE_NOTEBOOK"  # the notebook being run, e.g. "04_head_finetuning"
_VERSIONED = ("numpy", "pandas", "tensorflow", "keras", "scikit-learn", "matplotlib")


def results_path() -> Path:
    override = os.environ.get(ENV_RESULTS)
    return Path(override) if override else paths.build_dir() / "results.json"


def notebook_results_path(notebook: str | None = None) -> Path | None:
    """``build/results/<notebook>.json`` beside results.json (``None`` when no notebook is named)."""
    notebook = notebook or os.environ.get(ENV_NOTEBOOK)
    if not notebook:
        return None
    if not re.fullmatch(r"[\w.-]+", notebook):
        raise ValueError(f"{ENV_NOTEBOOK}={notebook!r}: expected a notebook's file name without its folder")
    return results_path().parent / "results" / f"{notebook}.json"


def load(path: str | os.PathLike | None = None) -> dict:
    p = Path(path) if path else results_path()
    if not p.is_file():
        return {"meta": {}, "results": {}}
    data = json.loads(p.read_text(encoding="utf-8"))
    data.setdefault("meta", {})
    data.setdefault("results", {})
    return data


def record(key: str, value: Any, mode: str | None = None) -> Any:
    """Store ``value`` under ``key`` and return it unchanged (so it can be used inline)."""
    if not key or not isinstance(key, str):
        raise ValueError(f"a result key must be a non-empty string, got {key!r}")
    stored = to_jsonable(value)
    for path in filter(None, (results_path(), notebook_results_path())):
        data = load(path)
        data["results"][key] = stored
        meta = data["meta"]
        meta["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta["mode"] = mode or meta.get("mode") or paths.resolve_mode()[0]
        meta["smoke"] = paths.smoke()
        meta["subset"] = paths.subset()
        if meta["mode"] == "full":  # numbers computed on stand-in assets mean nothing: say so beside them
            from .standins import present

            meta["standins"] = present()
        meta["versions"] = package_versions()
        write_json_atomic(path, data, allow_nan=False)
    return value


def reset(mode: str) -> None:
    """Start a fresh results file for a complete run of the course."""
    write_json_atomic(results_path(), {"meta": {"mode": mode, "versions": package_versions()}, "results": {}})


def get(key: str, default: Any = None) -> Any:
    return load()["results"].get(key, default)


def to_jsonable(value: Any) -> Any:
    """numpy scalars and arrays, tuples, Paths -> plain JSON values; NaN/inf -> None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in results.json: {value!r}")


def package_versions() -> dict[str, str]:
    from importlib import metadata  # reads installed metadata; imports nothing heavy

    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
