"""Execute the course as Colab runs it, through ``python -m helpers.course --colab``.

Two runs, each notebook in its own fresh runtime folder (a fresh clone made by the notebook's own
Setup cell, an empty build/), with a stand-in ``google.colab`` and ``COLAB_RELEASE_TAG`` set:

- **Drive on**, quick mode: one "Drive" folder is all the runtimes share, as on Colab. It starts
  empty, so notebook 00 builds the synthetic world there and every later notebook finds it, and
  05 finds 04's head, 06 finds 05's model.
- **Drive off**, quick mode in SMOKE size: nothing is shared; every notebook recomputes what it
  needs on its own runtime.

The runs carry the marker ``notebooks``; the checks of the promise reader run with the unit tests.
Each notebook gets its own results file, and the test checks the keys that notebook promises:
every ``results.record("key", ...)`` its code makes unconditionally (not under an ``if``/``try``/
``while`` or in a function), an f-string key matching at least once. A notebook that records
nothing fails.

Each run's summary (status, seconds and peak memory per notebook) and the runner's log are kept in
``build/notebook-tests/colab_drive_on/`` and ``.../colab_drive_off/``.
``COURSE_NOTEBOOK_PYTHON`` chooses the interpreter the runner (and so the kernels) run on: CI
points it at the environment with Colab's package versions; by default, this one.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from helpers.course import paths, runner

NOTEBOOKS = runner.discover_notebooks()
PYTHON = os.environ.get("COURSE_NOTEBOOK_PYTHON") or sys.executable
COURSE_TIMEOUT_S = 45 * 60  # a bound for one whole run, far above what it takes


def run_course(root, *options):
    """``python -m helpers.course --colab ROOT`` in a clean environment; returns (process, summary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_") or k == "COURSE_NOTEBOOK_PYTHON"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MPLBACKEND", "Agg")
    cmd = [PYTHON, "-m", "helpers.course", "--colab", str(root), "--mode", "quick", "--keep-going", *options]
    log = root / "runner.log"  # written as the run goes: `tail -f` it to follow a long run
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(cmd, cwd=paths.REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=COURSE_TIMEOUT_S)
    summary_file = root / "summary.json"
    kept = paths.REPO_ROOT / "build" / "notebook-tests" / root.name.rstrip("0123456789")
    kept.mkdir(parents=True, exist_ok=True)  # outlives pytest's temporary folders: what each notebook took
    for f in (log, summary_file):
        if f.is_file():
            (kept / f.name).write_bytes(f.read_bytes())
    if not summary_file.is_file():
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise AssertionError(f"the runner wrote no summary (exit {proc.returncode}); the end of {log}:\n{tail}")
    return proc, json.loads(summary_file.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def drive_on(tmp_path_factory):
    root = tmp_path_factory.mktemp("colab_drive_on")
    proc, summary = run_course(root)
    return {"root": root, "proc": proc, "summary": summary,
            "drive_home": root / "drive" / "MyDrive" / paths.DRIVE_FOLDER}


@pytest.fixture(scope="module")
def drive_off(tmp_path_factory):
    root = tmp_path_factory.mktemp("colab_drive_off")
    proc, summary = run_course(root, "--no-drive", "--smoke")
    return {"root": root, "proc": proc, "summary": summary}


# ----------------------------------------------------------------------------- promised keys

def _python_of(source: str) -> str:
    """A cell's source as plain Python (IPython's own transformer turns %magics and !shell into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _key_pattern(node: ast.AST) -> re.Pattern | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.compile(re.escape(node.value))
    if isinstance(node, ast.JoinedStr):
        parts = [re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values]
        return re.compile("".join(parts))
    return None


def promised_keys(notebook) -> list[re.Pattern]:
    """The result keys a notebook records whatever its data: see the module's docstring."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    promised = []
    conditional = (ast.If, ast.IfExp, ast.Try, ast.While, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(_python_of("".join(cell["source"])))
        stack = [(tree, False)]
        while stack:
            node, guarded = stack.pop()
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "record"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "results"
                    and node.args and not guarded):
                pattern = _key_pattern(node.args[0])
                if pattern is not None:
                    promised.append(pattern)
            for child in ast.iter_child_nodes(node):
                stack.append((child, guarded or isinstance(node, conditional)))
    return promised


def check_promises(notebook, results_file):
    assert results_file is not None and results_file.is_file(), f"{notebook.stem} recorded no result at all"
    recorded = json.loads(results_file.read_text(encoding="utf-8"))["results"]
    assert recorded, f"{notebook.stem} recorded no result at all"
    broken = [p.pattern for p in promised_keys(notebook) if not any(p.fullmatch(k) for k in recorded)]
    assert not broken, f"{notebook.stem} promises these keys but did not record them: {broken}"


def test_promised_keys_are_read_from_unconditional_record_calls(tmp_path):
    nb = {"cells": [
        {"cell_type": "code", "source": ["%matplotlib inline\n", "results.record('a.b', 1)\n",
                                         "for layer in L:\n", "    results.record(f'probe.{layer}', 2)\n"]},
        {"cell_type": "code", "source": ["if QUICK:\n", "    results.record('only.quick', 3)\n",
                                         "def f():\n", "    results.record('in.function', 4)\n", "!ls\n"]},
        {"cell_type": "markdown", "source": ["results.record('in.prose', 5)"]},
    ]}
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(nb))
    assert sorted(p.pattern for p in promised_keys(path)) == [re.escape("a.b"), r"probe\..+"]
    own = tmp_path / "99_x.json"
    own.write_text(json.dumps({"results": {"a.b": 1, "probe.fc7": 0.9}}))
    check_promises(path, own)
    own.write_text(json.dumps({"results": {"a.b": 1}}))
    with pytest.raises(AssertionError, match=r"promises these keys.*probe"):
        check_promises(path, own)
    own.write_text(json.dumps({"results": {}}))
    with pytest.raises(AssertionError, match="recorded no result"):
        check_promises(path, own)


# ----------------------------------------------------------------------------- the runs

def test_the_course_has_its_notebooks_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07"]


def _outcome(run, notebook):
    outcome = run["summary"].get(notebook.stem)
    assert outcome is not None, f"{notebook.stem} was not run; runner log: {run['root'] / 'runner.log'}"
    assert outcome["status"] == "ok", (f"{outcome['error']} (executed copy: {run['root'] / 'notebooks' / notebook.name}; "
                                       f"runner log: {run['root'] / 'runner.log'})")
    return outcome


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_on_a_fresh_colab_runtime_with_drive(notebook, drive_on):
    outcome = _outcome(drive_on, notebook)
    print(f"\n{notebook.stem} (Drive on): {outcome['seconds']:.1f} s, peak {outcome['peak_rss_mb'] or 0:.0f} MB")
    clone = drive_on["root"] / "runtimes" / notebook.stem / "vggface-gender-course"
    assert (clone / "helpers" / "course").is_dir(), "the notebook's Setup cell did not clone the course"
    leftovers = [p for p in (clone / "build").rglob("*") if p.is_file()] if (clone / "build").exists() else []
    assert not leftovers, f"with Drive on, build/ belongs on Drive, but the runtime got {leftovers[:3]}"
    check_promises(notebook, drive_on["root"] / "results" / f"{notebook.stem}.json")
    assert (drive_on["drive_home"] / "build" / "results" / f"{notebook.stem}.json").is_file()


@pytest.mark.notebooks
def test_drive_keeps_what_the_notebooks_share(drive_on):
    home = drive_on["drive_home"]
    assert (home / "data" / "synthetic" / "manifest.json").is_file(), "notebook 00 builds the world on Drive"
    assert (home / "weights" / "converted" / "vggface_quick.keras").is_file(), "the converted model lives on Drive"
    assert (home / "build" / "results.json").is_file()
    assert not (drive_on["root"] / "runtimes" / "00_setup" / "vggface-gender-course" / "data" / "synthetic").exists()


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_on_its_own_fresh_runtime_without_drive(notebook, drive_off):
    outcome = _outcome(drive_off, notebook)
    print(f"\n{notebook.stem} (Drive off, SMOKE): {outcome['seconds']:.1f} s")
    clone = drive_off["root"] / "runtimes" / notebook.stem / "vggface-gender-course"
    assert (clone / "build" / "results" / f"{notebook.stem}.json").is_file(), "Drive off: results stay on the runtime"
    assert not (drive_off["root"] / "drive").exists() and not (drive_off["root"] / "runtimes" / notebook.stem / "drive").exists()
    check_promises(notebook, drive_off["root"] / "results" / f"{notebook.stem}.json")
