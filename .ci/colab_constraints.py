#!/usr/bin/env python3
"""Derive ``constraints-colab.txt`` from a pip freeze of Google Colab's runtime.

Colab's freeze lists ~700 packages; the course needs ~130 of them. This script asks pip's own
resolver which packages ``requirements.txt`` (plus the test runner and OpenCV, which Colab also
has) pulls in when every version is held at Colab's, and writes exactly those ``name==version``
lines, under a header that names the freeze and its date. CI installs the second ("Colab")
environment with ``-c constraints-colab.txt``, so it runs the notebooks on Colab's versions.

    python .ci/colab_constraints.py FREEZE --date 2026-08-19 --source "googlecolab/backend-info, ..." \\
        --python /root/.pyenv/versions/3.13.0/bin/python3.13 > constraints-colab.txt

Run it with the Python version Colab runs (the resolver picks wheels for that interpreter).
Packages that the course pulls in but the freeze lacks are listed in the header: on Colab the
course's bootstrap would have to install them (today: none that the course imports).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Installed into the Colab environment besides requirements.txt: Colab has both, and CI runs
# pytest there; OpenCV is what notebook 01 verifies the conversion with when it can.
EXTRA = ("pytest", "opencv-python-headless")
# Colab builds some packages from source under their own name; the course requires the prebuilt
# wheel of the same module, which CI pins at Colab's version (on Colab itself the course accepts
# Colab's own build: helpers.course.environment.SATISFIED_BY).
WHEEL_FOR = {"dlib-bin": "dlib"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path) -> dict[str, tuple[str, str]]:
    """``{canonical name: (name as written, version)}`` of every ``name==version`` line."""
    pins = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([^\s;]+)", line)
        if not m:
            if "@" in line or line.startswith("-"):
                continue  # direct URLs and pip options: not versions we can pin
            raise ValueError(f"{path}:{lineno}: expected 'name==version', got {raw!r}")
        pins[canonical(m.group(1))] = (m.group(1), m.group(2))
    return pins


def resolve(python: str, freeze: Path, requirements: Path) -> dict[str, str]:
    """``{canonical name: version}`` that pip would install for ``requirements`` + EXTRA."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-r", str(requirements), *EXTRA, "-c", str(freeze)]
        subprocess.run(cmd, check=True)
        data = json.loads(report.read_text(encoding="utf-8"))
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("freeze", type=Path, help="Colab's pip freeze (name==version lines)")
    parser.add_argument("--date", required=True, help="the date of the freeze (YYYY-MM-DD)")
    parser.add_argument("--source", default="googlecolab/backend-info (Colab's GPU runtime)",
                        help="where the freeze comes from")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to resolve for")
    parser.add_argument("--requirements", type=Path, default=REPO / "requirements.txt")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", args.date):
        parser.error(f"--date {args.date!r}: expected YYYY-MM-DD")
    pins = read_freeze(args.freeze)
    for wheel, colab_name in WHEEL_FOR.items():
        if colab_name in pins:
            pins[wheel] = (wheel, pins[colab_name][1])
    with tempfile.TemporaryDirectory() as tmp:
        freeze = Path(tmp) / "freeze.txt"  # the freeze plus the wheels that stand in for Colab's builds
        freeze.write_text(args.freeze.read_text(encoding="utf-8") + "".join(
            f"\n{name}=={version}" for name, version in pins.values() if name in WHEEL_FOR) + "\n", encoding="utf-8")
        resolved = resolve(args.python, freeze, args.requirements)
    version = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                             check=True, capture_output=True, text=True).stdout.strip()
    absent = sorted(n for n in resolved if n not in pins)
    lines = [
        "# Google Colab's versions of the course's packages: CI's second environment is installed with",
        "#   pip install -r requirements.txt " + " ".join(EXTRA) + " -c constraints-colab.txt",
        f"# freeze-date: {args.date}",
        f"# source: {args.source}",
        f"# derived by .ci/colab_constraints.py for Python {version} (Colab runs Python 3.13): the packages that",
        "# requirements.txt (plus " + ", ".join(EXTRA) + ") pulls in, at the freeze's versions.",
        "# Not in the freeze (pip picks a version itself): " + (", ".join(absent) if absent else "none"),
    ]
    lines += [f"{pins[n][0]}=={pins[n][1]}" for n in sorted(resolved) if n in pins]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
